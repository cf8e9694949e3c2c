"""Seconds of PPO training until the held-out tracks are lapped, this checkout against another commit.

    git worktree add /tmp/base 097042b
    python bench/time_to_laps.py --base /tmp/base --seeds 1 2 3

For each seed, the base checkout's ``ppo_continuous.py`` and this one's run in turn with their
defaults (the 5M-step schedule) plus a held-out evaluation every ``--eval-every`` agent-steps on 20
tracks never used in training (``--eval-episodes 20``: one car per track from the grid, the
deterministic policy, as bench/learning.py evaluates). Training seconds at an evaluation are its
agent-steps divided by the script's SPS there (which leaves out start-up and evaluations). A run
stops (SIGINT) once lap completion is 100 % with no crashes, or after ``--budget`` seconds of
training (or ``--max-steps``). Reported: seconds (and agent-steps) to >= 90 % lap completion and to 100 % without crashes;
the evaluation interval bounds their resolution.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEP = re.compile(r"^step (\d+)/\d+ \| (\d+) SPS")
EVAL = re.compile(r"^eval on \d+ held-out tracks: lap completion (\d+)% \| crash rate (\d+)%")


def run(root: Path, seed: int, eval_every: int, budget: float, max_steps: int) -> dict:
    cmd = [sys.executable, "-u", str(root / "ppo_continuous.py"), "--seed", str(seed), "--eval-every",
           str(eval_every), "--eval-episodes", "20", "--no-save-model", "--exp-name", "time_to_laps"]  # fmt: skip
    out = {"to_90": None, "to_100": None, "evals": []}
    step, sps = 0, 1
    with tempfile.TemporaryDirectory() as runs:
        proc = subprocess.Popen(cmd, cwd=runs, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(root)})  # fmt: skip
        for line in proc.stdout:
            if m := STEP.match(line):
                step, sps = int(m[1]), max(int(m[2]), 1)
            elif m := EVAL.match(line):
                laps, crashes, seconds = int(m[1]), int(m[2]), step / sps
                out["evals"].append((step, round(seconds, 1), laps, crashes))
                if laps >= 90 and out["to_90"] is None:
                    out["to_90"] = (seconds, step)
                if laps == 100 and crashes == 0:
                    out["to_100"] = (seconds, step)
                    break
            if step / sps > budget or step >= max_steps:
                break
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    return out


def show(x: tuple[float, int] | None) -> str:
    return f"{x[0]:5.1f} s ({x[1]:,} steps)" if x else "not reached"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="checkout of the commit to compare with")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--eval-every", type=int, default=102_400, help="agent-steps between evaluations")
    parser.add_argument("--budget", type=float, default=45.0, help="seconds of training before a run is stopped")
    parser.add_argument("--max-steps", type=int, default=2_000_000, help="agent-steps before a run is stopped")
    args = parser.parse_args()
    commits = {
        name: subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()  # fmt: skip
        for name, root in (("base", args.base), ("this", ROOT))
    }
    print(f"base {commits['base']} vs this checkout {commits['this']}; load average {os.getloadavg()[0]:.1f}")
    table = []
    for seed in args.seeds:
        for name, root in (("base", args.base), ("this", ROOT)):
            got = run(root, seed, args.eval_every, args.budget, args.max_steps)
            table.append((seed, name, got))
            print(f"seed {seed} {name}: 90 % after {show(got['to_90'])}, 100 % / 0 crashes after {show(got['to_100'])}; "
                  f"evaluations (steps, s, laps %, crashes %): {got['evals']}", flush=True)  # fmt: skip
    print(f"\nload average now {os.getloadavg()[0]:.1f}")
    for name in ("base", "this"):
        runs = [got for _, n, got in table if n == name]
        for key, label in (("to_90", ">= 90 % laps"), ("to_100", "100 % laps, 0 crashes")):
            reached = [r[key][0] for r in runs if r[key]]
            median = f"median {statistics.median(reached):.1f} s" if reached else ""
            print(f"{name:5} {label:22} {len(reached)}/{len(runs)} seeds  {median}  {[show(r[key]) for r in runs]}")


if __name__ == "__main__":
    main()
