"""The suite catches the bugs that matter: each mutation of tests/mutations.py, applied to a scratch
copy of the repository, must make the tests it names fail there.

    python -m pytest --mutations tests/test_mutations.py -q        # every mutation (2-3 minutes; CI runs it)
    python tests/test_mutations.py ppo_gae_ignores_dones [--keep]  # one, with the tests' output

Only the named tests run for each mutation, with ``-x``: the first failure is the answer. Under
pytest the mutants run two at a time (most are one busy process: one per core), longest first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mutations import MUTATIONS, Mutation  # noqa: E402


def scratch_copy(mutation: Mutation, into: Path) -> Path:
    """The repository's tracked and new files (not runs/ or node_modules) in ``into``, with
    ``mutation`` applied. numba's caches come along (same sources, same stamps): no recompiling."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    caches = [p.relative_to(ROOT) for p in ROOT.glob("rbxenv/**/__pycache__/*.nb[ic]")]
    for rel in [*files, *map(str, caches)]:
        if not (ROOT / rel).is_file():
            continue
        dst = into / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst)
    target = into / mutation.file
    text = target.read_text()
    assert text.count(mutation.old) == 1, f"{mutation.file}: the mutated text must occur exactly once"
    target.write_text(text.replace(mutation.old, mutation.new))
    os.utime(target)  # a new stamp: numba and pyc caches of that file are rebuilt
    return into


def run_tests(copy: Path, mutation: Mutation, capture: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *mutation.tests]
    return subprocess.run(cmd, cwd=copy, env=env, capture_output=capture, text=True, timeout=900)


@pytest.fixture(scope="module")
def mutant_runs(request, tmp_path_factory):
    """The test runs of the selected mutations, started at once on two workers, training ones first."""
    names = [
        item.callspec.params["name"] for item in request.session.items if item.originalname == "test_the_suite_catches"
    ]
    names.sort(key=lambda name: not MUTATIONS[name].trains)  # the longest runs first: the two workers end together

    def run(name: str) -> subprocess.CompletedProcess:
        return run_tests(scratch_copy(MUTATIONS[name], tmp_path_factory.mktemp(name)), MUTATIONS[name])

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {name: pool.submit(run, name) for name in names}
        yield runs
        for pending in runs.values():  # a failed or interrupted session: do not start the rest
            pending.cancel()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_the_suite_catches(name, mutant_runs: dict[str, Future]):
    result = mutant_runs[name].result()
    mutation = MUTATIONS[name]
    summary = result.stdout.strip().splitlines()[-1:] or [result.stderr[-500:]]
    # 1: tests failed (errors in collection or a crash of pytest are 2-4, and prove nothing)
    assert result.returncode == 1, f"{name} was not caught: exit {result.returncode}, {summary}"
    assert mutation.expect in result.stdout, f"{name}: the tests failed, but not on it:\n{result.stdout[-3000:]}"
    said = [line for line in result.stdout.splitlines() if mutation.expect in line]
    said = next((line for line in said if line.startswith("E ")), said[0])  # pytest's "E   " line: the message
    print(f"{name}: caught ({summary[0]}): {said.strip()[:400]}")


if __name__ == "__main__":
    names = [a for a in sys.argv[1:] if not a.startswith("--")] or sorted(MUTATIONS)
    for name in names:
        where = Path(tempfile.mkdtemp(prefix=f"mutation_{name}_"))
        result = run_tests(scratch_copy(MUTATIONS[name], where), MUTATIONS[name], capture=False)
        caught = result.returncode == 1
        print(f"{name}: {'caught' if caught else f'NOT caught (exit {result.returncode})'} ({where})")
        if "--keep" not in sys.argv:
            shutil.rmtree(where, ignore_errors=True)
