"""The Roblox game logic (Luau GameClient + a fake world whose cars move by the Luau rules) against
the REAL trainer bridge (rbxenv.bridge.TrainingBridge) over a real WebSocket on loopback.

Only the engine is faked: the socket is a Python ``websockets`` client standing in for
``HttpService:CreateWebStreamClient`` (same three calls: connect, send text, close, plus the
Opened / MessageReceived / Closed / Error events), the world is roblox/tests/FakeWorld.luau.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import numpy as np
import pytest
from crash_rollout import assert_autoreset_changes_nothing, crash_rollout
from luau import LuauVM, pluau
from netutil import free_port

pytestmark = pytest.mark.skipif(pluau is None, reason="pluau is not installed (pip install -r requirements-dev.txt)")

bridge_mod = pytest.importorskip("rbxenv.bridge")

_CLIENT = """
local connect, url, mode, handshake = ...
local Config, GameClient, FakeWorld = require("Config"), require("GameClient"), require("FakeWorld")
local config, problems =
    Config.resolve({ Url = url, Mode = mode, Handshake = handshake, ReconnectMin = 0.05, ReconnectMax = 0.2 })
assert(#problems == 0, problems[1])
local world = FakeWorld.new()
local logs = {}
local client = GameClient.new({
    config = config,
    world = world,
    connect = function(url, handlers)
        return connect(url, handlers)
    end,
    log = function(level, message) table.insert(logs, level .. ": " .. message) end,
})
return client, world, logs
"""


class GameThread:
    """Runs the Luau GameClient on its own thread (the Luau VM is only touched from there),
    pumping frames between a ``websockets`` client and the client's socket handlers."""

    def __init__(self, url: str, mode: str, handshake: bool = True, source: str = _CLIENT, extra: tuple = ()) -> None:
        self.url, self.mode, self.handshake = url, mode, handshake
        self.source, self.extra = source, extra  # another game script (same first results), its extra args
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.stats: dict[str, Any] = {}
        self.logs: list[str] = []
        self.thread = threading.Thread(target=self._run, name="luau-game", daemon=True)

    def __enter__(self) -> GameThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the game thread did not stop"
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        ws = None
        handlers = None
        opened = False
        sockets = contextlib.ExitStack()
        try:
            vm = LuauVM()

            def py_connect(lua: Any, args: tuple) -> list:
                nonlocal ws, handlers, opened
                url, handlers = str(args[0]), args[1]
                ws = sockets.enter_context(connect(url, open_timeout=5, compression=None, max_size=2**24))
                opened = False
                sock = vm.lua.create_table()
                sock.set("send", vm.lua.create_function(lambda _l, a: [ws.send(str(a[1]))]))
                sock.set("close", vm.lua.create_function(lambda _l, a: [ws.close()]))
                return [sock]

            client, _world, logs = vm.eval(
                self.source, vm.lua.create_function(py_connect), self.url, self.mode, self.handshake, *self.extra
            )
            update = vm.lua.load_chunk("local c, dt = ...; c:update(dt)", name="=update")
            start = vm.lua.load_chunk("local c = ...; c:start()", name="=start")
            start(client)
            last = time.monotonic()
            while not self.stop.is_set():
                if ws is not None and handlers is not None and not opened:
                    opened = True  # the Opened event fires after the factory returned
                    handlers.get("onOpen")()
                if ws is not None and handlers is not None:
                    try:
                        frame = ws.recv(timeout=0.002)
                        handlers.get("onMessage")(frame)
                    except TimeoutError:
                        pass
                    except ConnectionClosed:
                        ws, h = None, handlers
                        handlers = None
                        h.get("onClose")("closed by the trainer")
                now = time.monotonic()
                update(client, now - last)
                last = now
                self.ready.set()
            stats = client.get("stats")
            self.stats = {str(k): v for k, v in stats}
            self.logs = [str(x) for _, x in logs]
        except BaseException as err:  # noqa: BLE001 - re-raised in the test thread
            self.error = err
        finally:
            sockets.close()


@pytest.mark.parametrize("mode", ["lockstep", "realtime", "v0"])
def test_luau_game_plays_an_episode_with_the_real_bridge(mode: str) -> None:
    """Handshake, spawn with a track spec, ACTION_BATCH ticks, observations back, reset, remove,
    close; "v0" is a game without hello (v0 formats: per-venv ACTIONs and v0 packets)."""
    from rbxenv import tracks

    v0 = mode == "v0"
    bridge = bridge_mod.TrainingBridge(port=0, obs_timeout=10, handshake_timeout=0.3).start()
    try:
        with GameThread(bridge.url, "realtime" if v0 else mode, handshake=not v0) as game:
            spec = bridge.wait_for_game(timeout=10)
            if v0:
                assert spec.protocol == 0 and not spec.capabilities
            else:
                assert spec.protocol == 1 and spec.obs_size == 13 and spec.num_rays == 10
                assert spec.mode == mode
                assert {"batch", "tick", "info", "track_spec", "random_start"} <= set(spec.capabilities)

            ids = ["car_0_env_v1", "car_1_env_v1"]
            bridge.update_collisions(True)
            bridge.spawn_agents("v1", ids, track=tracks.generate(11), start="grid", seed=3)
            first = bridge.get_observations(ids)
            assert first.obs.shape == (2, 13)
            assert np.all(first.reward == 0) and not first.terminated.any()
            assert np.all((first.obs[:, :10] > 0) & (first.obs[:, :10] <= 1)), "rays see the walls"
            assert first.obs[0, 10] == pytest.approx(1.0), "full nitro tank"

            total = np.zeros(2)
            for _ in range(12):
                bridge.send_action_batch({"v1": {ids[0]: [1.0, 0.0, 0.0], ids[1]: [0.8, 0.0, 1.0]}})
                got = bridge.get_observations(ids)
                assert got.obs.shape == (2, 13)
                total += got.reward
            assert np.all(total > 0.5), f"driving forward earns progress reward, got {total}"
            if not v0:  # v0 packets carry no info
                info = got.infos[0]
                assert info["speed"] > 5 and 0 < info["progress"] < 1 and info["lap"] == 0
            assert got.obs[1, 10] < 1.0, "car 1 burnt nitro"
            assert got.obs[0, 11] > 0.05, "forward velocity"

            bridge.reset_agents("v1", [ids[0]])
            again = bridge.get_observation(ids[0])
            assert again["obs"][11] == pytest.approx(0.0, abs=0.05), "reset stops the car"

            bridge.remove_agents("v1", [ids[1]])
            bridge.close_environment("v1")
            bridge.close_all()
            time.sleep(0.2)  # let the last frames through before the game stops
        assert game.stats["badFrames"] == 0, game.logs
        assert game.stats["connects"] == 1
        assert bridge.stats.get("bad_frames", 0) == 0, dict(bridge.stats)
        assert bridge.stats.get("errors_from_game", 0) == 0, dict(bridge.stats)
    finally:
        bridge.close()


def test_luau_game_announces_its_capacity_to_the_real_bridge() -> None:
    """Config MaxVenvs / MaxCars reach the trainer in hello; a spawn beyond them comes back as a
    ``capacity`` error, which the bridge counts, and what fits is spawned and observed."""
    limited = _CLIENT.replace("ReconnectMax = 0.2 }", "ReconnectMax = 0.2, MaxVenvs = 1, MaxCars = 2 }")
    assert limited != _CLIENT
    bridge = bridge_mod.TrainingBridge(port=0, obs_timeout=10, handshake_timeout=0.3).start()
    try:
        with GameThread(bridge.url, "lockstep", source=limited) as game:
            spec = bridge.wait_for_game(timeout=10)
            assert (spec.max_venvs, spec.max_cars) == (1, 2)
            bridge.spawn_agents("a", ["car_0_env_a", "car_1_env_a", "car_2_env_a"])  # a third car
            bridge.spawn_agents("a", ["car_0_env_a", "car_1_env_a"])
            assert bridge.get_observations(["car_0_env_a", "car_1_env_a"]).obs.shape == (2, 13)
            assert bridge.stats.get("errors_from_game.capacity") == 1, dict(bridge.stats)
        assert any("[capacity]" in line for line in game.logs), game.logs
    finally:
        bridge.close()


def test_luau_game_restarts_crashed_cars_for_the_vector_env_as_reset_agents_would() -> None:
    """make_vec_env over the Luau game in lockstep: the game announces ``columns`` and ``autoreset``,
    so a crashed car is restarted in the step it ends (one frame out per step, no RESET_AGENTS round
    trip, which in Roblox costs a frame); the rollout is the one RESET_AGENTS gives, final
    observations and episode statistics included, also across track changes."""
    import rbxenv

    def rollout(autoreset: bool) -> tuple[list, int, int]:
        port = free_port()
        with GameThread(f"ws://127.0.0.1:{port}", "lockstep") as game:
            env = rbxenv.make_vec_env(num_agents=3, num_venvs=2, sim=None, port=port, wait_timeout=20,
                                      track_change_steps=40)  # fmt: skip
            try:
                assert {"columns", "autoreset"} <= env.session.bridge.game.capabilities
                result = crash_rollout(env, autoreset, steps=100)
                bad = env.session.bridge.stats.get("bad_frames", 0)
            finally:
                env.close()
        assert bad == 0 and game.stats["badFrames"] == 0, game.logs
        return result

    assert_autoreset_changes_nothing(rollout(True), rollout(False))


@pytest.mark.timeout(120)
def test_v0_trainer_drives_the_luau_game() -> None:
    """The original project's trainer (emulated: tests/v0_emulation.py) drives the Luau GameClient as
    configured by default (hello sent, Mode lockstep, which a v0 trainer turns into real time):
    per-venv ACTIONs, object data, PING, FREEZE'd updates; several episodes, nothing refused, no car
    left waiting, ended cars restarted in their tick with last_observation."""
    import asyncio

    from v0_emulation import V0Trainer, drive

    async def main() -> tuple[dict, V0Trainer, dict, list[str]]:
        trainer = V0Trainer(ping_every=0.5)
        await trainer.serve()
        with GameThread(f"ws://127.0.0.1:{trainer.port}/ws/seedcar", "lockstep") as game:
            try:
                seen = await asyncio.wait_for(drive(trainer, 2, 3, episodes=6), 90)
            finally:
                await trainer.close()
                await asyncio.sleep(0.2)
        return seen, trainer, game.stats, game.logs

    seen, trainer, stats, logs = asyncio.run(main())
    assert trainer.refused == [] and trainer.missing == []
    assert stats["badFrames"] == 0, logs
    assert seen["episodes"] >= 6 and seen["updates"] >= 1 and trainer.pings >= 2
    assert seen["widths"] == {13} and seen["last_widths"] == {13}
    assert trainer.pongs == [{"t": 12.5}]
    assert [] in trainer.packets, "frozen: the place sends [] while no car is active"
    frames = [p for p in trainer.packets if isinstance(p, dict) and "type" not in p and "__pong" not in p]
    # one packet a tick with every car of every venv (cars reset while a real-time step is under way
    # sit that step out: the trainer's two RESET_AGENTS at the start may split one tick)
    sizes = [len(p) for p in frames]
    assert len(sizes) > 20 and sizes.count(6) >= len(sizes) - 2 and set(sizes) <= {3, 6}, sizes
