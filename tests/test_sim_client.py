"""The simulator's WebSocket client against the real bridge, driven through the seed's TrainingBridge API."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from rbxenv.bridge import TrainingBridge
from rbxenv.tracks import generate

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["lockstep", "realtime"])
def game(request):
    bridge = TrainingBridge(port=0).start()
    cmd = [sys.executable, "-m", "rbxenv.sim", "--url", bridge.url]
    if request.param == "realtime":
        cmd += ["--realtime", "--tick-hz", "60"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    try:
        spec = bridge.wait_for_game(20)
        assert spec.mode == request.param
        yield bridge
    finally:
        bridge.close()
        proc.wait(timeout=10)


def test_seed_methods_drive_the_sim(game: TrainingBridge):
    bridge = game
    assert bridge.game.protocol == 1 and {"batch", "tick", "info", "track_spec"} <= bridge.game.capabilities
    ids = [f"car_{i}_env_a" for i in range(3)]
    track = generate(4)
    bridge.update_collisions(False)
    bridge.spawn_agents("a", ids, track=track, start="grid")
    first = [bridge.get_observation(aid) for aid in ids]
    assert all(o["obs"].shape == (13,) and o["reward"] == 0 and not o["terminated"] for o in first)
    # the cars stand on the grid slots of the track we sent
    for i, o in enumerate(first):
        assert o["info"]["x"] == pytest.approx(track["grid"][i][0], abs=1e-3)
        assert o["info"]["y"] == pytest.approx(track["grid"][i][1], abs=1e-3)

    speeds = []
    for _ in range(30):
        bridge.send_actions("a", {aid: [1.0, 0.0, 0.0] for aid in ids})  # the seed's per-venv ACTION
        got = bridge.get_observations(ids)
        speeds.append(np.array([info["speed"] for info in got.infos]))
        assert not got.terminated.any()
    assert (speeds[-1] > speeds[0]).all() and (speeds[-1] > 10).all(), "full throttle accelerates every car"
    assert got.reward.sum() > 0, "driving forward along the track pays"

    bridge.reset_agents("a", ids[:1])
    reset = bridge.get_observation(ids[0])
    assert reset["info"]["speed"] == 0 and reset["info"]["lap"] == 0

    bridge.remove_agents("a", ids[2:])
    bridge.send_action_batch({"a": {aid: [0.5, 0.0, 0.0] for aid in ids[:2]}})
    got = bridge.get_observations(ids[:2])
    assert got.obs.shape == (2, 13)
    bridge.freeze(True)
    bridge.freeze(False)
    bridge.close_environment("a")
    bridge.close_all()
    assert bridge.stats["bad_frames"] == 0
