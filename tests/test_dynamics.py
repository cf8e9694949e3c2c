"""The simulator's dynamic car (``DynamicConfig``): grip limit, slip, actuator lag, yaw inertia,
the compiled kernel against the numpy specification, domain randomisation, ``--dynamics``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rbxenv import tracks
from rbxenv.sim import DynamicConfig, Sim, SimConfig, rules, sim_config

DT = 1.0 / 60.0


def _state(v: float, heading: float = 0.0) -> np.ndarray:
    return np.array([[0.0, 0.0, heading, v, 0.0, 0.0, 0.0, 0.0]])


def _params(cfg: DynamicConfig, grip: float | None = None) -> np.ndarray:
    return np.array([[cfg.max_lateral_accel if grip is None else grip, 1.0, cfg.actuator_lag, cfg.yaw_inertia]])


def _drive(cfg: DynamicConfig, state: np.ndarray, action, seconds: float, grip: float | None = None):
    """Substeps of the numpy specification; the states after each."""
    fuel, out = np.ones(1), []
    act = np.array([action], float)
    for _ in range(round(seconds / DT)):
        state, fuel = rules.car_dynamics_substep(state, _params(cfg, grip), fuel, act, cfg, DT)
        out.append(state[0].copy())
    return np.array(out)


def test_no_slide_within_the_grip():
    # 20 studs/s with a light steer: v * r = 20 * 20 * tan(0.05) / 8 ~ 2.5 << 80: no slide at all,
    # and the path curves as the bicycle model says once yaw and actuators settled
    cfg = DynamicConfig(actuator_lag=0.0, yaw_inertia=0.0)
    states = _drive(cfg, _state(20.0), [0.0, 0.1, 0.0], 2.0)
    assert np.all(states[:, 4] == 0.0), "u stays exactly 0 within the grip"
    v, r = states[-1, 3], states[-1, 5]
    assert r == pytest.approx(v * -math.tan(0.1 * cfg.max_steer) / cfg.wheelbase, rel=1e-12)


def test_the_grip_limits_how_fast_the_velocity_turns_and_the_car_slides():
    cfg = DynamicConfig(actuator_lag=0.0, yaw_inertia=0.0)
    grip = cfg.max_lateral_accel
    states = _drive(cfg, _state(55.0), [0.0, 1.0, 0.0], 1.0)
    # velocity in the world frame and its turn rate
    h, v, u = states[:, 2], states[:, 3], states[:, 4]
    vx, vy = v * np.cos(h) - u * np.sin(h), v * np.sin(h) + u * np.cos(h)
    course = np.unwrap(np.arctan2(vy, vx))
    lateral = np.abs(np.diff(course) / DT) * np.hypot(vx, vy)[1:]
    assert lateral.max() <= grip * 1.02, f"lateral acceleration {lateral.max():.1f} > grip {grip}"
    assert lateral.max() >= grip * 0.9, "full lock at 55 studs/s uses the whole grip"
    assert np.abs(u).max() > 5.0, "past the grip the car slides sideways"
    slip = np.abs(np.unwrap(h) - course)
    assert slip.max() > 0.2, f"the heading runs ahead of the velocity (drift): slip angle {slip.max():.2f} rad"
    assert v[-1] < 50.0, "sliding scrubs speed"
    # less grip: a wider arc in the same second
    low = _drive(cfg, _state(55.0), [0.0, 1.0, 0.0], 1.0, grip=0.7 * grip)
    lv = np.hypot(low[:, 3], low[:, 4])
    assert np.abs(low[:, 4]).max() > np.abs(u).max(), "less grip, more slide"
    assert lv[-1] > 0  # still moving


def test_actuator_lag_and_yaw_inertia():
    cfg = DynamicConfig(actuator_lag=0.2, yaw_inertia=0.1)
    states = _drive(cfg, _state(0.0), [1.0, 1.0, 0.0], 0.2)
    # after one time constant the actuators hold 1 - 1/e of the command (exactly: 12 substeps of 1/60 s)
    assert states[-1, 6] == pytest.approx(1.0 - math.exp(-0.2 / 0.2), rel=1e-12)
    assert states[-1, 7] == pytest.approx(1.0 - math.exp(-0.2 / 0.2), rel=1e-12)
    assert states[0, 6] == pytest.approx(1.0 - math.exp(-DT / 0.2), rel=1e-12)
    kinematic_v = 0.2 * SimConfig().accel  # 6 studs/s with the throttle at once
    assert 0.0 < states[-1, 3] < 0.5 * kinematic_v, "a lagging throttle accelerates later"
    # the yaw rate follows its target through the inertia: it trails v k
    v, steer = states[-1, 3], states[-1, 7]
    target = v * -math.tan(steer * cfg.max_steer) / cfg.wheelbase
    assert abs(states[-1, 5]) < abs(target)
    # no lag: the actuators hold the command at once
    instant = _drive(DynamicConfig(actuator_lag=0.0), _state(0.0), [1.0, 1.0, 0.0], DT)
    assert instant[0, 6] == 1.0 and instant[0, 7] == 1.0


def test_the_kernel_is_the_specification():
    """Sim.step with a DynamicConfig equals car_dynamics_substep, substep for substep."""
    cfg = DynamicConfig(randomize=0.3)
    sim = Sim(cfg, seed=3)
    ids = [f"car_{i}_env_a" for i in range(4)]
    sim.spawn("a", ids, track=tracks.generate(11), start="random")
    rng = np.random.default_rng(0)
    state = np.column_stack([sim.pos, sim.heading, sim.speed, sim.dyn[:, :4]])
    params, fuel = sim.dyn[:, 4:].copy(), sim.fuel.copy()
    for step in range(20):
        actions = np.column_stack([rng.uniform(0.3, 0.8, 4), rng.uniform(-0.4, 0.4, 4), rng.uniform(-1, 1, 4)])
        res = sim.step(actions)
        assert res.live.all() and not res.terminated.any(), f"a car ended at step {step}: pick gentler actions"
        for _ in range(cfg.substeps):
            state, fuel = rules.car_dynamics_substep(state, params, fuel, actions, cfg, cfg.dt)
        state[:, 2] = np.mod(state[:, 2] + np.pi, 2 * np.pi) - np.pi  # the sim wraps headings per step
        np.testing.assert_allclose(sim.pos, state[:, :2], rtol=0, atol=1e-9)
        np.testing.assert_allclose(sim.heading, state[:, 2], rtol=0, atol=1e-12)
        np.testing.assert_allclose(sim.speed, state[:, 3], rtol=0, atol=1e-12)
        np.testing.assert_allclose(sim.dyn[:, :4], state[:, 4:], rtol=0, atol=1e-12)
        np.testing.assert_allclose(sim.fuel, fuel, rtol=0, atol=1e-15)


def test_domain_randomisation_draws_per_car_and_episode():
    cfg = DynamicConfig(randomize=0.25)
    sim = Sim(cfg, seed=0)
    ids = [f"car_{i}_env_a" for i in range(8)]
    sim.spawn("a", ids, track=tracks.generate(2), start="grid")
    nominal = np.array([cfg.max_lateral_accel, 1.0, cfg.actuator_lag, cfg.yaw_inertia])
    first = sim.dyn[:, 4:].copy()
    ratio = first / nominal
    assert np.all((ratio >= 0.75) & (ratio <= 1.25))
    assert len(np.unique(first[:, 0])) == 8, "every car its own grip"
    sim.reset_agents(ids[:2])
    assert not np.array_equal(sim.dyn[:2, 4:], first[:2]), "a new episode, new constants"
    np.testing.assert_array_equal(sim.dyn[2:, 4:], first[2:])
    fixed = Sim(DynamicConfig(), seed=0)
    fixed.spawn("a", ids, track=tracks.generate(2), start="grid")
    np.testing.assert_array_equal(fixed.dyn[:, 4:], np.tile(nominal, (8, 1)))
    # the randomisation has its own generator: random starts are the kinematic sim's
    a, b = Sim(SimConfig(), seed=5), Sim(cfg, seed=5)
    for s in (a, b):
        s.spawn("a", ids, track=tracks.generate(2), start="random")
    np.testing.assert_array_equal(a.pos, b.pos)


def test_kinematic_config_leaves_the_dynamic_state_alone():
    sim = Sim(SimConfig(), seed=0)
    sim.spawn("a", ["car_0_env_a"], track=tracks.generate(2), start="grid")
    for _ in range(20):
        sim.step(np.array([[1.0, 0.3, 1.0]]))
    assert not sim.dyn.any()


def test_sim_config_choices():
    assert type(sim_config("kinematic")) is SimConfig
    assert sim_config("dynamic") == DynamicConfig()
    assert sim_config("randomized") == DynamicConfig(randomize=0.35)
    shifted = sim_config("dynamic,max_lateral_accel=56,actuator_lag=0.2,stuck_steps=40")
    assert (shifted.max_lateral_accel, shifted.actuator_lag, shifted.stuck_steps) == (56.0, 0.2, 40)
    for bad, says in [
        ("hover", "unknown car 'hover'"),
        ("kinematic,actuator_lag=0.2", "not FIELD=VALUE"),
        ("dynamic,max_lateral_accel", "not FIELD=VALUE"),
        ("dynamic,stuck_steps=1.5", "needs a int"),
        ("randomized,randomize=2", "randomize must be in [0, 1)"),
    ]:
        with pytest.raises(ValueError, match=says.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            sim_config(bad)


def test_the_scripts_dynamics_choice_reaches_the_embedded_simulator():
    """make_vec_env(dynamics=...) (the scripts' --dynamics) runs the simulator with that car: with
    a 1 s actuator lag the car is far slower after five steps of full throttle than the kinematic one."""
    from rbxenv import make_vec_env

    speeds = {}
    for dynamics in ("kinematic", "dynamic,actuator_lag=1.0"):
        envs = make_vec_env(num_agents=1, num_venvs=1, track_change_steps=None, start="grid", dynamics=dynamics)
        try:
            envs.reset(seed=0)
            for _ in range(5):
                _, _, _, _, infos = envs.step(np.array([[1.0, 0.0, 0.0]], np.float32))
            speeds[dynamics] = float(infos["speed"][0])
        finally:
            envs.close()
    assert speeds["kinematic"] == pytest.approx(5 * SimConfig().accel / 15, rel=1e-6)
    assert 0.0 < speeds["dynamic,actuator_lag=1.0"] < 0.3 * speeds["kinematic"], speeds
    with pytest.raises(ValueError, match="unknown car 'hover'"):
        make_vec_env(num_agents=1, num_venvs=1, dynamics="hover")
