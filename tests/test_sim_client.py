"""The simulator's WebSocket client against the real bridge, driven through the original project's TrainingBridge API."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from rbxenv import protocol
from rbxenv.bridge import TrainingBridge
from rbxenv.sim.client import SimGame
from rbxenv.sim.world import Sim
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
        spec = bridge.wait_for_game(120)  # a busy machine can take half a minute to start it
        assert spec.mode == request.param
        yield bridge
    finally:
        bridge.close()
        proc.wait(timeout=10)


def test_training_bridge_methods_drive_the_sim(game: TrainingBridge):
    bridge = game
    assert bridge.game.protocol == 1 and {"batch", "tick", "info", "track_spec"} <= bridge.game.capabilities
    assert bridge.game.max_venvs is None and bridge.game.max_cars is None, "no flags: no limits announced"
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
        bridge.send_actions("a", {aid: [1.0, 0.0, 0.0] for aid in ids})  # the original project's per-venv ACTION
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


# ------------------------------------------------------------------ SimGame in process (no sockets)


def lockstep_game(cars_per_venv: int = 2) -> SimGame:
    game = SimGame(Sim(seed=0))
    game.welcome(["batch", "tick", "info", "columns"])
    for v in ("a", "b"):
        ids = [protocol.agent_id(i, v) for i in range(cars_per_venv)]
        game.receive(protocol.encode_command("SPAWN_AGENTS", v, {"agents": ids, "track": generate(3)}, 1).decode())
    return game


def batch_frame(actions: dict[str, list], tick: int) -> str:
    """ACTION_BATCH of {agent id: action}, grouped by venv."""
    batch: dict[str, dict] = {}
    for aid, action in actions.items():
        batch.setdefault(protocol.parse_agent_id(aid)[1], {})[aid] = action
    return protocol.encode_command("ACTION_BATCH", None, batch, tick).decode()


def test_sim_game_holds_the_latest_action_of_cars_left_out_of_a_batch():
    full, partial = lockstep_game(), lockstep_game()
    ids = full.sim.agent_ids
    first = {aid: [1.0, 0.1 * k, 0.0] for k, aid in enumerate(ids)}
    assert full.receive(batch_frame(first, 2)) == partial.receive(batch_frame(first, 2))
    second = {aid: [0.5, -0.2, 1.0] for aid in ids[:2]}  # venv "a" only: "b" keeps its first actions
    assert partial.receive(batch_frame(second, 3)) == full.receive(batch_frame(first | second, 3))


def test_sim_game_refuses_a_batch_with_an_unknown_agent_whole():
    game, untouched = lockstep_game(), lockstep_game()
    ids = game.sim.agent_ids
    bad = {aid: [1.0, 0.0, 0.0] for aid in ids} | {"car_7_env_b": [1.0, 0.0, 0.0]}
    (reply,) = game.receive(batch_frame(bad, 2))
    assert json.loads(reply)["code"] == "unknown_agent" and game.tick == 1 and game.stats["steps"] == 0
    idle = {aid: [0.0, 0.0, 0.0] for aid in ids[:1]}  # the others still hold their spawn actions (0)
    assert game.receive(batch_frame(idle, 2)) == untouched.receive(batch_frame(idle, 2))


def test_sim_game_reports_only_the_cars_live_at_the_start_of_a_step():
    game = lockstep_game()
    ids = game.sim.agent_ids
    x, y = game.sim.track("a").centerline[0]
    game.sim.teleport(ids[1], x + 100.0, y + 100.0, 0.0)  # off the track: ends on the next step
    drive = {aid: [0.3, 0.0, 0.0] for aid in ids}
    first = json.loads(game.receive(batch_frame(drive, 2))[0])
    assert first["ids"] == ids and first["terminated"] == [False, True, False, False]
    assert first["info"]["cause"] == [None, "wall", None, None]
    second = json.loads(game.receive(batch_frame(drive, 3))[0])
    assert second["ids"] == [ids[0], *ids[2:]] and len(second["obs"]) == 3 and second["tick"] == 3
    for key in ("x", "y", "heading", "speed"):
        assert len(second["info"][key]) == 3
    assert second["info"]["x"][0] == game.sim.pos[0, 0] and second["info"]["y"][2] == game.sim.pos[3, 1]


def rows_frame(actions: dict[str, list], tick: int) -> str:
    """The same ACTION_BATCH in column form (what the trainer sends a game that announced columns)."""
    return protocol.encode_action_rows(list(actions), np.array(list(actions.values())), tick).decode()


def test_sim_game_answers_both_forms_of_action_batch_alike():
    """Every car in order (the trainer's fast path), a part of them, cars out of order, an unknown
    agent: the column form gives the same frames and state as the per-venv form."""
    by_venv, by_rows = lockstep_game(), lockstep_game()
    ids = by_venv.sim.agent_ids
    rng = np.random.default_rng(0)
    steps = [
        dict(zip(ids, rng.uniform(-1.5, 1.5, (4, 3)).astype(np.float32).tolist(), strict=True)),  # clipped
        {ids[3]: [1.0, 0.5, 1.0], ids[0]: [0.25, -1.0, 0.0]},  # the others hold theirs
        dict(zip(ids[::-1], rng.uniform(-1, 1, (4, 3)).astype(np.float32).tolist(), strict=True)),
        {ids[0]: [1.0, 0.0, 0.0], "car_7_env_b": [1.0, 0.0, 0.0]},  # refused whole
    ]
    for tick, actions in enumerate(steps, start=2):
        assert by_rows.receive(rows_frame(actions, tick)) == by_venv.receive(batch_frame(actions, tick))
        assert by_rows.actions == by_venv.actions and by_rows.tick == by_venv.tick
    assert by_rows.stats == by_venv.stats and by_rows.stats["bad_commands"] == 1


def test_autoreset_restarts_an_ended_car_as_reset_agents_would():
    """Twin games: cars spawned with autoreset are restarted in the step they end, and the batch
    carries their first observations; the same cars reset by RESET_AGENTS give the same ones, and
    both games go on alike."""
    auto, manual = SimGame(Sim(seed=0)), SimGame(Sim(seed=0))
    ids = [protocol.agent_id(i, "a") for i in range(3)]
    for game, autoreset in ((auto, True), (manual, False)):
        game.welcome(["batch", "tick", "info", "columns"])
        spawn = {"agents": ids, "track": generate(3), "start": "random", "seed": 5, "autoreset": autoreset}
        game.receive(protocol.encode_command("SPAWN_AGENTS", "a", spawn, 1).decode())
        x, y = game.sim.track("a").centerline[0]
        game.sim.teleport(ids[1], x + 100.0, y + 100.0, 0.0)  # off the track: ends on the next step
    drive = {aid: [0.3, 0.0, 0.0] for aid in ids}
    ended = json.loads(auto.receive(rows_frame(drive, 2))[0])
    plain = json.loads(manual.receive(rows_frame(drive, 2))[0])
    assert ended.pop("reset_ids") == [ids[1]] and "reset_ids" not in plain
    restart_obs = ended.pop("reset_obs")
    assert ended == plain  # the ending itself is reported as without autoreset (pose where it ended)
    (report,) = manual.receive(protocol.encode_command("RESET_AGENTS", "a", [ids[1]], 3).decode())
    assert restart_obs == json.loads(report)["obs"]
    assert auto.sim.live.all() and auto.actions == manual.actions
    for tick in (4, 5):  # ticks line up once manual's reset took its own
        assert auto.receive(rows_frame(drive, tick)) == manual.receive(rows_frame(drive, tick))
    # a car spawned again without autoreset is parked when it ends
    auto.receive(protocol.encode_command("SPAWN_AGENTS", "a", {"agents": [ids[1]]}, 6).decode())
    auto.sim.teleport(ids[1], x + 100.0, y + 100.0, 0.0)
    assert "reset_ids" not in json.loads(auto.receive(rows_frame(drive, 7))[0]) and not auto.sim.live[1]


@pytest.mark.parametrize("flag", ["--v0", "--seed-protocol"])
def test_v0_flag_and_its_deprecated_alias_speak_protocol_version_0(flag, capsys):
    """``--v0`` sends no hello; ``--seed-protocol``, its old name, does the same and says so in one line."""
    import threading

    from rbxenv.sim import client

    with TrainingBridge(port=0, handshake_timeout=0.3) as bridge:
        sim = threading.Thread(target=client.main, args=([flag, "--url", bridge.url],))
        sim.start()
        assert bridge.wait_for_game(30).protocol == 0
    sim.join(timeout=10)
    assert not sim.is_alive(), "the simulator ends when the trainer closes"
    warned = [line for line in capsys.readouterr().err.splitlines() if "deprecated" in line]
    assert warned == (
        ["rbxenv.sim: --seed-protocol is deprecated and will go: use --v0 (the same)"] if flag != "--v0" else []
    )


def test_sim_announces_and_enforces_the_capacity_of_its_flags():
    """``--max-venvs 2 --max-cars 3`` over a real socket: the hello says so; a spawn that would make a
    third venv or a fourth car gets one ``capacity`` error and is not applied; what fits is spawned."""
    import threading

    from websockets.sync.server import serve

    from rbxenv.sim import client

    seen: dict = {}

    def trainer(ws):
        seen["hello"] = json.loads(ws.recv(timeout=30))
        ws.send(protocol.encode_welcome(frozenset({"batch", "tick", "info", "columns"})).decode())

        def spawn(envid: str, cars: int, tick: int) -> dict:
            ids = [protocol.agent_id(i, envid) for i in range(cars)]
            ws.send(protocol.encode_command("SPAWN_AGENTS", envid, ids, tick).decode())
            return json.loads(ws.recv(timeout=10))

        seen["replies"] = [
            spawn("a", 2, 1),
            spawn("b", 2, 2),  # 4 cars: refused whole
            spawn("b", 1, 3),  # 3 cars, 2 venvs: the limits themselves
            spawn("a", 2, 4),  # a re-spawn of cars it has is no more cars
            spawn("c", 1, 5),  # a third venv
        ]
        ws.send(protocol.encode_command("CLOSE", "a", None, 6).decode())
        seen["replies"].append(spawn("c", 1, 7))  # fits once "a" is gone

    with serve(trainer, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"ws://127.0.0.1:{server.socket.getsockname()[1]}"
        client.main(["--url", url, "--max-venvs", "2", "--max-cars", "3", "--connect-timeout", "10"])
        server.shutdown()
    assert (seen["hello"]["max_venvs"], seen["hello"]["max_cars"]) == (2, 3)
    a, too_many_cars, b, again, too_many_venvs, c = seen["replies"]
    assert a["ids"] == ["car_0_env_a", "car_1_env_a"] and again["ids"] == a["ids"] and a["tick"] == 1
    assert b["ids"] == ["car_0_env_b"] and c["ids"] == ["car_0_env_c"], "the refused spawn left no car"
    assert too_many_cars == {
        "type": "error",
        "code": "capacity",
        "message": "SPAWN_AGENTS b: 2 more cars would make 4; this game hosts at most 3 (max_cars in its hello)",
    }
    assert too_many_venvs["code"] == "capacity"
    assert too_many_venvs["message"] == "SPAWN_AGENTS c: this game hosts at most 2 venvs (max_venvs in its hello)"
