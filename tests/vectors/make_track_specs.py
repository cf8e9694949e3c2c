"""Write tests/vectors/track_specs.json: what ``rbxenv.tracks`` gives for fixed inputs.

    python tests/vectors/make_track_specs.py

- ``sha256``: the sha256 of ``orjson.dumps(generate(seed, method))`` for seeds 0-19 of each
  method, and of ``generate(seed)`` for the first held-out seeds and a few training seeds
  (``rbxenv.session``'s ranges), by spec name. A track seed must give the same track on every
  machine and in every version, or runs and held-out evaluations stop being comparable.
- ``problems``: ``validate``'s messages for the specs of ``broken_specs``, by case name. The
  generator's own candidates practically always pass, so these are what exercises the failure
  path of each check (and which problem each one reports first).

tests/test_tracks.py checks both. Regenerate the file only after a deliberate change of the
generator or of validate's rules.

Recorded from the numpy ``tracks``; the compiled one (``rbxenv.track_kernels``) gives the same
specs and messages but one: where two pairs of points are equally too close ("grid-4 y x 0.45":
points 347/403 and 348/402, the same distance exactly), validate now names the first pair, where
the numpy code named whichever the rounding of a BLAS matrix product put first.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere without installing
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: shared shapes

from shapes import horseshoe  # noqa: E402

from rbxenv import tracks  # noqa: E402

PATH = Path(__file__).with_name("track_specs.json")
SEEDS = range(20)  # of each method
DEFAULT_METHOD_SEEDS = (*range(1_000_000, 1_000_010), 123_456, 999_999)  # held-out, then training


def generated() -> list[dict]:
    """The pinned generated specs."""
    return [tracks.generate(seed, m) for m in tracks.METHODS for seed in SEEDS] + [
        tracks.generate(seed) for seed in DEFAULT_METHOD_SEEDS
    ]


def digest(spec: dict) -> str:
    return hashlib.sha256(orjson.dumps(spec)).hexdigest()


def broken_specs() -> dict[str, dict]:
    """Specs that make validate's checks fail, by case name: generated tracks squashed (tight
    corners, crossing walls), widened (walls too close or crossing), shifted away from their grid,
    with moved grid slots; C-shaped loops whose ends are too close for their width."""
    out = {}
    for m in tracks.METHODS:
        for seed in range(6):
            good = tracks.generate(seed, m)
            p, hw, grid = np.asarray(good["centerline"]), np.asarray(good["half_width"]), np.asarray(good["grid"])
            out[f"{good['name']} y x 0.45"] = good | {"centerline": (p * [1.0, 0.45]).tolist()}
            out[f"{good['name']} half-width + 18"] = good | {"half_width": (hw + 18.0).tolist()}
            out[f"{good['name']} shifted"] = good | {"centerline": (p + [300.0, -200.0]).tolist()}
            moved = grid + [[8.0 * (-1) ** k, 6.0 * (k % 3), 0.9 * (k % 2)] for k in range(len(grid))]
            out[f"{good['name']} grid moved"] = good | {"grid": moved.tolist()}
    for gap in (22.0, 26.0, 30.0, 33.0, 36.0):
        for half_width in (13.0, 15.0):
            out[f"horseshoe gap {gap:g} half-width {half_width:g}"] = tracks.from_centerline(horseshoe(gap), half_width)
    return out


def record() -> dict:
    return {
        "sha256": {spec["name"]: digest(spec) for spec in generated()},
        "problems": {name: tracks.validate(spec) for name, spec in broken_specs().items()},
    }


def main() -> None:
    data = record()
    PATH.write_text(json.dumps(data, indent=1) + "\n")
    failing = sum(bool(p) for p in data["problems"].values())
    print(f"wrote {PATH}: {len(data['sha256'])} specs, {failing} of {len(data['problems'])} broken specs fail")


if __name__ == "__main__":
    main()
