"""Your own tracks: the hand-drawn set in tests/data/tracks, the limits validate accepts (shortest,
longest, narrowest, tightest), validate's messages, the varied generators and tracks= in the envs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from shapes import horseshoe

from rbxenv import make_vec_env, tracks
from rbxenv.sim import Sim
from rbxenv.sim.reference import PurePursuitDriver, drive_laps
from rbxenv.sim.rules import SimConfig, time_limit_steps

DATA = Path(__file__).parent / "data" / "tracks"


def hand_drawn() -> list[dict]:
    return tracks.load_tracks(DATA)


def rectangle(w: float, h: float, half_width: float, radius: float, name: str = "rect") -> dict:
    return tracks.from_waypoints([(0, 0), (w, 0), (w, h), (0, h)], half_width, radius, name=name)


# The limits of validate, each a track that just fits.
LIMITS = {
    "shortest": rectangle(126.0, 40.0, 6.0, 16.0, "shortest"),
    "longest": rectangle(7200.0, 2760.0, 12.0, 200.0, "longest"),
    "narrowest": rectangle(300.0, 120.0, tracks.MIN_HALF_WIDTH, 30.0, "narrowest"),
    "tightest": rectangle(300.0, 120.0, 8.0, tracks.MIN_CORNER_RADIUS, "tightest"),
}


def test_the_hand_drawn_set_is_valid_and_varied():
    specs = hand_drawn()
    assert len(specs) >= 10
    assert len({s["name"] for s in specs}) == len(specs)
    assert all(tracks.validate(s) == [] for s in specs)
    lengths = sorted(s["length"] for s in specs)
    assert lengths[0] < 400 and lengths[-1] > 15_000  # a kart loop to an endurance circuit
    widths = [w for s in specs for w in s["half_width"]]
    assert min(widths) <= 6 and max(widths) >= 30


def test_the_hand_drawn_files_are_what_their_drawings_build():
    sys.path.insert(0, str(DATA))
    import draw

    for path in tracks.track_files(DATA):
        assert json.loads(path.read_text()) == json.loads(json.dumps(draw.build(path.stem))), path.stem


@pytest.mark.parametrize("name", LIMITS)
def test_limits_build_raycast_and_step(name):
    spec = LIMITS[name]
    assert tracks.validate(spec) == [], tracks.validate(spec)
    length, hw = spec["length"], np.asarray(spec["half_width"])
    assert {
        "shortest": length < tracks.MIN_LENGTH + 30,
        "longest": length > tracks.MAX_LENGTH - 500,
        "narrowest": hw.min() == tracks.MIN_HALF_WIDTH,
        "tightest": tracks._corner_radii(tracks.centerline_array(spec)).min() < tracks.MIN_CORNER_RADIUS + 0.5,
    }[name]
    sim = Sim(seed=0)
    sim.spawn("v", [f"car_{i}_env_v" for i in range(3)], track=spec, start="grid")
    obs = sim.observe()
    # the rays to the left and to the right of a car facing along the road add up to its width
    rays = obs[:, : sim.config.num_rays] * sim.config.ray_length
    assert np.abs(rays[:, 0] + rays[:, -1] - 2 * hw.max()).max() < 1.5, rays
    driver = PurePursuitDriver(sim)
    for _ in range(150):
        res = sim.step(driver.act())
        assert not res.terminated.any(), res.cause
    assert (sim.net > 150.0).all()  # all three drove on (studs of net progress in 10 s)


@pytest.mark.parametrize("name", ["shortest", "narrowest", "tightest"])
def test_the_reference_driver_laps_the_limits(name):
    assert np.isfinite(drive_laps([LIMITS[name]])).all()


def test_the_reference_driver_laps_the_short_hand_drawn_tracks():
    specs = [s for s in hand_drawn() if s["length"] < 1500]
    assert len(specs) >= 3
    assert np.isfinite(drive_laps(specs)).all()


def test_the_time_limit_scales_with_the_track():
    cfg = SimConfig()
    assert list(time_limit_steps([300.0, 2500.0, 5000.0, 20000.0], cfg)) == [1500, 1500, 3000, 12000]
    # the longest track's cars are not truncated at 1500 steps: shown with a shorter limit
    cfg = SimConfig(max_steps=20, time_limit_length=100.0, stuck_steps=10**6)  # a parked car
    spec = LIMITS["shortest"]
    sim = Sim(cfg, seed=0)
    sim.spawn("v", ["car_0_env_v"], track=spec, start="grid")
    limit = math.ceil(20 * spec["length"] / 100.0)
    ended = [sim.step(np.array([[0.0, 0.0, 0.0]])).truncated[0] for _ in range(limit)]
    assert ended == [False] * (limit - 1) + [True]


# ------------------------------------------------------------------------------ validate's messages


def test_validate_rejections_name_the_point_and_the_fix():
    def problems(spec, **change):
        return tracks.validate(spec | change)

    base = rectangle(300.0, 120.0, 8.0, 30.0)
    assert tracks.validate(base) == []
    narrow = problems(base, half_width=[5.0] + base["half_width"][1:])
    assert narrow == [
        "road too narrow at point 0 (0.0, 60.0): half_width 5.00 < 5.5 (the car's radius 2.5 plus room to steer): "
        "widen it to 5.5"
    ]
    (tight,) = tracks.validate(rectangle(300.0, 120.0, 8.0, 10.0))
    assert (
        tight.startswith("corner too tight at point ") and "round the corner off to a radius of at least 15.0" in tight
    )
    (fold,) = tracks.validate(rectangle(300.0, 120.0, 16.0, 16.0))
    assert "the inner wall folds at half_width 16.0" in fold and "narrow the road there to" in fold
    (short,) = tracks.validate(rectangle(80.0, 40.0, 6.0, 16.0))
    assert short.startswith("track is 2") and "shorter than 300: make the loop longer" in short
    (wide,) = problems(base, half_width=[60.0] * len(base["half_width"]))[:1]
    assert "road too wide" in wide or "corner too tight" in wide
    (close,) = tracks.validate(tracks.from_centerline(horseshoe(30.0), 14.0))
    assert close.startswith("road sections too close: point ") and close.endswith(
        "move them apart or narrow the road there"
    )
    spaced = problems(base, centerline=base["centerline"][::2], half_width=base["half_width"][::2])
    assert any("resample the centre line with tracks.from_centerline" in p for p in spaced)
    assert problems(base, length=1.0)[0] == f"length 1.0 does not match the centre line: set it to {base['length']:.3f}"


def test_load_track_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    tracks.save(rectangle(80.0, 40.0, 6.0, 16.0), bad)
    with pytest.raises(ValueError, match=r"bad\.json: not a valid track: track is .* make the loop longer"):
        tracks.load_track(bad)
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(ValueError, match=r"x\.json: not JSON"):
        tracks.load_track(tmp_path / "x.json")
    with pytest.raises(ValueError, match="no such track file or folder"):
        tracks.track_files([tmp_path / "missing.json"])
    with pytest.raises(ValueError, match="no \\*.json track files"):
        tracks.track_files([tmp_path / "empty"] if (tmp_path / "empty").mkdir() is None else [])


def test_cli_renders_a_track_file(tmp_path):
    png = tmp_path / "t.png"
    r = subprocess.run(
        [sys.executable, "-m", "rbxenv.tracks", "--from-file", str(DATA / "street.json"), "--png", str(png)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and r.stdout.startswith("street: length 1347.9 studs") and png.stat().st_size > 1000
    r = subprocess.run([sys.executable, "-m", "rbxenv.tracks", "--from-file", str(tmp_path / "nope.json")], capture_output=True, text=True)  # fmt: skip
    # a missing file is bad input: one line, exit 2 (the refusal of every command, rbxenv/cli.py)
    (line,) = r.stderr.strip().splitlines()
    assert (
        r.returncode == 2
        and line.startswith("rbxenv.tracks: error: --from-file")
        and line.endswith("nope.json: no such file")
    )


# ------------------------------------------------------------------------------ varied generators


def test_difficulty_tracks_are_valid_deterministic_and_varied():
    easy = [tracks.generate(s, difficulty=0.0) for s in range(12)]
    hard = [tracks.generate(s, difficulty=1.0) for s in range(12)]
    assert tracks.generate(5, difficulty=1.0) == hard[5]
    assert {s["method"] for s in hard} == set(tracks.ALL_METHODS)
    assert all(tracks.validate(s) == [] for s in easy + hard)

    def narrowest(specs):
        return np.median([min(s["half_width"]) for s in specs])

    def tightest(specs):
        return np.median([tracks._corner_radii(tracks.centerline_array(s)).min() for s in specs])

    assert narrowest(hard) < narrowest(easy) - 2.0 and tightest(hard) < tightest(easy)
    for s in hard:  # widths change along the lap
        assert max(s["half_width"]) - min(s["half_width"]) > 1.0, s["name"]
    assert tracks.generate(5) == tracks.generate(5, None, None)  # no difficulty: the classic track


def test_difficulty_schedule():
    assert tracks.difficulty_at(None, 0.5) is None
    assert tracks.difficulty_at("0.4", 0.9) == 0.4
    assert [tracks.difficulty_at("0.2:1", p) for p in (0.0, 0.5, 1.0, 2.0)] == [0.2, 0.6, 1.0, 1.0]
    with pytest.raises(ValueError, match="START:END"):
        tracks.difficulty_at("hard", 0.0)
    with pytest.raises(ValueError, match="difficulty must be within"):
        tracks.generate(1, difficulty=1.5)
    with pytest.raises(ValueError, match="circuit.*needs a difficulty"):
        tracks.generate(1, "circuit")


# ------------------------------------------------------------------------------ tracks= in the envs


def test_vec_env_trains_on_given_tracks_mixed_with_generated_ones():
    files = [DATA / "kart-loop.json", DATA / "street.json"]
    envs = make_vec_env(num_agents=1, num_venvs=3, track_change_steps=None, tracks=files)
    try:
        envs.reset(seed=0)
        names = [envs.session.tracks[v]["name"] for v in envs.session.venv_ids]
        assert names == ["kart-loop", "street", "kart-loop"]  # track_mix 1: in turn
        rng = np.random.default_rng(0)
        envs.session.track_mix = 0.5
        draws = [envs.session.next_track(rng)["method"] for _ in range(200)]
        assert 70 < draws.count("hand") < 130 and set(draws) - {"hand"} <= set(tracks.METHODS)
        obs, *_ = envs.step(np.zeros((3, 3), np.float32))
        assert obs.shape == (3, envs.single_observation_space.shape[0])
    finally:
        envs.close()
    with pytest.raises(ValueError, match=r"missing\.json: no such track file"):
        make_vec_env(num_agents=1, num_venvs=1, tracks=[DATA / "missing.json"])
    with pytest.raises(ValueError, match="track_mix must be within 0..1"):
        make_vec_env(num_agents=1, num_venvs=1, tracks=files, track_mix=2.0)


def test_trajectories_are_drawn_on_any_track():
    from rbxenv.sim.render import render_trajectories

    for spec in (LIMITS["shortest"], tracks.load_track(DATA / "endurance.json")):
        sim = Sim(seed=0)
        sim.spawn("v", ["car_0_env_v"], track=spec, start="grid")
        driver, xs, speeds = PurePursuitDriver(sim), [], []
        for _ in range(60):
            sim.step(driver.act())
            xs.append(sim.pos[0].copy())
            speeds.append(sim.speed[0])
        img = render_trajectories(spec, np.array(xs), np.array(speeds), size=256)
        plain = render_trajectories(spec, np.zeros((0, 2)), np.zeros(0), size=256)
        assert img.shape == (256, 256, 3) and (img != plain).any(axis=2).sum() > 20  # the path shows


def test_drive_takes_track_files():
    from rbxenv.drive import parse_args

    args = parse_args(["p.onnx", "--track-file", str(DATA / "street.json"), "--track-file", str(DATA)])
    assert args.track_file == [str(DATA / "street.json"), str(DATA)]
    with pytest.raises(SystemExit):
        parse_args(["p.onnx", "--track-file", str(DATA), "--heldout"])
