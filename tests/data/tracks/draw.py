"""The hand-drawn tracks of this folder, as they were laid out: corners of a closed polygon in
driving order, each with the half width of the road there and the radius its corner is rounded
to (``rbxenv.tracks.from_waypoints``), as a Roblox builder places checkpoints. No generator made
them: each is drawn after a kind of real circuit (kart loop, speedway, switchbacks, esses, a
Monza-like fast track with chicanes, a street circuit, an endurance circuit, a stadium, ...).

    python tests/data/tracks/draw.py      # rewrites every <name>.json here (and checks it)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # run from anywhere without installing

from rbxenv import tracks  # noqa: E402

HERE = Path(__file__).resolve().parent

# name: [(x, y, half_width, corner radius), ...]
DRAWINGS: dict[str, list[tuple[float, float, float, float]]] = {
    # a rental-kart loop: the shortest kind of track, narrow
    "kart-loop": [(0, 0, 6, 18), (130, 0, 6, 18), (130, 45, 6, 18), (0, 45, 6, 18)],
    # a speedway: two long straights, four wide banked-style corners
    "speedway": [(0, 0, 16, 150), (800, 0, 16, 150), (800, 320, 16, 150), (0, 320, 16, 150)],
    # switchbacks: three hairpins stacked up a hillside, back down one long straight
    "switchbacks": [
        (0, 0, 9, 40),
        (600, 0, 9, 38),
        (600, 80, 9, 38),
        (100, 80, 9, 38),
        (100, 160, 9, 38),
        (600, 160, 9, 38),
        (600, 240, 9, 40),
        (0, 240, 9, 40),
    ],
    # a straight into a run of esses, a long sweeper back
    "esses": [
        (0, 0, 11, 40),
        (300, 0, 11, 30),
        (380, 60, 11, 30),
        (460, -20, 11, 30),
        (540, 60, 11, 30),
        (620, -20, 11, 30),
        (700, 40, 11, 40),
        (950, 40, 11, 90),
        (950, 420, 11, 120),
        (0, 420, 11, 90),
    ],
    # a fast track: long straights broken by two chicanes, a big curve and a hairpin-ish parabolica
    "fast-chicanes": [
        (0, 0, 13, 120),
        (880, 0, 13, 25),
        (910, 22, 12, 25),
        (950, 22, 12, 25),
        (980, 0, 13, 25),
        (1800, 0, 14, 160),
        (2200, 300, 14, 200),
        (2200, 900, 14, 150),
        (1600, 1200, 13, 120),
        (1000, 1200, 12, 25),
        (970, 1178, 12, 25),
        (930, 1178, 12, 25),
        (900, 1200, 13, 25),
        (300, 1200, 13, 60),
        (80, 1050, 13, 45),
        (0, 700, 14, 150),
    ],
    # a street circuit: city blocks, 90-degree corners as tight as the car turns, narrow road
    "street": [
        (0, 0, 6, 15),
        (400, 0, 6, 15),
        (400, 150, 6, 15),
        (250, 150, 6, 15),
        (250, 300, 6, 15),
        (120, 300, 6, 15),
        (120, 220, 6, 15),
        (0, 220, 6, 15),
    ],
    # an endurance circuit near the longest a lap may be: very long straights, a chicane, kinks
    "endurance": [
        (0, 0, 14, 200),
        (3000, 0, 12, 40),
        (3060, 40, 12, 40),
        (3120, 0, 12, 40),
        (6500, 0, 14, 300),
        (6800, 1500, 14, 300),
        (6500, 3000, 14, 250),
        (3000, 3200, 14, 300),
        (1000, 3000, 14, 200),
        (400, 2000, 14, 200),
        (0, 1000, 14, 200),
    ],
    # a stadium bowl: very wide road, big constant corners
    "stadium": [(0, 0, 35, 120), (500, 0, 35, 120), (500, 350, 35, 120), (0, 350, 35, 120)],
    # a long thin triangle: one hairpin at the far end
    "triangle-hairpin": [(0, 0, 10, 40), (1000, 100, 10, 30), (0, 200, 10, 40)],
    # a kidney: a concave bend on one side, width changing from corner to corner
    "kidney": [
        (0, 0, 12, 60),
        (600, 0, 14, 80),
        (800, 200, 16, 80),
        (600, 400, 12, 60),
        (400, 260, 9, 50),
        (200, 400, 12, 60),
        (0, 250, 14, 60),
    ],
    # a twisty club circuit: many corners of every radius, the road narrowing in the infield
    "club": [
        (0, 0, 12, 40),
        (450, 0, 12, 25),
        (520, 80, 10, 20),
        (450, 160, 9, 20),
        (560, 260, 9, 30),
        (700, 200, 10, 40),
        (760, 420, 12, 50),
        (500, 520, 12, 60),
        (250, 380, 8, 20),
        (150, 470, 8, 20),
        (-80, 380, 12, 50),
    ],
    # a rally square: narrowest road, the tightest corners, width changing along the lap
    "rally-square": [
        (0, 0, 5.5, 15),
        (220, 0, 8, 15),
        (220, 120, 12, 16),
        (120, 120, 6, 15),
        (120, 220, 5.5, 15),
        (0, 220, 8, 15),
    ],
}


def build(name: str) -> dict:
    pts = DRAWINGS[name]
    return tracks.from_waypoints(
        [(x, y) for x, y, _, _ in pts], [w for _, _, w, _ in pts], [r for *_, r in pts], name=name, method="hand"
    )


def main() -> int:
    bad = 0
    for name in DRAWINGS:
        spec = build(name)
        problems = tracks.validate(spec)
        if problems:
            bad += 1
            print(f"{name}: {problems[:3]}")
            continue
        tracks.save(spec, HERE / f"{name}.json")
        hw = spec["half_width"]
        print(f"{name}: {spec['length']:.0f} studs, half width {min(hw):g}-{max(hw):g}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
