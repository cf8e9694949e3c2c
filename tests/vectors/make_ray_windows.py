"""Write tests/vectors/ray_windows.npz: golden ray windows (``rbxenv.sim.raycast.ray_windows``).

    python tests/vectors/make_ray_windows.py

Each case is a pair of wall polylines (stored, so the file does not depend on the track
generator), a ray length and the windows ``lo``, ``hi`` computed from them. The cases: ten
generated tracks of each method at the default ray length, two of them also at a short and a long
ray, and hand-made loops: an oval like tests/test_sim.py's, a smaller one where some windows are
the whole loop, a circle small enough that every window is, a C-shaped loop whose ends nearly
touch, and a figure eight whose walls cross.
The file was recorded from the numpy ``ray_windows`` (a chain dynamic programme of numpy calls);
tests/test_sim.py checks that the simulator's ``ray_windows`` reproduces every window exactly.
Regenerate it only after a deliberate change of what a window is.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere without installing
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: shared shapes

from shapes import horseshoe  # noqa: E402

from rbxenv import tracks  # noqa: E402
from rbxenv.sim.raycast import ray_windows  # noqa: E402

PATH = Path(__file__).with_name("ray_windows.npz")
RAY_LENGTH = 100.0  # SimConfig's default


def _loop(x: np.ndarray, y: np.ndarray, half_width: float) -> dict:
    return {"centerline": np.stack([x, y], axis=1).tolist(), "half_width": [half_width] * len(x)}


def _oval(a: float, b: float, half_width: float) -> dict:
    """tests/test_sim.py's oval: an ellipse with points ~4 studs apart."""
    n = int(np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b))) / 4)
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return _loop(a * np.cos(th), b * np.sin(th), half_width)


def cases() -> list[tuple[str, dict, float]]:
    """(name, spec with centerline and half_width, ray length) of every case."""
    out = [(f"{m}-{seed}", tracks.generate(seed, m), RAY_LENGTH) for m in tracks.METHODS for seed in range(10)]
    out += [(f"{m}-0 ray {r:g}", tracks.generate(0, m), r) for m in ("hull", "grid") for r in (40.0, 250.0)]
    th = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    t8 = np.linspace(0, 2 * np.pi, 800, endpoint=False)
    out += [
        ("oval 150 x 80", _oval(150.0, 80.0, 12.0), RAY_LENGTH),
        ("oval 60 x 30 (some windows whole)", _oval(60.0, 30.0, 12.0), RAY_LENGTH),
        ("circle r 40", _loop(40.0 * np.cos(th), 40.0 * np.sin(th), 12.0), RAY_LENGTH),
        ("horseshoe gap 30", tracks.from_centerline(horseshoe(30.0), 14.0), RAY_LENGTH),
        ("figure eight", tracks.from_centerline(np.stack([200 * np.sin(t8), 200 * np.sin(t8) * np.cos(t8)], 1), 13.0),
         RAY_LENGTH),
    ]  # fmt: skip
    return out


def record() -> dict[str, np.ndarray]:
    """All cases as flat arrays: case k's points are offsets[k] .. offsets[k + 1]."""
    names, lengths, lefts, rights, los, his = [], [], [], [], [], []
    for name, spec, ray_length in cases():
        left, right = tracks.walls(spec)
        lo, hi = ray_windows(left, right, ray_length)
        names.append(name)
        lengths.append(ray_length)
        lefts.append(left)
        rights.append(right)
        los.append(lo)
        his.append(hi)
    return {
        "name": np.array(names),
        "ray_length": np.array(lengths),
        "offsets": np.cumsum([0] + [len(lo) for lo in los]),
        "left": np.concatenate(lefts),
        "right": np.concatenate(rights),
        "lo": np.concatenate(los).astype(np.int64),
        "hi": np.concatenate(his).astype(np.int64),
    }


def load(path: Path = PATH) -> list[dict]:
    """The recorded cases, each a dict of name, ray_length, left, right, lo, hi."""
    with np.load(path) as data:
        d = {k: data[k] for k in data.files}
    out = []
    for k, name in enumerate(d["name"]):
        part = slice(d["offsets"][k], d["offsets"][k + 1])
        out.append({"name": str(name), "ray_length": float(d["ray_length"][k])} | {
            key: d[key][part] for key in ("left", "right", "lo", "hi")})  # fmt: skip
    return out


def main() -> None:
    data = record()
    np.savez_compressed(PATH, **data)
    sizes = np.diff(data["offsets"])
    whole = int(np.sum(data["lo"] + data["hi"] + 1 >= np.repeat(sizes, sizes)))
    print(
        f"wrote {PATH} ({PATH.stat().st_size / 1e3:.0f} kB): {len(data['name'])} cases, {len(data['lo'])} windows "
        f"({whole} of them the whole loop)"
    )


if __name__ == "__main__":
    main()
