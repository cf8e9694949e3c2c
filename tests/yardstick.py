"""The learning tests' yardstick: the hand-written ray follower (rbxenv.baselines) on held-out tracks.

A trained policy must beat it on tracks it has never seen, by a margin that the bugs of
tests/mutations.py (episode ends ignored in PPO's GAE, advantages normalised against the wrong
samples, SAC bootstrapping through terminal states) do not reach. Both use bench/heldout_eval.py's evaluation
(the scripts' own ``evaluate``, one car per held-out track from the grid).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from heldout_eval import Driver, heldout_eval  # noqa: E402

HELDOUT_TRACKS = 10


@functools.cache
def ray_follower(evaluate) -> dict:
    """The ray follower's held-out result, through ``evaluate`` (once per test session)."""
    return heldout_eval(evaluate, Driver("ray_follower"), HELDOUT_TRACKS)


def beats_the_ray_follower(evaluate, actor, margin: float) -> tuple[bool, str]:
    """(verdict, a line of figures): more progress than the ray follower by ``margin`` laps, fewer crashes."""
    ray, trained = ray_follower(evaluate), heldout_eval(evaluate, actor, HELDOUT_TRACKS)
    line = (
        f"{HELDOUT_TRACKS} held-out tracks: trained progress {trained['progress']:.2f} laps, "
        f"crash rate {trained['crash_rate']:.0%}, lap completion {trained['lap_completion']:.0%}; "
        f"ray follower {ray['progress']:.2f} laps, {ray['crash_rate']:.0%}, {ray['lap_completion']:.0%}"
    )
    ok = trained["progress"] > ray["progress"] + margin and trained["crash_rate"] <= ray["crash_rate"]
    return ok, line


def assert_learning_run_beats_the_ray_follower(run, load_actor, algo: str, margin: float) -> None:
    """A learning run (``learning_runs`` in tests/conftest.py) ended cleanly, and the actor that
    ``load_actor`` makes of its checkpoint beats the ray follower on held-out tracks by ``margin`` laps."""
    import torch
    from netutil import assert_clean_output

    from rbxenv import training

    assert run.returncode == 0, run.stderr[-3000:]
    assert_clean_output(run.stdout, run.stderr)
    (path,) = run.cwd.glob("runs/*/checkpoint.pt")
    actor = load_actor(torch.load(path, map_location="cpu", weights_only=False))
    ok, figures = beats_the_ray_follower(training.evaluate, actor, margin)
    print(f"{figures} (training {run.seconds:.0f} s)")
    assert ok, f"{algo} does not beat the ray follower by {margin} laps: {figures}"
