"""The Roblox game's side of a lockstep step: per-agent form, column form, column form with autoreset.

    python bench/luau_game.py [--steps 600 --num-venvs 5 --num-agents 5]

Runs the Luau GameClient (roblox/src/shared, with roblox/tests/FakeWorld standing in for the
engine) under the pluau VM, as a trainer would drive it in lockstep: an ACTION_BATCH per step
(full throttle, random steering, so cars crash), then

- per-agent form (a trainer that grants no ``columns``), and column form without ``autoreset``:
  one RESET_AGENTS per venv with ended cars after the step, as the vector env sends them, which is
  a second round trip for that step;
- column form with ``autoreset``: the game restarts ended cars itself, one round trip per step.

It prints the game's CPU time per step (``os.clock`` around its handling of the trainer's frames:
JSON decode, rules, observation rays, JSON encode) and the round trips per step; in Roblox a round
trip costs at least a frame. The trainer's frames are encoded outside the timing. Needs pluau
(requirements-dev.txt).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # rbxenv, and the Luau module loader the tests use

from luau import LuauVM  # noqa: E402

from rbxenv import cli  # noqa: E402

GAME = """
local steps, numVenvs, numAgents, columns, autoreset = ...
local Config, GameClient, FakeWorld, Json = require("Config"), require("GameClient"), require("FakeWorld"), require("Json")
local Protocol = require("Protocol")
local sent = {}
local handlers
local client = GameClient.new({
    config = Config.resolve({ Mode = "lockstep" }),
    world = FakeWorld.new(),
    connect = function(_, h)
        handlers = h
        return { send = function(_, text) table.insert(sent, text) end, close = function() end }
    end,
    log = function() end,
})
client:start()
handlers.onOpen()
local caps = { "batch", "tick", "info", "track_spec", "random_start" }
if columns then
    table.insert(caps, "columns")
    table.insert(caps, "autoreset")  -- the game restarts only cars spawned with autoreset
end
client:receive(Json.encode({ type = "welcome", protocol = 1, capabilities = caps }))
local ids = {}
for v = 1, numVenvs do
    local envid = "v" .. v
    local agents = {}
    for i = 0, numAgents - 1 do
        table.insert(agents, Protocol.agentId(i, envid))
        table.insert(ids, agents[#agents])
    end
    client:receive(Json.encode({ command = "SPAWN_AGENTS", envid = envid, tick = 0,
        data = { agents = agents, start = "random", seed = v, autoreset = autoreset } }))
end
table.clear(sent)
math.randomseed(1)
local gameTime, roundTrips, endings = 0, 0, 0
for tick = 1, steps do
    local actions = {}
    for k = 1, #ids do actions[k] = { 1, math.random() * 2 - 1, 0 } end
    local frame
    if columns then
        frame = Json.encode({ command = "ACTION_BATCH", data = Json.null, tick = tick, ids = Json.array(ids), actions = actions })
    else
        local data = {}
        for k, id in ids do
            local _, envid = Protocol.parseAgentId(id)
            data[envid] = data[envid] or {}
            data[envid][id] = actions[k]
        end
        frame = Json.encode({ command = "ACTION_BATCH", tick = tick, data = data })
    end
    local t0 = os.clock()
    client:receive(frame)
    gameTime += os.clock() - t0
    roundTrips += 1
    local batch = Json.decode(sent[#sent])
    table.clear(sent)
    local ended = {}
    if columns then
        for k, id in batch.ids do
            if batch.terminated[k] or batch.truncated[k] then table.insert(ended, id) end
        end
    else
        for id, entry in batch.agents do
            if entry.terminated or entry.truncated then table.insert(ended, id) end
        end
    end
    endings += #ended
    if #ended > 0 and not autoreset then
        local perVenv = {}
        for _, id in ended do
            local _, envid = Protocol.parseAgentId(id)
            perVenv[envid] = perVenv[envid] or {}
            table.insert(perVenv[envid], id)
        end
        local resets = {}
        for envid, list in perVenv do
            table.sort(list)
            table.insert(resets, (Json.encode({ command = "RESET_AGENTS", envid = envid, tick = tick, data = list })))
        end
        local t1 = os.clock()
        for _, text in resets do client:receive(text) end
        gameTime += os.clock() - t1
        roundTrips += 1
        table.clear(sent)
    end
end
return gameTime, roundTrips, endings, client.stats.badFrames
"""


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--num-venvs", type=int, default=5)
    parser.add_argument("--num-agents", type=int, default=5)
    args = parser.parse_args()
    cli.check(parser.prog, args, {"--steps": cli.at_least(1), "--num-venvs": cli.at_least(1), "--num-agents": cli.at_least(1)})  # fmt: skip
    print(f"{args.num_venvs} venvs x {args.num_agents} cars, lockstep, {args.steps} steps of full throttle and "
          f"random steering, Luau under pluau")  # fmt: skip
    modes = {
        "per-agent form + RESET_AGENTS": (False, False),
        "column form + RESET_AGENTS": (True, False),
        "column form + autoreset": (True, True),
    }
    results = {}
    for name, (columns, autoreset) in modes.items():
        vm = LuauVM()
        seconds, trips, endings, bad = vm.eval(GAME, args.steps, args.num_venvs, args.num_agents, columns, autoreset)
        assert bad == 0, "the game refused a frame"
        results[name] = (seconds / args.steps, trips / args.steps)
        print(f"{name:30s} {seconds / args.steps * 1e3:6.2f} ms game CPU per step   {trips / args.steps:.2f} round trips "
              f"per step   ({endings} episodes ended)")  # fmt: skip
    cpu0, trips0 = results["per-agent form + RESET_AGENTS"]
    for name in list(modes)[1:]:
        cpu, trips = results[name]
        print(f"{name} / per-agent form: game CPU {cpu / cpu0:.2f}x, round trips {trips / trips0:.2f}x")


if __name__ == "__main__":
    main()
