"""Tests for rbxenv.tracks: determinism, validity of every method, geometry helpers, validate()."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from shapes import horseshoe

from rbxenv import tracks

SEEDS = range(50)
GOLDEN = Path(__file__).parent / "vectors" / "make_track_specs.py"


def _golden():
    """tests/vectors/make_track_specs.py (a script, not a package) and the file it wrote."""
    spec = importlib.util.spec_from_file_location(GOLDEN.stem, GOLDEN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, json.loads(module.PATH.read_text())


def _circle(radius: float, n: int = 400, ccw: bool = True) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    if not ccw:
        a = -a
    return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)


def _stadium(corner_radius: float, straight: float = 400.0, n_arc: int = 200) -> np.ndarray:
    """Two straights joined by semicircles: a rectangle-ish loop with a chosen corner radius."""
    r = corner_radius
    a = np.linspace(-np.pi / 2, np.pi / 2, n_arc)
    right = np.stack([straight / 2 + r * np.cos(a), r * np.sin(a)], axis=1)
    left = np.stack([-straight / 2 - r * np.cos(a), -r * np.sin(a)], axis=1)
    return np.concatenate([right, left])


def _figure_eight(scale: float = 200.0) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 800, endpoint=False)
    return np.stack([scale * np.sin(t), scale * np.sin(t) * np.cos(t)], axis=1)


def _nearest_on_centerline(spec, q):
    """Brute force: nearest point of a densely interpolated centre line (independent of validate)."""
    p = tracks.centerline_array(spec)
    nxt = np.roll(p, -1, axis=0)
    f = np.linspace(0, 1, 20, endpoint=False)[:, None, None]
    dense = (p * (1 - f) + nxt * f).reshape(-1, 2)
    hw = np.asarray(spec["half_width"])
    hw_dense = (hw * (1 - f[..., 0]) + np.roll(hw, -1) * f[..., 0]).reshape(-1)
    seg_dir = np.broadcast_to(nxt - p, (len(f), len(p), 2)).reshape(-1, 2)
    k = np.argmin(np.linalg.norm(dense - q, axis=1))
    return dense[k], hw_dense[k], seg_dir[k] / np.linalg.norm(seg_dir[k])


# ------------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("method", tracks.METHODS)
def test_same_seed_gives_identical_json(method):
    for seed in (0, 1, 12345):
        a = json.dumps(tracks.generate(seed, method))
        b = json.dumps(tracks.generate(seed, method))
        assert a == b


@pytest.mark.parametrize("method", tracks.METHODS)
def test_different_seeds_give_different_tracks(method):
    dumps = {json.dumps(tracks.generate(seed, method)["centerline"]) for seed in range(10)}
    assert len(dumps) == 10


def test_generated_specs_are_the_recorded_ones():
    """Byte for byte (sha256 of the orjson dump), as recorded in tests/vectors/track_specs.json."""
    golden, stored = _golden()
    assert {spec["name"]: golden.digest(spec) for spec in golden.generated()} == stored["sha256"]


def test_method_none_is_picked_from_the_seed():
    for seed in range(6):
        spec = tracks.generate(seed)
        assert spec["method"] == tracks.METHODS[seed % 3]
        assert spec["name"] == f"{spec['method']}-{seed}"
        assert spec["seed"] == seed
        assert spec == tracks.generate(seed, spec["method"])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown method"):
        tracks.generate(1, "spiral")
    with pytest.raises(ValueError, match="seed"):
        tracks.generate(-1)


# --------------------------------------------------------------------- validity of the methods


@pytest.fixture(scope="module", params=tracks.METHODS)
def many(request):
    return request.param, [tracks.generate(seed, request.param) for seed in SEEDS]


def test_every_generated_track_is_valid(many):
    method, specs = many
    for spec in specs:
        assert tracks.validate(spec) == [], spec["name"]
        assert spec["method"] == method
        assert spec["version"] == 1


def test_spec_shape_spacing_and_closed_loop(many):
    _, specs = many
    for spec in specs:
        p = tracks.centerline_array(spec)
        assert set(spec) == {"version", "name", "method", "seed", "centerline", "half_width", "grid", "length"}
        assert len(spec["half_width"]) == len(p)
        assert not np.allclose(p[0], p[-1])  # first point not repeated...
        seg = np.linalg.norm(np.roll(p, -1, axis=0) - p, axis=1)
        assert seg.min() > 3.5 and seg.max() < 4.5  # ...and the closing segment is a normal one
        assert seg.max() - seg.min() < 0.25  # resampled evenly by arc length
        assert spec["length"] == pytest.approx(seg.sum(), abs=1e-3)
        assert tracks.MIN_LENGTH <= spec["length"] <= tracks.MAX_LENGTH
        hw = np.asarray(spec["half_width"])
        assert hw.min() >= 12.0 and hw.max() <= 16.0
        for v in spec["centerline"][:5] + spec["grid"][:5]:
            assert all(round(x, 3) == x for x in v)  # rounded: platform-independent JSON


def test_tracks_have_variety(many):
    method, specs = many
    lengths = [s["length"] for s in specs]
    assert max(lengths) - min(lengths) > 400
    # both driving directions occur (signed area > 0 means counter-clockwise)
    areas = []
    for s in specs:
        x, y = tracks.centerline_array(s).T
        areas.append(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))
    assert min(areas) < 0 < max(areas)


def test_grid_slots_inside_road_and_facing_track(many):
    _, specs = many
    for spec in specs[:15]:
        g = np.asarray(spec["grid"])
        assert len(g) >= 20
        sides = []
        for x, y, heading in g:
            foot, hw, tdir = _nearest_on_centerline(spec, np.array([x, y]))
            off = np.array([x, y]) - foot
            assert np.linalg.norm(off) <= hw - (2.5 + 1) + 0.05, spec["name"]
            assert math.cos(heading) * tdir[0] + math.sin(heading) * tdir[1] > 0.95
            sides.append(np.sign(tdir[0] * off[1] - tdir[1] * off[0]))  # +1 left, -1 right
        assert sides[:6] == [1, -1, 1, -1, 1, -1]  # two staggered columns
        # behind the start line: slot 0 is closest to point 0 and slots go backwards
        p0 = tracks.centerline_array(spec)[0]
        d = np.linalg.norm(g[:, :2] - p0, axis=1)
        assert d[0] < 10 and np.all(np.diff(d[::2]) > 0)
        t0 = tracks.tangents(spec)[0]
        assert np.all((g[:, :2] - p0) @ t0 < 0)


# ----------------------------------------------------------------------------- geometry helpers


def test_geometry_helpers_on_a_circle():
    spec = tracks.from_centerline(_circle(250.0), 14.0)
    assert tracks.validate(spec) == []
    p = tracks.centerline_array(spec)
    assert p.dtype == np.float64 and p.shape[1] == 2
    t = tracks.tangents(spec)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0)
    np.testing.assert_allclose(np.sum(t * p, axis=1), 0.0, atol=0.1)  # tangent ⟂ radius on a circle
    cum = tracks.cumulative_length(spec)
    assert cum.shape == (len(p) + 1,) and cum[0] == 0.0 and np.all(np.diff(cum) > 0)
    assert cum[-1] == pytest.approx(2 * np.pi * 250.0, rel=1e-3)
    assert cum[-1] == pytest.approx(spec["length"], abs=1e-3)
    left, right = tracks.walls(spec)
    # counter-clockwise: the left wall is the inner one
    np.testing.assert_allclose(np.linalg.norm(left, axis=1), 250.0 - 14.0, atol=0.01)
    np.testing.assert_allclose(np.linalg.norm(right, axis=1), 250.0 + 14.0, atol=0.01)


def test_left_wall_is_outer_on_a_clockwise_track():
    spec = tracks.from_centerline(_circle(250.0, ccw=False), 13.0)
    left, right = tracks.walls(spec)
    np.testing.assert_allclose(np.linalg.norm(left, axis=1), 263.0, atol=0.01)
    np.testing.assert_allclose(np.linalg.norm(right, axis=1), 237.0, atol=0.01)


def test_left_wall_is_left_of_the_driver_on_generated_tracks():
    for seed in range(6):
        spec = tracks.generate(seed)
        p, t = tracks.centerline_array(spec), tracks.tangents(spec)
        left, right = tracks.walls(spec)
        cross_l = t[:, 0] * (left - p)[:, 1] - t[:, 1] * (left - p)[:, 0]
        cross_r = t[:, 0] * (right - p)[:, 1] - t[:, 1] * (right - p)[:, 0]
        assert np.all(cross_l > 0) and np.all(cross_r < 0)


def test_segment_crossings_match_brute_force():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 60, (300, 2))
    b = a + rng.uniform(-5, 5, (300, 2))

    def never(i, j):
        return np.zeros(len(i), dtype=bool)

    fast = {tuple(x) for x in tracks._segment_crossings(a, b, never).tolist()}

    def orient(p, q, r):
        return np.sign((q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]))

    slow = set()
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            o1, o2 = orient(a[i], b[i], a[j]), orient(a[i], b[i], b[j])
            o3, o4 = orient(a[j], b[j], a[i]), orient(a[j], b[j], b[i])
            if o1 * o2 <= 0 and o3 * o4 <= 0 and not (o1 == 0 and o2 == 0):
                slow.add((i, j))
    assert len(slow) > 20  # the sample really has crossings
    assert fast == slow


# ----------------------------------------------------------------------------------- validate()


def test_validate_accepts_a_wide_stadium_but_not_a_tight_one():
    assert tracks.validate(tracks.from_centerline(_stadium(60.0), 14.0)) == []
    problems = tracks.validate(tracks.from_centerline(_stadium(15.0, straight=600.0), 14.0))
    assert any("corner too tight" in s for s in problems), problems


def test_validate_catches_a_figure_eight():
    spec = tracks.from_centerline(_figure_eight(), 13.0)
    assert tracks.MIN_LENGTH <= spec["length"] <= tracks.MAX_LENGTH
    problems = tracks.validate(spec)
    assert any("walls cross" in s or "crosses itself" in s for s in problems), problems


def test_validate_catches_road_sections_too_close():
    # the ends' centre lines 40 apart leave 12 studs between walls: fine; 30 apart leave 2: too close
    assert tracks.validate(tracks.from_centerline(horseshoe(40.0), 14.0)) == []
    problems = tracks.validate(tracks.from_centerline(horseshoe(30.0), 14.0))
    assert len(problems) == 1 and "too close" in problems[0], problems


def test_validate_reports_the_recorded_problems():
    """validate's messages for broken specs, as recorded in tests/vectors/track_specs.json."""
    golden, stored = _golden()
    assert {name: tracks.validate(spec) for name, spec in golden.broken_specs().items()} == stored["problems"]


def test_validate_catches_broken_specs():
    good = tracks.generate(4, "grid")
    assert tracks.validate(good) == []

    def broken(**changes):
        spec = json.loads(json.dumps(good))
        spec.update(changes)
        return tracks.validate(spec)

    assert broken(version=2)
    assert broken(length=good["length"] + 5)
    assert broken(half_width=good["half_width"][:-1])
    assert broken(half_width=[30.0] * len(good["half_width"]))
    assert broken(centerline=[[float("nan"), 0.0]] + good["centerline"][1:])
    assert broken(grid=good["grid"][:19])
    assert broken(grid=[[x, y, h + math.pi] for x, y, h in good["grid"]])  # facing backwards
    moved = [list(s) for s in good["grid"]]
    moved[3][0] += 40.0
    moved[3][1] += 40.0
    assert broken(grid=moved)
    assert tracks.validate({"centerline": []})
    small = tracks.from_centerline(_circle(40.0), 14.0)  # 251 studs: too short
    assert any("shorter than 300" in s for s in tracks.validate(small)), tracks.validate(small)


# ------------------------------------------------------------------------------- files and CLI


def test_json_round_trip(tmp_path):
    spec = tracks.generate(11, "hull")
    path = tmp_path / "t.json"
    tracks.save(spec, path)
    assert tracks.load(path) == spec
    tracks.save(tracks.load(path), tmp_path / "u.json")
    assert path.read_bytes() == (tmp_path / "u.json").read_bytes()


def test_cli_writes_spec_and_picture(tmp_path):
    from PIL import Image

    out, png = tmp_path / "track.json", tmp_path / "track.png"
    r = subprocess.run(
        [sys.executable, "-m", "rbxenv.tracks", "--seed", "3", "--method", "hull", "-o", str(out), "--png", str(png)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1 and r.stdout.startswith("hull-3:")
    assert tracks.load(out) == tracks.generate(3, "hull")
    with Image.open(png) as img:
        assert img.size == (800, 800)
        assert len(img.getcolors(1 << 16) or []) > 3  # road, walls, start line, grid were drawn
