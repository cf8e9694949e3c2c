"""rbxenv.protocol against PROTOCOL.md: every command and message, every way to get one wrong.

Valid messages must decode to what the page says; malformed ones must raise ``ProtocolError``
(never anything else) with the §3.5 code and a message naming the field, what was expected and
what came. The hypothesis tests fuzz both decoders with arbitrary JSON and mutations of valid
messages; they are derandomized so the suite is deterministic.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rbxenv import protocol as p
from rbxenv.protocol import (
    MAX_AGENTS,
    MAX_FRAME_BYTES,
    MAX_VENVS,
    PROTOCOL_VERSION,
    V0_GAME,
    Command,
    ErrorMessage,
    GameSpec,
    Hello,
    ObsBatch,
    ProtocolError,
    decode_command,
    decode_game_message,
)

pytestmark = pytest.mark.timeout(60)

FUZZ = settings(derandomize=True, deadline=None, max_examples=300, suppress_health_check=list(HealthCheck))

OBS13 = [0.5] * 10 + [1.0, 0.25, 0.0]


def raw(msg: object) -> str:
    return json.dumps(msg)


def entry(obs: object = ..., reward: object = 0.35, terminated: object = False, truncated: object = False, **extra):
    out = {"obs": OBS13 if obs is ... else obs, "reward": reward, "terminated": terminated, "truncated": truncated}
    out.update(extra)
    return out


def square_track(n: int = 8) -> dict:
    pts = [[100 * math.cos(2 * math.pi * k / n), 100 * math.sin(2 * math.pi * k / n)] for k in range(n)]
    return {
        "version": 1,
        "name": "polar-7",
        "method": "polar",
        "seed": 7,
        "centerline": pts,
        "half_width": [12.0] * n,
        "grid": [[100.0, -6.0, 1.5707963], [100.0, -16.0, 1.5707963]],
        "length": 628.3,
    }


def fails(fn, frame, code: str, *fragments: str) -> ProtocolError:
    """``fn(frame)`` raises ProtocolError with ``code`` and every fragment in its message."""
    with pytest.raises(ProtocolError) as info:
        fn(frame)
    err = info.value
    assert err.code == code, f"code {err.code!r} != {code!r}: {err}"
    for fragment in fragments:
        assert fragment in str(err), f"{fragment!r} not in {str(err)!r}"
    return err


def game(frame, obs_size: int = 13):
    return decode_game_message(frame, obs_size)


# ============================================================================================
# Seed commands, trainer -> game (§1)


def test_v0_spawn_example_from_the_page():
    cmd = decode_command('{"command": "SPAWN_AGENTS", "envid": "3f2a", "data": ["car_0_env_3f2a", "car_1_env_3f2a"]}')
    assert cmd == Command(
        "SPAWN_AGENTS",
        "3f2a",
        {
            "agents": ["car_0_env_3f2a", "car_1_env_3f2a"],
            "track": None,
            "start": "grid",
            "seed": None,
            "autoreset": False,
        },
        None,
    )


@pytest.mark.parametrize("status", [True, False])
@pytest.mark.parametrize("name", ["FREEZE", "UPDATE_COLLISIONS"])
def test_freeze_and_collisions_carry_a_bool(name, status):
    frame = p.encode_command(name, None, status)
    assert orjson.loads(frame) == {"command": name, "envid": None, "data": status}
    assert decode_command(frame) == Command(name, None, status)
    # envid is ignored, and may be absent
    assert decode_command(raw({"command": name, "data": status})) == Command(name, None, status)
    assert decode_command(raw({"command": name, "envid": "x", "data": status})).envid is None


@pytest.mark.parametrize("name", ["RESET_AGENTS", "REMOVE_AGENTS"])
def test_reset_and_remove_carry_agent_lists(name):
    ids = [p.agent_id(k, "env-1") for k in range(3)]
    assert decode_command(p.encode_command(name, "env-1", ids)) == Command(name, "env-1", ids)
    assert decode_command(p.encode_command(name, "env-1", [])) == Command(name, "env-1", [])


def test_action_command():
    actions = {"car_0_env_a": [1.0, -0.2, 0.0], "car_1_env_a": [0, 1, -1]}
    cmd = decode_command(p.encode_command("ACTION", "a", actions, tick=7))
    assert cmd == Command("ACTION", "a", actions, 7)


def test_close_and_close_all():
    assert decode_command(p.encode_command("CLOSE", "a")) == Command("CLOSE", "a", None)
    assert decode_command(p.encode_command("CLOSE_ALL")) == Command("CLOSE_ALL", None, None)
    assert decode_command('{"command": "CLOSE_ALL"}') == Command("CLOSE_ALL", None, None)


def test_encode_command_always_has_the_v0_keys_and_tick_only_when_given():
    assert orjson.loads(p.encode_command("CLOSE", "a")) == {"command": "CLOSE", "envid": "a", "data": None}
    assert orjson.loads(p.encode_command("CLOSE", "a", tick=0))["tick"] == 0


def test_encode_command_takes_numpy_rows_even_non_contiguous_ones():
    a = np.arange(6, dtype=np.float32).reshape(3, 2).T  # rows are strided views
    frame = p.encode_command("ACTION", "a", {"car_0_env_a": a[0], "car_1_env_a": np.float64(0.5) * np.ones(3)})
    cmd = decode_command(frame)
    assert cmd.data == {"car_0_env_a": [0.0, 2.0, 4.0], "car_1_env_a": [0.5, 0.5, 0.5]}
    frame = p.encode_command("ACTION", "a", {"car_0_env_a": [np.float32(1), np.int64(0), np.float16(0.5)]})
    assert decode_command(frame).data == {"car_0_env_a": [1.0, 0, 0.5]}


# ============================================================================================
# Version 1 commands (§3.2, §3.4)


def test_action_batch_with_tick():
    data = {"3f2a": {"car_0_env_3f2a": [1.0, -0.2, 0.0]}, "9c1d": {"car_0_env_9c1d": [0.0, 0.0, 1.0]}}
    frame = p.encode_command("ACTION_BATCH", None, data, tick=42)
    assert orjson.loads(frame) == {"command": "ACTION_BATCH", "envid": None, "data": data, "tick": 42}
    assert decode_command(frame) == Command("ACTION_BATCH", None, data, 42)


def test_action_batch_in_column_form():
    ids = ["car_0_env_3f2a", "car_1_env_3f2a", "car_0_env_9c1d"]
    actions = np.array([[1.0, -0.2, 0.0], [0.5, 0.25, 1.0], [-1.0, 1e-7, 0.0]], np.float32)
    frame = p.encode_action_rows(ids, actions, tick=42)
    sent = orjson.loads(frame)
    assert sent == {"command": "ACTION_BATCH", "envid": None, "data": None, "tick": 42, "ids": ids,
                    "actions": [[1.0, -0.2, 0.0], [0.5, 0.25, 1.0], [-1.0, 1e-7, 0.0]]}  # fmt: skip
    cmd = decode_command(frame)
    assert (cmd.name, cmd.envid, cmd.tick) == ("ACTION_BATCH", None, 42)
    assert isinstance(cmd.data, p.ActionRows) and cmd.data.agent_ids == ids
    assert cmd.data.actions.dtype == np.float64
    assert np.array_equal(cmd.data.actions.astype(np.float32), actions)  # float32 values round-trip exactly
    empty = decode_command(p.encode_action_rows([], np.zeros((0, 3), np.float32), tick=1))
    assert empty.data.agent_ids == [] and empty.data.actions.shape == (0, 3)


def action_rows_msg(**change) -> dict:
    msg = {"command": "ACTION_BATCH", "envid": None, "data": None, "tick": 3, "ids": ["car_0_env_a", "car_1_env_b"],
           "actions": [[1, 0, 0], [0.5, -0.5, 0]]}  # fmt: skip
    msg.update(change)
    return msg


BAD_ACTION_ROWS = [
    (action_rows_msg(ids="car_0_env_a"), "bad_message", ["ACTION_BATCH.ids", "array", "string"]),
    (action_rows_msg(ids=["car_0_env_a", "car_0_env_a"]), "bad_message", ["ACTION_BATCH.ids", "twice"]),
    (action_rows_msg(ids=["car_0_env_a", "bus_1"]), "unknown_agent", ["'bus_1'", "car_<i>_env_<envid>"]),
    (action_rows_msg(ids=["car_0_env_a\ncar_1_env_a", "car_2_env_a"]), "unknown_agent", ["car_0_env_a"]),
    (action_rows_msg(actions=[[1, 0, 0]]), "bad_message", ["ACTION_BATCH.actions", "2 values", "got 1"]),
    (action_rows_msg(actions=None), "bad_message", ["ACTION_BATCH.actions", "null"]),
    (
        action_rows_msg(actions=[[1, 0, 0], [1, 0]]),
        "bad_message",
        ["ACTION_BATCH.actions[1]", "car_1_env_b", "expected 3 numbers, got 2"],
    ),
    (action_rows_msg(actions=[[1, 0, 0], [1, None, 0]]), "bad_message", ["ACTION_BATCH.actions[1]", "[1]", "null"]),
    (action_rows_msg(actions=[[1, 0, 0], [1, True, 0]]), "bad_message", ["ACTION_BATCH.actions[1]", "boolean"]),
    (action_rows_msg(actions=[[1, 0, 0], "abc"]), "bad_message", ["ACTION_BATCH.actions[1]", "array", "string"]),
    (action_rows_msg(tick=-1), "bad_message", ["ACTION_BATCH.tick"]),
    (action_rows_msg(ids=None), "bad_message", ["ACTION_BATCH.ids", "null"]),
]


@pytest.mark.parametrize(("msg", "code", "fragments"), BAD_ACTION_ROWS)
def test_bad_action_batch_in_column_form(msg, code, fragments):
    fails(decode_command, raw(msg), code, *fragments)


def test_action_batch_in_column_form_with_too_many_ids():
    ids = [p.agent_id(k, "a") for k in range(MAX_AGENTS + 1)]
    fails(
        decode_command, raw(action_rows_msg(ids=ids, actions=[[0, 0, 0]] * len(ids))), "too_large", "ACTION_BATCH.ids"
    )


@pytest.mark.parametrize("name", ["ACTION", "SPAWN_AGENTS", "RESET_AGENTS"])
def test_tick_is_accepted_on_every_ticked_command(name):
    data = {"car_0_env_a": [0, 0, 0]} if name == "ACTION" else ["car_0_env_a"]
    assert decode_command(p.encode_command(name, "a", data, tick=3)).tick == 3


def test_spawn_object_with_track_spec_random_start_seed_and_autoreset():
    track = square_track()
    data = {"agents": ["car_0_env_a", "car_1_env_a"], "track": track, "start": "random", "seed": 7, "autoreset": True}
    cmd = decode_command(p.encode_command("SPAWN_AGENTS", "a", data, tick=1))
    assert cmd.data == data
    # start defaults to grid, track, seed and autoreset are optional, unknown keys ignored
    cmd = decode_command(raw({"command": "SPAWN_AGENTS", "envid": "a", "data": {"agents": [], "future": 1}}))
    assert cmd.data == {"agents": [], "track": None, "start": "grid", "seed": None, "autoreset": False}


def test_track_spec_grid_is_optional():
    track = square_track()
    del track["grid"]
    assert p.check_track_spec(track) is track


def test_welcome_and_error_frames_are_not_commands():
    cmd = decode_command(p.encode_welcome(frozenset({"tick", "batch"})))
    assert cmd.name == "WELCOME" and cmd.data == {"type": "welcome", "protocol": 1, "capabilities": ["batch", "tick"]}
    cmd = decode_command(p.encode_error("unknown_agent", "no car_9_env_a here"))
    assert cmd == Command("ERROR", None, ErrorMessage("unknown_agent", "no car_9_env_a here"))


def test_agent_ids():
    assert p.agent_id(3, "ab") == "car_3_env_ab"
    assert p.parse_agent_id("car_3_env_ab") == (3, "ab")
    assert p.parse_agent_id("car_0_env_x_y-z") == (0, "x_y-z")
    assert p.parse_agent_id("car_999999_env_" + "e" * 64) == (999999, "e" * 64)


@pytest.mark.parametrize(
    "aid",
    [
        "car_3_env_",
        "car__env_a",
        "car_1234567_env_a",
        "car_-1_env_a",
        "car_1_env_a b",
        "car_1_env_a\n",
        "car_\u0663_env_a",  # a non-ASCII digit
        "car_1_env_\u00e9",
        "car_1_env_" + "e" * 65,
        "Car_1_env_a",
        "",
        3,
        None,
    ],
)
def test_bad_agent_ids(aid):
    fails(p.parse_agent_id, aid, "unknown_agent", "car_<i>_env_<envid>")


@pytest.mark.parametrize("envid", ["", "a b", "a/b", "é", "e" * 65, 3, None, True, ["a"]])
def test_bad_envids(envid):
    fails(p.check_envid, envid, "bad_message", "envid", "expected 1-64 characters")
    fails(decode_command, raw({"command": "CLOSE", "envid": envid, "data": None}), "bad_message", "CLOSE.envid")


# ============================================================================================
# Malformed commands

FRAMES = [
    ("not json", "bad_json", "not valid JSON"),
    ("", "bad_json", "not valid JSON"),
    ('{"command": "CLOSE_ALL"', "bad_json", "not valid JSON"),
    ('{"command": "ACTION", "envid": "a", "data": {"car_0_env_a": [NaN, 0, 0]}}', "bad_json", "not valid JSON"),
    ('{"command": "ACTION", "envid": "a", "data": {"car_0_env_a": [Infinity, 0, 0]}}', "bad_json", "not valid JSON"),
    ('{"command": "ACTION", "envid": "a", "data": {"car_0_env_a": [-Infinity, 0, 0]}}', "bad_json", "not valid JSON"),
    ('{"command": "ACTION", "envid": "a", "data": {"car_0_env_a": [1e999, 0, 0]}}', "bad_json", "not valid JSON"),
    ("[1, 2]", "bad_message", "expected a JSON object, got array"),
    ('"FREEZE"', "bad_message", "expected a JSON object, got string"),
    ("null", "bad_message", "expected a JSON object, got null"),
    ("3", "bad_message", "expected a JSON object, got number"),
]


@pytest.mark.parametrize(("frame", "code", "fragment"), FRAMES)
def test_frames_that_are_not_json_objects(frame, code, fragment):
    fails(decode_command, frame, code, fragment)
    fails(game, frame, code, fragment)


def test_bad_json_message_shows_the_first_bytes():
    fails(decode_command, "hello there", "bad_json", "first bytes", "hello there")
    fails(decode_command, b"\xff\xfe{}", "bad_json", "not valid JSON")  # not UTF-8


BAD_COMMANDS = [
    # (message, code, fragments)
    ({"command": "JUMP", "data": None}, "unknown_command", ["command: expected one of", "'JUMP'"]),
    ({"command": "freeze", "data": True}, "unknown_command", ["'freeze'"]),
    ({"data": True}, "unknown_command", ["command: expected one of", "None"]),
    ({"command": ["FREEZE"], "data": True}, "unknown_command", ["command"]),
    ({"command": {"a": 1}, "data": True}, "unknown_command", ["command"]),
    ({"command": 3, "data": True}, "unknown_command", ["command"]),
    ({"command": "FREEZE", "data": "true"}, "bad_message", ["FREEZE.data", "true or false", "string"]),
    ({"command": "FREEZE", "data": 1}, "bad_message", ["FREEZE.data", "true or false", "number"]),
    ({"command": "FREEZE"}, "bad_message", ["FREEZE.data", "true or false", "null"]),
    ({"command": "UPDATE_COLLISIONS", "data": 0}, "bad_message", ["UPDATE_COLLISIONS.data", "number"]),
    ({"command": "CLOSE", "data": None}, "bad_message", ["CLOSE.envid", "None"]),
    ({"command": "ACTION", "envid": "a", "data": []}, "bad_message", ["ACTION.data", "expected an object", "array"]),
    ({"command": "ACTION", "envid": "a", "data": None}, "bad_message", ["ACTION.data", "null"]),
    (
        {"command": "ACTION", "envid": "a", "data": {"car_0_env_a": [1, 0]}},
        "bad_message",
        ["ACTION.data.car_0_env_a", "expected 3 numbers, got 2"],
    ),
    (
        {"command": "ACTION", "envid": "a", "data": {"car_0_env_a": [1, 0, 0, 0]}},
        "bad_message",
        ["ACTION.data.car_0_env_a", "expected 3 numbers, got 4"],
    ),
    (
        {"command": "ACTION", "envid": "a", "data": {"car_0_env_a": [1, "0", 0]}},
        "bad_message",
        ["ACTION.data.car_0_env_a[1]", "expected a number", "string '0'"],
    ),
    (
        {"command": "ACTION", "envid": "a", "data": {"car_0_env_a": [1, 0, True]}},
        "bad_message",
        ["ACTION.data.car_0_env_a[2]", "expected a number", "boolean True"],
    ),
    (
        {"command": "ACTION", "envid": "a", "data": {"car_0_env_a": [None, 0, 0]}},
        "bad_message",
        ["ACTION.data.car_0_env_a[0]", "expected a number", "null"],
    ),
    (
        {"command": "ACTION", "envid": "a", "data": {"car_0_env_a": {"throttle": 1}}},
        "bad_message",
        ["ACTION.data.car_0_env_a", "expected an array of 3 numbers", "object"],
    ),
    (
        {"command": "ACTION", "envid": "a", "data": {"car_0_env_b": [0, 0, 0]}},
        "unknown_agent",
        ["car_0_env_b", "does not belong to venv a"],
    ),
    ({"command": "ACTION", "envid": "a", "data": {"car_x_env_a": [0, 0, 0]}}, "unknown_agent", ["'car_x_env_a'"]),
    ({"command": "ACTION", "envid": "a b", "data": {}}, "bad_message", ["ACTION.envid", "'a b'"]),
    (
        {"command": "ACTION", "envid": "a", "data": {"car_0_env_a": [0, 0, 0]}, "tick": -1},
        "bad_message",
        ["ACTION.tick", "expected an integer", "-1"],
    ),
    (
        {"command": "ACTION", "envid": "a", "data": {"car_0_env_a": [0, 0, 0]}, "tick": 1.5},
        "bad_message",
        ["ACTION.tick", "1.5"],
    ),
    ({"command": "CLOSE_ALL", "tick": "3"}, "bad_message", ["CLOSE_ALL.tick", "'3'"]),
    ({"command": "CLOSE_ALL", "tick": True}, "bad_message", ["CLOSE_ALL.tick", "True"]),
    ({"command": "RESET_AGENTS", "envid": "a", "data": "car_0_env_a"}, "bad_message", ["RESET_AGENTS.data", "string"]),
    ({"command": "REMOVE_AGENTS", "envid": "a", "data": None}, "bad_message", ["REMOVE_AGENTS.data", "null"]),
    (
        {"command": "RESET_AGENTS", "envid": "a", "data": ["car_0_env_b"]},
        "unknown_agent",
        ["does not belong to venv a"],
    ),
    ({"command": "REMOVE_AGENTS", "envid": "a", "data": [7]}, "unknown_agent", ["agent id 7"]),
    ({"command": "SPAWN_AGENTS", "envid": "a", "data": "x"}, "bad_message", ["SPAWN_AGENTS.data", "string"]),
    ({"command": "SPAWN_AGENTS", "envid": "a", "data": None}, "bad_message", ["SPAWN_AGENTS.data", "null"]),
    ({"command": "SPAWN_AGENTS", "envid": "a", "data": {}}, "bad_message", ["SPAWN_AGENTS.data.agents", "null"]),
    (
        {"command": "SPAWN_AGENTS", "envid": "a", "data": ["car_0_env_z"]},
        "unknown_agent",
        ["SPAWN_AGENTS.data", "car_0_env_z", "does not belong to venv a"],
    ),
    (
        {"command": "SPAWN_AGENTS", "envid": "a", "data": {"agents": [], "start": "pole"}},
        "bad_message",
        ["SPAWN_AGENTS.data.start", '"grid" or "random"', "'pole'"],
    ),
    (
        {"command": "SPAWN_AGENTS", "envid": "a", "data": {"agents": [], "seed": -1}},
        "bad_message",
        ["SPAWN_AGENTS.data.seed", "-1"],
    ),
    (
        {"command": "SPAWN_AGENTS", "envid": "a", "data": {"agents": [], "autoreset": 1}},
        "bad_message",
        ["SPAWN_AGENTS.data.autoreset", "true or false", "number 1"],
    ),
    (
        {"command": "SPAWN_AGENTS", "envid": "a", "data": {"agents": [], "seed": "7"}},
        "bad_message",
        ["SPAWN_AGENTS.data.seed", "'7'"],
    ),
    (
        {"command": "SPAWN_AGENTS", "envid": "a", "data": {"agents": [], "track": [1, 2]}},
        "bad_message",
        ["SPAWN_AGENTS.data.track", "track spec object", "array"],
    ),
    ({"command": "ACTION_BATCH", "data": []}, "bad_message", ["ACTION_BATCH.data", "expected an object", "array"]),
    ({"command": "ACTION_BATCH", "data": None}, "bad_message", ["ACTION_BATCH.data", "null"]),
    ({"command": "ACTION_BATCH", "data": {"a b": {}}}, "bad_message", ["ACTION_BATCH.data key", "'a b'"]),
    ({"command": "ACTION_BATCH", "data": {"a": []}}, "bad_message", ["ACTION_BATCH.data.a", "array"]),
    (
        {"command": "ACTION_BATCH", "data": {"a": {"car_0_env_b": [0, 0, 0]}}},
        "unknown_agent",
        ["ACTION_BATCH.data.a", "car_0_env_b does not belong to venv a"],
    ),
    (
        {"command": "ACTION_BATCH", "data": {"a": {"car_0_env_a": [0, 0]}}},
        "bad_message",
        ["ACTION_BATCH.data.a.car_0_env_a", "expected 3 numbers, got 2"],
    ),
    (
        {"command": "ACTION_BATCH", "data": {"a": {"car_0_env_a": [0, False, 0]}}, "tick": 1},
        "bad_message",
        ["ACTION_BATCH.data.a.car_0_env_a[1]", "boolean"],
    ),
    # several venvs: the whole-batch check must fall back and name the one at fault
    (
        {"command": "ACTION_BATCH", "data": {"a": {"car_0_env_a": [0, 0, 0]}, "b": {"car_1_env_a": [0, 0, 0]}}},
        "unknown_agent",
        ["ACTION_BATCH.data.b", "car_1_env_a does not belong to venv b"],
    ),
    # separators of the whole-batch check hidden in keys
    (
        {"command": "ACTION_BATCH", "data": {"a\tcar_0_env_a": {"car_0_env_a": [0, 0, 0]}}},
        "bad_message",
        ["ACTION_BATCH.data key"],
    ),
    (
        {"command": "ACTION_BATCH", "data": {"a": {"car_0_env_a\ncar_1_env_a": [0, 0, 0]}}},
        "unknown_agent",
        ["car_0_env_a\\ncar_1_env_a"],
    ),
    (
        {
            "command": "ACTION_BATCH",
            "data": {"a": {"car_0_env_a\u0000b\tcar_0_env_b": [0, 0, 0]}, "c": {"car_0_env_c": [0, 0, 0]}},
        },
        "unknown_agent",
        ["is not of the form"],
    ),
]


@pytest.mark.parametrize(("msg", "code", "fragments"), BAD_COMMANDS)
def test_bad_commands(msg, code, fragments):
    fails(decode_command, raw(msg), code, *fragments)


@pytest.mark.parametrize(
    ("mutate", "fragments"),
    [
        (lambda t: t.pop("centerline"), ["track.centerline", "8..20000", "null"]),
        (lambda t: t.update(centerline=t["centerline"][:7]), ["track.centerline", "got 7 points"]),
        (lambda t: t.update(centerline={"x": 1}), ["track.centerline", "object"]),
        (lambda t: t["centerline"].__setitem__(3, [1.0]), ["track.centerline[3]", "expected 2 numbers, got 1"]),
        (lambda t: t["centerline"].__setitem__(2, [1.0, "y"]), ["track.centerline[2][1]", "string"]),
        (lambda t: t["centerline"].__setitem__(0, {"x": 1, "y": 2}), ["track.centerline[0]", "object"]),
        (lambda t: t.pop("half_width"), ["track.half_width", "expected 8 numbers", "null"]),
        (lambda t: t["half_width"].pop(), ["track.half_width", "expected 8 numbers", "got 7 numbers"]),
        (lambda t: t["half_width"].__setitem__(5, None), ["track.half_width[5]", "null"]),
        (lambda t: t["half_width"].__setitem__(4, 0), ["track.half_width[4]", "positive", "0"]),
        (lambda t: t["half_width"].__setitem__(1, -3.0), ["track.half_width[1]", "positive", "-3.0"]),
        (lambda t: t.update(half_width=12.0), ["track.half_width", "number"]),
        (lambda t: t.update(grid={"0": [0, 0, 0]}), ["track.grid", "[x, y, heading]", "object"]),
        (lambda t: t["grid"].__setitem__(1, [0, 0]), ["track.grid[1]", "expected 3 numbers, got 2"]),
        (lambda t: t["grid"].__setitem__(0, [0, 0, True]), ["track.grid[0][2]", "boolean"]),
    ],
)
def test_bad_track_specs(mutate, fragments):
    track = square_track()
    mutate(track)
    fails(p.check_track_spec, track, "bad_message", *fragments)
    msg = {"command": "SPAWN_AGENTS", "envid": "a", "data": {"agents": ["car_0_env_a"], "track": track}}
    fragments = [f.replace("track", "SPAWN_AGENTS.data.track", 1) for f in fragments]
    fails(decode_command, raw(msg), "bad_message", *fragments)


def test_track_spec_that_is_not_an_object():
    fails(p.check_track_spec, "polar-7", "bad_message", "track: expected a track spec object, got string")


def test_too_many_agents_in_commands():
    n = MAX_AGENTS + 1
    ids = [p.agent_id(k, "a") for k in range(n)]
    fails(decode_command, p.encode_command("RESET_AGENTS", "a", ids), "too_large", f"{n} agents", str(MAX_AGENTS))
    actions = {aid: [0, 0, 0] for aid in ids}
    fails(decode_command, p.encode_command("ACTION", "a", actions), "too_large", "ACTION.data", f"{n} agents")
    fails(decode_command, p.encode_command("ACTION_BATCH", None, {"a": actions}), "too_large", f"{n} agents")
    fails(decode_command, p.encode_command("SPAWN_AGENTS", "a", {"agents": ids}), "too_large", f"{n} agents")
    # exactly the limit is fine
    assert len(decode_command(p.encode_command("RESET_AGENTS", "a", ids[:MAX_AGENTS])).data) == MAX_AGENTS


def test_too_many_venvs_in_a_batch():
    data = {f"v{k}": {} for k in range(MAX_VENVS + 1)}
    fails(decode_command, p.encode_command("ACTION_BATCH", None, data, 1), "too_large", f"got {MAX_VENVS + 1} venvs")
    del data["v0"]
    assert len(decode_command(p.encode_command("ACTION_BATCH", None, data, 1)).data) == MAX_VENVS


def test_unknown_keys_are_ignored():
    cmd = decode_command(raw({"command": "CLOSE", "envid": "a", "data": None, "priority": "high"}))
    assert cmd == Command("CLOSE", "a", None)


# ============================================================================================
# Game -> trainer: v0 packets and obs batches


def test_v0_packet_example_from_the_page():
    frame = raw(
        {
            "car_0_env_3f2a": {"obs": OBS13, "reward": 0.35, "terminated": False, "truncated": False},
            "car_1_env_3f2a": {"obs": [0.0] * 13, "reward": -10.0, "terminated": True, "truncated": False},
        }
    )
    batch = game(frame)
    assert isinstance(batch, ObsBatch)
    assert batch.tick is None
    assert batch.agent_ids == ["car_0_env_3f2a", "car_1_env_3f2a"]
    assert batch.obs.dtype == np.float32 and batch.obs.shape == (2, 13)
    np.testing.assert_array_equal(batch.obs[0], np.array(OBS13, np.float32))
    assert batch.reward.dtype == np.float64 and batch.reward.tolist() == [0.35, -10.0]
    assert batch.terminated.tolist() == [False, True] and batch.truncated.tolist() == [False, False]
    assert batch.infos == [None, None]


def test_obs_batch_with_tick_and_info():
    info = {"progress": 0.5, "lap": 1, "lap_time": 41.2, "speed": 55.0, "collided": False, "cause": None}
    info2 = {"lap_time": None, "cause": "time_limit", "x": 1.0, "y": -2.0, "heading": 3.1, "future_key": [1]}
    msg = {
        "type": "obs",
        "tick": 42,
        "agents": {"car_0_env_a": entry(info=info), "car_1_env_b": entry(truncated=True, info=info2)},
    }
    batch = game(raw(msg))
    assert batch.tick == 42 and batch.agent_ids == ["car_0_env_a", "car_1_env_b"]
    # every §3.3 key, None where not reported; unknown keys are ignored (§3: forward compatibility)
    assert batch.infos == [full_info(**info), full_info(**{k: v for k, v in info2.items() if k != "future_key"})]
    assert batch.truncated.tolist() == [False, True]


def test_obs_batch_without_tick_and_empty():
    batch = game('{"type": "obs", "agents": {}}')
    assert batch.tick is None and batch.agent_ids == [] and batch.obs.shape == (0, 13)
    batch = game('{"type": "obs", "tick": null, "agents": {}}')
    assert batch.tick is None


@pytest.mark.parametrize("cause", ["wall", "stuck", "wrong_way", "time_limit"])
def test_every_documented_ending_cause(cause):
    assert game(raw({"car_0_env_a": entry(terminated=True, info={"cause": cause})})).infos[0]["cause"] == cause


def test_obs_size_follows_the_game():
    frame = raw({"car_0_env_a": entry(obs=[0.0] * 23)})
    assert game(frame, 23).obs.shape == (1, 23)
    fails(game, frame, "bad_message", "car_0_env_a.obs", "expected 13 numbers, got 23")


def test_integers_are_numbers_but_booleans_are_not():
    batch = game(raw({"car_0_env_a": entry(obs=[1] * 13, reward=-10)}))
    assert batch.obs[0].tolist() == [1.0] * 13 and batch.reward[0] == -10.0


def full_info(**reported) -> dict:
    """An info dict as the decoder gives it: every §3.3 key, None where not reported."""
    return dict.fromkeys(p.INFO_NUMBERS) | {"collided": False, "cause": None} | reported


@pytest.mark.parametrize("form", ["columns", "batch", "v0"])
def test_encode_obs_round_trip(form):
    ids = ["car_0_env_a", "car_1_env_a"]
    obs = np.arange(26, dtype=np.float32).reshape(2, 13) / 7
    reward = np.array([0.25, -10.0])
    info = p.info_columns(2)
    info["progress"][0], info["lap"][0], info["speed"][:] = 0.1, 0, [41.5, 0.0]
    info["cause"][1], info["collided"][1] = "wall", True
    frame = p.encode_obs(ids, obs, reward, np.array([False, True]), np.array([False, False]), info, 9, form)
    out = game(frame)
    assert out.tick == (None if form == "v0" else 9)
    assert out.agent_ids == ids
    np.testing.assert_array_equal(out.obs, obs)  # float32 survives the trip exactly
    assert out.reward.tolist() == reward.tolist()
    assert out.terminated.tolist() == [False, True] and out.truncated.tolist() == [False, False]
    assert out.infos == [
        full_info(progress=0.1, lap=0, speed=41.5),
        full_info(speed=0.0, collided=True, cause="wall"),
    ]
    sent = orjson.loads(frame)
    assert ("type" in sent, "ids" in sent) == (form != "v0", form == "columns")


def test_encode_obs_without_infos():
    frame = p.encode_obs(["car_0_env_a"], np.zeros((1, 13), np.float32), [0.0], [False], [False])
    assert "info" not in orjson.loads(frame)["agents"]["car_0_env_a"]
    assert game(frame).infos == [None]
    frame = p.encode_obs(["car_0_env_a"], np.zeros((1, 13), np.float32), [0.0], [False], [False], form="columns")
    assert "info" not in orjson.loads(frame) and game(frame).infos == [None]


BAD_PACKETS = [
    # (agents (placed in a v0 packet and in an obs batch), code, fragments)
    ({"car_0_env_a": entry(obs=OBS13[:12])}, "bad_message", ["car_0_env_a.obs", "expected 13 numbers, got 12"]),
    ({"car_0_env_a": entry(obs=OBS13 + [0])}, "bad_message", ["car_0_env_a.obs", "expected 13 numbers, got 14"]),
    ({"car_0_env_a": entry(obs={"0": 1})}, "bad_message", ["car_0_env_a.obs", "array of 13 numbers", "object"]),
    ({"car_0_env_a": entry(obs=None)}, "bad_message", ["car_0_env_a.obs", "array of 13 numbers", "null"]),
    ({"car_0_env_a": entry(obs="0.5")}, "bad_message", ["car_0_env_a.obs", "string"]),
    ({"car_0_env_a": entry(obs=[True] + OBS13[1:])}, "bad_message", ["car_0_env_a.obs[0]", "number", "boolean True"]),
    ({"car_0_env_a": entry(obs=OBS13[:5] + ["1"] + OBS13[6:])}, "bad_message", ["car_0_env_a.obs[5]", "string '1'"]),
    ({"car_0_env_a": entry(obs=OBS13[:12] + [None])}, "bad_message", ["car_0_env_a.obs[12]", "null"]),
    ({"car_0_env_a": entry(obs=[1e39] + OBS13[1:])}, "bad_message", ["overflow 32-bit floats"]),
    ({"car_0_env_a": entry(obs=[-3.5e38] + OBS13[1:])}, "bad_message", ["overflow 32-bit floats"]),
    ({"car_0_env_a": entry(reward="0.35")}, "bad_message", ["car_0_env_a.reward", "finite number", "string"]),
    ({"car_0_env_a": entry(reward=True)}, "bad_message", ["car_0_env_a.reward", "finite number", "boolean"]),
    ({"car_0_env_a": entry(reward=None)}, "bad_message", ["car_0_env_a.reward", "finite number", "null"]),
    ({"car_0_env_a": entry(reward=[1])}, "bad_message", ["car_0_env_a.reward", "array"]),
    ({"car_0_env_a": entry(terminated=0)}, "bad_message", ["car_0_env_a.terminated", "true or false", "number 0"]),
    ({"car_0_env_a": entry(terminated="false")}, "bad_message", ["car_0_env_a.terminated", "string 'false'"]),
    ({"car_0_env_a": entry(truncated=None)}, "bad_message", ["car_0_env_a.truncated", "true or false", "null"]),
    ({"car_0_env_a": {"reward": 0, "terminated": False, "truncated": False}}, "bad_message", ["car_0_env_a", "'obs'"]),
    (
        {"car_0_env_a": {"obs": OBS13, "terminated": False, "truncated": False}},
        "bad_message",
        ["car_0_env_a", "missing field 'reward'"],
    ),
    (
        {"car_0_env_a": {"obs": OBS13, "reward": 0, "truncated": False}},
        "bad_message",
        ["missing field 'terminated'"],
    ),
    ({"car_0_env_a": {"obs": OBS13, "reward": 0, "terminated": False}}, "bad_message", ["missing field 'truncated'"]),
    ({"car_0_env_a": [OBS13, 0, False, False]}, "bad_message", ["car_0_env_a", "expected an object", "array"]),
    ({"car_0_env_a": None}, "bad_message", ["car_0_env_a", "expected an object", "null"]),
    ({"car_0": entry()}, "unknown_agent", ["agent id 'car_0'", "car_<i>_env_<envid>"]),
    ({"obs": OBS13, "reward": 0}, "unknown_agent", ["agent id 'obs'"]),
    ({"car_0_env_a": entry(info=[])}, "bad_message", ["car_0_env_a.info", "expected an object", "array"]),
    ({"car_0_env_a": entry(info="fast")}, "bad_message", ["car_0_env_a.info", "string"]),
    ({"car_0_env_a": entry(info={"progress": "half"})}, "bad_message", ["car_0_env_a.info.progress", "string"]),
    ({"car_0_env_a": entry(info={"progress": None})}, "bad_message", ["car_0_env_a.info.progress", "null"]),
    ({"car_0_env_a": entry(info={"speed": True})}, "bad_message", ["car_0_env_a.info.speed", "boolean"]),
    ({"car_0_env_a": entry(info={"x": "1"})}, "bad_message", ["car_0_env_a.info.x", "string"]),
    ({"car_0_env_a": entry(info={"lap": 1.5})}, "bad_message", ["car_0_env_a.info.lap", "integer", "1.5"]),
    ({"car_0_env_a": entry(info={"lap": -1})}, "bad_message", ["car_0_env_a.info.lap", "-1"]),
    ({"car_0_env_a": entry(info={"lap": True})}, "bad_message", ["car_0_env_a.info.lap", "True"]),
    ({"car_0_env_a": entry(info={"lap_time": "41s"})}, "bad_message", ["car_0_env_a.info.lap_time", "string"]),
    ({"car_0_env_a": entry(info={"collided": 1})}, "bad_message", ["car_0_env_a.info.collided", "true or false"]),
    ({"car_0_env_a": entry(info={"cause": "boom"})}, "bad_message", ["car_0_env_a.info.cause", "'boom'", "'wall'"]),
    ({"car_0_env_a": entry(info={"cause": ["wall"]})}, "bad_message", ["car_0_env_a.info.cause", "['wall']"]),
    ({"car_0_env_a": entry(info={"cause": {"wall": 1}})}, "bad_message", ["car_0_env_a.info.cause"]),
    ({"car_0_env_a": entry(info={"cause": 3})}, "bad_message", ["car_0_env_a.info.cause", "3"]),
]


@pytest.mark.parametrize(("agents", "code", "fragments"), BAD_PACKETS)
def test_bad_agent_entries(agents, code, fragments):
    fails(game, raw(agents), code, *fragments)  # v0 packet
    fails(game, raw({"type": "obs", "tick": 1, "agents": agents}), code, *fragments)  # v1 batch


def columns_msg(**change) -> dict:
    """A valid obs batch in column form (two cars), with fields replaced by ``change``."""
    msg = {
        "type": "obs",
        "tick": 3,
        "ids": ["car_0_env_a", "car_1_env_a"],
        "obs": [OBS13, [0.0] * 13],
        "reward": [0.35, -10],
        "terminated": [False, True],
        "truncated": [False, False],
        "info": {"progress": [0.5, 0.25], "lap": [1, None], "lap_time": [None, 31.5], "speed": [40.0, 0.0],
                 "collided": [False, True], "cause": [None, "wall"], "x": [1.0, 2.0], "y": [3.0, 4.0],
                 "heading": [0.5, -0.5], "future_column": [1, 2]},
    }  # fmt: skip
    for key, value in change.items():
        if key.startswith("info_"):
            msg["info"][key[5:]] = value
        else:
            msg[key] = value
    return msg


def test_obs_batch_in_column_form():
    batch = game(raw(columns_msg()))
    assert batch.tick == 3 and batch.agent_ids == ["car_0_env_a", "car_1_env_a"]
    np.testing.assert_array_equal(batch.obs, np.array([OBS13, [0.0] * 13], np.float32))
    assert batch.reward.tolist() == [0.35, -10.0] and batch.reward.dtype == np.float64
    assert batch.terminated.tolist() == [False, True] and batch.truncated.tolist() == [False, False]
    assert batch.infos == [
        full_info(progress=0.5, lap=1, speed=40.0, x=1.0, y=3.0, heading=0.5),
        full_info(progress=0.25, lap_time=31.5, speed=0.0, collided=True, cause="wall", x=2.0, y=4.0, heading=-0.5),
    ]
    partial = columns_msg(info={"lap": [0, 2]})  # columns may be left out
    assert game(raw(partial)).infos[1] == full_info(lap=2)
    without = columns_msg()
    del without["info"]
    assert game(raw(without)).infos == [None, None]
    empty = game(raw(columns_msg(ids=[], obs=[], reward=[], terminated=[], truncated=[], info={})))
    assert empty.agent_ids == [] and empty.obs.shape == (0, 13)


BAD_COLUMNS = [
    (columns_msg(ids="car_0_env_a"), "bad_message", ["obs.ids", "array", "string"]),
    (columns_msg(ids=["car_0_env_a", "car_0_env_a"]), "bad_message", ["obs.ids", "twice"]),
    (columns_msg(ids=["car_0_env_a", "bus_1"]), "unknown_agent", ["'bus_1'", "car_<i>_env_<envid>"]),
    (columns_msg(ids=["car_0_env_a", 7]), "unknown_agent", ["7"]),
    (columns_msg(ids=["car_0_env_a\ncar_1_env_a", "car_2_env_a"]), "unknown_agent", ["car_0_env_a"]),
    (columns_msg(obs=[OBS13]), "bad_message", ["obs.obs", "2 values", "one per id", "got 1"]),
    (columns_msg(obs=[OBS13, OBS13[:12]]), "bad_message", ["obs.obs[1]", "car_1_env_a", "expected 13 numbers, got 12"]),
    (columns_msg(obs=[OBS13, [None] * 13]), "bad_message", ["obs.obs[1]", "[0]", "null"]),
    (columns_msg(obs=[OBS13, "x" * 13]), "bad_message", ["obs.obs[1]", "array", "string"]),
    (columns_msg(obs=[OBS13, [True] * 13]), "bad_message", ["obs.obs[1]", "boolean"]),
    (columns_msg(obs=[OBS13, [1e39] * 13]), "bad_message", ["overflow 32-bit"]),
    (columns_msg(reward=[0.0]), "bad_message", ["obs.reward", "2 values", "got 1"]),
    (columns_msg(reward=[0.0, "1"]), "bad_message", ["obs.reward[1]", "number", "'1'"]),
    (columns_msg(reward=[0.0, None]), "bad_message", ["obs.reward[1]", "null"]),
    (columns_msg(terminated=[False, 0]), "bad_message", ["obs.terminated[1]", "boolean", "0"]),
    (columns_msg(truncated=None), "bad_message", ["obs.truncated", "array", "null"]),
    (columns_msg(info=[1, 2]), "bad_message", ["obs.info", "object of columns", "array"]),
    (columns_msg(info_progress=[0.5]), "bad_message", ["obs.info.progress", "2 values"]),
    (columns_msg(info_speed=[0.5, "fast"]), "bad_message", ["obs.info.speed[1]", "'fast'"]),
    (columns_msg(info_lap=[1, 1.5]), "bad_message", ["obs.info.lap[1]", "1.5"]),
    (columns_msg(info_lap=[1, -1]), "bad_message", ["obs.info.lap[1]", "integer in [0, 1000000]", "-1"]),
    (columns_msg(info_collided=[False, 1]), "bad_message", ["obs.info.collided[1]", "boolean"]),
    (columns_msg(info_cause=[None, "lava"]), "bad_message", ["obs.info.cause", "'lava'"]),
    (columns_msg(info_cause=[None, 3]), "bad_message", ["obs.info.cause[1]", "3"]),
]


@pytest.mark.parametrize(("msg", "code", "fragments"), BAD_COLUMNS)
def test_bad_obs_columns(msg, code, fragments):
    fails(game, raw(msg), code, *fragments)


RESTART = [0.25] * 10 + [1.0, 0.0, 0.0]


def test_obs_batch_with_autoreset_restarts():
    batch = game(raw(columns_msg(reset_ids=["car_1_env_a"], reset_obs=[RESTART])))
    assert batch.restarted.tolist() == [False, True]
    np.testing.assert_array_equal(batch.reset_obs, np.array([[0.0] * 13, RESTART], np.float32))
    assert batch.terminated.tolist() == [False, True]  # the ending is reported as ever
    none = game(raw(columns_msg(reset_ids=[], reset_obs=[])))
    assert none.restarted.tolist() == [False, False]
    assert game(raw(columns_msg())).restarted is None  # no restarts at all: nothing to read
    ids, obs = ["car_0_env_a", "car_1_env_a"], np.array([OBS13, [0.0] * 13], np.float32)
    info = p.info_columns(2)
    frame = p.encode_obs(ids, obs, np.zeros(2), np.array([False, True]), np.zeros(2, bool), info, 4, "columns",
                         reset_ids=["car_1_env_a"], reset_obs=np.array([RESTART], np.float32))  # fmt: skip
    again = game(frame)
    assert again.restarted.tolist() == [False, True] and again.reset_obs[1].tolist() == np.float32(RESTART).tolist()


BAD_RESTARTS = [
    (columns_msg(reset_ids=["car_0_env_a"], reset_obs=[RESTART]), ["obs.reset_ids", "car_0_env_a", "did not end"]),
    (columns_msg(reset_ids=["car_5_env_a"], reset_obs=[RESTART]), ["obs.reset_ids", "car_5_env_a", "not in"]),
    (columns_msg(reset_ids=["car_1_env_a"] * 2, reset_obs=[RESTART] * 2), ["obs.reset_ids", "twice"]),
    (columns_msg(reset_ids=["car_1_env_a"], reset_obs=[]), ["obs.reset_obs", "1 values", "got 0"]),
    (
        columns_msg(reset_ids=["car_1_env_a"], reset_obs=[RESTART[:5]]),
        ["obs.reset_obs[0]", "car_1_env_a", "13 numbers"],
    ),
    (columns_msg(reset_ids="car_1_env_a", reset_obs=[RESTART]), ["obs.reset_ids", "array"]),
    (columns_msg(reset_ids=["car_1_env_a"]), ["obs.reset_obs", "null"]),
]


@pytest.mark.parametrize(("msg", "fragments"), BAD_RESTARTS)
def test_bad_autoreset_restarts(msg, fragments):
    fails(game, raw(msg), "bad_message", *fragments)


@pytest.mark.parametrize(
    ("msg", "code", "fragments"),
    [
        ({"type": "obs", "tick": 1}, "bad_message", ["obs.agents", "expected an object", "null"]),
        ({"type": "obs", "agents": []}, "bad_message", ["obs.agents", "array"]),
        ({"type": "obs", "tick": -1, "agents": {}}, "bad_message", ["obs.tick", "integer", "-1"]),
        ({"type": "obs", "tick": "1", "agents": {}}, "bad_message", ["obs.tick", "'1'"]),
        ({"type": "obs", "tick": 1.0, "agents": {}}, "bad_message", ["obs.tick", "1.0"]),
        ({"type": "obs", "tick": False, "agents": {}}, "bad_message", ["obs.tick", "False"]),
        ({"type": "obs", "tick": 2**53 + 1, "agents": {}}, "bad_message", ["obs.tick"]),
        ({"type": "welcome", "protocol": 1}, "unknown_command", ["type", '"hello", "obs" or "error"', "'welcome'"]),
        ({"type": "OBS", "agents": {}}, "unknown_command", ["'OBS'"]),
        ({"type": 3}, "unknown_command", ["type", "3"]),
        ({"type": ["obs"]}, "unknown_command", ["type", "['obs']"]),
        ({"type": {"obs": 1}}, "unknown_command", ["type"]),
    ],
)
def test_bad_game_messages(msg, code, fragments):
    fails(game, raw(msg), code, *fragments)


def test_too_many_agents_in_a_packet():
    n = MAX_AGENTS + 1
    agents = {p.agent_id(k, "a"): entry() for k in range(n)}
    fails(game, raw(agents), "too_large", f"{n} agents", str(MAX_AGENTS))
    fails(game, raw({"type": "obs", "agents": agents}), "too_large", "obs.agents", f"{n} agents")


def test_error_messages_from_the_game():
    out = game(p.encode_error("unknown_agent", "no such car"))
    assert out == ErrorMessage("unknown_agent", "no such car")
    out = game('{"type": "error"}')
    assert out == ErrorMessage("bad_message", "")
    out = game(raw({"type": "error", "code": "x" * 100, "message": "m" * 1000}))
    assert len(out.code) == 40 and len(out.message) == 500


# ============================================================================================
# Handshake (§3.1)

HELLO = {
    "type": "hello",
    "protocol": 1,
    "game": "rbxenv-sim 0.1",
    "obs_size": 13,
    "num_rays": 10,
    "action_size": 3,
    "tick_hz": 15,
    "mode": "lockstep",
    "capabilities": ["batch", "tick", "info", "track_spec", "random_start"],
    "token": "optional",
}


def hello(**changes) -> str:
    msg = dict(HELLO)
    for key, value in changes.items():
        if value is ...:
            msg.pop(key)
        else:
            msg[key] = value
    return raw(msg)


def test_hello_example_from_the_page():
    out = game(hello())
    assert isinstance(out, Hello)
    assert out.token == "optional"
    assert out.spec == GameSpec(
        protocol=1,
        game="rbxenv-sim 0.1",
        obs_size=13,
        num_rays=10,
        action_size=3,
        tick_hz=15.0,
        mode="lockstep",
        capabilities=frozenset({"batch", "tick", "info", "track_spec", "random_start"}),
    )
    assert out.spec.has("batch") and not V0_GAME.has("batch")


def test_hello_defaults_and_unknown_capabilities():
    out = game('{"type": "hello", "protocol": 1}')
    assert out.token is None
    assert out.spec == GameSpec(protocol=1, game="unnamed game", mode="lockstep")
    out = game(hello(capabilities=["tick", "telepathy"], mode="realtime", num_rays=20, obs_size=23, tick_hz=60.5))
    assert out.spec.capabilities == frozenset({"tick"})
    assert (out.spec.mode, out.spec.num_rays, out.spec.obs_size, out.spec.tick_hz) == ("realtime", 20, 23, 60.5)


def test_hello_obs_size_defaults_to_num_rays_plus_3():
    assert game(hello(obs_size=..., num_rays=5)).spec.obs_size == 8


def test_hello_round_trip():
    spec = GameSpec(1, "my game", 8, 5, 3, 30.0, "realtime", frozenset({"batch", "info"}))
    out = game(p.encode_hello(spec, token="t0k"))
    assert out == Hello(spec, "t0k")
    sent = orjson.loads(p.encode_hello(spec))
    assert not {"token", "max_venvs", "max_cars"} & set(sent), "what is not set is not sent"
    limited = dataclasses.replace(spec, max_venvs=3, max_cars=25)
    sent = orjson.loads(p.encode_hello(limited))
    assert (sent["max_venvs"], sent["max_cars"]) == (3, 25)
    assert game(p.encode_hello(limited)).spec == limited


def test_hello_capacity_is_optional_and_bounded():
    """Absent: no limit; present: an integer from 1 to the protocol's own bounds, each on its own."""
    assert (game(hello()).spec.max_venvs, game(hello()).spec.max_cars) == (None, None)
    out = game(hello(max_venvs=1, max_cars=p.MAX_AGENTS)).spec
    assert (out.max_venvs, out.max_cars) == (1, p.MAX_AGENTS)
    out = game(hello(max_venvs=p.MAX_VENVS)).spec
    assert (out.max_venvs, out.max_cars) == (p.MAX_VENVS, None)
    assert game(hello(max_cars=1)).spec.max_cars == 1


def test_v0_game_defaults_match_the_page():
    assert (V0_GAME.protocol, V0_GAME.obs_size, V0_GAME.num_rays, V0_GAME.action_size) == (0, 13, 10, 3)
    assert V0_GAME.mode == "realtime" and V0_GAME.capabilities == frozenset()


@pytest.mark.parametrize(
    ("frame", "code", "fragments"),
    [
        (hello(protocol=2), "unsupported_version", ["hello.protocol", "speaks protocol 1", "2"]),
        (hello(protocol=0), "unsupported_version", ["hello.protocol", "0"]),
        (hello(protocol="1"), "bad_message", ["hello.protocol", "integer", "'1'"]),
        (hello(protocol=True), "bad_message", ["hello.protocol", "True"]),
        (hello(protocol=1.0), "bad_message", ["hello.protocol", "1.0"]),
        (hello(protocol=...), "bad_message", ["hello.protocol", "None"]),
        (hello(obs_size=14), "bad_message", ["hello.obs_size", "num_rays + 3 = 13", "got 14"]),
        (hello(num_rays=12), "bad_message", ["hello.obs_size", "num_rays + 3 = 15", "got 13"]),
        (hello(num_rays=0, obs_size=3), "bad_message", ["hello.num_rays", "got 0"]),
        (hello(num_rays=257, obs_size=260), "bad_message", ["hello.num_rays", "256", "257"]),
        (hello(num_rays="10"), "bad_message", ["hello.num_rays", "'10'"]),
        (hello(obs_size=13.0), "bad_message", ["hello.obs_size", "13.0"]),
        (hello(action_size=4), "bad_message", ["hello.action_size", "[3, 3]", "4"]),
        (hello(tick_hz=0), "bad_message", ["hello.tick_hz", "0.1..1000", "0"]),
        (hello(tick_hz=5000), "bad_message", ["hello.tick_hz", "5000"]),
        (hello(tick_hz="15"), "bad_message", ["hello.tick_hz", "finite number", "string"]),
        (hello(tick_hz=None), "bad_message", ["hello.tick_hz", "null"]),
        (hello(mode="turbo"), "bad_message", ["hello.mode", '"lockstep" or "realtime"', "'turbo'"]),
        (hello(mode=None), "bad_message", ["hello.mode", "None"]),
        (hello(mode=["lockstep"]), "bad_message", ["hello.mode", "['lockstep']"]),
        (hello(capabilities="batch"), "bad_message", ["hello.capabilities", "array of strings", "'batch'"]),
        (hello(capabilities=["batch", 1]), "bad_message", ["hello.capabilities", "array of strings"]),
        (hello(capabilities={"batch": True}), "bad_message", ["hello.capabilities"]),
        (hello(token=1234), "bad_message", ["hello.token", "expected a string", "number"]),
        (hello(token=["s3cret"]), "bad_message", ["hello.token", "expected a string", "array"]),
        (hello(max_venvs=0), "bad_message", ["hello.max_venvs", "[1, 1024]", "got 0"]),
        (hello(max_venvs=1025), "bad_message", ["hello.max_venvs", "[1, 1024]", "1025"]),
        (hello(max_venvs=2.0), "bad_message", ["hello.max_venvs", "2.0"]),
        (hello(max_venvs=None), "bad_message", ["hello.max_venvs", "None"]),
        (hello(max_cars=0), "bad_message", ["hello.max_cars", "[1, 4096]", "got 0"]),
        (hello(max_cars=4097), "bad_message", ["hello.max_cars", "[1, 4096]", "4097"]),
        (hello(max_cars="25"), "bad_message", ["hello.max_cars", "'25'"]),
        (hello(max_cars=True), "bad_message", ["hello.max_cars", "True"]),
    ],
)
def test_bad_hellos(frame, code, fragments):
    err = fails(game, frame, code, *fragments)
    assert "s3cret" not in str(err)  # tokens are never echoed


# ============================================================================================
# Frame size (Transport)


def test_frame_size_limit_in_bytes():
    pad = "x" * (MAX_FRAME_BYTES - len('{"type": "error", "message": ""}'))
    frame = '{"type": "error", "message": "' + pad + '"}'
    assert len(frame.encode()) == MAX_FRAME_BYTES
    assert isinstance(game(frame), ErrorMessage)  # exactly 1 MiB passes
    assert isinstance(game(frame.encode()), ErrorMessage)
    fails(game, frame[:-2] + 'x"}', "too_large", f"{MAX_FRAME_BYTES + 1} bytes", f"{MAX_FRAME_BYTES}-byte limit")
    fails(decode_command, (frame[:-2] + 'x"}').encode(), "too_large", "exceeds")
    fails(decode_command, bytearray(MAX_FRAME_BYTES + 1), "too_large")
    fails(decode_command, memoryview(bytes(MAX_FRAME_BYTES + 1)), "too_large")


def test_frame_size_counts_utf8_bytes_not_characters():
    # 400 000 three-byte characters: 1.2 MB on the wire although under 1 Mi characters
    frame = '{"type": "error", "message": "' + "\u20ac" * 400_000 + '"}'
    assert len(frame) < MAX_FRAME_BYTES < len(frame.encode())
    fails(game, frame, "too_large", "exceeds")
    fails(decode_command, frame, "too_large", "exceeds")


def test_oversized_frame_is_rejected_before_parsing():
    fails(game, "[" * (MAX_FRAME_BYTES + 1), "too_large")


# ============================================================================================
# Error codes and the error message shape


def test_error_codes_are_the_documented_ones():
    assert p.ERROR_CODES == {
        "bad_json",
        "bad_message",
        "unknown_command",
        "unknown_agent",
        "too_large",
        "unauthorized",
        "unsupported_version",
        "internal_error",
        "capacity",
    }
    assert ProtocolError("x").code == "bad_message"
    assert isinstance(ProtocolError("x"), ValueError)


def test_encode_error_and_welcome_shapes():
    assert orjson.loads(p.encode_error("bad_json", "m")) == {"type": "error", "code": "bad_json", "message": "m"}
    assert orjson.loads(p.encode_welcome(frozenset())) == {"type": "welcome", "protocol": 1, "capabilities": []}
    assert PROTOCOL_VERSION == 1


def test_bad_value_is_shortened_in_messages():
    err = fails(decode_command, raw({"command": "X" * 500}), "unknown_command")
    assert len(str(err)) < 300


# ============================================================================================
# Property-based fuzzing

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["car_0_env_a", "a", "obs", "hello", "ACTION", "FREEZE", "grid", "wall", "type"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)


def _only_protocol_errors(fn, frame):
    """``fn(frame)``, or None when it raised a well-formed ProtocolError (anything else propagates)."""
    try:
        return fn(frame)
    except ProtocolError as err:
        assert err.code in p.ERROR_CODES
        assert str(err)
        return None


@FUZZ
@given(json_values)
def test_fuzz_arbitrary_json_never_raises_anything_but_protocol_error(value):
    frame = orjson.dumps(value)
    _only_protocol_errors(decode_command, frame)
    _only_protocol_errors(game, frame)
    _only_protocol_errors(game, frame.decode())


@FUZZ
@given(st.binary(max_size=64) | st.text(max_size=64))
def test_fuzz_arbitrary_bytes_and_text(frame):
    _only_protocol_errors(decode_command, frame)
    _only_protocol_errors(game, frame)


def _valid_commands() -> list[dict]:
    return [
        {"command": "FREEZE", "envid": None, "data": True},
        {"command": "UPDATE_COLLISIONS", "data": False},
        {"command": "SPAWN_AGENTS", "envid": "a", "data": ["car_0_env_a", "car_1_env_a"], "tick": 1},
        {
            "command": "SPAWN_AGENTS",
            "envid": "a",
            "data": {"agents": ["car_0_env_a"], "track": square_track(), "start": "random", "seed": 3},
        },
        {"command": "RESET_AGENTS", "envid": "a", "data": ["car_0_env_a"], "tick": 2},
        {"command": "REMOVE_AGENTS", "envid": "a", "data": ["car_0_env_a"]},
        {"command": "ACTION", "envid": "a", "data": {"car_0_env_a": [1.0, -0.5, 0.0]}, "tick": 3},
        {"command": "CLOSE", "envid": "a", "data": None},
        {"command": "CLOSE_ALL", "envid": None, "data": None},
        {"command": "ACTION_BATCH", "data": {"a": {"car_0_env_a": [1, 0, 0]}, "b": {}}, "tick": 4},
    ]


def _valid_game_messages() -> list[dict]:
    return [
        {"car_0_env_a": entry(), "car_1_env_a": entry(terminated=True, reward=-10)},
        {"type": "obs", "tick": 5, "agents": {"car_0_env_a": entry(info={"lap": 1, "cause": None})}},
        columns_msg(),
        dict(HELLO),
        {"type": "error", "code": "bad_message", "message": "x"},
    ]


def _paths(value, prefix=()):
    """Every path to a node of a JSON value."""
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for k, child in enumerate(value):
            yield from _paths(child, (*prefix, k))


def _mutate(msg, path, action, new):
    msg = copy.deepcopy(msg)
    if not path:
        return new
    parent = msg
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if action == "replace":
        parent[last] = new
    elif action == "delete":
        del parent[last]
    elif action == "append" and isinstance(parent[last], list):
        parent[last].append(new)
    elif action == "add_key" and isinstance(parent[last], dict):
        parent[last][str(new)[:10]] = new
    return msg


@st.composite
def mutated(draw, messages):
    msg = draw(st.sampled_from(messages))
    paths = list(_paths(msg))
    path = draw(st.sampled_from(paths))
    action = draw(st.sampled_from(["replace", "delete", "append", "add_key"]))
    new = draw(json_values)
    if action == "delete" and not path:
        action = "replace"
    return _mutate(msg, path, action, new)


@FUZZ
@given(mutated(_valid_commands()))
def test_fuzz_mutated_commands(msg):
    cmd = _only_protocol_errors(decode_command, orjson.dumps(msg))
    if cmd is None:
        return
    assert cmd.name in p.COMMANDS | {"WELCOME", "ERROR"}
    if cmd.name in p.COMMANDS:  # what was accepted is a valid command: it survives a re-encode unchanged
        assert decode_command(p.encode_command(cmd.name, cmd.envid, cmd.data, cmd.tick)) == cmd


@FUZZ
@given(mutated(_valid_game_messages()))
def test_fuzz_mutated_game_messages(msg):
    out = _only_protocol_errors(game, orjson.dumps(msg))
    if out is None:
        return
    assert isinstance(out, Hello | ObsBatch | ErrorMessage)
    if isinstance(out, ObsBatch):
        n = len(out.agent_ids)
        assert out.obs.shape == (n, 13) and np.isfinite(out.obs).all()
        assert out.reward.shape == out.terminated.shape == out.truncated.shape == (n,) and len(out.infos) == n
        assert np.isfinite(out.reward).all()


envids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False)
f32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@FUZZ
@given(
    envid=envids,
    tick=st.none() | st.integers(0, 2**53),
    indices=st.lists(st.integers(0, 999999), max_size=6, unique=True),
    actions=st.lists(st.lists(finite, min_size=3, max_size=3), min_size=6, max_size=6),
)
def test_fuzz_round_trip_of_valid_commands(envid, tick, indices, actions):
    ids = [p.agent_id(k, envid) for k in indices]
    acts = {aid: actions[k] for k, aid in enumerate(ids)}
    assert decode_command(p.encode_command("ACTION", envid, acts, tick)) == Command("ACTION", envid, acts, tick)
    assert decode_command(p.encode_command("ACTION_BATCH", None, {envid: acts}, tick)).data == {envid: acts}
    assert decode_command(p.encode_command("RESET_AGENTS", envid, ids, tick)).data == ids
    assert decode_command(p.encode_command("SPAWN_AGENTS", envid, ids, tick)).data["agents"] == ids


@FUZZ
@given(
    num_rays=st.integers(1, 40),
    n=st.integers(0, 5),
    tick=st.none() | st.integers(0, 2**53),
    form=st.sampled_from(["columns", "batch", "seed"]),
    data=st.data(),
)
def test_fuzz_round_trip_of_valid_observations(num_rays, n, tick, form, data):
    size = num_rays + 3
    envid = data.draw(envids)
    ids = [p.agent_id(k, envid) for k in range(n)]
    obs = np.array(data.draw(st.lists(f32, min_size=n * size, max_size=n * size)), np.float32).reshape(n, size)
    reward = np.array(data.draw(st.lists(finite, min_size=n, max_size=n)), np.float64)
    term = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), bool)
    trunc = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), bool)
    out = game(p.encode_obs(ids, obs, reward, term, trunc, None, tick, form), size)
    assert out.agent_ids == ids and out.tick == (None if form == "v0" else tick)
    np.testing.assert_array_equal(out.obs, obs)
    np.testing.assert_array_equal(out.reward, reward)
    np.testing.assert_array_equal(out.terminated, term)
    np.testing.assert_array_equal(out.truncated, trunc)


# ============================================================================================
# Shared vectors (tests/vectors/messages.json, also run against roblox/src/shared/Protocol.luau)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "messages.json").read_text(encoding="utf-8"))


def _case_id(case: dict) -> str:
    return case.get("note") or case["raw"][:60]


def test_vectors_schema():
    assert set(VECTORS) == {
        "about",
        "valid_commands",
        "invalid_commands",
        "valid_game_messages",
        "invalid_game_messages",
    }
    for key in set(VECTORS) - {"about"}:
        assert VECTORS[key], f"{key} is empty: its parametrized tests would check nothing"
    for case in VECTORS["invalid_commands"] + VECTORS["invalid_game_messages"]:
        assert case["code"] in p.ERROR_CODES and case["error_contains"]
    for case in VECTORS["valid_game_messages"]:
        assert case["kind"] in ("packet", "obs", "hello", "error")


@pytest.mark.parametrize("case", VECTORS["valid_commands"], ids=_case_id)
def test_vector_valid_command(case):
    cmd = decode_command(case["raw"])
    assert (cmd.name, cmd.envid, cmd.tick) == (case["name"], case["envid"], case["tick"])


@pytest.mark.parametrize("case", VECTORS["invalid_commands"], ids=_case_id)
def test_vector_invalid_command(case):
    fails(decode_command, case["raw"], case["code"], case["error_contains"])


@pytest.mark.parametrize("case", VECTORS["valid_game_messages"], ids=_case_id)
def test_vector_valid_game_message(case):
    out = decode_game_message(case["raw"], case["obs_size"])
    kind = {Hello: "hello", ErrorMessage: "error"}.get(type(out))
    if isinstance(out, ObsBatch):
        kind = "obs" if "type" in json.loads(case["raw"]) else "packet"
        assert sorted(out.agent_ids) == sorted(case["agents"])
        assert out.obs.shape == (len(case["agents"]), case["obs_size"])
        assert out.tick == case["tick"]
    else:
        assert case["agents"] is None and case["tick"] is None
    if isinstance(out, Hello):
        assert (out.spec.max_venvs, out.spec.max_cars) == (case["max_venvs"], case["max_cars"])
    assert kind == case["kind"]


@pytest.mark.parametrize("case", VECTORS["invalid_game_messages"], ids=_case_id)
def test_vector_invalid_game_message(case):
    fails(lambda raw: game(raw, case["obs_size"]), case["raw"], case["code"], case["error_contains"])
