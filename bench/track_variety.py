"""Do drivers generalise to the tracks people draw? PPO on the classic generators vs the varied
ones, evaluated side by side on held-out generated tracks and on the hand-drawn set.

    python bench/track_variety.py --steps 1000000 [--seed 1] [--eval-tracks 20]
    python bench/track_variety.py --checkpoints A.pt B.pt      # evaluate existing runs only

1. Trains ``ppo_continuous.py`` with its defaults for ``--steps`` agent-steps twice, one run after
   the other (they share the machine): on the classic tracks, then with ``--track-difficulty 0.2:1``
   (the varied generators, harder over the run). Same seed, same budget.
2. Evaluates each checkpoint's deterministic policy, one car per track from the start grid, until
   its episode's time limit: on ``--eval-tracks`` held-out classic tracks, as many held-out varied
   tracks (difficulty 1, seeds from ``HELDOUT_TRACK_SEEDS``: never trained on), and the hand-drawn
   tracks of tests/data/tracks (drawn by hand, no generator made them). Lap completion (>= 1 lap),
   crash rate, and the first lap's time over the pure-pursuit reference driver's on the same
   track (mean over the tracks both lapped; < 1: faster than the reference).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ppo_continuous as ppo  # noqa: E402
from rbxenv import HELDOUT_TRACK_SEEDS, make_vec_env, tracks, training  # noqa: E402
from rbxenv.sim.reference import drive_laps  # noqa: E402


def train(steps: int, seed: int, extra: list[str], workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "ppo_continuous.py"), "--total-timesteps", str(steps), "--seed", str(seed),
           "--eval-every", "0", "--save-model", *extra]  # fmt: skip
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=workdir, check=True, stdout=subprocess.DEVNULL)
    (ckpt,) = workdir.glob("runs/*/checkpoint.pt")
    print(f"  trained in {time.time() - t0:.0f} s -> {ckpt}", flush=True)
    return ckpt


def evaluate(ckpt: Path, specs: list[dict], reference: np.ndarray) -> dict:
    data = torch.load(ckpt, weights_only=False)
    policy = data["policy"]
    agent = ppo.Agent(policy["obs_dim"], policy["act_dim"], tuple(data["args"]["hidden_sizes"]))
    agent.load_state_dict(data["model"])
    envs = make_vec_env(num_agents=1, num_venvs=len(specs), frame_stack=policy["frame_stack"], start="grid",
                        tracks=specs, track_change_steps=None)  # fmt: skip
    try:
        r = training.evaluate(agent, envs, seed=0)
    finally:
        envs.close()
    both = np.isfinite(r["first_lap_times"]) & np.isfinite(reference)
    ratio = float(np.mean(r["first_lap_times"][both] / reference[both])) if both.any() else float("nan")
    return {"completion": r["lap_completion"], "crash": r["crash_rate"], "ratio": ratio}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--eval-tracks", type=int, default=20)
    ap.add_argument("--workdir", default="bench_runs/track_variety")
    ap.add_argument("--checkpoints", nargs=2, metavar=("CLASSIC", "VARIED"), help="skip training")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.checkpoints:
        runs = dict(zip(("classic", "varied"), map(Path, args.checkpoints), strict=True))
    else:
        work = Path(args.workdir).resolve()
        runs = {
            "classic": train(args.steps, args.seed, [], work / "classic"),
            "varied": train(args.steps, args.seed, ["--track-difficulty", "0.2:1"], work / "varied"),
        }
    seeds = list(HELDOUT_TRACK_SEEDS)[: args.eval_tracks]
    sets = {
        "held-out classic": [tracks.generate(s) for s in seeds],
        "held-out varied (difficulty 1)": [tracks.generate(s, difficulty=1.0) for s in seeds],
        "hand-drawn (tests/data/tracks)": tracks.load_tracks(ROOT / "tests" / "data" / "tracks"),
    }
    print("| trained on | evaluated on | lap completion | crashes | first lap / reference |")
    print("|---|---|---|---|---|")
    for name, specs in sets.items():
        reference = drive_laps(specs)
        for run, ckpt in runs.items():
            r = evaluate(ckpt, specs, reference)
            print(f"| {run} | {name} ({len(specs)}) | {r['completion']:.0%} | {r['crash']:.0%} | {r['ratio']:.3f} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
