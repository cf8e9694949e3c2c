"""Training throughput of the scripts, this checkout against another commit, in one run.

    git worktree add /tmp/base 097042b      # the commit to compare with (any checkout of the repo)
    python bench/train_speed.py --base /tmp/base --algos ppo sac --rounds 3
    python bench/train_speed.py --base . --algos sac --this-args "--torch-threads 2"   # one flag's effect

Each round runs ``ppo_continuous.py`` / ``sac_continuous.py`` with their defaults (no evaluation,
no checkpoints) from the base checkout and from this one, alternately, so that a busy or quiet spell
of the machine weighs on both. Per run: agent-steps per second of training (the script's last SPS
figure: wall clock, start-up excluded) and agent-steps per CPU second (trainer plus any simulator
process it started: the rate on a machine whose cores nobody else wants). Prints every run, the
medians and this checkout's ratio to the base.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Long enough for the update to dominate the start-up; SAC's steps include its random warm-up
# (5,000 agent-steps), so 25,000 gives 20,000 of learning (5,000 gradient steps at utd 0.25).
STEPS = {"ppo": 614_400, "sac": 25_000}


def run(root: Path, algo: str, steps: int, extra: list[str]) -> dict:
    """One training run of ``algo`` from checkout ``root``; its SPS and CPU seconds."""
    cmd = [sys.executable, str(root / f"{algo}_continuous.py"), "--total-timesteps", str(steps), "--eval-every", "0",
           "--no-save-model", "--exp-name", f"train_speed_{algo}", *extra]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as runs:  # TensorBoard files: not kept
        out = subprocess.run(cmd, cwd=runs, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)})
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    sps = [int(m) for m in re.findall(r"\| (\d+) SPS", out.stdout)]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"sps": sps[-1] if sps else float("nan"), "cpu_s": cpu, "wall_s": wall, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="checkout of the commit to compare with")
    parser.add_argument("--algos", nargs="+", default=["ppo", "sac"], choices=sorted(STEPS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="agent-steps per run (default: per algorithm)")
    parser.add_argument("--this-args", default="", help='flags for this checkout\'s runs only, e.g. "--torch-threads 2" '
                        "with --base this checkout: the effect of a flag, side by side")  # fmt: skip
    args = parser.parse_args()
    args.base = args.base.resolve()  # the runs start in a temporary directory
    if not (args.base / "ppo_continuous.py").exists():
        raise SystemExit(f"--base {args.base}: no ppo_continuous.py there; make one with git worktree add")
    base_commit = subprocess.run(["git", "-C", str(args.base), "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True).stdout.strip()  # fmt: skip
    this_commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True).stdout.strip()  # fmt: skip
    with_args = f" with {args.this_args}" if args.this_args else ""
    print(f"base {base_commit} vs this checkout {this_commit}{with_args}; load average {os.getloadavg()[0]:.1f}",
          flush=True)  # fmt: skip
    results: dict[tuple[str, str], list[dict]] = {}
    for algo in args.algos:
        steps = args.steps or STEPS[algo]
        for r in range(args.rounds):
            for name, root in (("base", args.base), ("this", ROOT)):
                got = run(root, algo, steps, args.this_args.split() if name == "this" else [])
                results.setdefault((algo, name), []).append(got)
                print(f"{algo} round {r + 1} {name}: {got['sps']:,} SPS, {steps / got['cpu_s']:,.0f} agent-steps per "
                      f"CPU second ({got['cpu_s']:.1f} CPU s, {got['wall_s']:.1f} s wall)", flush=True)  # fmt: skip
    print(f"\nmedians of {args.rounds} rounds (load average now {os.getloadavg()[0]:.1f})")
    print(
        f"{'algo':5} {'base SPS':>10} {'this SPS':>10} {'ratio':>6} {'base /CPU s':>12} {'this /CPU s':>12} {'ratio':>6}"
    )
    for algo in args.algos:
        b, t = results[(algo, "base")], results[(algo, "this")]
        bs, ts = statistics.median(x["sps"] for x in b), statistics.median(x["sps"] for x in t)
        bc = statistics.median(x["steps"] / x["cpu_s"] for x in b)
        tc = statistics.median(x["steps"] / x["cpu_s"] for x in t)
        print(f"{algo:5} {bs:>10,.0f} {ts:>10,.0f} {ts / bs:>6.2f} {bc:>12,.0f} {tc:>12,.0f} {tc / bc:>6.2f}")


if __name__ == "__main__":
    main()
