"""Rollout speed of the full stack next to its parts, measured side by side in one run.

    python bench/env_speed.py [--num-venvs 5 --num-agents 5 --seconds 2 --rounds 6]

1. in-process sim: ``Sim.step`` with random actions (no sockets, no JSON): the simulator's cost.
2. env: ``make_vec_env`` with a random policy, frame stack 4 (trainer + bridge + sim child process).
3. echo: a bare WebSocket round trip of the same payloads (one ACTION_BATCH out, one obs batch
   back, peer in a child process replaying obs batches the simulator sent in the env's rollout):
   the transport limit.
4. bridge: the same peer behind ``TrainingBridge`` (no simulator): what the bridge adds.
5. env, zero-cost game: ``make_vec_env`` against the same peer acting as a game whose steps cost
   nothing (it answers each ACTION_BATCH with the next recorded batch, spawns and resets with
   recorded rows): the whole trainer side, without the simulator's work.
Env, echo and the zero-cost game are measured in turn, ``--rounds`` windows each, so that a slow
or fast spell of the machine weighs on all; prints the median agent-steps/s of each, their range,
and the ratios of the medians (information: issue 16 retired the old target env >= 0.5 x echo).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # rbxenv, and the loopback helpers of the tests

from netutil import free_port  # noqa: E402

from rbxenv import cli, make_vec_env, protocol  # noqa: E402
from rbxenv.sim import Sim  # noqa: E402
from rbxenv.tracks import generate  # noqa: E402


def bench_inprocess(num_venvs: int, num_agents: int, seconds: float) -> float:
    sim = Sim(seed=0)
    for v in range(num_venvs):
        sim.spawn(
            f"v{v}", [protocol.agent_id(i, f"v{v}") for i in range(num_agents)], track=generate(v), start="random"
        )
    rng = np.random.default_rng(0)
    n = len(sim.agent_ids)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        result = sim.step(rng.uniform(-1, 1, (n, 3)).astype(np.float32))
        ended = np.flatnonzero(result.terminated | result.truncated)
        if ended.size:
            sim.reset_indices(ended)
        steps += 1
    return steps * n / (time.perf_counter() - t0)


def real_frames(env, rng: np.random.Generator, steps: int = 300) -> tuple[bytes, list[str]]:
    """What the env sends and receives in ``steps`` steps of its rollout: an ACTION_BATCH, and every
    obs batch that answered a step (all cars), for the echo and bridge peers to replay in turn."""
    bridge = env.session.bridge
    receive, frames = bridge._receive, []

    async def keep(conn, frame):
        frames.append(frame)
        await receive(conn, frame)

    bridge._receive = keep
    try:
        env_rate(env, rng, 0.0, warm_up=steps)
    finally:
        del bridge._receive  # the method again
    replies = [f for f in frames if len(protocol.decode_game_message(f, env.obs_size).agent_ids) == env.num_envs]
    actions = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
    return protocol.encode_action_rows(env.session.agent_ids, actions, 1), replies


def env_rate(env, rng: np.random.Generator, seconds: float, warm_up: int = 20) -> float:
    """Agent-steps/s of ``make_vec_env`` with a random policy over ``seconds``."""
    shape = env.action_space.shape
    for _ in range(warm_up):
        env.step(rng.uniform(-1, 1, shape).astype(np.float32))
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        env.step(rng.uniform(-1, 1, shape).astype(np.float32))
        steps += 1
    return steps * env.num_envs / (time.perf_counter() - t0)


# The peer of the echo, bridge and zero-cost game measurements: answers every frame with the next
# of the recorded observation batches (its tick set to the one received). "hello": it first shakes
# hands as a v1 game; "game": also as a game with autoreset, answering only commands (SPAWN_AGENTS
# and RESET_AGENTS with the recorded rows of their cars, reward 0, not done), and it waits for the
# trainer to listen.
ECHO_PEER = """
import asyncio, itertools, json, re, sys
from websockets.asyncio.client import connect
async def main(url, mode, replies):
    # a "game" takes track specs and random starts (the trainer generates and sends a spec per track
    # change, as with the simulator; the recorded rows ignore them)
    caps = ["batch", "tick", "info", "columns"] + (["track_spec", "random_start", "autoreset"] if mode == "game" else [])
    for attempt in range(100):
        try:
            ws = await connect(url, compression=None, max_size=None)
            break
        except OSError:
            await asyncio.sleep(0.1)
    first = json.loads(replies[0])
    row = {aid: k for k, aid in enumerate(first["ids"])}
    async with ws:
        if mode != "-":
            await ws.send(json.dumps({"type": "hello", "protocol": 1, "mode": "lockstep", "capabilities": caps}))
            await ws.recv()
        replies = itertools.cycle(replies)
        async for frame in ws:
            msg = json.loads(frame)
            tick = msg.get("tick")
            if mode == "game" and msg.get("command") != "ACTION_BATCH":
                if msg.get("command") in ("SPAWN_AGENTS", "RESET_AGENTS"):
                    ids = msg["data"]["agents"] if isinstance(msg["data"], dict) else msg["data"]
                    n = len(ids)
                    await ws.send(json.dumps({"type": "obs", "tick": tick, "ids": ids,
                        "obs": [first["obs"][row[aid]] for aid in ids], "reward": [0.0] * n,
                        "terminated": [False] * n, "truncated": [False] * n}))
                continue
            await ws.send(re.sub(r'"tick":[0-9]+', f'"tick":{tick}', next(replies), count=1))
asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.stdin.read())))
"""


def start_peer(url: str, replies: list[str], mode: str) -> subprocess.Popen:
    """The replaying peer in a child process: mode "-" (echo), "hello" (a v1 game) or "game"."""
    peer = subprocess.Popen(
        [sys.executable, "-c", ECHO_PEER, url, mode],
        stdin=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    peer.stdin.write(json.dumps(replies))
    peer.stdin.close()
    return peer


def bench_bridge(out_frame: bytes, replies: list[str], seconds: float) -> float:
    """``TrainingBridge.send_action_rows`` + ``get_observations`` against the replaying peer: the
    bridge's own cost (validation, slots, running the loop) with no simulator behind it."""
    from rbxenv.bridge import TrainingBridge

    rows = protocol.decode_command(out_frame).data
    ids, actions = rows.agent_ids, rows.actions.astype(np.float32)
    with TrainingBridge(port=0) as bridge:
        peer = start_peer(bridge.url, replies, "hello")
        bridge.wait_for_game(10)
        bridge.data.expect_answers(ids, 0)  # as if spawned: the peer only ever sends these cars
        for _ in range(20):
            bridge.send_action_rows(ids, actions)
            bridge.get_observations(ids)
        steps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            bridge.send_action_rows(ids, actions)
            bridge.get_observations(ids)
            steps += 1
        rate = steps * len(ids) / (time.perf_counter() - t0)
    peer.wait(timeout=10)
    return rate


class Echo:
    """The bare WebSocket round trip of the same payloads, on an asyncio server in this thread,
    against the replaying peer in a child process."""

    def __init__(self, out_frame: bytes, replies: list[str], num_cars: int, obs_size: int):
        from websockets.asyncio.server import serve

        self.text, self.num_cars, self.obs_size = out_frame.decode(), num_cars, obs_size
        self.loop = asyncio.new_event_loop()
        self.done = self.loop.create_future()
        attached = self.loop.create_future()

        async def handler(ws) -> None:
            attached.set_result(ws)
            await self.done  # the connection stays open between measurements

        async def start():
            return await serve(handler, "127.0.0.1", 0, compression=None, max_size=None)

        self.server = self.loop.run_until_complete(start())
        port = self.server.sockets[0].getsockname()[1]
        self.peer = start_peer(f"ws://127.0.0.1:{port}", replies, "-")
        self.ws = self.loop.run_until_complete(attached)

    def rate(self, seconds: float) -> float:
        return self.loop.run_until_complete(self._measure(seconds))

    async def _measure(self, seconds: float) -> float:
        ws, text, obs_size = self.ws, self.text, self.obs_size
        for _ in range(20):
            await ws.send(text)
            await ws.recv()
        steps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            await ws.send(text)
            protocol.decode_game_message(await ws.recv(), obs_size)  # parsing is part of the transport cost
            steps += 1
        return steps * self.num_cars / (time.perf_counter() - t0)

    def close(self) -> None:
        self.done.set_result(None)
        self.peer.terminate()
        self.peer.wait()
        self.server.close()
        self.loop.run_until_complete(self.server.wait_closed())
        self.loop.close()


def zero_cost_game_env(replies: list[str], num_agents: int, num_venvs: int):
    """``make_vec_env`` against the replaying peer as a game whose steps cost nothing."""
    port = free_port()  # for the peer to know before the env listens
    peer = start_peer(f"ws://127.0.0.1:{port}", replies, "game")
    env = make_vec_env(num_agents=num_agents, num_venvs=num_venvs, frame_stack=4, sim=None, port=port,
                       wait_timeout=20)  # fmt: skip
    return env, peer


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-venvs", type=int, default=5)
    parser.add_argument("--num-agents", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement window")
    parser.add_argument("--rounds", type=int, default=6, help="env, echo and zero-cost game windows, in turn")
    args = parser.parse_args()
    cli.check(parser.prog, args, {
        "--num-venvs": cli.at_least(1),
        "--num-agents": cli.at_least(1),
        "--seconds": cli.above(0),
        "--rounds": cli.at_least(1),
    })  # fmt: skip
    cars = args.num_venvs * args.num_agents
    print(
        f"{args.num_venvs} venvs x {args.num_agents} cars = {cars} cars, frame stack 4, random actions; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    inproc = bench_inprocess(args.num_venvs, args.num_agents, args.seconds)
    print(f"in-process sim       {inproc:10,.0f} agent-steps/s")
    rng = np.random.default_rng(0)
    env = make_vec_env(num_agents=args.num_agents, num_venvs=args.num_venvs, frame_stack=4, sim="subprocess")
    try:
        env.reset(seed=0)
        out_frame, replies = real_frames(env, rng)
        echo = Echo(out_frame, replies, cars, env.obs_size)
        zero, peer = zero_cost_game_env(replies, args.num_agents, args.num_venvs)
        try:
            zero.reset(seed=0)
            # In turn, so that a slow or fast spell of the machine weighs on all alike.
            rates = [
                (env_rate(env, rng, args.seconds), echo.rate(args.seconds), env_rate(zero, rng, args.seconds))
                for _ in range(args.rounds)
            ]
        finally:
            echo.close()
            zero.close()
            peer.wait(timeout=10)
    finally:
        env.close()
    env_rates, echo_rates, zero_rates = np.array(rates).T
    for name, r in (
        ("env (full stack)", env_rates),
        ("WebSocket echo", echo_rates),
        ("env, zero-cost game", zero_rates),
    ):
        print(f"{name:20s} {np.median(r):10,.0f} agent-steps/s  (median of {len(r)} windows of {args.seconds:g} s; "
              f"{r.min():,.0f} .. {r.max():,.0f})")  # fmt: skip
    back = np.mean([len(r.encode()) for r in replies])
    print(f"  echo payloads: {len(out_frame)} B out, {back:,.0f} B back per tick (mean of {len(replies)} recorded)")
    bridge = bench_bridge(out_frame, replies, args.seconds)
    print(f"bridge, echo peer    {bridge:10,.0f} agent-steps/s  (TrainingBridge, no simulator)")
    ratios = env_rates / echo_rates
    print(
        f"env / echo = {np.median(env_rates) / np.median(echo_rates):.2f}   (per window pair "
        f"{ratios.min():.2f} .. {ratios.max():.2f})   env / in-process = {np.median(env_rates) / inproc:.2f}"
    )
    print(
        f"env with a zero-cost game / echo = {np.median(zero_rates) / np.median(echo_rates):.2f}   (the trainer side alone)"
    )
    print("where a step's time goes: python bench/step_breakdown.py")


if __name__ == "__main__":
    main()
