"""How much of a learning test's verdict is its seed: the test's training run under other seeds, with and without a bug.

    python bench/learning_seeds.py sac --seeds 0 1 2 3 4 --mutation sac_bootstraps_through_terminal_states
    python bench/learning_seeds.py ppo --seeds 1 2 --mutation ppo_gae_ignores_dones

Runs ``LEARN_COMMAND`` of tests/test_{algo}.py (the learning test's training run) with each ``--seed``,
on the repository and, with ``--mutation``, on a scratch copy with that mutation of tests/mutations.py
applied; two runs at a time (each is one busy process). Each checkpoint is then judged as the test
judges it (tests/yardstick.py: 10 held-out tracks against the ray follower, the test's margin) and
one line per run is printed: seed, mutation, verdict, figures, CPU seconds of the training.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import yardstick  # noqa: E402  (tests/yardstick.py)
from heldout_eval import load_actor  # noqa: E402
from mutations import MUTATIONS  # noqa: E402
from test_mutations import scratch_copy  # noqa: E402


def train(command: list[str], seed: int, mutation: str | None) -> tuple[Path, float]:
    """The checkpoint of ``command`` run with ``--seed seed`` (in a scratch copy with ``mutation``), and its CPU seconds."""
    work = Path(tempfile.mkdtemp(prefix=f"learning_seeds_{seed}_{mutation}_"))
    root = scratch_copy(MUTATIONS[mutation], work / "repo") if mutation else ROOT
    flags = command[1:]
    flags[flags.index("--seed") + 1] = str(seed)
    script = root / Path(command[0]).relative_to(ROOT)
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    with open(work / "stderr.txt", "w+") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script), *flags], cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=err
        )
        _, status, usage = os.wait4(proc.pid, 0)  # this run's own CPU time, whatever runs beside it
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise SystemExit(f"learning_seeds.py: seed {seed} {mutation or ''} failed: {err.read()[-2000:]}")
    (path,) = work.glob("runs/*/checkpoint.pt")
    return path, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("algo", choices=["ppo", "sac"])
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--mutation", choices=sorted(MUTATIONS), help="also train with this mutation applied")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the evaluations: a second thread only spins (24 s of CPU instead of 3 for one)
    test = __import__(f"test_{args.algo}")
    variants = [None, args.mutation] if args.mutation else [None]
    runs = [(seed, mutation) for seed in args.seeds for mutation in variants]
    with ThreadPoolExecutor(max_workers=2) as pool:
        trained = list(pool.map(lambda run: train(test.LEARN_COMMAND, *run), runs))
    for (seed, mutation), (path, cpu) in zip(runs, trained, strict=True):
        evaluate, actor = load_actor(str(path))
        ok, figures = yardstick.beats_the_ray_follower(evaluate, actor, test.MARGIN)
        verdict = "passes" if ok else "fails"
        print(f"{args.algo} seed {seed} {mutation or 'as is'}: {verdict} | {figures} | training {cpu:.0f} s of CPU")


if __name__ == "__main__":
    main()
