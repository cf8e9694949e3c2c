"""A crash that something heals is still counted and said: in the bridge's connection handler, in a
command the simulator could not apply, in a real-time tick. (tests/conftest.py fails any other test
that meets one; these provoke them on purpose, with a real bridge and a real simulator client.)"""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from rbxenv import protocol
from rbxenv.bridge import BridgeClosed, TrainingBridge
from rbxenv.sim import client as simclient
from rbxenv.sim.client import SimGame
from rbxenv.sim.world import Sim
from rbxenv.tracks import generate

pytestmark = [pytest.mark.timeout(60), pytest.mark.allow_internal_errors]
IDS = [f"car_{i}_env_a" for i in range(2)]


def start_sim(bridge: TrainingBridge, **kwargs) -> threading.Thread:
    """The simulator client in a thread of this process (so a test can make its game fail)."""
    thread = threading.Thread(target=lambda: asyncio.run(simclient.run(bridge.url, **kwargs)), daemon=True)
    thread.start()
    bridge.wait_for_game(20)
    return thread


def test_a_crash_in_the_bridge_handler_is_counted_and_logged(caplog, monkeypatch):
    bridge = TrainingBridge(port=0).start()
    thread = start_sim(bridge)
    try:
        put_batch, calls = bridge.data.put_batch, []

        def crash_on_the_third(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("provoked")
            return put_batch(*args, **kwargs)

        monkeypatch.setattr(bridge.data, "put_batch", crash_on_the_third)
        bridge.spawn_agents("a", IDS, track=generate(4), start="grid")
        bridge.get_observations(IDS)
        bridge.send_action_batch({"a": {aid: [1.0, 0.0, 0.0] for aid in IDS}})
        bridge.get_observations(IDS)
        bridge.send_action_batch({"a": {aid: [1.0, 0.0, 0.0] for aid in IDS}})
        with pytest.raises(BridgeClosed):  # the handler died: the game is gone, and the trainer knows at once
            bridge.get_observations(IDS, timeout=10)
    finally:
        bridge.close()
        thread.join(10)
    assert bridge.stats["internal_errors"] == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "rbxenv.bridge"]
    assert len(errors) == 1 and "internal error in the bridge's connection handler" in errors[0].getMessage()
    assert "RuntimeError: provoked" in caplog.text  # the traceback is in the log


def test_a_command_the_simulator_fails_on_is_an_internal_error_not_a_bad_command(monkeypatch, caplog):
    game = SimGame(Sim(seed=0))

    def fail(command):
        raise KeyError("provoked")

    monkeypatch.setattr(game, "handle", fail)
    (frame,) = game.receive(protocol.encode_command("FREEZE", None, True).decode())
    reply = protocol.decode_game_message(frame.decode(), 13)
    assert isinstance(reply, protocol.ErrorMessage) and reply.code == "internal_error"
    assert "KeyError" in reply.message and "provoked" in reply.message
    assert game.stats["internal_errors"] == 1 and game.stats["bad_commands"] == 0
    assert any("internal error in the simulator" in r.getMessage() for r in caplog.records)


def test_a_failed_realtime_tick_reaches_the_trainer(monkeypatch, caplog):
    step, calls = SimGame.step, []

    def every_fifth_tick_fails(self):
        calls.append(1)
        if len(calls) % 5 == 0:
            raise RuntimeError("provoked tick failure")
        return step(self)

    monkeypatch.setattr(SimGame, "step", every_fifth_tick_fails)
    bridge = TrainingBridge(port=0).start()
    thread = start_sim(bridge, realtime=True, tick_hz=60)
    try:
        bridge.spawn_agents("a", IDS, track=generate(4), start="grid")
        for _ in range(20):
            bridge.send_action_batch({"a": {aid: [1.0, 0.0, 0.0] for aid in IDS}})
            bridge.get_observations(IDS, timeout=10)
    finally:
        bridge.close()
        thread.join(10)
    # The game ticks on after a failure, and every failed tick is counted by the trainer.
    failed = bridge.stats["errors_from_game.internal_error"]
    assert failed >= 3 and failed >= len(calls) // 5 - 1, (failed, len(calls))
    said = [r.getMessage() for r in caplog.records if r.name == "rbxenv.bridge"]
    assert any("internal error in the game" in m and "provoked tick failure" in m for m in said), said
