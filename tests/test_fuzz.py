"""Hostile input at both ends of the wire, bounded in count and time, loopback only.

Bridge: a scripted game completes a hello, then floods the trainer with thousands of malformed
frames (bad JSON, NaN/Infinity, wrong types and lengths, unknown agents and types, 10,000-deep
nesting, > 1 MiB frames, binary frames, random bytes, truncated messages) while the trainer keeps
stepping real agents through ACTION_BATCH round trips. Simulator: a hostile trainer does the same to
the real ``rbxenv.sim`` client, in process and as ``python -m rbxenv.sim``. Every bad frame must be
counted by code, answered with an ``error`` in order, and logged at a limited rate; valid traffic
must keep flowing. Corpora come from seeded generators (and hypothesis with derandomize=True).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import subprocess
import sys
import threading
import time
from collections import Counter

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netutil import assert_clean_output
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from rbxenv import protocol, tracks
from rbxenv.bridge import BridgeClosed, TrainingBridge
from rbxenv.protocol import ProtocolError
from rbxenv.sim import client as simclient
from rbxenv.sim.client import SimGame
from rbxenv.sim.world import Sim

pytestmark = pytest.mark.timeout(120)

OBS_SIZE = 13
CAPS = ["batch", "tick", "info", "track_spec", "random_start"]
HELLO = {"type": "hello", "protocol": 1, "game": "fuzz game", "obs_size": OBS_SIZE, "num_rays": 10,
         "action_size": 3, "tick_hz": 15, "mode": "lockstep", "capabilities": CAPS}  # fmt: skip
AGENTS = [f"car_{i}_env_{v}" for v in ("a", "b") for i in range(3)]
DEEP = "[" * 10_000 + "]" * 10_000
MIB = protocol.MAX_FRAME_BYTES


def entry(value: float = 0.5, reward: float = 1.0, **changes) -> dict:
    out = {"obs": [value] * OBS_SIZE, "reward": reward, "terminated": False, "truncated": False}
    out.update(changes)
    return out


# ============================================================================================
# Corpus of bad game -> trainer frames, each with the error code the trainer must answer


def bad_game_frames(rng: random.Random, count: int) -> list[tuple[str | bytes, str]]:
    """``count`` malformed frames (text or binary) with their expected error code, seeded."""
    valid = json.dumps({"type": "obs", "tick": 1, "agents": {a: entry() for a in AGENTS}})
    fixed: list[tuple[str | bytes, str]] = [
        ("", "bad_json"),
        ("{not json", "bad_json"),
        ('{"car_0_env_a": {"obs": [NaN], "reward": 0}}', "bad_json"),
        ('{"type": "obs", "tick": Infinity, "agents": {}}', "bad_json"),
        ('{"type": "obs", "tick": 1, "agents": {"car_0_env_a": {"obs": [-Infinity]}}}', "bad_json"),
        ('{"type": "obs", "tick": 1e400, "agents": {}}', "bad_json"),
        (DEEP, "bad_json"),
        ('{"a":' * 5000 + "1" + "}" * 5000, "bad_json"),
        ('"\\ud800"', "bad_json"),
        ("[1, 2, 3]", "bad_message"),
        ("null", "bad_message"),
        ("12345678901234567890123", "bad_message"),
        ('"just a string"', "bad_message"),
        (json.dumps({"car_0_env_a": {**entry(), "obs": [0.5] * 12}}), "bad_message"),
        (json.dumps({"car_0_env_a": {**entry(), "obs": [0.5] * 14}}), "bad_message"),
        (json.dumps({"car_0_env_a": {**entry(), "obs": []}}), "bad_message"),
        (json.dumps({"car_0_env_a": {**entry(), "obs": "fast"}}), "bad_message"),
        (json.dumps({"car_0_env_a": {**entry(), "obs": [1e39] * OBS_SIZE}}), "bad_message"),  # float32 overflow
        (json.dumps({"car_0_env_a": {**entry(), "obs": [True] * OBS_SIZE}}), "bad_message"),
        (json.dumps({"car_0_env_a": {**entry(), "reward": "10"}}), "bad_message"),
        (json.dumps({"car_0_env_a": {**entry(), "reward": None}}), "bad_message"),
        (json.dumps({"car_0_env_a": {**entry(), "terminated": 0}}), "bad_message"),
        (json.dumps({"car_0_env_a": {"obs": [0.5] * OBS_SIZE}}), "bad_message"),
        (json.dumps({"car_0_env_a": [1, 2]}), "bad_message"),
        (json.dumps({"car_0_env_a": {**entry(), "info": {"lap": -1}}}), "bad_message"),
        (json.dumps({"car_0_env_a": {**entry(), "info": {"cause": "aliens"}}}), "bad_message"),
        (json.dumps({"car_0_env_a": {**entry(), "info": [1]}}), "bad_message"),
        (json.dumps({"type": "obs", "tick": -1, "agents": {}}), "bad_message"),
        (json.dumps({"type": "obs", "tick": 1.5, "agents": {}}), "bad_message"),
        (json.dumps({"type": "obs", "tick": True, "agents": {}}), "bad_message"),
        (json.dumps({"type": "obs", "tick": 2**60, "agents": {}}), "bad_message"),
        (json.dumps({"type": "obs", "tick": 1, "agents": [1]}), "bad_message"),
        (json.dumps(HELLO), "bad_message"),  # a hello after the first frame
        (json.dumps({"type": "welcome"}), "unknown_command"),
        (json.dumps({"type": "teleport", "x": 1}), "unknown_command"),
        (json.dumps({"type": 7}), "unknown_command"),
        (json.dumps({"car_99_env_zz": entry()}), "unknown_agent"),
        (json.dumps({"type": "obs", "tick": 3, "agents": {"car_7_env_a": entry()}}), "unknown_agent"),
        (json.dumps({"bob": entry()}), "unknown_agent"),
        (json.dumps({"car_0_env_a b": entry()}), "unknown_agent"),
        (json.dumps({"car_٣_env_a": entry()}), "unknown_agent"),  # non-ASCII digit
        (json.dumps({f"car_{k}_env_x": entry() for k in range(protocol.MAX_AGENTS + 1)}), "too_large"),
        (b'{"car_0_env_a": {}}', "bad_message"),  # binary frame
        (valid.encode(), "bad_message"),  # a valid packet, but binary
        ("x" * (MIB + 1), "too_large"),
        (json.dumps({"type": "error", "message": "é" * (MIB // 2 + 10)}), "too_large"),  # > 1 MiB in UTF-8 bytes
    ]
    out = list(fixed)
    while len(out) < count:
        kind = rng.randrange(6)
        if kind == 0:  # truncated valid message: any proper prefix of an object is not JSON
            out.append((valid[: rng.randrange(1, len(valid))], "bad_json"))
        elif kind == 1:  # random bytes in a binary frame
            out.append((rng.randbytes(rng.randrange(0, 200)), "bad_message"))
        elif kind == 2:  # random printable junk as text
            text = "".join(rng.choice('{}[]":,0123456789.eE-+ nultrfasNIx\\') for _ in range(rng.randrange(1, 80)))
            try:
                protocol.decode_game_message(text, OBS_SIZE)
            except ProtocolError as err:
                out.append((text, err.code))
        elif kind == 3:  # one field of a valid packet swapped for a wrong type or length
            e = entry()
            field = rng.choice(["obs", "reward", "terminated", "truncated"])
            e[field] = rng.choice([None, "1", [], {}, [0.5] * rng.choice([1, 12, 14, 100]), 1e39, True, 3])
            if field in ("terminated", "truncated") and type(e[field]) is bool:
                e[field] = "no"
            if field == "reward" and type(e[field]) in (int, float) and e[field] is not True:
                e[field] = [e[field]]
            msg = {"type": "obs", "tick": rng.randrange(10**6), "agents": {rng.choice(AGENTS): e}}
            out.append((json.dumps(msg), "bad_message"))
        elif kind == 4:  # unknown agents only (a known one would be stored before the error)
            msg = {f"car_{rng.randrange(100, 10**6)}_env_{rng.choice('abz')}": entry()}
            out.append((json.dumps(msg), "unknown_agent"))
        else:  # NaN / Infinity literals spliced into a valid packet
            lit = rng.choice(["NaN", "Infinity", "-Infinity", "nan", "inf"])
            out.append((valid.replace("0.5", lit, 1), "bad_json"))
    return out[:count] if count >= len(fixed) else out


# ============================================================================================
# The bridge under a flood of bad frames while the trainer steps real agents


class FuzzGame(threading.Thread):
    """A v1 lockstep game: answers every SPAWN_AGENTS / ACTION_BATCH with an obs batch whose
    observations are ``tick / 10000``, and sends ``per_command`` bad frames before each answer."""

    def __init__(self, url: str, corpus: list[tuple[str | bytes, str]], per_command: int):
        super().__init__(daemon=True)
        self.corpus, self.per_command = corpus, per_command
        self.ws = connect(url, open_timeout=5, close_timeout=1, max_size=None).__enter__()
        self.ws.send(json.dumps(HELLO))
        assert json.loads(self.ws.recv(5))["type"] == "welcome"
        self.sent: list[str] = []  # expected codes, in the order the bad frames went out
        self.errors: list[dict] = []  # error messages received, in order
        self.game_errors = 0
        self.failure: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            k = 0
            while not self.stop.is_set():
                try:
                    frame = self.ws.recv(0.05)
                except TimeoutError:
                    continue
                msg = json.loads(frame)
                if msg.get("type") == "error":
                    self.errors.append(msg)
                    continue
                name = msg.get("command")
                if name not in ("SPAWN_AGENTS", "ACTION_BATCH"):
                    continue
                for _ in range(self.per_command):  # hostile noise between command and answer
                    if k < len(self.corpus):
                        bad, code = self.corpus[k]
                        self.ws.send(bad)
                        self.sent.append(code)
                        k += 1
                if k % 7 == 0:  # valid, but a peer's error report: logged at a limited rate too
                    self.ws.send(json.dumps({"type": "error", "code": "bad_message", "message": f"noise {k}"}))
                    self.game_errors += 1
                tick = msg["tick"]
                if name == "SPAWN_AGENTS":
                    ids = msg["data"]["agents"]
                else:
                    ids = [aid for per_venv in msg["data"].values() for aid in per_venv]
                    # a stale packet first: its reward counts, its observation is not the answer
                    stale = {aid: entry(value=-1.0, reward=0.25) for aid in ids}
                    self.ws.send(json.dumps({"type": "obs", "tick": tick - 1, "agents": stale}))
                agents = {aid: entry(value=tick / 10000, reward=0.75) for aid in ids}
                self.ws.send(orjson.dumps({"type": "obs", "tick": tick, "agents": agents}).decode())
            self.ws.close()
        except BaseException as err:  # noqa: BLE001 - reported by the test
            self.failure = err


def test_bridge_survives_a_flood_of_bad_frames_while_training(caplog):
    caplog.set_level(logging.WARNING, logger="rbxenv.bridge")
    corpus = bad_game_frames(random.Random(0), 12_000)
    steps = 400
    per_command = -(-len(corpus) // steps)
    bridge = TrainingBridge(port=0, obs_timeout=20).start()
    game = None
    t0 = time.monotonic()
    try:
        game = FuzzGame(bridge.url, corpus, per_command)
        game.start()
        assert bridge.wait_for_game(5).has("batch")
        for v in ("a", "b"):
            bridge.spawn_agents(v, [aid for aid in AGENTS if aid.endswith(f"_env_{v}")])
        first = bridge.get_observations(AGENTS)
        assert first.obs.shape == (6, OBS_SIZE)
        for _ in range(steps - 1):  # the two spawns also carried noise
            tick = bridge.send_action_batch({v: {aid: [1.0, 0.0, 0.0] for aid in AGENTS if aid[-1] == v} for v in "ab"})
            got = bridge.get_observations(AGENTS)
            np.testing.assert_array_equal(got.obs, np.full((6, OBS_SIZE), tick / 10000, np.float32))
            np.testing.assert_array_equal(got.reward, np.full(6, 1.0))  # stale 0.25 + answer 0.75
            assert not got.terminated.any() and not got.truncated.any()
        # everything sent has been handled once the error for the last bad frame came back
        deadline = time.monotonic() + 20
        while len(game.errors) < len(game.sent) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        if game is not None:
            game.stop.set()
            game.join(5)
        bridge.close()
    elapsed = time.monotonic() - t0
    assert game.failure is None, game.failure
    assert len(game.sent) == len(corpus) >= 10_000
    # every bad frame: counted, by code, and answered with an error of that code, in order
    assert bridge.stats["bad_frames"] == len(corpus)
    expected = Counter(game.sent)
    assert {c: bridge.stats[f"bad_frames.{c}"] for c in expected} == dict(expected)
    assert [e["code"] for e in game.errors] == game.sent
    assert all(e["message"] for e in game.errors)
    assert bridge.stats["stale_packets"] == 6 * (steps - 1)
    assert bridge.stats["errors_from_game"] == game.game_errors > 0
    # logging is rate-limited: one line per kind per 5 s, not one per frame
    records = [r for r in caplog.records if r.name == "rbxenv.bridge"]
    kinds = len(expected) + 1  # + the game's own error reports
    assert len(records) <= kinds * (2 + int(elapsed / 5)), [r.getMessage()[:80] for r in records]
    print(f"\n{len(corpus)} bad frames + {steps} steps in {elapsed:.1f} s, {len(records)} log records")


def test_frame_beyond_16_mib_closes_with_1009_and_the_trainer_takes_the_game_back():
    bridge = TrainingBridge(port=0, obs_timeout=5).start()
    try:
        ws = connect(bridge.url, open_timeout=5, max_size=None).__enter__()
        ws.send(json.dumps(HELLO))
        assert json.loads(ws.recv(5))["type"] == "welcome"
        bridge.wait_for_game(5)
        bridge.spawn_agents("a", ["car_0_env_a"])
        ws.recv(5)
        with pytest.raises(ConnectionClosed):
            ws.send("[" + "0," * (8 * MIB + 1) + "0]")  # > 16 MiB
            ws.recv(5)
        assert ws.close_code == 1009
        with pytest.raises(BridgeClosed, match="disconnected"):  # 1006 on its side: the send was cut short
            bridge.get_observation("car_0_env_a", timeout=5)
        # the trainer is still serving: the game reconnects and training goes on
        with connect(bridge.url, open_timeout=5, max_size=None) as ws2:
            ws2.send(json.dumps(HELLO))
            assert json.loads(ws2.recv(5))["type"] == "welcome"
            bridge.wait_for_game(5)
            bridge.spawn_agents("a", ["car_0_env_a"])
            cmd = json.loads(ws2.recv(5))
            ws2.send(json.dumps({"type": "obs", "tick": cmd["tick"], "agents": {"car_0_env_a": entry(0.25)}}))
            got = bridge.get_observation("car_0_env_a")
            assert got["obs"][0] == 0.25 and got["reward"] == 1.0
    finally:
        bridge.close()


# ============================================================================================
# Corpus of bad trainer -> game commands


def square_ring(n: int = 64, radius: float = 120.0, half_width: float = 12.0) -> dict:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return {"centerline": np.c_[radius * np.cos(a), radius * np.sin(a)].tolist(), "half_width": [half_width] * n}


def bad_commands(rng: random.Random, count: int) -> list[tuple[str | bytes, str]]:
    """Malformed or refused commands for a game whose venv "a" holds car_0..car_2; expected codes."""
    cmd = protocol.encode_command
    dense = square_ring(20_000, 50.0)  # 0.016 studs apart: would take minutes to build
    valid = cmd("ACTION_BATCH", None, {"a": {f"car_{i}_env_a": [1.0, 0.0, 0.0] for i in range(3)}}, 5).decode()
    fixed: list[tuple[str | bytes, str]] = [
        ("", "bad_json"),
        ("{not json", "bad_json"),
        (DEEP, "bad_json"),
        ('{"command": "ACTION", "envid": "a", "data": {"car_0_env_a": [NaN, 0, 0]}}', "bad_json"),
        ('{"command": "FREEZE", "data": Infinity}', "bad_json"),
        (b'{"command": "CLOSE_ALL"}', "bad_message"),
        ("[]", "bad_message"),
        (json.dumps({"command": "JUMP", "envid": "a"}), "unknown_command"),
        (json.dumps({"command": None}), "unknown_command"),
        (json.dumps({"type": "teleport"}), "unknown_command"),
        (json.dumps({"command": "FREEZE", "data": "yes"}), "bad_message"),
        (json.dumps({"command": "UPDATE_COLLISIONS", "data": 1}), "bad_message"),
        (json.dumps({"command": "ACTION", "envid": "a", "data": {"car_0_env_a": [1, 0]}}), "bad_message"),
        (json.dumps({"command": "ACTION", "envid": "a", "data": {"car_0_env_a": [1, 0, 0, 0]}}), "bad_message"),
        (json.dumps({"command": "ACTION", "envid": "a", "data": {"car_0_env_a": ["1", 0, 0]}}), "bad_message"),
        (json.dumps({"command": "ACTION", "envid": "a", "data": [1, 0, 0]}), "bad_message"),
        (json.dumps({"command": "ACTION", "envid": "a b", "data": {}}), "bad_message"),
        (json.dumps({"command": "ACTION", "envid": "a", "data": {"car_9_env_a": [1, 0, 0]}}), "unknown_agent"),
        (json.dumps({"command": "ACTION", "envid": "a", "data": {"car_0_env_b": [1, 0, 0]}}), "unknown_agent"),
        (
            json.dumps(
                {"command": "ACTION_BATCH", "data": {"a": {"car_0_env_a": [0, 0, 0]}, "q": {"car_0_env_q": [0, 0, 0]}}}
            ),
            "unknown_agent",
        ),  # fmt: skip
        (json.dumps({"command": "RESET_AGENTS", "envid": "a", "data": ["car_5_env_a"]}), "unknown_agent"),
        (json.dumps({"command": "REMOVE_AGENTS", "envid": "a", "data": ["car_5_env_a"]}), "unknown_agent"),
        (json.dumps({"command": "RESET_AGENTS", "envid": "a", "data": "car_0_env_a"}), "bad_message"),
        (json.dumps({"command": "ACTION_BATCH", "tick": -3, "data": {}}), "bad_message"),
        # the column form (capability "columns")
        (
            json.dumps({"command": "ACTION_BATCH", "tick": 2, "ids": ["car_9_env_a"], "actions": [[1, 0, 0]]}),
            "unknown_agent",
        ),
        (
            json.dumps({"command": "ACTION_BATCH", "tick": 2, "ids": ["car_0_env_a"], "actions": [[1, 0]]}),
            "bad_message",
        ),
        (json.dumps({"command": "ACTION_BATCH", "tick": 2, "ids": ["car_0_env_a"], "actions": []}), "bad_message"),
        (
            json.dumps({"command": "ACTION_BATCH", "tick": 2, "ids": ["car_0_env_a"] * 2, "actions": [[1, 0, 0]] * 2}),
            "bad_message",
        ),
        (json.dumps({"command": "ACTION_BATCH", "tick": 1, "data": {f"v{k}": {} for k in range(10_000)}}), "too_large"),
        (
            json.dumps({"command": "SPAWN_AGENTS", "envid": "z", "data": [f"car_{k}_env_z" for k in range(100_000)]}),
            "too_large",
        ),  # fmt: skip
        (json.dumps({"command": "SPAWN_AGENTS", "envid": "z", "data": ["car_999999_env_z"]}), "too_large"),
        (json.dumps({"command": "SPAWN_AGENTS", "envid": "z", "data": ["car_256_env_z"]}), "too_large"),
        (
            json.dumps({"command": "SPAWN_AGENTS", "envid": "z", "data": {"agents": ["car_0_env_z"], "track": dense}}),
            "bad_message",
        ),  # fmt: skip
        (
            json.dumps(
                {
                    "command": "SPAWN_AGENTS",
                    "envid": "z",
                    "data": {"agents": ["car_0_env_z"], "track": square_ring(radius=1e7)},
                }
            ),
            "bad_message",
        ),  # fmt: skip
        (
            json.dumps(
                {
                    "command": "SPAWN_AGENTS",
                    "envid": "z",
                    "data": {"agents": ["car_0_env_z"], "track": square_ring(half_width=1e6)},
                }
            ),
            "bad_message",
        ),  # fmt: skip
        (
            json.dumps(
                {
                    "command": "SPAWN_AGENTS",
                    "envid": "z",
                    "data": {"agents": ["car_0_env_z"], "track": {**square_ring(8, 0.0)}},
                }
            ),
            "bad_message",
        ),  # fmt: skip
        (
            json.dumps({"command": "SPAWN_AGENTS", "envid": "z", "data": {"agents": ["car_0_env_z"], "start": "moon"}}),
            "bad_message",
        ),  # fmt: skip
        (json.dumps({"type": "welcome", "capabilities": 5}), "bad_message"),
        (json.dumps({"type": "welcome", "capabilities": "batch"}), "bad_message"),
        ("x" * (MIB + 1), "too_large"),
    ]
    out = list(fixed)
    while len(out) < count:
        kind = rng.randrange(5)
        if kind == 0:
            out.append((valid[: rng.randrange(1, len(valid))], "bad_json"))
        elif kind == 1:
            out.append((rng.randbytes(rng.randrange(0, 200)), "bad_message"))
        elif kind == 2:
            text = "".join(rng.choice('{}[]":,0123456789.eE-+ nultrfasNIx\\') for _ in range(rng.randrange(1, 80)))
            try:
                protocol.decode_command(text)
            except ProtocolError as err:
                out.append((text, err.code))
        elif kind == 3:
            row = rng.choice([[1, 0], [], "go", [None, 0, 0], {"t": 1}, [1, 0, 0, 0]])
            out.append((cmd("ACTION", "a", {"car_0_env_a": row}).decode(), "bad_message"))
        else:
            lit = rng.choice(["NaN", "Infinity", "-Infinity"])
            out.append((valid.replace("1.0", lit, 1), "bad_json"))
    return out


# ============================================================================================
# The simulator client against a hostile trainer


async def hostile_trainer(port_box: list, corpus: list, steps: int, done: asyncio.Future) -> None:
    """Serve one simulator: handshake, spawn, then ``steps`` rounds of bad commands + one ACTION_BATCH."""
    per_round = -(-len(corpus) // steps)
    result: dict = {"errors": [], "sent": [], "obs": 0, "trainer_errors": 0}

    async def handler(ws) -> None:
        try:
            hello = json.loads(await ws.recv())
            assert hello["type"] == "hello" and hello["mode"] == "lockstep"
            await ws.send(protocol.encode_welcome(frozenset(CAPS)).decode())
            ids = [f"car_{i}_env_a" for i in range(3)]
            await ws.send(protocol.encode_command("SPAWN_AGENTS", "a", {"agents": ids, "track": tracks.generate(3),
                                                                        "start": "grid"}, 1).decode())  # fmt: skip
            first = json.loads(await ws.recv())
            assert first["type"] == "obs" and first["tick"] == 1 and sorted(first["agents"]) == ids
            k, tick = 0, 1
            for _ in range(steps):
                codes = []
                for bad, code in corpus[k : k + per_round]:
                    await ws.send(bad)
                    codes.append(code)
                k += per_round
                if tick % 5 == 0:  # a valid error report from the trainer: no answer, logged at a limited rate
                    await ws.send(protocol.encode_error("bad_message", f"noise {tick}").decode())
                    result["trainer_errors"] += 1
                tick += 1
                actions = {aid: [1.0, 0.0, 1e300 if tick % 3 == 0 else 0.0] for aid in ids}
                await ws.send(protocol.encode_command("ACTION_BATCH", None, {"a": actions}, tick).decode())
                for code in codes:
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    assert reply["type"] == "error" and reply["code"] == code, (code, reply)
                    result["errors"].append(reply)
                result["sent"] += codes
                reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert reply["type"] == "obs" and reply["tick"] == tick, reply
                batch = protocol.decode_game_message(json.dumps(reply), OBS_SIZE)
                assert np.isfinite(batch.obs).all() and set(batch.agent_ids) <= set(ids)
                result["obs"] += 1
                if batch.terminated.any() or batch.truncated.any():  # keep the cars driving
                    tick += 1
                    await ws.send(protocol.encode_command("RESET_AGENTS", "a", ids, tick).decode())
                    assert json.loads(await asyncio.wait_for(ws.recv(), 10))["tick"] == tick
            await ws.close()
        except BaseException as err:  # noqa: BLE001 - reported by the test
            result["failure"] = err
            await ws.close()
        done.set_result(result)

    async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
        port_box.append(server.sockets[0].getsockname()[1])
        await done


def test_sim_client_survives_a_hostile_trainer(caplog):
    caplog.set_level(logging.WARNING, logger="rbxenv.sim")
    corpus = bad_commands(random.Random(1), 6_000)
    steps = 200

    async def main():
        done = asyncio.get_running_loop().create_future()
        port: list = []
        server = asyncio.create_task(hostile_trainer(port, corpus, steps, done))
        while not port:
            await asyncio.sleep(0.01)
        stats = await asyncio.wait_for(simclient.run(f"ws://127.0.0.1:{port[0]}", seed=0), 90)
        await server
        return stats, done.result()

    t0 = time.monotonic()
    stats, result = asyncio.run(main())
    elapsed = time.monotonic() - t0
    assert "failure" not in result, result["failure"]
    assert result["obs"] == steps
    assert len(result["sent"]) == len(corpus) and stats["bad_commands"] == len(corpus)
    assert [e["code"] for e in result["errors"]] == result["sent"], "one error per bad command, in order"
    assert result["trainer_errors"] > 0 and stats["steps"] >= steps
    assert stats["internal_errors"] == 0, "a bad command reached the simulator unchecked"
    records = [r for r in caplog.records if r.name == "rbxenv.sim"]
    kinds = len(set(result["sent"])) + 1
    assert len(records) <= kinds * (2 + int(elapsed / 5)), [r.getMessage()[:80] for r in records]
    print(f"\n{len(corpus)} bad commands + {steps} steps in {elapsed:.1f} s, {len(records)} log records")


def test_python_m_rbxenv_sim_never_dies_on_bad_input():
    """The real process: bad commands, then a clean close; exit code 0 and a short stderr."""
    corpus = bad_commands(random.Random(2), 1_500)

    async def main():
        done = asyncio.get_running_loop().create_future()
        port: list = []
        server = asyncio.create_task(hostile_trainer(port, corpus, 30, done))
        while not port:
            await asyncio.sleep(0.01)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rbxenv.sim", "--url", f"ws://127.0.0.1:{port[0]}",
            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        await asyncio.wait_for(server, 90)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode, err.decode(), done.result()

    code, stderr, result = asyncio.run(main())
    assert "failure" not in result, result["failure"]
    assert result["obs"] == 30, "every ACTION_BATCH was answered"
    assert result["sent"] == [c for _, c in corpus], "every bad command got its error, in order"
    assert code == 0, stderr[-2000:]
    assert_clean_output(stderr)  # no traceback, and no internal error passed off as a bad command
    lines = stderr.splitlines()
    assert len(lines) <= 2 * (len(set(result["sent"])) + 1), lines[:40]


# ============================================================================================
# SimGame without sockets: mutated command sequences (hypothesis, derandomized)


def _game(columns: bool) -> SimGame:
    """A game with 3 cars; ``columns``: it sends and takes the column form, and restarts them (autoreset)."""
    game = SimGame(Sim(seed=0))
    game.welcome(CAPS + ["columns", "autoreset"] if columns else CAPS)
    spawn = {"agents": [f"car_{i}_env_a" for i in range(3)], "track": tracks.generate(3), "autoreset": columns}
    out = game.receive(protocol.encode_command("SPAWN_AGENTS", "a", spawn, 1).decode())
    assert json.loads(out[0])["type"] == "obs"
    return game


GAMES = {"per-agent form": _game(columns=False), "column form + autoreset": _game(columns=True)}
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.sampled_from(["car_0_env_a", "car_1_env_b", "car_300_env_a", "a", "b", "grid", "random"])
)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                      max_leaves=12)  # fmt: skip
commands = st.fixed_dictionaries(
    {"command": st.sampled_from(sorted(protocol.COMMANDS) + ["JUMP"]), "envid": st.sampled_from(["a", "b", None, 3])},
    optional={
        "data": values,
        "tick": st.integers(0, 2**53) | values,
        "ids": st.lists(st.sampled_from(["car_0_env_a", "car_1_env_a", "car_2_env_a", "car_0_env_b"]), max_size=4)
        | values,
        "actions": st.lists(st.lists(st.floats(allow_nan=False), min_size=3, max_size=3), max_size=4) | values,
    },
)


@pytest.mark.parametrize("form", GAMES)
@settings(derandomize=True, max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(seq=st.lists(commands, min_size=1, max_size=6))
def test_sim_game_never_raises_on_arbitrary_commands(form, seq):
    game = GAMES[form]
    for msg in seq:
        try:
            frame = orjson.dumps(msg).decode()
        except (TypeError, orjson.JSONEncodeError):
            continue
        for out in game.receive(frame):
            reply = protocol.decode_game_message(out, OBS_SIZE)  # a valid message, or this raises
            assert isinstance(reply, protocol.ObsBatch | protocol.ErrorMessage)
            if isinstance(reply, protocol.ObsBatch):
                assert ("ids" in json.loads(out)) == game.columns
                assert np.isfinite(reply.obs).all()
    assert game.stats["internal_errors"] == 0
    assert len(game.sim.agent_ids) <= simclient.MAX_CARS and len(game.sim.envids) <= simclient.MAX_VENVS
