"""The envs over the real simulator: in process (the default) and a child process over real loopback sockets."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from crash_rollout import assert_autoreset_changes_nothing, crash_rollout
from netutil import free_port, port_is_free
from pettingzoo.test import parallel_api_test, parallel_seed_test

import rbxenv
from rbxenv import BridgeClosed

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------------------------------- PettingZoo


def test_parallel_api():
    env = rbxenv.make_parallel_env(num_agents=2, num_venvs=2)
    try:
        assert len(env.possible_agents) == 4
        assert env.observation_space(env.possible_agents[0]).shape == (13,)
        assert env.action_space(env.possible_agents[0]).shape == (3,)
        parallel_api_test(env, num_cycles=300)
    finally:
        env.close()


def test_parallel_seed_reproducible():
    parallel_seed_test(lambda: rbxenv.make_parallel_env(num_agents=2, num_venvs=1, sim_seed=3))


def test_parallel_env_infos_and_removal_of_finished_agents():
    env = rbxenv.make_parallel_env(num_agents=3, num_venvs=1)
    try:
        obs, infos = env.reset(seed=1)
        assert set(obs) == set(env.possible_agents)
        assert {"progress", "lap", "speed", "x", "y"} <= set(next(iter(infos.values())))
        # full throttle, full right lock: every car hits a wall soon and leaves env.agents
        crashed = set()
        for _ in range(200):
            if not env.agents:
                break
            _, _, terms, truncs, infos = env.step({a: [1.0, 1.0, 0.0] for a in env.agents})
            for aid, term in terms.items():
                if term:
                    assert infos[aid]["cause"] in ("wall", "stuck", "wrong_way")
                    assert aid not in env.agents
                    crashed.add(aid)
        assert env.agents == []
        assert crashed == set(env.possible_agents), "every car left by ending its episode, none by truncation"
    finally:
        env.close()


# ---------------------------------------------------------------------------------------- vector env


def test_vector_env_per_car_reset_final_obs_and_stats():
    env = rbxenv.make_vec_env(num_agents=3, num_venvs=2, frame_stack=4, track_change_steps=None)
    try:
        obs, _ = env.reset(seed=0)
        assert obs.shape == (6, 52)
        frames = obs.reshape(6, 4, 13)
        assert np.all(frames == frames[:, :1]), "a new episode starts with every frame equal to the first"
        returns = np.zeros(6)
        lengths = np.zeros(6, dtype=int)
        prev_last = frames[:, -1].copy()
        actions = np.zeros((6, 3), dtype=np.float32)
        actions[:3] = [1.0, 1.0, 0.0]  # venv 0 drives into the wall
        actions[3:] = [0.3, 0.0, 0.0]  # venv 1 cruises on
        seen_crash = False
        for _ in range(150):
            obs, reward, term, trunc, infos = env.step(actions)
            returns += reward
            lengths += 1
            frames = obs.reshape(6, 4, 13)
            done = term | trunc
            for k in np.flatnonzero(~done):  # frames shift by one
                np.testing.assert_array_equal(frames[k, -2], prev_last[k])
            if done.any():
                assert infos["_final_obs"].tolist() == done.tolist()
                assert infos["_episode"].tolist() == done.tolist()
                for k in np.flatnonzero(done):
                    final = infos["final_obs"][k].reshape(4, 13)
                    np.testing.assert_array_equal(final[-2], prev_last[k])  # the old stack, one more frame
                    assert np.all(frames[k] == frames[k, :1]), "the car's stack restarts"
                    assert infos["episode"]["r"][k] == pytest.approx(returns[k], rel=1e-5, abs=1e-4)
                    assert infos["episode"]["l"][k] == lengths[k]
                    if term[k]:
                        seen_crash |= bool(infos["episode"]["crashed"][k])
                returns[done] = 0
                lengths[done] = 0
            prev_last = frames[:, -1].copy()
        assert seen_crash, "cars steering hard into the wall should crash"
        assert lengths[3:].min() > 0 and returns[3:].max() > 0, "the cruising venv keeps driving and earns reward"
    finally:
        env.close()


def test_cars_the_game_restarts_itself_give_the_rollout_reset_agents_gives():
    """Lockstep with the simulator: a crashed car is restarted by the game in the step it ends
    (autoreset), so that step is one round trip; the rollout is the one RESET_AGENTS round trips
    give, final observations and episode statistics included, also across track changes."""

    def rollout(autoreset: bool) -> tuple[list, int, int]:
        env = rbxenv.make_vec_env(num_agents=3, num_venvs=2, track_change_steps=40, sim="subprocess")
        try:
            return crash_rollout(env, autoreset, steps=120)
        finally:
            env.close()

    assert_autoreset_changes_nothing(rollout(True), rollout(False))


def test_vector_env_reproducible_with_seed():
    def rollout() -> tuple[np.ndarray, np.ndarray]:
        env = rbxenv.make_vec_env(num_agents=2, num_venvs=2, track_change_steps=20, sim_seed=5)
        try:
            obs, _ = env.reset(seed=11)
            rng = np.random.default_rng(0)
            all_obs, all_rew = [obs], []
            for _ in range(60):
                obs, reward, *_ = env.step(rng.uniform(-1, 1, (4, 3)).astype(np.float32))
                all_obs.append(obs)
                all_rew.append(reward)
            return np.array(all_obs), np.array(all_rew)
        finally:
            env.close()

    (o1, r1), (o2, r2) = rollout(), rollout()
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(r1, r2)


def test_track_change_truncates_and_moves_to_a_new_track():
    env = rbxenv.make_vec_env(num_agents=2, num_venvs=2, track_change_steps=10)
    try:
        env.reset(seed=0)
        before = {k: v["name"] for k, v in env.session.tracks.items()}
        truncated_at = []
        for t in range(1, 11):
            _, _, term, trunc, _ = env.step(np.tile([0.2, 0.0, 0.0], (4, 1)).astype(np.float32))
            if trunc.any():
                truncated_at.append((t, np.flatnonzero(trunc).tolist()))
        after = {k: v["name"] for k, v in env.session.tracks.items()}
        assert truncated_at == [(5, [0, 1]), (10, [2, 3])], "venvs change tracks in turn, truncating their cars"
        assert before != after
    finally:
        env.close()


def test_realtime_mode_steps_and_freezes_when_idle():
    env = rbxenv.make_vec_env(num_agents=2, num_venvs=1, mode="realtime", tick_hz=60, track_change_steps=None)
    try:
        assert env.game.mode == "realtime"
        env.reset(seed=0)
        for _ in range(20):
            obs, reward, term, trunc, infos = env.step(np.tile([1.0, 0.0, 0.0], (2, 1)).astype(np.float32))
        assert np.nanmax(infos["speed"]) > 5, "the cars accelerate in real time"
        time.sleep(0.6)  # no step for a while: the watchdog freezes the game
        assert env.session.freezer.frozen
        obs, *_ = env.step(np.zeros((2, 3), dtype=np.float32))
        assert not env.session.freezer.frozen
    finally:
        env.close()


# ------------------------------------------------------------------------------------------ v0 game


def test_seed_format_game_drives_the_env():
    """A game that speaks only the v0 formats (no hello: the simulator then plays the original project's place,
    real time, restarting ended cars itself) trains with defaults; its endings come as same-step
    autoresets, with the ended episode's last_observation as final_obs."""
    port = free_port()
    game = subprocess.Popen(
        [sys.executable, "-m", "rbxenv.sim", "--url", f"ws://127.0.0.1:{port}", "--v0", "--tick-hz", "60"],
        stdin=subprocess.DEVNULL,
    )
    try:
        env = rbxenv.make_vec_env(num_agents=2, num_venvs=2, sim=None, port=port, wait_timeout=30)
        try:
            assert env.game.protocol == 0 and env.game.obs_size == 13
            obs, _ = env.reset(seed=0)
            assert obs.shape == (4, 52)
            total = np.zeros(4)
            dones = 0
            for _ in range(80):
                obs, reward, term, trunc, infos = env.step(np.tile([1.0, 0.6, 0.0], (4, 1)).astype(np.float32))
                total += reward
                done = term | trunc
                dones += int(done.sum())
                if done.any():
                    # the game's last_observation ends the stack; the new episode starts from its first frame
                    final = infos["final_obs"][done].reshape(-1, 4, 13)
                    assert not np.array_equal(final[:, -1], obs[done].reshape(-1, 4, 13)[:, -1])
                    assert np.array_equal(obs[done].reshape(-1, 4, 13)[:, 0], obs[done].reshape(-1, 4, 13)[:, -1])
            assert np.abs(total).sum() > 0
            assert dones > 0, "cars crash, and the game restarts them"
        finally:
            env.close()
        game.wait(timeout=10)
    finally:
        if game.poll() is None:
            game.kill()


# ---------------------------------------------------------------------------------------- cleanup


def test_close_leaves_no_process_and_no_port():
    port = free_port()
    env = rbxenv.make_vec_env(num_agents=1, num_venvs=1, port=port, sim="subprocess")
    proc = env.session.process
    env.reset(seed=0)
    env.close()
    assert proc.poll() is not None, "the simulator child process is gone"
    assert port_is_free(port)
    env.close()  # idempotent


def test_cleanup_after_an_exception():
    port = free_port()
    env = rbxenv.make_vec_env(num_agents=1, num_venvs=1, port=port, sim="subprocess")
    proc = env.session.process
    with pytest.raises(ValueError, match=r"actions must have shape \(1, 3\)"):  # from the step, nothing earlier
        try:
            env.reset(seed=0)
            env.step(np.zeros((1, 5)))  # wrong action shape
        finally:
            env.close()
    assert proc.poll() is not None
    assert port_is_free(port)


def test_no_game_times_out_with_a_clear_error_and_frees_the_port():
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(BridgeClosed, match="no game connected"):
        rbxenv.make_vec_env(num_agents=1, num_venvs=1, sim=None, port=port, wait_timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert port_is_free(port)
