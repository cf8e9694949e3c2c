"""Zero tolerance for hidden crashes, in every test.

A crash that something heals (a reconnect, a skipped tick, an ``error`` frame) must still fail the
test that met it, unless the test provokes it and says so with a marker:

- any log record at ERROR or above, or one that mentions an internal error (the bridge's
  connection handler, the simulator's commands and real-time ticks, a game reporting
  ``internal_error``), fails the test: ``@pytest.mark.allow_internal_errors`` lets it through,
  and ``@pytest.mark.expect_error_log("text")`` lets through the ERROR records that contain
  ``text`` (a test of an error that is logged on purpose, e.g. a game changing its widths);
- every ``TrainingBridge`` started during the test is checked when the test ends: no internal
  error in its connection handler, no ``internal_error`` reported by its game (a failed command or
  real-time tick of the simulator); every ``GameSession`` (all ``make_vec_env`` /
  ``make_parallel_env`` envs): no reconnect (``@pytest.mark.allow_reconnects``).

Subprocess tests (the scripts, ``python -m rbxenv.sim``) check their output with
``assert_clean_output`` from tests/netutil.py.

The learning tests' training runs (``@pytest.mark.learning``) start together: ``learning_runs``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

# The tests' networks are tiny: a second torch (OpenMP) thread only spins against the simulator on two
# cores (10 held-out evaluations of a trained actor: 24 s of CPU with two threads, 3 s with one).
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Compiles the simulator's numba kernels (cached) before any test starts a simulator child: on a
# fresh machine each child would otherwise compile them while its trainer waits for it.
import rbxenv.sim.client  # noqa: F401
from rbxenv.bridge import TrainingBridge
from rbxenv.session import GameSession

ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--mutations",
        action="store_true",
        help="run the mutation check (tests/test_mutations.py): a check of the suite, run on its own",
    )


def pytest_collection_modifyitems(config, items) -> None:
    # The mutation check reruns parts of the suite on 10 mutated copies (2-3 minutes on 2 cores): it
    # checks the suite rather than the code, so it runs as its own step of the test command.
    if config.getoption("--mutations"):
        return
    skip = pytest.mark.skip(reason="the mutation check: python -m pytest --mutations tests/test_mutations.py")
    for item in items:
        if item.path.name == "test_mutations.py":
            item.add_marker(skip)


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "allow_internal_errors: the test provokes internal errors on purpose")
    config.addinivalue_line("markers", "allow_reconnects: the test provokes a lost game on purpose")
    config.addinivalue_line("markers", "expect_error_log(text): ERROR records containing text are the test's point")
    config.addinivalue_line("markers", "learning: a learning test; its module's LEARN_COMMAND trains (learning_runs)")


def is_internal(record: logging.LogRecord) -> bool:
    message = record.getMessage().lower()
    return record.levelno >= logging.ERROR or "internal error" in message or "internal_error" in message


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if is_internal(record):
            self.records.append(record)


@pytest.fixture(autouse=True)
def no_hidden_crashes(request, monkeypatch):
    handler = _Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    # The loggers that report crashes must let WARNING through even if a test lowered them.
    watched = [logging.getLogger(name) for name in ("rbxenv", "websockets")]
    levels = [logger.level for logger in watched]
    for logger in watched:
        if logger.level > logging.WARNING:
            logger.setLevel(logging.WARNING)

    bridges: list[TrainingBridge] = []
    sessions: list[GameSession] = []
    original_start, original_open = TrainingBridge.start, GameSession.open

    def start_and_watch(self, *args, **kwargs):
        bridges.append(self)
        return original_start(self, *args, **kwargs)

    def open_and_watch(self, *args, **kwargs):
        sessions.append(self)
        return original_open(self, *args, **kwargs)

    monkeypatch.setattr(TrainingBridge, "start", start_and_watch)
    monkeypatch.setattr(GameSession, "open", open_and_watch)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for logger, level in zip(watched, levels, strict=True):
            logger.setLevel(level)
    problems = []
    if not request.node.get_closest_marker("allow_internal_errors"):
        expected = request.node.get_closest_marker("expect_error_log")
        records = [r for r in handler.records if not (expected and expected.args[0] in r.getMessage())]
        problems += [f"log: {r.name} {r.levelname}: {r.getMessage()[:300]}" for r in records]
        for bridge in bridges:
            stats = bridge.stats
            if stats["internal_errors"] or stats["errors_from_game.internal_error"]:
                problems.append(
                    f"bridge on port {bridge.port}: {stats['internal_errors']} internal errors in its handler, "
                    f"{stats['errors_from_game.internal_error']} reported by the game"
                )
    if not request.node.get_closest_marker("allow_reconnects"):
        problems += [f"env on port {s.bridge.port}: {s.reconnects} reconnects" for s in sessions if s.reconnects]
    if problems:
        pytest.fail("hidden crashes:\n" + "\n".join(problems), pytrace=False)


class LearningRun:
    """A learning test's finished training run: exit code, output, its own directory, wall seconds."""

    def __init__(self, argv: list[str], cwd: Path):
        self.cwd, self.started = cwd, time.monotonic()
        self.out, self.err = open(cwd / "stdout.txt", "w+"), open(cwd / "stderr.txt", "w+")  # noqa: SIM115
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, *argv], cwd=cwd, env=env, stdout=self.out, stderr=self.err)
        self.seconds = None

    def finish(self) -> None:
        self.seconds = time.monotonic() - self.started
        self.returncode = self.proc.returncode
        for f in (self.out, self.err):
            f.seek(0)
        self.stdout, self.stderr = self.out.read(), self.err.read()
        self.out.close()
        self.err.close()


@pytest.fixture(scope="session")
def learning_runs(request, tmp_path_factory) -> dict[str, LearningRun]:
    """The training run of every selected learning test (its module's ``LEARN_COMMAND``), by node id.

    They start together and are awaited together: each is one busy process (in-process simulator,
    one torch thread), so on two cores two of them take the time of one, and no other test runs
    beside them (timing-sensitive tests never share the machine with a training run).
    """
    items = [item for item in request.session.items if item.get_closest_marker("learning")]
    runs = {item.nodeid: LearningRun(item.module.LEARN_COMMAND, tmp_path_factory.mktemp(item.name)) for item in items}
    deadline = time.monotonic() + 840
    try:
        while any(run.seconds is None for run in runs.values()):
            for run in runs.values():
                if run.seconds is None and run.proc.poll() is not None:
                    run.finish()
            if time.monotonic() > deadline:
                raise TimeoutError("a learning run took over 14 minutes")
            time.sleep(0.2)
    finally:
        for run in runs.values():
            if run.seconds is None:
                run.proc.kill()
                run.proc.wait()
                run.finish()
    return runs
