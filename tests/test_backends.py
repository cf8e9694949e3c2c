"""The two simulator backends: in process (Sim called directly) and a child process over the protocol.

Same seeds must give the same rollouts, bit for bit: what the envs hand out (observations, rewards,
flags, infos, final observations, episode statistics) through crashes, autoreset restarts, explicit
resets and track changes.
"""

from __future__ import annotations

import numpy as np
import pytest
from crash_rollout import crash_rollout

import rbxenv
from rbxenv.sim.backend import SimBackend

pytestmark = pytest.mark.timeout(120)


def _vec_rollout(sim: str, autoreset: bool) -> list:
    env = rbxenv.make_vec_env(num_agents=3, num_venvs=2, track_change_steps=40, sim=sim, sim_seed=7)
    try:
        steps, _, ended = crash_rollout(env, autoreset, steps=150, infos=True)
        assert ended > 10, "random driving crashes cars"
        return steps
    finally:
        env.close()


@pytest.mark.parametrize("autoreset", [True, False], ids=["autoreset", "reset_agents"])
def test_vector_env_rollouts_are_the_same_on_both_backends(autoreset):
    inprocess, subprocess = _vec_rollout("inprocess", autoreset), _vec_rollout("subprocess", autoreset)
    assert len(inprocess) == len(subprocess)
    for a, b in zip(inprocess, subprocess, strict=True):
        if isinstance(a, dict):  # the infos of a step
            assert a.keys() == b.keys()
            for key in a:
                if isinstance(a[key], dict):  # episode statistics
                    for stat in a[key]:
                        np.testing.assert_array_equal(a[key][stat], b[key][stat], err_msg=stat)
                else:
                    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            np.testing.assert_array_equal(a, b)


def test_parallel_env_rollouts_are_the_same_on_both_backends():
    def rollout(sim: str) -> list:
        env = rbxenv.make_parallel_env(num_agents=3, num_venvs=2, sim=sim, sim_seed=2)
        try:
            out = list(env.reset(seed=4))
            rng = np.random.default_rng(1)
            for _ in range(120):
                if not env.agents:
                    break
                acts = {a: rng.uniform(-1, 1, 3).astype(np.float32) + [0.8, 0, 0] for a in env.agents}
                out += env.step(acts)
            assert not env.agents, "every car ends its episode (finished agents leave the batch on the way)"
            return out
        finally:
            env.close()

    inprocess, subprocess = rollout("inprocess"), rollout("subprocess")
    assert len(inprocess) == len(subprocess)
    for a, b in zip(inprocess, subprocess, strict=True):
        assert a.keys() == b.keys()
        for aid in a:
            if isinstance(a[aid], dict):
                assert a[aid] == pytest.approx(b[aid], nan_ok=True), aid
            elif isinstance(a[aid], float):  # a reward: the float32 the simulator computed, as the wire gives
                # it back the shortest decimal of that float32, so the float64s differ past float32 precision
                assert np.float32(a[aid]) == np.float32(b[aid]), aid
            else:
                np.testing.assert_array_equal(a[aid], b[aid], err_msg=aid)


def test_inprocess_is_the_default_and_realtime_runs_a_simulator_process():
    env = rbxenv.make_vec_env(num_agents=1, num_venvs=1)
    try:
        assert isinstance(env.session.backend, SimBackend) and env.session.bridge is None
        assert env.game.mode == "lockstep" and env.game.has("autoreset")
    finally:
        env.close()
    session = rbxenv.session.GameSession(mode="realtime")
    assert session.sim == "subprocess" and session.backend is session.bridge


def test_inprocess_backend_refuses_what_it_cannot_answer():
    backend = SimBackend(seed=0)
    backend.spawn_agents("a", ["car_0_env_a", "car_1_env_a"], start="grid")
    with pytest.raises(TimeoutError, match="car_2_env_a"):
        backend.get_observations(["car_2_env_a"])
    assert backend.get_observations(["car_0_env_a", "car_1_env_a"]).obs.shape == (2, 13)
    backend.freeze(True)
    with pytest.raises(TimeoutError, match="frozen"):
        backend.step(["car_0_env_a", "car_1_env_a"], np.zeros((2, 3), np.float32))
    backend.freeze(False)
    got = backend.step(["car_0_env_a", "car_1_env_a"], np.zeros((2, 3), np.float32))
    assert got.obs.shape == (2, 13) and not got.restarted.any()
    track = rbxenv.tracks.generate(1)
    track["half_width"] = [500.0] * len(track["half_width"])
    with pytest.raises(ValueError, match="half_width"):
        backend.spawn_agents("b", ["car_0_env_b"], track=track)
