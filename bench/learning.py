"""Learning benchmark: train for a fixed wall-clock budget, then drive tracks never seen in training.

    python bench/learning.py --algos ppo sac sb3 --minutes 10 --eval-tracks 30

For each algorithm, in turn (never two at once: they share the 2 cores):

1. Train with its defaults for ``--minutes`` of wall-clock time. ``ppo_continuous.py`` and
   ``sac_continuous.py`` run as users run them (``--save-model``); when the budget is up they get
   SIGINT, which saves a checkpoint. ``sb3`` is Stable-Baselines3 PPO on the original project's SuperSuit
   pipeline (``examples/sb3_ppo.py``), stopped by a callback at the budget.
2. Evaluate the deterministic policy on ``--eval-tracks`` held-out tracks (``HELDOUT_TRACK_SEEDS``),
   one car per track from the start grid, no other cars, up to 100 s: lap completion (>= 1 lap
   before the episode ends), crash rate (ended by a wall), and the first lap time relative to the
   privileged pure-pursuit reference driver on the same track.
3. Report training agent-steps/s and, from the scripts' periodic held-out evaluations in
   TensorBoard, the agent-steps at which lap completion first reached 50 %.

Prints one table; ``--json PATH`` also writes the figures.

Sim-to-real check (the simulator's dynamic car, ``rbxenv.sim.DynamicConfig``)::

    python bench/learning.py --algos ppo --minutes 4 --eval-tracks 30 \
        --train-dynamics kinematic dynamic randomized \
        --eval-dynamics dynamic dynamic,max_lateral_accel=56,actuator_lag=0.2

trains one driver per ``--train-dynamics`` choice (the scripts' ``--dynamics``) and evaluates each
under every ``--eval-dynamics`` car, e.g. 30 % less grip and twice the actuator lag: a car none of
them trained on (``randomized`` draws each constant within +-35 %: the lag never reaches twice).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rbxenv import HELDOUT_TRACK_SEEDS, cli, make_vec_env  # noqa: E402
from rbxenv.drive import OnnxPolicy, load_policy  # noqa: E402
from rbxenv.sim.reference import reference_lap_time  # noqa: E402

Policy = Callable[[np.ndarray], np.ndarray]


# ------------------------------------------------------------------------------------------ evaluation


def evaluate(policy: Policy, num_tracks: int, frame_stack: int = 4, dynamics: str = "kinematic") -> dict:
    """One episode per held-out track from the grid; lap completion, crashes, lap time vs reference
    (the reference drives the kinematic car: with another car the ratio is only indicative)."""
    envs = make_vec_env(
        dynamics=dynamics,
        num_agents=1,
        num_venvs=num_tracks,
        frame_stack=frame_stack,
        start="grid",
        collisions=False,
        track_seeds=list(HELDOUT_TRACK_SEEDS)[:num_tracks],
        track_change_steps=None,
    )
    try:
        obs, _ = envs.reset(seed=0)
        specs = [envs.session.tracks[v] for v in envs.session.venv_ids]
        finished = np.zeros(num_tracks, dtype=bool)
        lapped = np.zeros(num_tracks, dtype=bool)
        crashed = np.zeros(num_tracks, dtype=bool)
        lap_time = np.full(num_tracks, np.nan)
        while not finished.all():
            obs, _, term, trunc, infos = envs.step(np.clip(policy(obs), -1, 1).astype(np.float32))
            first_lap = (infos["lap"] >= 1) & np.isnan(lap_time) & ~finished
            lap_time[first_lap] = infos["lap_time"][first_lap]
            done = (term | trunc) & ~finished
            if done.any():
                ep = infos["episode"]
                lapped[done] = ep["laps"][done] >= 1
                crashed[done] = ep["crashed"][done]
                finished |= done
    finally:
        envs.close()
    reference = np.array([reference_lap_time(spec) for spec in specs])
    ratio = lap_time / reference
    return {
        "lap_completion": float(lapped.mean()),
        "crash_rate": float(crashed.mean()),
        "lap_time_vs_reference": float(np.nanmean(ratio)) if lapped.any() else None,  # no lap: "-", JSON null
        "mean_lap_time": float(np.nanmean(lap_time)) if lapped.any() else None,
        "mean_reference_lap_time": float(reference.mean()),
    }


def policy_from_checkpoint(path: Path) -> OnnxPolicy:
    """The deterministic actor of an rbxenv-checkpoint-v1 file, through its ONNX export (checked)."""
    onnx_path = path.with_suffix(".onnx")
    subprocess.run([sys.executable, str(ROOT / "export_onnx.py"), str(path), "-o", str(onnx_path)], check=True)
    return load_policy(onnx_path)


# ------------------------------------------------------------------------------------------ training


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return []
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def train_script(algo: str, minutes: float, seed: int, extra: list[str]) -> dict:
    script = ROOT / f"{algo}_continuous.py"
    exp_name = f"bench_{algo}_{int(time.time())}"
    cmd = [sys.executable, str(script), "--save-model", "--seed", str(seed), "--exp-name", exp_name, *extra]
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        proc.wait(timeout=minutes * 60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the scripts save a checkpoint and exit cleanly
        proc.wait(timeout=120)
    elapsed = time.monotonic() - t0
    run_dir = max((ROOT / "runs").glob(f"{exp_name}*"), key=lambda p: p.stat().st_mtime)
    policy = policy_from_checkpoint(run_dir / "checkpoint.pt")
    global_step = int(policy.meta["global_step"])  # the checkpoint's, as the export recorded it
    sps = scalars(run_dir, "charts/SPS")
    evals = scalars(run_dir, "eval/lap_completion")
    reach = next((step for step, value in evals if value >= 0.5), None)
    return {
        "policy": policy,
        "frame_stack": policy.frame_stack,
        "agent_steps": global_step,
        "train_seconds": elapsed,
        "train_sps": sps[-1][1] if sps else global_step / elapsed,
        "steps_to_50pct": reach,
        "run_dir": str(run_dir.relative_to(ROOT)),
    }


def train_sb3(minutes: float, seed: int) -> dict:
    sys.path.insert(0, str(ROOT / "examples"))
    from sb3_ppo import linear_decay, make_sb3_env
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.utils import set_random_seed

    class Budget(BaseCallback):
        def __init__(self, seconds: float):
            super().__init__()
            self.deadline = time.monotonic() + seconds

        def _on_step(self) -> bool:
            return time.monotonic() < self.deadline

    import torch

    torch.set_num_threads(1)  # as our scripts do: spinning torch threads fight the simulator for the 2 cores
    set_random_seed(seed)
    env = make_sb3_env(num_agents=5, num_venvs=5, sim_seed=seed)
    budget = Budget(minutes * 60)
    t0 = budget.deadline - minutes * 60
    by_time = linear_decay(3e-4)  # examples/sb3_ppo.py's schedule, over the wall-clock budget (no step count)
    try:
        model = PPO("MlpPolicy", env, n_steps=256, batch_size=256, verbose=0,
                    learning_rate=lambda _: by_time(1.0 - (time.monotonic() - t0) / (minutes * 60)))  # fmt: skip
        model.learn(total_timesteps=10**10, callback=budget)
    finally:
        env.close()
    elapsed = time.monotonic() - t0
    vecnorm = env  # VecNormalize: evaluation uses its frozen observation statistics

    def policy(obs: np.ndarray) -> np.ndarray:
        # SuperSuit's frame stack starts episodes with zero frames, ours with the first frame
        # repeated: the first three steps of an episode differ slightly, nothing after.
        return model.predict(vecnorm.normalize_obs(obs), deterministic=True)[0]

    return {
        "policy": policy,
        "frame_stack": 4,
        "agent_steps": int(model.num_timesteps),
        "train_seconds": elapsed,
        "train_sps": model.num_timesteps / elapsed,
        "steps_to_50pct": None,
        "run_dir": None,
    }


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", nargs="+", default=["ppo", "sac", "sb3"], choices=["ppo", "sac", "sb3"])
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget per algorithm")
    parser.add_argument("--eval-tracks", type=int, default=30, help="held-out tracks to evaluate on")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--train-dynamics",
        nargs="+",
        default=None,
        help="train ppo/sac once per simulator car (the scripts' --dynamics: kinematic, dynamic, randomized)",
    )
    parser.add_argument(
        "--eval-dynamics",
        nargs="+",
        default=["kinematic"],
        help="evaluate every driver under each of these cars (rbxenv.sim.rules.sim_config specs)",
    )
    parser.add_argument("extra", nargs="*", help="extra flags for the scripts, after --")
    args = parser.parse_args()
    cli.check(parser.prog, args, {"--minutes": cli.above(0), "--eval-tracks": cli.between(1, cli.HELDOUT_TRACKS)})

    results = {}
    for algo in args.algos:
        for dynamics in args.train_dynamics or [None]:
            if algo == "sb3":
                trained = train_sb3(args.minutes, args.seed)
            else:
                flags = ["--dynamics", dynamics] if dynamics else []
                trained = train_script(algo, args.minutes, args.seed, [*args.extra, *flags])
            policy = trained.pop("policy")
            trained["evals"] = {}
            for car in args.eval_dynamics:
                trained["evals"][car] = evaluate(policy, args.eval_tracks, trained["frame_stack"], car)
            trained.update(trained["evals"][args.eval_dynamics[0]])
            name = f"{algo} ({dynamics})" if dynamics else algo
            results[name] = trained
            print(f"{name}: {json.dumps(trained)}", flush=True)

    print()
    print(f"{args.minutes:g} min of training each; {args.eval_tracks} held-out tracks, one car each, from the grid")
    if len(args.eval_dynamics) > 1 or args.train_dynamics:
        print("lap completion % (crash %) per evaluation car:")
        print(f"{'driver':24} {'agent-steps':>12} " + " ".join(f"{car:>40}" for car in args.eval_dynamics))
        for name, r in results.items():
            cells = [
                f"{100 * e['lap_completion']:.1f} ({100 * e['crash_rate']:.1f})" for e in r["evals"].values()
            ]  # fmt: skip
            print(f"{name:24} {r['agent_steps']:>12,} " + " ".join(f"{c:>40}" for c in cells))
        print()
    header = f"{'algo':24} {'agent-steps':>12} {'train SPS':>10} {'laps %':>7} {'crash %':>8} {'lap time/ref':>12} {'steps to 50%':>13}"
    print(header)
    for algo, r in results.items():
        reach = f"{r['steps_to_50pct']:,}" if r["steps_to_50pct"] is not None else "-"
        print(
            f"{algo:24} {r['agent_steps']:>12,} {r['train_sps']:>10,.0f} {100 * r['lap_completion']:>7.1f} "
            f"{100 * r['crash_rate']:>8.1f} {cli.figure(r['lap_time_vs_reference']):>12} {reach:>13}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
