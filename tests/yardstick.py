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
