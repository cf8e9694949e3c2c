"""The pure-pursuit reference driver over many tracks of every generation method.

    python bench/reference_driver.py [--seeds 300]

One car per track from grid slot 0, all tracks at once (``rbxenv.sim.reference.drive_laps``):
laps completed, mean lap time and mean speed per method. The reference for the learning benchmark's
"lap time relative to the reference".
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from rbxenv import cli, tracks  # noqa: E402
from rbxenv.sim.reference import drive_laps  # noqa: E402


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=300, help="tracks per method (seeds 0..N-1)")
    args = parser.parse_args()
    cli.check(parser.prog, args, {"--seeds": cli.at_least(1)})
    print(f"{'method':7} {'laps completed':>15} {'mean lap time':>14} {'mean speed':>11}")
    t0 = time.perf_counter()
    for method in tracks.METHODS:
        specs = [tracks.generate(seed, method) for seed in range(args.seeds)]
        times = drive_laps(specs)
        done = np.isfinite(times)
        lengths = np.array([spec["length"] for spec in specs])
        lap = np.mean(times[done]) if done.any() else None  # no lap completed: "-"
        speed = np.mean(lengths[done] / times[done]) if done.any() else None
        print(f"{method:7} {f'{done.sum()}/{len(specs)}':>15} {cli.figure(lap, '.1f', ' s'):>14} "
              f"{cli.figure(speed, '.0f', ' studs/s'):>15}")  # fmt: skip
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
