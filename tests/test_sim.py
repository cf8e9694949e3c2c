"""Headless simulator: physics, rays, endings, collisions, venv isolation, determinism."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from rbxenv import tracks
from rbxenv.sim import Sim, SimConfig, rules
from rbxenv.sim.raycast import cast_segments, ray_windows, wall_table
from rbxenv.sim.reference import PurePursuitDriver, drive_laps, reference_lap_time
from rbxenv.sim.render import GRASS, PALETTE, ROAD, render, render_trajectories

CFG = SimConfig()
VECTORS = Path(__file__).parent / "vectors" / "rules.json"
SIM_STEPS = Path(__file__).parent / "vectors" / "make_sim_steps.py"
RAY_WINDOWS = Path(__file__).parent / "vectors" / "make_ray_windows.py"


def oval(a: float = 150.0, b: float = 80.0, half_width: float = 12.0) -> dict:
    """A counter-clockwise ellipse, points ~4 studs apart, grid slots behind (0-based) point 0."""
    n = int(np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b))) / 4)
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c = np.column_stack([a * np.cos(th), b * np.sin(th)])
    grid = [[a + (4.0 if i % 2 else -4.0), -8.0 - 8.0 * i, np.pi / 2] for i in range(8)]
    return {"version": 1, "name": f"oval-{a}-{b}", "method": "oval", "seed": 0, "centerline": c.tolist(),
            "half_width": [half_width] * n, "grid": grid, "length": 0.0}  # fmt: skip


def one_car(track: dict | None = None, config: SimConfig | None = None, **kw) -> Sim:
    sim = Sim(config, seed=0)
    sim.spawn("e", ["car_0_env_e"], track=track or oval(), **kw)
    return sim


def drive(sim: Sim, action, steps: int):
    """Step with a constant action (same for all cars); returns the list of results."""
    act = np.tile(np.asarray(action, dtype=np.float64), (len(sim.agent_ids), 1))
    return [sim.step(act) for _ in range(steps)]


def physics(action, seconds: float, speed=0.0, fuel=1.0):
    """Run one car's physics alone (no track) for some seconds; returns final state arrays."""
    v, h, p, f = np.array([speed]), np.zeros(1), np.zeros((1, 2)), np.array([fuel])
    act = np.array([action], dtype=np.float64)
    for _ in range(int(round(seconds / CFG.dt))):
        v, h, p, f = rules.car_physics_step(v, h, p, f, act, CFG, CFG.dt)
    return v[0], h[0], p[0], f[0]


def load_module(path: Path):
    """Import a script of tests/vectors (not a package) by its path."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = sys.modules[path.stem] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- physics


def test_full_throttle_reaches_bounded_top_speed():
    v, _, p, _ = physics([1, 0, 0], 10.0)
    assert v == pytest.approx(CFG.max_speed)
    assert p[0] > 400 and abs(p[1]) < 1e-9  # drove straight along +x


def test_nitro_raises_top_speed_drains_fuel_and_regen():
    v, _, _, f = physics([1, 0, 1], 2.0)
    assert CFG.max_speed < v <= CFG.nitro_max_speed
    assert f == pytest.approx(1 - 2.0 * CFG.nitro_burn, abs=1e-6)
    v, _, _, f = physics([1, 0, 1], 8.0)  # fuel runs out after 1/0.35 s: back to normal top speed
    assert f <= 0.02 and v == pytest.approx(CFG.max_speed, abs=6)
    _, _, _, f2 = physics([1, 0, 0], 2.0, speed=60, fuel=0.5)
    assert f2 == pytest.approx(0.5 + 2.0 * CFG.nitro_regen)
    _, _, _, f3 = physics([0, 0, 1], 1.0, fuel=0.5)  # nitro needs throttle: not requested, so it regenerates
    assert f3 == pytest.approx(0.5 + 1.0 * CFG.nitro_regen)


def test_steering_right_decreases_heading_and_grip_caps_yaw():
    v, h, p, _ = physics([1, 1, 0], 0.5)
    assert h < 0 and p[1] < 0  # turned right = clockwise
    _, h, _, _ = physics([1, -1, 0], 0.5)
    assert h > 0
    # at 60 studs/s the bicycle yaw rate 60 tan(0.5) / 8 ~ 4.1 rad/s is capped to 80 / 60
    v, h, p, f = (np.array([60.0]), np.zeros(1), np.zeros((1, 2)), np.ones(1))
    v2, h2, _, _ = rules.car_physics_step(v, h, p, f, np.array([[1.0, 1.0, 0.0]]), CFG, CFG.dt)
    assert h2[0] == pytest.approx(-CFG.max_lateral_accel / 60.0 * CFG.dt)


def test_brake_then_reverse_and_coast():
    v, _, p, _ = physics([-1, 0, 0], 3.0)
    assert v == pytest.approx(-CFG.reverse_max_speed) and p[0] < 0
    v, _, _, _ = physics([-1, 0, 0], 0.5, speed=40.0)  # brakes 60/s first: 40 -> 10, no reverse yet
    assert v == pytest.approx(10.0)
    v, _, _, _ = physics([0, 0, 0], 1.0, speed=40.0)  # drag slows, never flips sign
    a, b, n = CFG.drag_linear * CFG.dt, CFG.drag_const * CFG.dt, round(1.0 / CFG.dt)
    assert v == pytest.approx((40.0 + b / a) * (1 - a) ** n - b / a)  # v <- v (1 - a) - b, n times
    v, _, _, _ = physics([0, 0, 0], 30.0, speed=40.0)
    assert v == 0.0


# --------------------------------------------------------------------------- endings


def test_wall_hit_terminates_with_penalty():
    sim = one_car()
    results = drive(sim, [1, 1, 0], 40)  # full right on a counter-clockwise oval: into the wall
    ended = [t for t, r in enumerate(results) if r.terminated[0]]
    assert len(ended) == 1 and results[ended[0]].cause[0] == "wall"
    assert results[ended[0]].reward[0] < -9
    after = results[ended[0] + 1]
    assert not after.live[0] and after.reward[0] == 0 and not after.terminated[0]  # parked


def test_step_results_are_not_changed_by_later_steps():
    sim = one_car()
    results, copies = [], []
    for action in [[1, 1, 0]] * 40 + [[1, 0, 0]] * 3:  # into the wall (an end), parked, then a restart
        results.append(sim.step(np.array([action], dtype=np.float64)))
        copies.append(copy.deepcopy(results[-1]))
        if not sim.live[0]:
            sim.reset_agents(["car_0_env_e"])
    assert any(r.terminated[0] for r in results)
    for res, saved in zip(results, copies, strict=True):
        for f in dataclasses.fields(res):
            np.testing.assert_array_equal(getattr(res, f.name), getattr(saved, f.name), err_msg=f.name)
    # also for fields this drive leaves unchanged (no lap is completed here): no result array is a
    # view of the simulator's own car arrays
    for res in results:
        for f in dataclasses.fields(res):
            for name in sim._car_arrays(0):
                assert not np.shares_memory(getattr(res, f.name), getattr(sim, name)), (f.name, name)


def test_stuck_ends_after_30_slow_steps():
    results = drive(one_car(), [0, 0, 0], 31)
    assert [r.terminated[0] for r in results].index(True) == CFG.stuck_steps - 1
    assert results[CFG.stuck_steps - 1].cause[0] == "stuck"
    assert results[CFG.stuck_steps - 1].reward[0] == pytest.approx(-CFG.end_penalty)


def test_wrong_way_ends_after_30_reverse_steps():
    sim = one_car()
    sim.teleport("car_0_env_e", 150.0, 0.0, -np.pi / 2)  # facing against the track
    assert sim.observe()[0, -1] == 1.0
    results = drive(sim, [0.3, 0, 0], 30)
    assert [r.terminated[0] for r in results].index(True) == CFG.wrong_way_steps - 1
    assert results[-1].cause[0] == "wrong_way"
    assert sum(r.reward[0] for r in results) < -CFG.end_penalty  # driving backwards costs too


def test_truncation_at_max_steps():
    sim = one_car(config=SimConfig(max_steps=20))
    results = drive(sim, [0, 0, 0], 20)
    assert results[-1].truncated[0] and not results[-1].terminated[0]
    assert results[-1].cause[0] == "time_limit"
    assert not any(r.truncated[0] for r in results[:-1])


# --------------------------------------------------------------------------- rays


@pytest.mark.parametrize("method", tracks.METHODS)
def test_windowed_rays_match_brute_force(method):
    rng = np.random.default_rng(1)
    for seed in range(4):
        sim = Sim(seed=seed)
        sim.spawn("e", [f"car_{i}_env_e" for i in range(64)], track=tracks.generate(seed, method))
        tr = sim.track("e")
        for agent in sim.agent_ids:
            k, p, t = tr.point_at(rng.uniform(0, tr.length, 1))
            lateral = rng.uniform(-1, 1) * (tr.half_width[k[0]] - CFG.car_radius)
            xy = p[0] + lateral * np.array([-t[0, 1], t[0, 0]])
            sim.teleport(agent, xy[0], xy[1], rng.uniform(-np.pi, np.pi))
        fast = sim.observe()[:, : CFG.num_rays]
        ang = sim.heading[:, None] - rules.ray_angles(CFG.num_rays)
        dirs = np.stack([np.cos(ang), np.sin(ang)], axis=-1)
        walls = wall_table(tr.left, tr.right).reshape(1, -1, 4)
        every = np.broadcast_to(walls, (len(sim.pos), *walls.shape[1:]))
        slow = np.minimum(cast_segments(sim.pos, dirs, every) / CFG.ray_length, 1.0)
        np.testing.assert_allclose(fast, slow, atol=1e-6)
        assert (fast < 1).any() and (fast == 1).any()


def test_ray_windows_are_the_recorded_ones():
    """The windows of tests/vectors/ray_windows.npz (recorded from the numpy ray_windows), exactly."""
    for case in load_module(RAY_WINDOWS).load():
        lo, hi = ray_windows(case["left"], case["right"], case["ray_length"])
        np.testing.assert_array_equal(lo, case["lo"], err_msg=case["name"])
        np.testing.assert_array_equal(hi, case["hi"], err_msg=case["name"])


def test_ray_geometry_on_a_straight():
    sim = one_car(oval(a=2000.0, b=1000.0, half_width=10.0))  # nearly straight at (2000, 0)
    sim.teleport("car_0_env_e", 2003.0, 0.0, np.pi / 2)  # 3 studs right of the centre line
    rays = sim.observe()[0, : CFG.num_rays] * CFG.ray_length
    # facing +y at x = 2003: the left wall (towards -x) is 13 away, the right wall 7
    assert rays[0] == pytest.approx(13.0, abs=0.05) and rays[-1] == pytest.approx(7.0, abs=0.05)


# --------------------------------------------------------------------------- cars


def two_cars(collisions: bool) -> Sim:
    sim = Sim(seed=0)
    sim.spawn("e", ["car_0_env_e", "car_1_env_e"], track=oval(a=2000.0, b=1000.0))
    sim.teleport("car_0_env_e", 2000.0, 12.0, np.pi / 2)  # parked ahead in the same lane
    sim.teleport("car_1_env_e", 2000.0, 0.0, np.pi / 2, speed=30.0)
    sim.set_collisions(collisions)
    return sim


def test_collisions_off_cars_pass_through():
    sim = two_cars(False)
    blind = sim.observe()
    sim.set_collisions(True)
    seen = sim.observe()
    sim.set_collisions(False)
    assert (seen[1, :-3] < blind[1, :-3]).any() and (seen[1, :-3] <= blind[1, :-3]).all()
    results = [sim.step(np.array([[1, 0, 0], [1, 0, 0]])) for _ in range(1)]
    results += [sim.step(np.array([[0, 0, 0], [1, 0, 0]])) for _ in range(15)]
    assert sim.pos[1, 1] > sim.pos[0, 1] + 5  # drove through
    assert not any(r.collided.any() for r in results)


def test_collisions_on_cars_push_apart_and_are_seen():
    sim = two_cars(True)
    ahead = sim.observe()[1, CFG.num_rays // 2 - 1 : CFG.num_rays // 2 + 1] * CFG.ray_length
    assert ahead.max() < 12  # the middle rays (±10°) see the car in front
    results = [sim.step(np.array([[0, 0, 0], [1, 0, 0]])) for _ in range(15)]
    gap = np.linalg.norm(sim.pos[0] - sim.pos[1])
    assert gap >= 2 * CFG.car_radius - 0.5 and sim.pos[1, 1] < sim.pos[0, 1]
    hit = [r for r in results if r.collided[1]]
    assert hit and all(r.collided[0] for r in hit)
    assert sim.speed[0] > 5 and sim.speed[1] < 30  # the bump passed speed to the car in front
    for i in range(2):
        total = sum(float(r.reward[i]) for r in results)
        contacts = sum(bool(r.collided[i]) for r in results)
        assert total == pytest.approx(CFG.progress_reward * sim.net[i] - CFG.contact_penalty * contacts, abs=1e-4)


def test_venvs_on_the_same_coordinates_never_interact():
    sim = Sim(seed=0)
    for e in ("a", "b"):
        sim.spawn(e, [f"car_0_env_{e}"], track=oval())
    sim.set_collisions(True)
    assert np.array_equal(sim.pos[0], sim.pos[1])
    alone = one_car()
    for _ in range(20):
        res = sim.step(np.array([[1, 0.1, 0], [1, 0.1, 0]]))
        ref = alone.step(np.array([[1, 0.1, 0]]))
        assert not res.collided.any()
        np.testing.assert_array_equal(res.obs[0], ref.obs[0])
        np.testing.assert_array_equal(res.obs[1], ref.obs[0])


# --------------------------------------------------------------------------- API


def test_freeze_remove_reset_and_respawn():
    sim = Sim(seed=0)
    sim.spawn("e", ["car_0_env_e", "car_1_env_e"], track=oval())
    start = sim.pos.copy()
    sim.freeze(True)
    res = sim.step(np.ones((2, 3)))
    assert not res.live.any() and np.array_equal(sim.pos, start) and not res.reward.any()
    sim.freeze(False)
    drive(sim, [1, 0, 0], 5)
    assert not np.allclose(sim.pos, start)
    sim.reset_agents(["car_1_env_e"])
    np.testing.assert_array_equal(sim.pos[1], start[1])
    sim.spawn("e", ["car_0_env_e"])  # respawn an existing car
    np.testing.assert_array_equal(sim.pos, start)
    sim.remove_agents(["car_0_env_e"])
    assert sim.agent_ids == ["car_1_env_e"] and sim.index_of("car_1_env_e") == 0
    sim.close_venv("e")
    assert sim.agent_ids == [] and sim.step(np.zeros((0, 3))).obs.shape == (0, CFG.obs_size)


def test_grid_slots_follow_car_index_and_random_starts_are_seeded():
    spec = oval()
    sim = Sim(seed=0)
    sim.spawn("e", ["car_3_env_e", "car_0_env_e"], track=spec)
    np.testing.assert_allclose(sim.pos[0], spec["grid"][3][:2])
    np.testing.assert_allclose(sim.pos[1], spec["grid"][0][:2])
    starts = []
    for _ in range(2):
        s = Sim(seed=5)
        s.spawn("e", ["car_0_env_e", "car_1_env_e"], track=spec, start="random", seed=7)
        first = s.pos.copy()
        s.reset_agents(["car_0_env_e"])
        starts.append((first, s.pos.copy()))
    np.testing.assert_array_equal(starts[0][0], starts[1][0])
    np.testing.assert_array_equal(starts[0][1], starts[1][1])
    assert not np.allclose(starts[0][0][0], starts[0][1][0])  # a reset draws a new point
    obs = s.observe()
    assert obs[:, -1].max() == 0.0  # facing the track direction


def test_restarts_are_the_drawn_points_projected():
    """reset_indices (compiled) puts random starts where Track.point_at puts the venv's next draws
    (in the order of the indices), grid starts on their slot, all stopped with fresh counters."""
    sim = Sim(seed=0)
    sim.spawn("r", [f"car_{i}_env_r" for i in range(6)], track=tracks.generate(2), start="random", seed=5)
    sim.spawn("g", ["car_0_env_g", "car_1_env_g"], track=oval())
    drive(sim, [1, 0, 1], 20)
    idx = np.array([4, 7, 1, 3])
    tr = sim.track("r")
    k, p, t = tr.point_at(copy.deepcopy(sim._venvs["r"].rng).random(3) * tr.length)
    sim.reset_indices(idx)
    np.testing.assert_array_equal(sim.pos[[4, 1, 3]], p)
    np.testing.assert_array_equal(sim.heading[[4, 1, 3]], np.arctan2(t[:, 1], t[:, 0]))
    np.testing.assert_array_equal(sim.pos[7], sim.spawn_pose[7, :2])
    assert sim.heading[7] == sim.spawn_pose[7, 2]
    for i in idx:
        hint, s = sim.track(sim.venv_of(sim.agent_ids[i])).project(sim.pos[i][None])
        assert (sim.hint[i], sim.s[i]) == (hint[0], s[0])
    assert (sim.speed[idx] == 0).all() and (sim.fuel[idx] == 1).all() and (sim.net[idx] == 0).all()
    assert sim.live[idx].all() and not sim.collided[idx].any() and np.isnan(sim.lap_time[idx]).all()
    for name in ("laps", "lap_start", "steps", "slow", "back"):
        assert not getattr(sim, name)[idx].any(), name
    assert sim.steps[[0, 2, 5, 6]].all()  # the others were not restarted


def test_deterministic_given_seeds():
    def run():
        sim = Sim(seed=3)
        for v in range(3):
            sim.spawn(f"v{v}", [f"car_{i}_env_v{v}" for i in range(4)], start="random")
        sim.set_collisions(True)
        rng = np.random.default_rng(0)
        out = []
        for _ in range(60):
            res = sim.step(rng.uniform(-1, 1, (12, 3)) + [0.5, 0, 0])
            out.append(res.obs)
            sim.reset_indices(np.flatnonzero(res.terminated | res.truncated))
        return np.array(out)

    np.testing.assert_array_equal(run(), run())


def test_progress_reward_and_seam():
    sim = one_car(oval(a=2000.0, b=1000.0))
    total = sum(r.reward[0] for r in drive(sim, [1, 0.0, 0], 30))
    assert total == pytest.approx(CFG.progress_reward * sim.net[0], rel=1e-5) and sim.net[0] > 20
    length = 100.0
    np.testing.assert_allclose(rules.progress_delta(np.array([98.0, 2.0]), np.array([3.0, 97.0]), length), [5.0, -5.0])


# --------------------------------------------------------------------------- shared test vectors


def test_rules_reproduce_the_shared_vectors():
    module = load_module(VECTORS.with_name("make_rules_vectors.py"))
    stored = json.loads(VECTORS.read_text())
    fresh = module.compute(stored)
    assert set(fresh) == set(stored) - {"config"}
    assert stored["config"] == dataclasses.asdict(CFG) | {"dt": CFG.dt}  # the constants the ports read
    for name, cases in stored.items():
        if name == "config":
            continue
        for case, got in zip(cases, fresh[name], strict=True):
            for key, want in case["expected"].items():
                msg = f"{name}: {case.get('note', '')} {key}"
                if name == "end_cause":
                    assert got["expected"][key] == want, msg
                else:
                    np.testing.assert_allclose(np.asarray(got["expected"][key], dtype=float), np.asarray(want, dtype=float),
                                               rtol=1e-7, atol=1e-7, err_msg=msg)  # fmt: skip


def test_step_reproduces_the_recorded_numpy_steps():
    """Every golden step of tests/vectors/sim_steps.npz (recorded from the numpy simulator), replayed
    one step at a time from its recorded state: physics to 1e-9, observations to 1e-5, the rest exact."""
    golden = load_module(SIM_STEPS)
    data = golden.load()
    sims = {}
    for r, scenario in enumerate(data["scenario"]):
        sim = sims.get(scenario) or sims.setdefault(scenario, golden.sim_for(data, scenario))
        golden.load_state(sim, {name: data[f"before_{name}"][r] for name in golden.STATE})
        sim.set_collisions(bool(data["collisions"][r]))
        sim.freeze(bool(data["frozen"][r]))
        msg = f"record {r} (scenario {scenario})"
        np.testing.assert_allclose(sim.observe(), data["observe"][r], rtol=0, atol=1e-5, err_msg=msg)
        res = golden.result_of(sim.step(data["actions"][r].astype(np.float64)))
        after = golden.state_of(sim)
        for part, got in (("result", res), ("after", after)):
            for name, value in got.items():
                want = data[f"{part}_{name}"][r]
                where = f"{msg}: {part} {name}"
                if value.dtype.kind == "f":
                    tol = 1e-5 if name in ("obs", "reward") else 1e-9
                    np.testing.assert_allclose(value, want, rtol=0, atol=tol, err_msg=where)
                else:
                    np.testing.assert_array_equal(value, want, err_msg=where)


# --------------------------------------------------------------------------- reference driver


def test_reference_driver_laps_every_method_without_crashing():
    specs = [tracks.generate(seed, method) for method in tracks.METHODS for seed in range(10)]
    times = drive_laps(specs)
    assert np.isfinite(times).all(), (
        f"failed laps: {[s['name'] for s, t in zip(specs, times, strict=True) if not np.isfinite(t)]}"
    )
    speeds = np.array([s["length"] for s in specs]) / times
    assert (speeds > 0.6 * CFG.max_speed).all() and (speeds < CFG.nitro_max_speed).all()


def test_laps_lap_time_and_progress_info():
    sim = Sim(seed=0)
    sim.spawn("e", ["car_0_env_e"], track=oval(a=120.0, b=90.0, half_width=14.0))
    s_start = sim.s[0]
    driver = PurePursuitDriver(sim)
    laps = []
    for _ in range(400):
        res = sim.step(driver.act())
        assert res.live[0] and not (res.terminated[0] or res.truncated[0])
        if res.lap[0] > (laps[-1][0] if laps else 0):
            laps.append((int(res.lap[0]), float(res.lap_time[0]), float(res.reward[0])))
    assert [lap for lap, _, _ in laps[:2]] == [1, 2]
    assert laps[0][2] > CFG.lap_reward  # the lap bonus on top of progress
    length = sim.track("e").length
    assert all(length / CFG.nitro_max_speed < t < length / 20 for _, t, _ in laps)
    assert reference_lap_time(sim.track("e").spec) == pytest.approx(laps[0][1])
    # progress: the part of the loop driven since the start point, beyond the whole laps
    assert res.progress[0] == pytest.approx((sim.s[0] - s_start) % length / length, abs=1e-9)
    assert res.info(0)["lap"] == res.lap[0]


# --------------------------------------------------------------------------- renderer


def test_render_draws_track_and_cars():
    sim = Sim(seed=0)
    sim.spawn("e", ["car_0_env_e", "car_1_env_e"], track=oval())
    img = render(sim, size=400)
    assert img.shape == (400, 400, 3) and img.dtype == np.uint8
    colors = {tuple(c) for c in img.reshape(-1, 3)}
    assert GRASS in colors and ROAD in colors
    near = lambda c: (np.abs(img.astype(int) - c).sum(axis=2) < 40).any()  # noqa: E731
    assert near(PALETTE[0]) and near(PALETTE[1])
    xs = np.column_stack([np.linspace(140, 150, 20), np.linspace(-20, 20, 20)])
    paths = render_trajectories(oval(), xs, np.linspace(0, 90, 20), size=96)
    assert paths.shape == (96, 96, 3) and not np.array_equal(paths, render_trajectories(oval(), xs[:1], [0.0], size=96))
