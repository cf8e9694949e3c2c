"""A track from the Roblox place: TrackSpec.luau (pure Luau, under pluau) builds the same spec as
rbxenv.tracks from the same waypoints, specs survive Luau's JSON both ways, checkpoint parts become
a track or a message saying what to change, and a place that announces its track in ``hello``
(capability ``game_tracks``) trains end to end: the Luau GameClient over a real socket, the real
bridge, ppo_continuous.py with real gradient steps, held-out evaluation on generated tracks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from luau import LuauVM, pluau
from netutil import free_port

from rbxenv import protocol, tracks

pytestmark = pytest.mark.skipif(pluau is None, reason="pluau is not installed (pip install -r requirements-dev.txt)")

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data" / "tracks"
sys.path.insert(0, str(DATA))
import draw  # noqa: E402

_FROM_WAYPOINTS = """
local TrackSpec, Json = require("TrackSpec"), require("Json")
local input = Json.decode(...)
local points, widths, radii = {}, {}, {}
for i, p in input.points do
    points[i], widths[i], radii[i] = { p[1], p[2] }, p[3], p[4]
end
return TrackSpec.toJson(TrackSpec.fromWaypoints(points, widths, radii, input.name))
"""


def luau_from_waypoints(vm: LuauVM, name: str, points: list) -> dict:
    return json.loads(str(vm.eval(_FROM_WAYPOINTS, json.dumps({"name": name, "points": points}))[0]))


def test_luau_builds_the_spec_python_builds_from_the_same_waypoints():
    vm = LuauVM()
    for name, points in draw.DRAWINGS.items():
        lua, py = luau_from_waypoints(vm, name, points), draw.build(name)
        assert lua == py | {"method": "waypoints"}, name  # every number the same, to the last digit
    odd = [(0, 0, 7, 1e6), (150, 10, 9, 1e6), (260, 90, 8, 1e6), (120, 160, 12, 1e6), (-40, 70, 7, 1e6)]
    lua = luau_from_waypoints(vm, "round", odd)  # "as round as the edges allow"
    py = tracks.from_waypoints([p[:2] for p in odd], [p[2] for p in odd], [p[3] for p in odd], name="round")
    assert lua == py | {"method": "waypoints"} and tracks.validate(lua) == []


def test_specs_survive_luau_json_both_ways():
    vm = LuauVM()
    specs = [tracks.generate(3), tracks.generate(4, difficulty=1.0), *tracks.load_tracks(DATA)[:4]]
    for spec in specs:
        text = str(vm.eval('local Json = require("Json"); return Json.encode((Json.decode(...)))', json.dumps(spec))[0])
        assert json.loads(text) == spec, spec["name"]
        again = json.loads(
            str(vm.eval('local T, J = require("TrackSpec"), require("Json"); return T.toJson(J.decode(...))', text)[0])
        )
        assert again == spec


_FROM_PARTS = """
local TrackSpec, Json = require("TrackSpec"), require("Json")
local spec, err = TrackSpec.fromParts(Json.decode(...))
return if spec then TrackSpec.toJson(spec) else nil, err
"""


def parts_of(drawing: list, shuffle: bool = True) -> list[dict]:
    """Checkpoint parts as the engine side reads them: Roblox X, Z (spec y = -Z), gate width, order."""
    parts = [
        {"name": f"Checkpoints.{i + 1}", "x": x, "z": -y, "width": 2 * w, "order": i + 1, "radius": r}
        for i, (x, y, w, r) in enumerate(drawing)
    ]
    return parts[::-1] if shuffle else parts


def test_checkpoint_parts_become_the_track_or_say_what_to_change():
    vm = LuauVM()

    def from_parts(parts):
        text, err = vm.eval(_FROM_PARTS, json.dumps(parts))
        return (json.loads(str(text)) if text is not None else None), (str(err) if err is not None else None)

    spec, err = from_parts(parts_of(draw.DRAWINGS["club"]))  # listed backwards: sorted by order
    assert err is None and spec == draw.build("club") | {"name": "place", "method": "waypoints"}
    parts = parts_of(draw.DRAWINGS["club"])
    del parts[2]["order"]
    assert from_parts(parts) == (None, "part Checkpoints.9 has no order: name checkpoints 1, 2, 3 ... or give each an Order attribute")  # fmt: skip
    parts = parts_of(draw.DRAWINGS["club"])
    parts[1]["order"] = parts[0]["order"]
    assert (
        from_parts(parts)[1] == "parts Checkpoints.10 and Checkpoints.11 share order 11: number them in driving order"
    )
    assert from_parts(parts_of(draw.DRAWINGS["club"])[:2])[1].startswith("the track needs at least 3 checkpoint parts")
    parts = parts_of(draw.DRAWINGS["club"])
    parts[0]["width"] = 4.0
    assert from_parts(parts)[1] == "part Checkpoints.11 is 4.0 studs wide: size it to the road's width"


def test_hello_with_a_game_track():
    track = draw.build("kidney")
    hello = protocol.decode_hello(
        {"type": "hello", "protocol": 1, "capabilities": ["game_tracks", "batch"], "track": track}
    )
    assert hello.spec.has("game_tracks") and hello.spec.track == track
    sent = json.loads(protocol.encode_hello(hello.spec))
    assert sent["track"] == track and "game_tracks" in sent["capabilities"]
    with pytest.raises(protocol.ProtocolError, match="hello.track: capability game_tracks needs the game's track spec"):
        protocol.decode_hello({"type": "hello", "protocol": 1, "capabilities": ["game_tracks"]})
    bad = track | {"half_width": [3.0] * len(track["half_width"])}
    with pytest.raises(protocol.ProtocolError, match=r"hello.track: not a valid track: road too narrow at point 0 .* widen it to 5.5"):  # fmt: skip
        protocol.decode_hello({"type": "hello", "protocol": 1, "capabilities": ["game_tracks"], "track": bad})


# A Luau game whose place has its own track: the GameClient with placeTrack (what Trainer.server
# passes when Config.PlaceTrack names the checkpoints), built by TrackSpec from checkpoint parts.
_PLACE_GAME = """
local connect, url, mode, handshake, parts = ...
local Config, GameClient, FakeWorld = require("Config"), require("GameClient"), require("FakeWorld")
local TrackSpec, Json = require("TrackSpec"), require("Json")
local config, problems =
    Config.resolve({ Url = url, Mode = mode, Handshake = handshake, ReconnectMin = 0.05, ReconnectMax = 0.2 })
assert(#problems == 0, problems[1])
local track = assert(TrackSpec.fromParts(Json.decode(parts), { name = "my-place" }))
local world = FakeWorld.new()
local logs = {}
local client = GameClient.new({
    config = config,
    world = world,
    placeTrack = track,
    connect = function(url, handlers)
        return connect(url, handlers)
    end,
    log = function(level, message) table.insert(logs, level .. ": " .. message) end,
})
return client, world, logs
"""


def place_game(port: int, drawing: str):
    from test_luau_bridge import GameThread

    parts = json.dumps(parts_of(draw.DRAWINGS[drawing]))
    return GameThread(f"ws://127.0.0.1:{port}", "lockstep", source=_PLACE_GAME, extra=(parts,))


def test_the_vector_env_runs_on_the_track_the_place_announces():
    import rbxenv

    port = free_port()
    with place_game(port, "rally-square") as game:
        env = rbxenv.make_vec_env(
            num_agents=2, num_venvs=2, sim=None, port=port, wait_timeout=20, track_change_steps=10, start="grid"
        )
        try:
            spec = env.session.game
            assert spec.has("game_tracks") and not spec.has("track_spec")
            expected = draw.build("rally-square") | {"name": "my-place", "method": "waypoints"}
            assert spec.track == expected
            env.reset(seed=0)
            assert all(env.session.tracks[v] == expected for v in env.session.venv_ids)
            ret = np.zeros(4)
            for _ in range(30):  # past "track changes": nothing is respawned, nothing sent
                obs, reward, *_ = env.step(np.tile([0.4, 0.0, 0.0], (4, 1)).astype(np.float32))
                ret += reward
            assert (ret > 0).all() and env.session.bridge.stats.get("bad_frames", 0) == 0
        finally:
            env.close()
    assert game.stats["badFrames"] == 0 and game.stats["steps"] >= 30, game.logs


@pytest.mark.timeout(240)
def test_ppo_trains_on_the_place_track_end_to_end(tmp_path):
    port = free_port()
    with place_game(port, "kidney") as game:
        run = subprocess.run(
            [sys.executable, str(ROOT / "ppo_continuous.py"), "--no-sim", "--port", str(port), "--mode", "lockstep",
             "--num-agents", "2", "--num-venvs", "2", "--num-steps", "16", "--num-minibatches", "2",
             "--update-epochs", "2", "--total-timesteps", "128", "--eval-every", "64", "--eval-episodes", "2",
             "--no-save-model", "--wait-timeout", "60"],
            cwd=tmp_path, capture_output=True, text=True, timeout=200, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| the game's own track my-place (2048 studs) |" in run.stdout.splitlines()[1]  # the run's introduction
    assert "step 128/128" in run.stdout and "eval on 2 held-out tracks" in run.stdout  # generated: the default
    assert game.stats["steps"] >= 128 // 4 and game.stats["badFrames"] == 0, game.logs  # 4 cars a step
