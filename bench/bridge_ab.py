"""The WebSocket path of this checkout against another, in interleaved rounds of one run.

    git archive <commit> | tar -x -C /tmp/base      # the commit to compare with (any copy of the tree)
    python bench/bridge_ab.py --base /tmp/base [/tmp/base2 ...] [--rounds 4 --seconds 6]

Two workloads, each run in a fresh process from each base tree and from this checkout, in turn
(a busy or quiet spell of the shared machine weighs on all):

- lockstep: ``make_vec_env(sim="subprocess")``, 5 venvs x 5 cars, frame stack 4, random actions:
  the conformance path. Agent-steps per wall second and per CPU second (trainer + simulator,
  measured over the window only, start-up excluded).
- realtime: the simulator ticking on its own at 15 Hz with 100 cars (5 x 20), the trainer answering
  with a small torch policy (``bench/realtime_load.py``'s): p50/p99 milliseconds from the arrival of
  the observation that completed a step to the action leaving the trainer, ticks the trainer missed,
  and CPU seconds per second of game time (trainer + simulator).

Prints every run, then the medians of each tree and its ratio to the tree before it in the list
(this checkout comes last), with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lockstep(seconds: float) -> dict:
    import numpy as np

    from rbxenv import make_vec_env

    env = make_vec_env(num_agents=5, num_venvs=5, frame_stack=4, sim="subprocess", track_change_steps=None)
    rng = np.random.default_rng(0)
    try:
        env.reset(seed=0)
        actions = rng.uniform(-1, 1, (64, env.num_envs, 3)).astype(np.float32)
        for k in range(200):  # warm up
            env.step(actions[k % 64])
        child = env.session.process.pid
        cpu0, wall0, steps = time.process_time() + cpu_seconds(child), time.perf_counter(), 0
        while time.perf_counter() - wall0 < seconds:
            env.step(actions[steps % 64])
            steps += 1
        wall = time.perf_counter() - wall0
        cpu = time.process_time() + cpu_seconds(child) - cpu0
    finally:
        env.close()
    n = steps * env.num_envs
    return {"agent_steps_per_s": n / wall, "agent_steps_per_cpu_s": n / cpu}


def realtime(seconds: float) -> dict:
    import numpy as np

    sys.path.insert(0, str(ROOT / "bench"))
    from realtime_load import count_answers, make_policy

    from rbxenv import make_vec_env

    env = make_vec_env(num_agents=20, num_venvs=5, mode="realtime", tick_hz=15.0, sim_seed=0)
    bridge = env.session.bridge
    answers = count_answers(bridge)  # spawns and resets: answered by packets that are not ticks
    try:
        obs, _ = env.reset(seed=0)
        policy = make_policy("torch", obs.shape[1])
        for _ in range(15):  # one second of ticks
            obs, *_ = env.step(policy(obs))
        child = env.session.process.pid
        packets0, answers0 = bridge.stats["obs_packets"], answers[0]
        latency, steps = [], 0
        cpu0, wall0 = time.process_time() + cpu_seconds(child), time.monotonic()
        while time.monotonic() - wall0 < seconds:
            ready = bridge.data.ready_at
            obs, *_ = env.step(policy(obs))
            latency.append((bridge.action_sent_at - ready) * 1e3)
            steps += 1
        wall = time.monotonic() - wall0
        cpu = time.process_time() + cpu_seconds(child) - cpu0
        ticks = bridge.stats["obs_packets"] - packets0 - (answers[0] - answers0)
    finally:
        env.close()
    lat = np.array(latency[1:])
    return {
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "missed_ticks": max(ticks - steps, 0),
        "ticks": ticks,
        "cpu_per_s": cpu / wall,
    }


WORKLOADS = {"lockstep": lockstep, "realtime": realtime}
FIGURES = {
    "lockstep": [("agent_steps_per_s", "agent-steps/s", ",.0f"), ("agent_steps_per_cpu_s", "per CPU s", ",.0f")],
    "realtime": [("p50_ms", "p50 ms", ".2f"), ("p99_ms", "p99 ms", ".2f"), ("missed_ticks", "missed ticks", ".0f"),
                 ("cpu_per_s", "CPU s per s", ".3f")],
}  # fmt: skip


def run(root: Path, workload: str, seconds: float) -> dict:
    """One workload in a fresh process importing the rbxenv of checkout ``root``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", workload, "--seconds", str(seconds)]
    env = {**os.environ, "PYTHONPATH": str(root), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    # (cwd too: ``python -m rbxenv.sim``, the simulator child, imports from its working directory first)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"{workload} from {root} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def commit_of(root: Path) -> str:
    out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or str(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, nargs="+", default=[], help="copies of the tree to compare with, in order")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--worker", choices=list(WORKLOADS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKLOADS[args.worker](args.seconds)))
        return
    for base in args.base:
        if not (base / "rbxenv").is_dir():
            raise SystemExit(f"--base {base}: not a copy of the tree (no rbxenv/ there); see the docstring")
    trees = [(str(base), base) for base in args.base] + [(f"this ({commit_of(ROOT)})", ROOT)]
    print(f"{len(trees)} trees; load average {os.getloadavg()[0]:.1f}", flush=True)
    results: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        for workload in args.workloads:
            for name, root in trees:
                got = run(root, workload, args.seconds)
                results.setdefault((workload, name), []).append(got)
                shown = ", ".join(f"{label} {got[key]:{fmt}}" for key, label, fmt in FIGURES[workload])
                print(f"round {r + 1} {workload} {name}: {shown}", flush=True)
    print(f"\nmedians of {args.rounds} rounds, {args.seconds:g} s each (load average now {os.getloadavg()[0]:.1f})")
    for workload in args.workloads:
        for key, label, fmt in FIGURES[workload]:
            print(f"{workload} {label}:")
            before = None
            for name, _ in trees:
                median = statistics.median(x[key] for x in results[(workload, name)])
                ratio = f"x{median / before:.2f} of the tree above" if before else ""
                print(f"  {name:28} {median:>10{fmt}}  {ratio}")
                before = median


if __name__ == "__main__":
    main()
