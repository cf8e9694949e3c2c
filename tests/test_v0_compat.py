"""The original project's own halves (emulated from its facts: tests/v0_emulation.py) with rbxenv,
over real loopback sockets: its place trained by ppo_continuous.py --no-sim, and its trainer
driving rbxenv's games (the simulator here; the Luau GameClient in test_luau_bridge.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from netutil import free_port
from v0_emulation import V0Game, V0Trainer, drive

ROOT = Path(__file__).resolve().parents[1]


class GameInThread:
    """A V0Game run on its own event loop thread (the trainer under test is another process)."""

    def __init__(self, game: V0Game):
        self.game = game
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="seed-game", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self.game.run())
        except BaseException as err:  # noqa: BLE001 - re-raised by the test
            self.error = err

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the v0 game is still connected after the trainer finished"
        if self.error is not None:
            raise self.error


@pytest.mark.timeout(180)
def test_ppo_trains_against_the_v0_place_with_zero_warnings(tmp_path):
    """5 venvs x 5 cars of a v0 place (19 floats, 15 Hz real time, self-restarting cars, 20 s idle
    close) dialing ws://localhost:<port>/ws/<modelId>: PPO trains a few thousand steps, the place
    warns about nothing, the run is named after the model id."""
    port = free_port()
    game = GameInThread(V0Game(f"ws://localhost:{port}/ws/seedcar", seed=1))
    flags = ["--no-sim", "--port", str(port), "--num-agents", "5", "--num-venvs", "5", "--num-steps", "24"]
    flags += ["--total-timesteps", "3000", "--eval-every", "0", "--wait-timeout", "60"]
    run = subprocess.run(
        [sys.executable, str(ROOT / "ppo_continuous.py"), *flags],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=150,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    game.join(10)
    seed = game.game
    assert seed.warnings == [], seed.warnings[:5]
    assert not seed.idle_closed
    assert "step 3000/3000" in run.stdout
    # every ended car restarted itself and was reported as such: the trainer never reset one
    assert seed.episodes > 0 and seed.commands["RESET_AGENTS"] == 0
    assert seed.commands["SPAWN_AGENTS"] == 2 * 5  # the width probe, then reset(): one per venv each
    assert seed.commands["ACTION"] >= 120 * 5  # 120 steps of 25 cars, one ACTION per venv
    # FREEZE around updates depends on how long an update takes (the env freezes a game idle for
    # 0.25 s): test_a_pause_freezes_the_v0_place checks it with a pause of known length.
    assert seed.max_silence < 5.0  # PINGs whenever the trainer had nothing else to say
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("seedcar__ppo_continuous__1__"), runs
    assert (runs[0] / "checkpoint.pt").exists()


@pytest.mark.timeout(120)
def test_a_pause_freezes_the_v0_place():
    """A trainer that stops stepping (an update, an evaluation) freezes the place and thaws it at the
    next step, as the original project's trainer did around its updates: FREEZE {"status": true}, then false."""
    import rbxenv

    port = free_port()
    game = GameInThread(V0Game(f"ws://localhost:{port}/ws/pause", seed=2))
    envs = rbxenv.make_vec_env(num_agents=2, num_venvs=1, sim=None, port=port, wait_timeout=60)
    try:
        envs.reset(seed=0)
        envs.step(envs.action_space.sample())
        assert game.game.commands["FREEZE"] == 0
        time.sleep(1.0)  # four times the idle threshold
        assert game.game.commands["FREEZE"] == 1  # frozen while nothing steps
        envs.step(envs.action_space.sample())
        assert game.game.commands["FREEZE"] == 2  # thawed by the next step
    finally:
        envs.close()
    game.join(10)
    assert game.game.warnings == []


def test_ppo_without_a_v0_game_is_one_line_and_exit_1(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "ppo_continuous.py"),
            "--no-sim",
            "--port",
            str(free_port()),
            "--wait-timeout",
            "0.5",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ppo_continuous.py: no game to train with: no game connected"), (
        run.stderr
    )
    assert "/ws/<modelId>" in lines[0]


@pytest.mark.timeout(120)
def test_v0_trainer_drives_the_simulator():
    """The original project's trainer (per-venv ACTIONs, object data, PING, FREEZE around updates, latest packet
    per agent) drives python -m rbxenv.sim with 16 rays for several episodes: nothing refused, no
    car left waiting, ended cars restarted in their tick with last_observation."""

    async def main() -> tuple[dict, V0Trainer, subprocess.CompletedProcess]:
        trainer = V0Trainer(ping_every=0.5)
        await trainer.serve()
        url = f"ws://127.0.0.1:{trainer.port}/ws/seedcar"
        sim = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rbxenv.sim", "--url", url, "--num-rays", "16",
            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        try:
            seen = await asyncio.wait_for(drive(trainer, 2, 3, episodes=8), 90)
        finally:
            await trainer.close()
            _, err = await asyncio.wait_for(sim.communicate(), 10)
        return seen, trainer, subprocess.CompletedProcess([], sim.returncode, b"", err)

    seen, trainer, sim = asyncio.run(main())
    assert sim.returncode == 0, sim.stderr.decode()[-2000:]
    assert sim.stderr.decode().strip() == "", sim.stderr.decode()[-2000:]  # not one warning
    assert trainer.refused == [] and trainer.missing == []
    assert trainer.model_id == "seedcar"
    assert seen["episodes"] >= 8 and seen["updates"] >= 1 and trainer.pings >= 2
    assert seen["widths"] == {19} and seen["last_widths"] == {19}
    assert trainer.pongs == [{"t": 12.5}]
    frames = [p for p in trainer.packets if isinstance(p, dict) and "type" not in p and "__pong" not in p]
    assert [] in trainer.packets, "frozen: the place sends [] while no car is active"
    # The place ticks on its own clock, so a tick may fall between the two venvs' SPAWNs (a loaded
    # machine makes that likely): from the first packet with both venvs on, every one carries all.
    full = next(i for i, p in enumerate(frames) if len(p) == 6)
    assert all(len(p) == 6 for p in frames[full:]), "one packet a tick with every car of every venv"
    assert all(len(p) == 3 for p in frames[:full]), "before the second SPAWN: the first venv's cars"


@pytest.mark.timeout(60)
def test_vector_env_reports_v0_restarts_as_same_step_autoresets():
    """Against a v0 place that sends last_observation: every ending is reported in the step its
    packet came, final_obs ending with exactly that frame and the returned obs starting the next
    episode from the place's first frame; no RESET_AGENTS, 19-float frames stacked 4 deep."""
    import numpy as np

    import rbxenv

    port = free_port()
    game = GameInThread(V0Game(f"ws://localhost:{port}/ws/m", last_observation=True, seed=3))
    env = rbxenv.make_vec_env(num_agents=3, num_venvs=2, sim=None, port=port, wait_timeout=30)
    try:
        assert (env.game.protocol, env.game.obs_size, env.single_observation_space.shape) == (0, 19, (76,))
        assert env.session.model_id == "m"
        obs, _ = env.reset(seed=0)
        rng = np.random.default_rng(0)
        checked = 0
        for _ in range(120):
            actions = np.column_stack([rng.uniform(0.5, 1, 6), rng.uniform(-1, 1, 6), np.zeros(6)]).astype(np.float32)
            obs, _, term, trunc, infos = env.step(actions)
            for k in np.flatnonzero(term | trunc):
                aid = env.session.agent_ids[k]
                final, first = next((f, s) for a, f, s in reversed(game.game.endings) if a == aid)
                np.testing.assert_array_equal(infos["final_obs"][k].reshape(4, 19)[-1], np.float32(final))
                np.testing.assert_array_equal(obs[k].reshape(4, 19), np.tile(np.float32(first), (4, 1)))
                checked += 1
        assert checked >= 3, "a few endings reported"
    finally:
        env.close()
    game.join(10)
    assert game.game.warnings == [] and game.game.commands["RESET_AGENTS"] == 0
