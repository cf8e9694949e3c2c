"""A lost game never costs the run: the env waits, the game comes back, training continues."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from netutil import free_port

import rbxenv
from rbxenv import BridgeClosed

# Every test here loses the game on purpose, and counts the reconnects itself.
pytestmark = [pytest.mark.timeout(120), pytest.mark.allow_reconnects]


def start_game(port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rbxenv.sim", "--url", f"ws://127.0.0.1:{port}"], stdin=subprocess.DEVNULL
    )


def drive(env, steps: int) -> list[dict]:
    events = []
    for _ in range(steps):
        obs, reward, term, trunc, infos = env.step(np.tile([0.4, 0.0, 0.0], (env.num_envs, 1)).astype(np.float32))
        assert obs.shape == (env.num_envs, env.single_observation_space.shape[0])
        assert np.isfinite(obs).all() and np.isfinite(reward).all()
        if infos.get("reconnected"):
            events.append({"term": term.copy(), "trunc": trunc.copy(), "reward": reward.copy(), "infos": infos})
    return events


def assert_one_interruption(env, events: list[dict]) -> None:
    """Exactly one step reported the lost game, and it ended every car's episode as truncated."""
    assert len(events) == 1, "exactly one step reports the interruption"
    ev = events[0]
    assert ev["trunc"].all() and not ev["term"].any(), "interrupted episodes end truncated, not terminated"
    assert (ev["reward"] == 0).all()
    assert ev["infos"]["_final_obs"].all()
    assert env.session.reconnects == 1


def test_embedded_sim_killed_mid_rollout_is_relaunched_and_training_goes_on():
    env = rbxenv.make_vec_env(
        num_agents=2, num_venvs=2, track_change_steps=None, reconnect_timeout=30, sim="subprocess"
    )
    try:
        env.reset(seed=0)
        drive(env, 10)
        tracks_before = {k: v["name"] for k, v in env.session.tracks.items()}
        old = env.session.process
        os.kill(old.pid, signal.SIGKILL)
        events = drive(env, 30)
        assert_one_interruption(env, events)
        assert env.session.process.pid != old.pid and env.session.process.poll() is None
        assert {k: v["name"] for k, v in env.session.tracks.items()} == tracks_before, "venvs keep their tracks"
    finally:
        env.close()


def test_external_game_killed_and_restarted():
    port = free_port()
    game = start_game(port)
    env = rbxenv.make_vec_env(num_agents=2, num_venvs=1, sim=None, port=port, reconnect_timeout=30)
    try:
        env.reset(seed=0)
        drive(env, 5)
        game.send_signal(signal.SIGKILL)
        game.wait()
        game = start_game(port)  # the user restarts the game (Roblox: press Play again)
        events = drive(env, 20)
        assert_one_interruption(env, events)
    finally:
        env.close()
        game.wait(timeout=10)


def test_game_that_never_comes_back_raises_bridge_closed_after_the_timeout():
    port = free_port()
    game = start_game(port)
    env = rbxenv.make_vec_env(num_agents=1, num_venvs=1, sim=None, port=port, reconnect_timeout=1.0)
    try:
        env.reset(seed=0)
        game.send_signal(signal.SIGKILL)
        game.wait()
        t0 = time.monotonic()
        with pytest.raises(BridgeClosed, match="no game connected"):
            drive(env, 5)
        assert time.monotonic() - t0 < 5
    finally:
        env.close()


def test_game_that_comes_back_before_the_trainer_notices_is_still_set_up():
    """A new game attaching during a learner pause must not hide the loss: its venvs get respawned."""
    port = free_port()
    game = start_game(port)
    env = rbxenv.make_vec_env(num_agents=2, num_venvs=1, sim=None, port=port, obs_timeout=5, reconnect_timeout=30)
    try:
        env.reset(seed=0)
        drive(env, 3)
        game.send_signal(signal.SIGKILL)
        game.wait()
        game = start_game(port)
        deadline = time.monotonic() + 20
        while not env.session.bridge.connected and time.monotonic() < deadline:
            time.sleep(0.05)  # the trainer is busy elsewhere (a PPO update) while the game returns
        assert env.session.bridge.connected
        events = drive(env, 10)
        assert_one_interruption(env, events)
    finally:
        env.close()
        game.wait(timeout=10)


def test_realtime_game_lost_while_frozen_between_steps_is_recovered():
    env = rbxenv.make_vec_env(
        num_agents=2, num_venvs=1, mode="realtime", tick_hz=30, track_change_steps=None, reconnect_timeout=30
    )
    try:
        env.reset(seed=0)
        drive(env, 3)
        time.sleep(0.6)  # the learner "updates": the watchdog freezes the game
        assert env.session.freezer.frozen
        os.kill(env.session.process.pid, signal.SIGKILL)
        env.session.process.wait()
        events = drive(env, 5)
        assert_one_interruption(env, events)
    finally:
        env.close()


def test_a_slow_realtime_game_is_not_frozen_in_the_middle_of_a_step():
    """At 2 Hz every answer takes ~0.5 s, longer than the watchdog's idle time: steps must not hang."""
    env = rbxenv.make_vec_env(
        num_agents=1, num_venvs=1, mode="realtime", tick_hz=2, track_change_steps=None, obs_timeout=4
    )
    try:
        env.reset(seed=0)
        t0 = time.monotonic()
        drive(env, 3)
        assert time.monotonic() - t0 < 3.5
    finally:
        env.close()


# ---------------------------------------------------------------------------------------- runs never lose work


@pytest.mark.parametrize("script", ["ppo_continuous.py", "sac_continuous.py"])
def test_resume_from_a_bad_checkpoint_is_one_clear_line(tmp_path, script):
    repo = Path(__file__).resolve().parents[1]
    corrupt = tmp_path / "checkpoint.pt"
    corrupt.write_bytes(b"\x80\x04 not a checkpoint" * 50)
    for path, expected in (
        (corrupt, f"cannot resume: {corrupt} is not a readable checkpoint"),
        (tmp_path / "missing.pt", f"--resume {tmp_path / 'missing.pt'}: no such file"),
    ):
        run = subprocess.run(
            [sys.executable, str(repo / script), "--resume", str(path)], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 2
        assert "Traceback" not in run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{script}: error: {expected}"), run.stderr
