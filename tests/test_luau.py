"""The Roblox side's Luau under a real Luau VM (pluau): every file compiles, the pure modules pass
their specs (roblox/tests/*.spec.luau), and the rules agree with the simulator's test vectors."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from luau import REPO, ROBLOX, LuauVM, compile_file, luau_files, pluau, run_spec_case, spec_cases, to_python

from rbxenv import tracks
from rbxenv.sim.world import Sim

pytestmark = pytest.mark.skipif(pluau is None, reason="pluau is not installed (pip install -r requirements-dev.txt)")


def _read_file(relpath: str) -> str:
    path = (REPO / str(relpath)).resolve()
    assert REPO in path.parents, f"readFile outside the repository: {relpath}"
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", luau_files(), ids=lambda p: str(p.relative_to(ROBLOX)))
def test_compiles(path: Path) -> None:
    compile_file(path)


def test_every_module_is_found() -> None:
    # A syntax error anywhere fails CI: make sure the file list is not silently empty.
    names = {p.name for p in luau_files()}
    assert {"Protocol.luau", "Rules.luau", "Trainer.server.luau", "RobloxWorld.luau"} <= names


def _stylua() -> str | None:
    local = ROBLOX / "node_modules" / ".bin" / "stylua"  # `npm install` in roblox/ puts it here
    return str(local) if local.exists() else shutil.which("stylua")


def test_stylua_format() -> None:
    """Every Luau file is formatted with roblox/stylua.toml (`cd roblox && npm ci` installs StyLua from
    roblox/package-lock.json; `npx stylua .` fixes the formatting)."""
    stylua = _stylua()
    if stylua is None:
        pytest.skip("\n\n*** SKIPPED: StyLua is not installed: run `cd roblox && npm ci` (.ci/run does it) ***\n")
    result = subprocess.run([stylua, "--check", "."], cwd=ROBLOX, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"run `npx stylua .` in roblox/:\n{result.stdout[-3000:]}{result.stderr[-1000:]}"


SPECS = sorted(p.name.removesuffix(".luau") for p in (ROBLOX / "tests").glob("*.spec.luau"))
CASES = [(spec, case) for spec in SPECS for case in (spec_cases(spec) if pluau is not None else [])]


@pytest.mark.parametrize(("spec", "case"), CASES, ids=[f"{s.removesuffix('.spec')}::{c}" for s, c in CASES])
def test_spec(spec: str, case: str) -> None:
    run_spec_case(spec, case, readFile=_read_file)


def test_policy_runner_matches_numpy() -> None:
    """PolicyRunner's forward pass and frame stack equal a numpy reference of the exported MLP."""

    rng = np.random.default_rng(0)
    obs_size, stack, hidden = 13, 4, (16, 8)
    sizes = [obs_size * stack, *hidden, 3]
    layers = [
        {"W": rng.normal(0, 0.5, (o, i)).tolist(), "b": rng.normal(0, 0.1, o).tolist()}
        for i, o in zip(sizes[:-1], sizes[1:], strict=True)
    ]
    weights = {
        "obs_size": obs_size,
        "frame_stack": stack,
        "obs_mean": rng.normal(0, 0.3, obs_size * stack).tolist(),
        "obs_var": rng.uniform(0.1, 2.0, obs_size * stack).tolist(),
        "obs_eps": 1e-8,
        "obs_clip": 2.0,
        "layers": layers,
        "activation": "tanh",
        "squash": "clip",
    }
    frames = rng.uniform(-1.5, 1.5, (6, obs_size))

    expected = []
    stacked = np.tile(frames[0], stack)  # the first observation fills the stack
    for k, frame in enumerate(frames):
        if k:
            stacked = np.concatenate([stacked[obs_size:], frame])
        x = np.clip((stacked - weights["obs_mean"]) / np.sqrt(np.asarray(weights["obs_var"]) + 1e-8), -2.0, 2.0)
        for n, layer in enumerate(layers):
            x = np.asarray(layer["W"]) @ x + np.asarray(layer["b"])
            if n < len(layers) - 1:
                x = np.tanh(x)
        expected.append(np.clip(x, -1.0, 1.0))

    vm = LuauVM()
    out = vm.eval(
        """
        local Json, PolicyRunner = require("Json"), require("PolicyRunner")
        local runner = assert(PolicyRunner.new((Json.decode(...))))
        local frames = Json.decode(select(2, ...))
        local actions = {}
        for _, obs in frames do
            table.insert(actions, runner:act("car_0_env_a", obs))
        end
        return Json.encode(actions)
        """,
        json.dumps(weights),
        json.dumps(frames.tolist()),
    )
    got = np.array(json.loads(str(to_python(out[0]))))
    np.testing.assert_allclose(got, np.array(expected), rtol=1e-9, atol=1e-12)


def test_race_matches_simulator() -> None:
    """The Luau game logic (VenvManager + Race) plays the same episode as the Python simulator:
    same track, same actions, car-car bumps on -> same observations, rewards and endings."""

    spec = tracks.generate(5)
    ids = [f"car_{i}_env_a" for i in range(4)]
    steps = 90
    rng = np.random.default_rng(2)
    actions = np.stack(
        [
            rng.uniform(0.2, 1.0, (steps, len(ids))),
            rng.uniform(-0.25, 0.25, (steps, len(ids))),
            rng.uniform(-1.0, 1.0, (steps, len(ids))),
        ],
        axis=-1,
    )
    actions[:, 3, 1] = 1.0  # car 3 steers into the wall: a crash ending mid-episode

    sim = Sim(seed=0)
    sim.set_collisions(True)
    sim.spawn("a", ids, track=spec, start="grid")
    expected = []
    for t in range(steps):
        res = sim.step(actions[t])
        expected.append(
            {
                aid: (res.obs[k], float(res.reward[k]), bool(res.terminated[k]))
                for k, aid in enumerate(ids)
                if res.live[k]
            }
        )

    vm = LuauVM()
    out = vm.eval(
        """
        local Json = require("Json")
        local VenvManager, Race, Rules = require("VenvManager"), require("Race"), require("Rules")
        local FakeWorld = require("FakeWorld")
        local spec, ids, actions = Json.decode((...)), Json.decode((select(2, ...))), Json.decode((select(3, ...)))
        local world = FakeWorld.new()
        local venvs = VenvManager.new(0)
        venvs.collisions = true
        assert(venvs:spawn("a", ids, spec, "grid"))
        world:buildVenv({ id = "a", slot = 0, geometry = venvs.venvs.a.geometry })
        for _, id in ids do world:spawnCar("a", id) end
        local race = Race.new(venvs, world, Rules.DEFAULTS)
        local steps = {}
        for _, row in actions do
            for k, id in ids do
                local car = venvs:car(id)
                car.action = row[k]
            end
            local step = {}
            for _, r in race:step() do
                step[r.id] = { r.entry.obs, r.entry.reward, r.entry.terminated }
            end
            table.insert(steps, Json.object(step))
        end
        return Json.encode(steps)
        """,
        json.dumps(spec),
        json.dumps(ids),
        json.dumps(actions.tolist()),
    )
    got = json.loads(str(to_python(out[0])))
    assert len(got) == steps
    crashed = False
    for t in range(steps):
        assert sorted(got[t]) == sorted(expected[t]), f"step {t}: live cars differ"
        for aid, (obs, reward, terminated) in expected[t].items():
            g_obs, g_reward, g_term = got[t][aid]
            np.testing.assert_allclose(g_obs, obs, atol=1e-4, err_msg=f"step {t} {aid} obs")
            assert abs(g_reward - reward) < 1e-4, f"step {t} {aid} reward {g_reward} != {reward}"
            assert g_term == terminated, f"step {t} {aid} terminated"
            crashed |= terminated
    assert crashed, "the scenario should end at least one episode"


def test_default_track_is_a_valid_spec() -> None:
    """The Luau built-in track passes rbxenv.tracks.validate (length, widths, corners, grid)."""

    out = LuauVM().eval('local Json = require("Json"); return Json.encode(require("DefaultTrack").spec())')
    spec = json.loads(str(to_python(out[0])))
    assert tracks.validate(spec) == []
