"""TrainingBridge over real loopback WebSockets: a scripted game (websockets' sync client) plays
the other end, so the handshake, the v0 formats, tick ids, stale packets, bad frames, auth and
shutdown are exercised exactly as a Roblox place or the simulator would meet them.

Every test binds port 0 on 127.0.0.1; v0 games wait a 0.2 s handshake timeout instead of 1 s.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from contextlib import contextmanager
from types import MappingProxyType

import numpy as np
import pytest
from netutil import port_is_free
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from rbxenv import protocol, server
from rbxenv.bridge import BridgeClosed, TrainingBridge, is_loopback
from rbxenv.protocol import V0_GAME, GameSpec

pytestmark = pytest.mark.timeout(10)

HANDSHAKE = 0.2
OBS = [0.5] * 10 + [1.0, 0.25, 0.0]
CAPS = ["batch", "tick", "info", "track_spec", "random_start"]


def hello(**changes) -> dict:
    msg = {
        "type": "hello",
        "protocol": 1,
        "game": "test game",
        "obs_size": 13,
        "num_rays": 10,
        "action_size": 3,
        "tick_hz": 15,
        "mode": "lockstep",
        "capabilities": CAPS,
    }
    msg.update(changes)
    return msg


def reported(info: dict) -> dict:
    """The keys of an info dict (every §3.3 key, None where not reported) that the game did report."""
    return {key: value for key, value in info.items() if value is not None and not (key == "collided" and not value)}


def entry(obs=None, reward=0.0, terminated=False, truncated=False, info=None) -> dict:
    out = {"obs": OBS if obs is None else obs, "reward": reward, "terminated": terminated, "truncated": truncated}
    if info is not None:
        out["info"] = info
    return out


def eventually(check, timeout: float = 2.0) -> bool:
    """Poll ``check`` (the network thread updates stats after the game already saw the outcome)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def obs_of(value: float) -> list[float]:
    return [value] * 13


class Game:
    """The game's end of one connection."""

    def __init__(self, url: str):
        self._client = connect(url, open_timeout=3, close_timeout=1, max_size=None)
        self.ws = self._client.__enter__()
        self.bridge: TrainingBridge | None = None  # set for a v0 game: it gets no error frames to wait for
        self.sent = 0  # frames sent since the bridge was set

    def send(self, msg) -> None:
        self.ws.send(msg if isinstance(msg, str | bytes) else json.dumps(msg))
        self.sent += 1

    def attach(self, bridge: TrainingBridge) -> None:
        """A v0 game's bridge, for ``barrier``: frames from here on are counted against its frames_in."""
        self.bridge, self.sent, self._frames_before = bridge, 0, bridge.stats["frames_in"]

    def recv(self, timeout: float = 3) -> dict:
        frame = self.ws.recv(timeout)
        assert isinstance(frame, str), "the trainer must send text frames"
        return json.loads(frame)

    def packet(self, agents: dict, tick: int | None = None, batch: bool = False) -> None:
        self.send({"type": "obs", "tick": tick, "agents": agents} if batch or tick is not None else agents)

    def barrier(self) -> None:
        """Wait until the trainer has handled everything sent so far (it answers a bad frame in order;
        a v0 game it answers nothing: the trainer counts a frame in frames_in as it starts on it and
        handles frames in order, so once a trailing no-op "[]" is counted all before it are done)."""
        if self.bridge is not None:
            bridge = self.bridge
            self.send("[]")
            assert eventually(lambda: bridge.stats["frames_in"] - self._frames_before >= self.sent)
            return
        self.send("barrier")
        reply = self.recv()
        assert reply["type"] == "error" and reply["code"] == "bad_json", reply

    def close_code(self, timeout: float = 3) -> int | None:
        """Read until the trainer closes the connection; its close code."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.ws.recv(max(0.01, deadline - time.monotonic()))
        except ConnectionClosed:
            return self.ws.close_code
        raise AssertionError("the trainer did not close the connection")

    def close(self) -> None:
        self._client.__exit__(None, None, None)


@pytest.fixture
def bridge():
    b = TrainingBridge(port=0, handshake_timeout=HANDSHAKE, obs_timeout=3).start()
    try:
        yield b
    finally:
        b.close()


@contextmanager
def game_at(url: str, first: dict | str | None = None):
    g = Game(url)
    try:
        if first is not None:
            g.send(first)
        yield g
    finally:
        g.close()


@pytest.fixture
def v1(bridge):
    """A version-1 lockstep game with every capability, handshake done."""
    with game_at(bridge.url, hello()) as g:
        assert g.recv()["type"] == "welcome"
        bridge.wait_for_game(3)
        yield g


@pytest.fixture
def v0(bridge):
    """A v0 game: no hello; its first packet (``[]``: no car yet) makes it the game."""
    with game_at(bridge.url, "[]") as g:
        assert bridge.wait_for_game(3) == V0_GAME
        g.attach(bridge)
        yield g


@pytest.fixture
def rt(bridge):
    """A version-1 real-time game with no capabilities: v0 packets, error frames, parked endings."""
    with game_at(bridge.url, hello(mode="realtime", capabilities=[])) as g:
        assert g.recv()["type"] == "welcome"
        bridge.wait_for_game(3)
        yield g


# ============================================================================================
# Handshake


def test_hello_gets_welcome_and_game_spec(bridge):
    with game_at(bridge.url, hello(capabilities=["batch", "tick", "telepathy"], mode="realtime", tick_hz=30)) as g:
        assert g.recv() == {"type": "welcome", "protocol": 1, "capabilities": ["batch", "tick"]}
        spec = bridge.wait_for_game(3)
        assert spec == GameSpec(1, "test game", 13, 10, 3, 30.0, "realtime", frozenset({"batch", "tick"}))
        assert bridge.game == spec and bridge.connected


def test_hello_with_type_key_last_and_a_long_preamble(bridge):
    # Roblox's JSONEncode orders keys as it likes: "type" may come after 200+ characters.
    msg = {"game": "g" * 300, "capabilities": CAPS, "protocol": 1, "num_rays": 20, "obs_size": 23, "type": "hello"}
    with game_at(bridge.url, json.dumps(msg)) as g:
        assert g.recv()["type"] == "welcome"
        assert bridge.wait_for_game(3).obs_size == 23


def test_hello_in_a_binary_frame_is_accepted(bridge):
    with game_at(bridge.url, json.dumps(hello()).encode()) as g:
        assert g.recv()["type"] == "welcome"
        assert bridge.wait_for_game(3).protocol == 1


def test_unknown_protocol_version_gets_error_and_close_1002(bridge):
    with game_at(bridge.url, hello(protocol=2)) as g:
        err = g.recv()
        assert err["type"] == "error" and err["code"] == "unsupported_version" and "protocol" in err["message"]
        assert g.close_code() == 1002
    assert not bridge.connected


def test_bad_hello_gets_an_error_and_the_game_is_treated_as_a_v0_game(bridge):
    with game_at(bridge.url, hello(obs_size=14)) as g:
        err = g.recv()
        assert err["code"] == "bad_message" and "hello.obs_size" in err["message"]
        assert bridge.wait_for_game(3) == V0_GAME


def test_hello_after_the_first_frame_is_an_error(v1, bridge):
    v1.send(hello())
    err = v1.recv()
    assert err["code"] == "bad_message" and "first frame" in err["message"]
    assert bridge.game.protocol == 1


def test_wait_for_game_timeout(bridge):
    with pytest.raises(BridgeClosed, match="no game connected to ws://127.0.0.1"):
        bridge.wait_for_game(0.05)


# ============================================================================================
# Version-0 games


def test_v0_game_defaults_and_spawn_in_the_v0_form(bridge):
    with game_at(bridge.url, "[]") as g:
        assert bridge.wait_for_game(3) == V0_GAME
        ids = ["car_0_env_a", "car_1_env_a"]
        bridge.spawn_agents("a", ids, track={"ignored": True}, start="random", seed=3)
        # the original project's object, nothing else: no tick, no track, no start
        assert g.recv() == {"command": "SPAWN_AGENTS", "envid": "a", "data": {"agents": ids}}
        g.packet({ids[0]: entry(obs_of(0.1), 0.0), ids[1]: entry(obs_of(0.2), 0.0)})
        got = bridge.get_observations(ids)
        assert got.agent_ids == ids
        assert got.obs.dtype == np.float32 and got.obs.shape == (2, 13)
        np.testing.assert_allclose(got.obs[:, 0], [0.1, 0.2])


def test_v0_game_gets_per_venv_action_commands(v0, bridge):
    bridge.spawn_agents("a", ["car_0_env_a"])
    bridge.spawn_agents("b", ["car_0_env_b"])
    assert v0.recv()["envid"] == "a" and v0.recv()["envid"] == "b"
    v0.packet({"car_0_env_a": entry(), "car_0_env_b": entry()})
    bridge.get_observations(["car_0_env_a", "car_0_env_b"])
    bridge.send_action_batch({"a": {"car_0_env_a": [1.0, 0.5, 0.0]}, "b": {"car_0_env_b": np.array([-1.0, 0, 1])}})
    assert v0.recv() == {"command": "ACTION", "envid": "a", "data": {"car_0_env_a": [1.0, 0.5, 0.0]}}
    assert v0.recv() == {"command": "ACTION", "envid": "b", "data": {"car_0_env_b": [-1.0, 0.0, 1.0]}}
    v0.packet({"car_0_env_a": entry(obs_of(0.3), 1.5)})
    v0.packet({"car_0_env_b": entry(obs_of(0.4), -10.0, terminated=True)})
    got = bridge.get_observations(["car_0_env_a", "car_0_env_b"])
    assert got.reward.tolist() == [1.5, -10.0]
    assert got.terminated.tolist() == [False, True] and got.truncated.tolist() == [False, False]
    # the v0 game restarted car_0_env_b in that tick: 0.4 is its next episode's first frame, the
    # ending is reported at its previous frame (the game sent no last_observation)
    assert got.restarted.tolist() == [False, True]
    np.testing.assert_allclose(got.reset_obs[1], obs_of(0.4))
    np.testing.assert_allclose(got.obs[:, 0], [0.3, 0.5])


def test_v0_game_restarts_cars_itself(v0, bridge):
    ids = ["car_0_env_a", "car_1_env_a"]
    bridge.spawn_agents("a", ids)
    v0.recv()
    v0.packet({ids[0]: entry(obs_of(0.1)), ids[1]: entry(obs_of(0.2))})
    bridge.get_observations(ids)
    ended = entry(obs_of(0.9), -20.0, truncated=True) | {"last_observation": obs_of(0.25)}
    v0.packet({ids[0]: entry(obs_of(0.15), 1.0), ids[1]: ended, "__pong": {"t": 1.0}})
    got = bridge.get_observations(ids)
    assert got.truncated.tolist() == [False, True] and got.restarted.tolist() == [False, True]
    np.testing.assert_allclose(got.obs[:, 0], [0.15, 0.25])  # the ending: its last_observation
    np.testing.assert_allclose(got.reset_obs[1, 0], 0.9)  # the first frame of its next episode
    v0.send("[]")  # no car active: nothing, not even a warning
    v0.packet({ids[0]: entry(obs_of(0.16), 0.5), ids[1]: entry(obs_of(0.8), 0.25)})
    got = bridge.get_observations(ids)
    assert not got.restarted.any() and not got.truncated.any() and got.reward.tolist() == [0.5, 0.25]
    np.testing.assert_allclose(got.obs[:, 0], [0.16, 0.8])  # the new episode drives on
    assert bridge.stats["bad_frames"] == 0 and bridge.stats["frames_in"] == 5  # with the first "[]"


def test_v0_game_gets_no_error_frames(v0, bridge):
    bridge.spawn_agents("a", ["car_0_env_a"])
    v0.recv()
    for frame in ("{not json", {"car_9_env_a": entry()}, {"car_0_env_a": entry(reward="x")}):
        v0.send(frame)
    v0.barrier()
    assert bridge.stats["bad_frames"] == 3  # logged here, at a limited rate; the game hears nothing
    with pytest.raises(TimeoutError):
        v0.recv(timeout=0.3)


@pytest.mark.expect_error_log("observations changed from 19 to 22 floats")
def test_v0_game_learns_the_width_and_refuses_a_change(v0, bridge):
    bridge.spawn_agents("a", ["car_0_env_a"])
    v0.recv()
    v0.packet({"car_0_env_a": entry([0.5] * 19)})
    assert bridge.get_observations(["car_0_env_a"]).obs.shape == (1, 19)
    assert (bridge.game.obs_size, bridge.game.num_rays) == (19, 16) and bridge.width_known
    v0.packet({"car_0_env_a": entry([0.5] * 22)})
    with pytest.raises(BridgeClosed, match="changed from 19 to 22 floats per car mid-run"):
        bridge.get_observations(["car_0_env_a"])
    assert v0.close_code() == 1003


def test_v0_game_gets_a_ping_when_the_trainer_is_quiet(bridge):
    bridge.ping_interval = 0.2
    with game_at(bridge.url, "[]") as g:
        bridge.wait_for_game(3)
        t0 = time.monotonic()
        assert g.recv() == {"command": "PING"}
        assert g.recv() == {"command": "PING"}
        assert 0.3 < time.monotonic() - t0 < 1.5
        bridge.freeze(False)  # another frame puts the next PING off
        assert g.recv()["command"] == "FREEZE"
    with game_at(bridge.url, hello()) as g:  # a version-1 game gets none
        assert g.recv()["type"] == "welcome"
        with pytest.raises(TimeoutError):
            g.recv(timeout=0.5)


def test_v0_game_commands(v0, bridge):
    # the v0 trainer's object forms: data always an object, envid "" where no venv applies
    bridge.freeze(True)
    assert v0.recv() == {"command": "FREEZE", "envid": "", "data": {"status": True}}
    bridge.update_collisions(False)
    assert v0.recv() == {"command": "UPDATE_COLLISIONS", "envid": "", "data": {"enable_collisions": False}}
    bridge.spawn_agents("a", ["car_0_env_a", "car_1_env_a"])
    v0.recv()
    bridge.reset_agents("a", ["car_0_env_a"])
    assert v0.recv() == {"command": "RESET_AGENTS", "envid": "a", "data": {"agents": ["car_0_env_a"]}}
    bridge.remove_agents("a", ["car_1_env_a"])
    assert v0.recv() == {"command": "REMOVE_AGENTS", "envid": "a", "data": {"agents": ["car_1_env_a"]}}
    bridge.close_environment("a")
    assert v0.recv() == {"command": "CLOSE", "envid": "a", "data": {}}
    bridge.close_all()
    assert v0.recv() == {"command": "CLOSE_ALL", "envid": "", "data": {}}


def test_v0_game_whose_first_frame_is_a_packet(bridge):
    # not a hello: a v0 game, and the frame itself is handled (here: an agent nobody spawned)
    with game_at(bridge.url, {"car_0_env_a": entry()}):
        assert bridge.wait_for_game(3) == V0_GAME
        assert eventually(lambda: bridge.stats["bad_frames.unknown_agent"] == 1)


def test_a_real_time_tick_naming_a_car_just_removed_is_no_error(rt, bridge):
    """A real-time game's tick may be on its way when REMOVE_AGENTS goes out: the removed car's
    entry is dropped quietly; a car never spawned is still an unknown agent."""
    ids = ["car_0_env_a", "car_1_env_a"]
    bridge.spawn_agents("a", ids)
    rt.recv()
    rt.packet({aid: entry() for aid in ids})
    bridge.get_observations(ids)
    bridge.remove_agents("a", ids[1:])
    assert rt.recv()["command"] == "REMOVE_AGENTS"
    rt.packet({aid: entry(reward=1.0) for aid in ids})  # the tick that crossed the command
    assert bridge.get_observations(ids[:1]).reward.tolist() == [1.0]
    assert bridge.stats["bad_frames"] == 0
    rt.packet({"car_7_env_a": entry()})
    assert rt.recv()["code"] == "unknown_agent"
    bridge.spawn_agents("a", ids[1:])  # spawned again: its packets count as before
    rt.recv()
    rt.packet({ids[1]: entry(reward=2.0)})
    assert bridge.get_observations(ids[1:]).reward.tolist() == [2.0]


def test_real_time_packets_sum_rewards_and_keep_the_latest_observation(rt, bridge):
    v0 = rt
    bridge.spawn_agents("a", ["car_0_env_a"])
    v0.recv()
    v0.packet({"car_0_env_a": entry(obs_of(0.1), 1.0, info={"lap": 0, "progress": 0.1})})
    v0.packet({"car_0_env_a": entry(obs_of(0.2), 2.0, info={"lap": 0, "progress": 0.2})})
    v0.packet({"car_0_env_a": entry(obs_of(0.3), 3.5, truncated=True, info={"lap": 1, "cause": "time_limit"})})
    v0.barrier()
    got = bridge.get_observation("car_0_env_a")
    assert got["reward"] == 6.5
    assert got["obs"][0] == np.float32(0.3)
    assert got["truncated"] is True and got["terminated"] is False
    assert reported(got["info"]) == {"lap": 1, "cause": "time_limit"}  # the latest packet's info, whole
    # everything was handed over: nothing is pending any more
    with pytest.raises(TimeoutError):
        bridge.get_observation("car_0_env_a", timeout=0.05)


def test_reward_flags_and_info_reset_after_each_read(rt, bridge):
    v0 = rt
    bridge.spawn_agents("a", ["car_0_env_a"])
    v0.recv()
    v0.packet({"car_0_env_a": entry(reward=1.0, terminated=True, info={"cause": "wall"})})
    assert bridge.get_observation("car_0_env_a")["terminated"] is True
    v0.packet({"car_0_env_a": entry(reward=0.5)})
    got = bridge.get_observation("car_0_env_a")
    assert (got["reward"], got["terminated"], got["info"]) == (0.5, False, {})


# ============================================================================================
# Version 1: tick ids, ACTION_BATCH, obs batches


def test_spawn_object_and_ticks_for_a_v1_game(v1, bridge):
    track = {"centerline": [[float(k), 0.0] for k in range(8)], "half_width": [5.0] * 8}
    bridge.spawn_agents("a", ["car_0_env_a"], track=track, start="random", seed=7)
    cmd = v1.recv()
    assert cmd == {
        "command": "SPAWN_AGENTS",
        "envid": "a",
        "data": {"agents": ["car_0_env_a"], "start": "random", "track": track, "seed": 7},
        "tick": 1,
    }
    assert protocol.decode_command(json.dumps(cmd)).data["start"] == "random"
    bridge.reset_agents("a", ["car_0_env_a"])
    assert v1.recv() == {"command": "RESET_AGENTS", "envid": "a", "data": ["car_0_env_a"], "tick": 2}
    bridge.send_actions("a", {"car_0_env_a": [0.0, 0.0, 0.0]})
    assert v1.recv()["tick"] == 3


def test_spawn_for_a_game_without_track_spec_or_random_start(bridge):
    with game_at(bridge.url, hello(capabilities=["tick"])) as g:
        g.recv()
        bridge.wait_for_game(3)
        bridge.spawn_agents("a", ["car_0_env_a"], track={"x": 1}, start="random")
        assert g.recv() == {"command": "SPAWN_AGENTS", "envid": "a", "data": ["car_0_env_a"], "tick": 1}


def test_action_batch_with_tick_ids(v1, bridge):
    ids = {"a": ["car_0_env_a", "car_1_env_a"], "b": ["car_0_env_b"]}
    for env, agents in ids.items():
        bridge.spawn_agents(env, agents)
        tick = v1.recv()["tick"]
        v1.packet({aid: entry() for aid in agents}, tick=tick)
    everyone = ids["a"] + ids["b"]
    bridge.get_observations(everyone)

    rows = np.arange(9, dtype=np.float32).reshape(3, 3).T / 10  # non-contiguous rows
    tick = bridge.send_action_batch(
        {"a": {"car_0_env_a": rows[0], "car_1_env_a": rows[1]}, "b": {"car_0_env_b": rows[2]}}
    )
    cmd = v1.recv()
    assert cmd["command"] == "ACTION_BATCH" and cmd["tick"] == tick == 3 and cmd["envid"] is None
    np.testing.assert_allclose(cmd["data"]["a"]["car_1_env_a"], rows[1], rtol=1e-6)
    assert set(cmd["data"]) == {"a", "b"}

    v1.packet({aid: entry(obs_of(k / 10), reward=k) for k, aid in enumerate(everyone)}, tick=tick)
    got = bridge.get_observations(everyone)
    assert got.reward.tolist() == [0.0, 1.0, 2.0]
    np.testing.assert_allclose(got.obs[:, 5], [0.0, 0.1, 0.2])
    assert bridge.send_action_batch({"a": MappingProxyType({"car_0_env_a": (0, 0, 0)})}) == 4  # any Mapping
    assert v1.recv()["data"] == {"a": {"car_0_env_a": [0, 0, 0]}}


def _one_car_waiting_for_an_answer(v1: Game, bridge: TrainingBridge) -> int:
    """car_0_env_a spawned and observed, then an ACTION_BATCH the game has read: its tick."""
    bridge.spawn_agents("a", ["car_0_env_a"])
    v1.packet({"car_0_env_a": entry()}, tick=v1.recv()["tick"])
    bridge.get_observation("car_0_env_a")
    tick = bridge.send_action_batch({"a": {"car_0_env_a": [1, 0, 0]}})
    assert v1.recv()["tick"] == tick
    return tick


def test_stale_packets_are_not_the_answer_but_their_reward_and_flags_count(v1, bridge):
    tick = _one_car_waiting_for_an_answer(v1, bridge)
    # a packet answering an older command arrives after the new one was sent
    v1.packet({"car_0_env_a": entry(obs_of(0.9), 2.0, truncated=False, info={"lap": 7})}, tick=tick - 1)
    v1.barrier()
    with pytest.raises(TimeoutError):
        bridge.get_observation("car_0_env_a", timeout=0.1)
    assert bridge.stats["stale_packets"] == 1
    v1.packet({"car_0_env_a": entry(obs_of(0.1), 0.5, info={"lap": 0})}, tick=tick)
    got = bridge.get_observation("car_0_env_a")
    assert got["obs"][0] == np.float32(0.1)  # the fresh observation, not the stale one
    assert got["reward"] == 2.5  # but nothing is lost
    assert reported(got["info"]) == {"lap": 0}


def test_stale_packet_flags_are_kept(v1, bridge):
    bridge.spawn_agents("a", ["car_0_env_a", "car_1_env_a"])
    v1.packet({"car_0_env_a": entry(), "car_1_env_a": entry()}, tick=v1.recv()["tick"])
    bridge.get_observations(["car_0_env_a", "car_1_env_a"])
    bridge.send_actions("a", {"car_0_env_a": [1, 0, 0], "car_1_env_a": [1, 0, 0]})
    tick = v1.recv()["tick"]
    # car 0 ended in a packet of the previous step: the game parks it, so that packet is its answer
    v1.packet({"car_0_env_a": entry(obs_of(0.7), -10.0, terminated=True, info={"cause": "wall"})}, tick=tick - 1)
    v1.packet({"car_1_env_a": entry(obs_of(0.2), 1.0, truncated=True)}, tick=tick - 1)
    got = bridge.get_observations(["car_0_env_a", "car_1_env_a"])
    assert got.terminated.tolist() == [True, False] and got.truncated.tolist() == [False, True]
    assert got.reward.tolist() == [-10.0, 1.0]
    assert reported(got.infos[0]) == {"cause": "wall"}
    np.testing.assert_allclose(got.obs[:, 0], [0.7, 0.2])
    assert bridge.stats["stale_packets"] == 0  # ending packets are never stale


def test_stale_reward_and_ending_add_up_with_the_answer(v1, bridge):
    tick = _one_car_waiting_for_an_answer(v1, bridge)
    v1.packet({"car_0_env_a": entry(obs_of(0.1), 0.25)}, tick=tick - 1)
    v1.packet({"car_0_env_a": entry(obs_of(0.2), 0.5)}, tick=tick - 1)
    v1.packet({"car_0_env_a": entry(obs_of(0.3), -10.0, terminated=True)}, tick=tick)
    v1.barrier()
    got = bridge.get_observation("car_0_env_a")
    assert (got["reward"], got["terminated"], got["obs"][0]) == (-9.25, True, np.float32(0.3))
    assert bridge.stats["stale_packets"] == 2


def test_packets_of_an_episode_ended_by_a_reset_are_dropped(v1, bridge):
    bridge.spawn_agents("a", ["car_0_env_a"])
    v1.packet({"car_0_env_a": entry()}, tick=v1.recv()["tick"])
    bridge.get_observation("car_0_env_a")
    bridge.send_actions("a", {"car_0_env_a": [1, 0, 0]})
    old = v1.recv()["tick"]
    bridge.reset_agents("a", ["car_0_env_a"])
    reset_tick = v1.recv()["tick"]
    # the old episode crashes while the reset is in flight
    v1.packet({"car_0_env_a": entry(obs_of(0.9), -10.0, terminated=True, info={"cause": "wall"})}, tick=old)
    v1.barrier()
    with pytest.raises(TimeoutError):
        bridge.get_observation("car_0_env_a", timeout=0.1)
    v1.packet({"car_0_env_a": entry(obs_of(0.0), 0.0)}, tick=reset_tick)
    got = bridge.get_observation("car_0_env_a")
    assert (got["terminated"], got["reward"], got["obs"][0]) == (False, 0.0, 0.0)


def test_untagged_packets_of_a_v1_game_are_always_fresh(v1, bridge):
    bridge.spawn_agents("a", ["car_0_env_a"])
    v1.recv()
    v1.packet({"car_0_env_a": entry(reward=1.0)}, batch=True)  # "tick": null
    assert bridge.get_observation("car_0_env_a")["reward"] == 1.0


def test_obs_size_follows_the_handshake(bridge):
    with game_at(bridge.url, hello(num_rays=4, obs_size=7)) as g:
        g.recv()
        bridge.wait_for_game(3)
        bridge.spawn_agents("a", ["car_0_env_a"])
        tick = g.recv()["tick"]
        g.packet({"car_0_env_a": entry(obs=OBS)}, tick=tick)
        err = g.recv()
        assert err["code"] == "bad_message" and "expected 7 numbers, got 13" in err["message"]
        g.packet({"car_0_env_a": entry(obs=[0.5] * 7)}, tick=tick)
        assert bridge.get_observation("car_0_env_a")["obs"].shape == (7,)


# ============================================================================================
# Bad frames: an error back, the connection keeps working


def _still_works(game: Game, bridge: TrainingBridge, reward: float) -> None:
    game.packet({"car_0_env_a": entry(reward=reward)})
    assert bridge.get_observation("car_0_env_a")["reward"] == reward


@pytest.fixture
def spawned(rt, bridge):
    bridge.spawn_agents("a", ["car_0_env_a"])
    rt.recv()
    return rt


@pytest.mark.parametrize(
    ("frame", "code", "fragment"),
    [
        ("{not json", "bad_json", "not valid JSON"),
        ('{"car_0_env_a": {"obs": [NaN]}}', "bad_json", "not valid JSON"),
        ("[1, 2, 3]", "bad_message", "expected a JSON object"),
        (b'{"car_0_env_a": {}}', "bad_message", "binary frame"),
        ({"car_0_env_a": entry(obs=OBS[:12])}, "bad_message", "car_0_env_a.obs: expected 13 numbers, got 12"),
        ({"car_0_env_a": entry(reward=True)}, "bad_message", "car_0_env_a.reward"),
        ({"car_9_env_a": entry()}, "unknown_agent", "car_9_env_a"),
        ({"car_0_env_zz": entry()}, "unknown_agent", "never spawned"),
        ({"type": "welcome"}, "unknown_command", "welcome"),
        ({"type": "obs", "tick": "3", "agents": {}}, "bad_message", "obs.tick"),
    ],
)
def test_bad_frames_get_an_error_and_the_connection_keeps_working(spawned, bridge, frame, code, fragment):
    spawned.send(frame)
    err = spawned.recv()
    assert err["type"] == "error" and err["code"] == code and fragment in err["message"], err
    assert bridge.stats["bad_frames"] == 1 and bridge.stats[f"bad_frames.{code}"] == 1
    _still_works(spawned, bridge, 1.25)


def test_oversized_frame_gets_too_large_and_the_connection_keeps_working(spawned, bridge):
    big = json.dumps({"type": "error", "message": "x" * (3 * protocol.MAX_FRAME_BYTES // 2)})
    spawned.send(big)
    err = spawned.recv()
    assert err["code"] == "too_large" and "exceeds" in err["message"]
    spawned.send(big.encode())  # binary and oversized: still an error, not a disconnect
    assert spawned.recv()["type"] == "error"
    _still_works(spawned, bridge, 2.0)


def test_frame_beyond_the_hard_limit_closes_the_connection(spawned, bridge):
    with pytest.raises(ConnectionClosed):  # websockets refuses it (1009) instead of buffering 16 MiB+
        spawned.send("x" * (16 * protocol.MAX_FRAME_BYTES + 1))
        spawned.recv()
    assert spawned.ws.close_code == 1009
    with pytest.raises(BridgeClosed, match="disconnected"):
        bridge.get_observation("car_0_env_a", timeout=3)


def test_one_bad_entry_spoils_only_its_packet(spawned, bridge):
    spawned.packet({"car_0_env_a": entry(reward=5.0), "car_1_env_a": entry(obs=[])})
    assert spawned.recv()["code"] == "bad_message"
    _still_works(spawned, bridge, 1.0)  # the 5.0 was not counted


def test_error_messages_from_the_game_are_counted(spawned, bridge):
    spawned.send({"type": "error", "code": "bad_message", "message": "ACTION data for car_9_env_a"})
    spawned.barrier()
    assert bridge.stats["errors_from_game"] == 1


# ============================================================================================
# Waiting: timeouts and lost games


def test_get_observation_timeout_says_what_is_missing(spawned, bridge):
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"no observation for 1 of 1 agents \(car_0_env_a\) within 0.2 s"):
        bridge.get_observation("car_0_env_a", timeout=0.2)
    assert 0.15 < time.monotonic() - t0 < 1.5


def test_get_observations_timeout_lists_the_missing_agents(v0, bridge):
    ids = [f"car_{k}_env_a" for k in range(5)]
    bridge.spawn_agents("a", ids)
    v0.recv()
    v0.packet({ids[0]: entry()})
    with pytest.raises(TimeoutError, match=r"4 of 5 agents \(car_1_env_a, car_2_env_a, car_3_env_a \.\.\.\)"):
        bridge.get_observations(ids, timeout=0.2)


def test_agent_never_spawned_is_a_key_error(bridge):
    with pytest.raises(KeyError, match="never spawned"):
        bridge.get_observation("car_0_env_q", timeout=0.1)


def test_game_disconnect_wakes_a_waiting_get_observations_promptly(spawned, bridge):
    result: list[BaseException] = []

    def wait() -> None:
        try:
            bridge.get_observations(["car_0_env_a"], timeout=8)
        except BaseException as err:  # noqa: BLE001 - inspected below
            result.append(err)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    spawned.close()
    waiter.join(3)
    assert not waiter.is_alive(), "get_observations kept waiting after the game left"
    assert time.monotonic() - t0 < 2
    assert isinstance(result[0], BridgeClosed) and "disconnected" in str(result[0]) and "1000" in str(result[0])
    assert not bridge.connected
    with pytest.raises(BridgeClosed):
        bridge.send_actions("a", {"car_0_env_a": [0, 0, 0]})


def test_a_new_game_can_attach_after_the_first_left(bridge):
    with game_at(bridge.url, hello()) as g:
        g.recv()
        bridge.wait_for_game(3)
    assert eventually(lambda: not bridge.connected)
    with game_at(bridge.url, "[]") as g:
        assert bridge.wait_for_game(3) == V0_GAME
        bridge.spawn_agents("a", ["car_0_env_a"])
        g.recv()
        g.packet({"car_0_env_a": entry(reward=3.0)})
        assert bridge.get_observation("car_0_env_a")["reward"] == 3.0


def test_second_game_is_closed_with_1013(v1, bridge):
    with game_at(bridge.url, "[]") as second:
        assert second.close_code() == 1013
        assert "another game is already attached" in second.ws.close_reason
    assert eventually(lambda: bridge.stats["rejected_extra_game"] == 1)
    # the first one is unaffected
    bridge.spawn_agents("a", ["car_0_env_a"])
    v1.packet({"car_0_env_a": entry(reward=1.0)}, tick=v1.recv()["tick"])
    assert bridge.get_observation("car_0_env_a")["reward"] == 1.0


# ============================================================================================
# Security


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.com"])
def test_binding_beyond_loopback_needs_a_token(monkeypatch, host):
    monkeypatch.delenv("RBXENV_TOKEN", raising=False)
    with pytest.raises(ValueError, match="token"):
        TrainingBridge(host=host, port=0)
    TrainingBridge(host=host, port=0, token="s3cret")  # constructing binds nothing
    monkeypatch.setenv("RBXENV_TOKEN", "from-env")
    assert TrainingBridge(host=host, port=0).token == "from-env"


def test_loopback_hosts():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("::")


@pytest.fixture
def secured():
    b = TrainingBridge(host="127.0.0.1", port=0, token="s3cret", handshake_timeout=HANDSHAKE).start()
    try:
        yield b
    finally:
        b.close()


@pytest.mark.parametrize(
    ("path", "first"),
    [
        ("", hello()),  # v1 game without a token
        ("", hello(token="wrong")),
        ("", hello(token="")),
        ("?token=wrong", hello()),
        ("", "[]"),  # v0 game without a token
        ("?token=wrong", "[]"),
        ("?token=", "[]"),
    ],
)
def test_missing_or_wrong_token_closes_with_1008(secured, path, first):
    with game_at(secured.url + "/" + path, first) as g:
        err = g.recv()
        assert err == {"type": "error", "code": "unauthorized", "message": "missing or wrong token"}
        assert g.close_code() == 1008
    assert eventually(lambda: secured.stats["rejected_token"] == 1)
    assert not secured.connected


def test_right_token_in_hello_is_accepted(secured):
    with game_at(secured.url, hello(token="s3cret")) as g:
        assert g.recv()["type"] == "welcome"
        assert secured.wait_for_game(3).protocol == 1


def test_right_token_in_the_query_is_accepted(secured):
    with game_at(secured.url + "/?token=s3cret", "[]") as g:
        assert secured.wait_for_game(3) == V0_GAME
        secured.spawn_agents("a", ["car_0_env_a"])
        assert g.recv()["command"] == "SPAWN_AGENTS"


def test_token_in_the_query_also_serves_a_v1_game(secured):
    with game_at(secured.url + "/?token=s3cret", hello()) as g:
        assert g.recv()["type"] == "welcome"


# ============================================================================================
# Lifecycle


def test_close_is_idempotent_and_frees_the_port():
    b = TrainingBridge(port=0, handshake_timeout=HANDSHAKE).start()
    port = b.port
    assert port != 0 and b.url == f"ws://127.0.0.1:{port}"
    with game_at(b.url, hello()) as g:
        g.recv()
        b.wait_for_game(3)
        t0 = time.monotonic()
        b.close()
        b.close()
        assert time.monotonic() - t0 < 3
        assert g.close_code() == 1001  # going away
    assert port_is_free(port)
    again = TrainingBridge(port=port).start()
    try:
        assert again.port == port
    finally:
        again.close()


def test_calls_after_close_raise_bridge_closed(bridge):
    bridge.close()
    with pytest.raises(BridgeClosed, match="closed"):
        bridge.get_observations([], timeout=1)
    with pytest.raises(BridgeClosed):
        bridge.freeze(True)


def test_close_without_start_and_context_manager():
    TrainingBridge(port=0).close()
    with TrainingBridge(port=0, handshake_timeout=HANDSHAKE) as b:
        with game_at(b.url, "[]"):
            assert b.wait_for_game(3) == V0_GAME
    assert port_is_free(b.port)


def test_port_in_use_is_a_clear_os_error():
    with TrainingBridge(port=0) as first:
        second = TrainingBridge(port=first.port)
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            second.start()
        t0 = time.monotonic()
        second.close()
        assert time.monotonic() - t0 < 0.5


# ------------------------------------------------------------------ threads: the network thread runs the loop


def test_frames_are_handled_on_the_network_thread_while_training_waits(v1, bridge):
    """The training thread only waits on the slots' Condition: the answer is decoded and stored by
    the bridge's own thread, and wakes the waiting one."""
    bridge.spawn_agents("a", ["car_0_env_a"])
    tick = v1.recv()["tick"]
    seen = []
    receive = bridge._receive

    async def spy(conn, frame):
        seen.append(threading.current_thread().name)
        await receive(conn, frame)

    bridge._receive = spy
    threading.Timer(0.05, v1.packet, ({"car_0_env_a": entry(obs_of(0.5), 1.0)},), {"tick": tick}).start()
    got = bridge.get_observations(["car_0_env_a"])
    assert got.reward.tolist() == [1.0] and seen == ["rbxenv-bridge"]


def test_the_network_thread_serves_the_game_while_training_pauses(v1, bridge):
    bridge.spawn_agents("a", ["car_0_env_a"])
    tick = v1.recv()["tick"]
    v1.packet({"car_0_env_a": entry()}, tick=tick)
    bridge.get_observations(["car_0_env_a"])
    # No call from the training thread now: the game's frames are still handled (an error frame
    # is answered), and a game that leaves is noticed, by the background thread.
    v1.barrier()
    v1.close()
    assert eventually(lambda: bridge.data.lost is not None)
    with pytest.raises(BridgeClosed):
        bridge.get_observations(["car_0_env_a"])


def test_a_thread_running_an_event_loop_can_wait_for_observations(v1, bridge):
    """A notebook runs an asyncio loop in its thread; waiting blocks it, the bridge's loop goes on."""
    bridge.spawn_agents("a", ["car_0_env_a"])
    tick = v1.recv()["tick"]
    v1.packet({"car_0_env_a": entry(obs_of(0.25))}, tick=tick)

    async def inside_a_loop():
        return bridge.get_observations(["car_0_env_a"])

    got = asyncio.run(inside_a_loop())
    assert got.obs[0, 0] == np.float32(0.25)


def test_lockstep_timeout_still_says_what_is_missing(v1, bridge):
    bridge.spawn_agents("a", ["car_0_env_a"])
    v1.recv()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="no observation for 1 of 1 agents"):
        bridge.get_observations(["car_0_env_a"], timeout=0.3)
    assert 0.25 < time.monotonic() - started < 2.0


def test_ctrl_c_while_waiting_for_observations_keeps_the_game(v1, bridge):
    """Ctrl-C interrupts the training thread's wait, never the connection handler (it runs in the
    network thread): the game stays attached and the run can go on."""
    bridge.spawn_agents("a", ["car_0_env_a"])
    tick = v1.recv()["tick"]
    threading.Timer(0.1, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        bridge.get_observations(["car_0_env_a"], timeout=5)
    assert bridge.connected and bridge.data.lost is None
    v1.packet({"car_0_env_a": entry()}, tick=tick)
    bridge.get_observations(["car_0_env_a"])
    tick = bridge.send_action_batch({"a": {"car_0_env_a": [1.0, 0.0, 0.0]}})
    assert v1.recv()["tick"] == tick
    v1.packet({"car_0_env_a": entry(obs_of(0.5), 1.0)}, tick=tick)
    assert bridge.get_observations(["car_0_env_a"]).reward.tolist() == [1.0]


def test_frames_from_two_threads_go_out_in_the_order_they_were_sent(v1, bridge):
    bridge.spawn_agents("a", ["car_0_env_a"])
    v1.recv()
    for _ in range(20):
        side = threading.Thread(target=bridge.update_collisions, args=(True,))
        side.start()
        side.join()
        bridge.freeze(False)
    got = [v1.recv()["command"] for _ in range(40)]
    assert got == ["UPDATE_COLLISIONS", "FREEZE"] * 20


def test_close_right_after_a_lockstep_step_is_prompt(v1, bridge):
    bridge.spawn_agents("a", ["car_0_env_a"])
    v1.packet({"car_0_env_a": entry()}, tick=v1.recv()["tick"])
    bridge.get_observations(["car_0_env_a"])
    started = time.monotonic()
    bridge.close()
    assert time.monotonic() - started < 1.0
    assert v1.close_code() == 1001


# ---------------------------------------------------------------------------------------------- slots


def obs_batch(ids: list[str], tick: int, values: dict[str, float], has_info: list[bool]) -> protocol.ObsBatch:
    """A decoded packet: agent ``aid`` reports ``values[aid]`` as every observation and its reward,
    and (where ``has_info``) as its progress."""
    n = len(ids)
    v = np.array([values[aid] for aid in ids])
    info = protocol.info_columns(n)
    info["progress"] = np.where(has_info, v, np.nan)
    zeros = np.zeros(n, dtype=bool)
    obs = np.repeat(v[:, None], 13, axis=1).astype(np.float32)
    return protocol.ObsBatch(tick, list(ids), obs, v, zeros, zeros.copy(), info, np.array(has_info))


@pytest.mark.parametrize("reorder", [False, True])
def test_slots_give_each_agent_its_own_values_whatever_the_row_order(reorder):
    """Agents spawned together get consecutive rows (read as one slice); forgetting and spawning
    others scatters them. Either way each agent gets its own values, and the arrays handed over
    are copies that later packets do not change."""
    from rbxenv.observations import DataBridge

    data = DataBridge()
    ids = [protocol.agent_id(i, "a") for i in range(6)]
    data.expect_answers(ids, 1, restart=True)
    if reorder:
        data.forget(ids[1:3])  # frees two rows in the middle ...
        late = [protocol.agent_id(i, "b") for i in range(3)]
        data.expect_answers(late, 2, restart=True)  # ... which the next agents take, and one more
        ids = [ids[0], *late[::-1], *ids[3:]]
    data.expect_answers(ids, 3)
    assert isinstance(data.select(ids), np.ndarray) == reorder
    for tick in (3, 4):
        values = {aid: 10.0 * tick + k for k, aid in enumerate(ids)}
        sent = ids[::-1] if reorder else ids  # answers may come in any order
        has_info = [k % 2 == 0 for k in range(len(sent))]
        assert data.put_batch(obs_batch(sent, tick, values, has_info)) == []
        got = data.wait(ids, 1.0)
        expected = np.array([values[aid] for aid in ids])
        told = np.array([has_info[sent.index(aid)] for aid in ids])
        assert np.array_equal(got.obs[:, 0], expected.astype(np.float32))
        assert np.array_equal(got.reward, expected)
        assert np.array_equal(got.has_info, told)
        assert np.array_equal(got.info["progress"], np.where(told, expected, np.nan), equal_nan=True)
        if tick == 3:
            first = got
            data.expect_answers(ids, 4)
    assert np.array_equal(first.obs[:, 0], np.array([30.0 + k for k in range(len(ids))], np.float32))
    assert first.reward[0] == 30.0 and not data.ready(data.select(ids))


def test_slots_hand_over_a_restart_and_drop_packets_of_the_episode_it_ended():
    from rbxenv.observations import DataBridge

    data = DataBridge()
    ids = [protocol.agent_id(i, "a") for i in range(3)]
    data.expect_answers(ids, 1, restart=True)
    data.expect_answers(ids, 2)
    batch = obs_batch(ids, 2, dict.fromkeys(ids, 1.0), [True] * 3)
    batch.terminated[1] = True
    batch.restarted = np.array([False, True, False])
    batch.reset_obs = np.zeros((3, 13), np.float32)
    batch.reset_obs[1] = 7.0
    data.put_batch(batch)
    got = data.wait(ids, 1.0)
    assert got.restarted.tolist() == [False, True, False] and got.terminated.tolist() == [False, True, False]
    assert got.reset_obs[1].tolist() == [7.0] * 13 and not got.reset_obs[[0, 2]].any()
    data.expect_answers(ids, 3)
    late = obs_batch([ids[1]], 1, {ids[1]: 5.0}, [True])  # sent before the restart: the old episode's
    data.put_batch(late)
    assert data.stats["old_episode_packets"] == 1
    data.put_batch(obs_batch(ids, 3, dict.fromkeys(ids, 2.0), [True] * 3))
    got = data.wait(ids, 1.0)
    assert not got.restarted.any() and got.reward.tolist() == [2.0] * 3


def test_packets_after_an_unread_restart_are_dropped_and_ids_may_be_any_sequence():
    """A step answered late (the trainer timed out and stepped again): the car restarted in the
    late answer keeps that ending until it is read; the next episode's packet is not mixed in."""
    from rbxenv.observations import DataBridge

    data = DataBridge()
    ids = [protocol.agent_id(i, "a") for i in range(2)]
    data.expect_answers(ids, 1, restart=True)
    data.expect_answers(ids, 2)
    data.expect_answers(ids, 3)  # stepped again before the answer to 2 came
    late = obs_batch(ids, 2, dict.fromkeys(ids, 1.0), [True] * 2)
    late.terminated[0] = True
    late.restarted, late.reset_obs = np.array([True, False]), np.full((2, 13), 7.0, np.float32)
    data.put_batch(late)
    data.put_batch(obs_batch(ids, 3, dict.fromkeys(ids, 2.0), [True] * 2))
    assert data.stats["after_restart_packets"] == 1
    got = data.wait(np.array(ids), 1.0)  # ids as a numpy array work too
    assert got.terminated.tolist() == [True, False] and got.restarted.tolist() == [True, False]
    assert got.reward.tolist() == [1.0, 3.0] and got.obs[0, 0] == 1.0 and got.obs[1, 0] == 2.0
    assert got.reset_obs[0, 0] == 7.0
    assert isinstance(data.select(tuple(ids)), slice)


def test_a_ticked_packet_before_any_spawn_is_only_unknown():
    from rbxenv.observations import DataBridge

    data = DataBridge()  # no rows at all yet
    ids = ["car_0_env_a", "car_1_env_a"]
    assert data.put_batch(obs_batch(ids, 3, dict.fromkeys(ids, 1.0), [True, True])) == ids
    data.expect_answers(ids[:1], 4, restart=True)
    assert data.put_batch(obs_batch(ids, 4, dict.fromkeys(ids, 2.0), [True, True])) == ids[1:]
    assert data.wait(ids[:1], 1.0).reward.tolist() == [2.0]


# ============================================================================================
# Where a v0 place finds the trainer


def test_model_id_of_a_v0_url():
    from rbxenv.server import model_id_of

    assert model_id_of("/ws/telsa_new") == "telsa_new"
    assert model_id_of("/ws/telsa_new?token=x") == "telsa_new"
    assert model_id_of("/ws/model.v2-b") == "model.v2-b"
    for path in ("/", "", "/ws/", "/ws/a/b", "/other/x", "/ws/..", "/ws/a%2Fb", "/ws/" + "x" * 65, "/ws/a b"):
        assert model_id_of(path) is None, path


def test_the_url_path_names_the_model_and_any_path_is_accepted(bridge):
    with game_at(bridge.url + "/ws/telsa_new", hello()) as g:
        assert g.recv()["type"] == "welcome"
        bridge.wait_for_game(3)
        assert bridge.model_id == "telsa_new"
    assert eventually(lambda: not bridge.connected)
    with game_at(bridge.url + "/some/other/path", "[]") as g:
        bridge.wait_for_game(3)
        assert bridge.model_id is None


def test_a_trainer_serving_one_run_refuses_another_runs_path():
    with TrainingBridge(port=0, handshake_timeout=HANDSHAKE, serves="run_a") as b:
        assert b.url.endswith("/ws/run_a") and b.model_id == "run_a"
        base = b.url.removesuffix("/ws/run_a")
        for path in ("/ws/run_b", "/", "/ws/run_a/x"):
            with game_at(base + path) as stranger:
                assert stranger.close_code() == 1008
                assert f"serves /ws/run_a, not {path}" in stranger.ws.close_reason
        with game_at(b.url, hello()) as g:
            assert g.recv()["type"] == "welcome"
            assert b.wait_for_game(3).protocol == 1 and b.model_id == "run_a"
        assert b.stats["rejected_path"] == 3
    with pytest.raises(ValueError, match="serves='no/slash'"):
        TrainingBridge(port=0, serves="no/slash")
    from rbxenv.session import GameSession

    assert GameSession(sim=None, serves="run_a").bridge.serves == "run_a"  # the session passes it on


def _has_ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_a_loopback_trainer_answers_on_both_loopbacks(host):
    """ "localhost" in a place's URL may resolve to 127.0.0.1 or ::1: the trainer is on both."""
    b = TrainingBridge(host=host, port=0, handshake_timeout=HANDSHAKE).start()
    try:
        for url in (f"ws://127.0.0.1:{b.port}/ws/a", f"ws://[::1]:{b.port}/ws/b"):
            with game_at(url, hello()) as g:
                assert g.recv()["type"] == "welcome"
                b.wait_for_game(3)
                assert b.model_id == url[-1]
            assert eventually(lambda: not b.connected)
    finally:
        b.close()


# ============================================================================================
# Strangers: a connection becomes a game only once it has spoken the protocol


def test_a_stranger_whose_first_frame_is_junk_is_dropped_and_never_becomes_the_game(bridge):
    with game_at(bridge.url, "GET / HTTP/1.1") as stranger:
        assert stranger.close_code() == 1002
        assert stranger.ws.close_reason.startswith("not a game")
    assert not bridge.connected and bridge.data.lost is None
    with game_at(bridge.url, hello()) as g:
        assert g.recv()["type"] == "welcome"
        assert bridge.wait_for_game(3).protocol == 1
    assert bridge.stats["strangers_dropped"] == 1


def test_a_silent_stranger_is_dropped_and_the_game_attaches_meanwhile(bridge):
    with game_at(bridge.url) as silent:
        with game_at(bridge.url, hello()) as g:  # arrives while the stranger holds its connection
            assert g.recv()["type"] == "welcome"
            assert bridge.wait_for_game(3).protocol == 1
        assert silent.close_code() == 1002
        assert "nothing within" in silent.ws.close_reason
    assert bridge.stats["strangers_dropped"] == 1 and bridge.stats["rejected_extra_game"] == 0


def test_connections_in_their_handshake_are_limited_per_address(bridge, monkeypatch):
    monkeypatch.setattr(server, "MAX_PENDING_PER_ADDRESS", 3)
    silent = [Game(bridge.url) for _ in range(3)]
    try:
        assert eventually(lambda: sum(bridge._pending.values()) == 3)
        with game_at(bridge.url) as refused:
            assert refused.close_code() == 1013
            assert "too many connections" in refused.ws.close_reason
        assert bridge.stats["rejected_pending"] == 1
    finally:
        for g in silent:
            g.close()
    assert eventually(lambda: not bridge._pending)
    with game_at(bridge.url, hello()) as g:  # the stranger's connections gone, the game gets in
        assert g.recv()["type"] == "welcome"


@pytest.mark.timeout(60)  # 1,000 connections: seconds on a loaded machine
def test_hostile_peers_before_and_during_a_run_cost_it_nothing(bridge):
    """Half-open TCP, 1,000 connection attempts, junk and slow handshakes: before the game
    connects and while it steps. The game attaches, every step is answered, the run goes on."""
    address = ("127.0.0.1", bridge.port)
    half_open = [socket.create_connection(address) for _ in range(20)]  # no HTTP upgrade, ever
    for _ in range(1000):
        socket.create_connection(address).close()
    stop = threading.Event()

    def hostile() -> None:
        while not stop.is_set():
            for first in ("junk", None, '{"type": "obs"}', b"\x00\xff"):
                try:
                    with game_at(bridge.url, first) as g:
                        if first is not None:
                            g.close_code()
                except (OSError, ConnectionClosed, AssertionError):
                    pass

    peer = threading.Thread(target=hostile)
    peer.start()
    try:
        with game_at(bridge.url, hello()) as g:
            assert g.recv()["type"] == "welcome"
            bridge.wait_for_game(3)
            bridge.spawn_agents("a", ["car_0_env_a"])
            g.packet({"car_0_env_a": entry()}, tick=g.recv()["tick"])
            bridge.get_observations(["car_0_env_a"])
            for step in range(30):
                tick = bridge.send_action_batch({"a": {"car_0_env_a": [1.0, 0.0, 0.0]}})
                assert g.recv()["tick"] == tick
                g.packet({"car_0_env_a": entry(obs_of(step / 30), 1.0)}, tick=tick)
                got = bridge.get_observations(["car_0_env_a"])
                assert got.reward.tolist() == [1.0] and got.obs[0, 0] == np.float32(step / 30)
            assert bridge.connected and bridge.data.lost is None
    finally:
        stop.set()
        peer.join(timeout=10)
        for s in half_open:
            s.close()
    assert bridge.stats["strangers_dropped"] >= 2 and bridge.stats["bad_frames"] == 0
