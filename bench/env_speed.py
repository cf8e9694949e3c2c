"""Rollout speed of the full stack next to its parts, measured side by side in one run.

    python bench/env_speed.py [--num-venvs 5 --num-agents 5 --seconds 10]

1. in-process sim: ``Sim.step`` with random actions (no sockets, no JSON): the simulator's cost.
2. env: ``make_vec_env`` with a random policy, frame stack 4 (trainer + bridge + sim child process).
3. echo: a bare WebSocket round trip of the same payloads (one ACTION_BATCH out, one obs batch
   back, peer in a child process replying with a canned frame): the transport limit.
4. bridge: the same peer behind ``TrainingBridge`` (no simulator): what the bridge adds.
Prints agent-steps/s for each and the ratios. Target: env >= 0.5 x echo.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rbxenv import make_vec_env, protocol  # noqa: E402
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


def bench_env(num_venvs: int, num_agents: int, seconds: float) -> tuple[float, bytes, bytes]:
    env = make_vec_env(num_agents=num_agents, num_venvs=num_venvs, frame_stack=4)
    try:
        env.reset(seed=0)
        rng = np.random.default_rng(0)
        shape = env.action_space.shape
        for _ in range(20):  # warm up
            env.step(rng.uniform(-1, 1, shape).astype(np.float32))
        steps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            env.step(rng.uniform(-1, 1, shape).astype(np.float32))
            steps += 1
        rate = steps * env.num_envs / (time.perf_counter() - t0)
        # A real pair of frames of this size, for the echo benchmark.
        ids = env.session.agent_ids
        actions = rng.uniform(-1, 1, shape).astype(np.float32)
        out_frame = protocol.encode_action_rows(ids, actions, 1)  # the column form the simulator takes
        n = len(ids)
        info = protocol.info_columns(n)  # what the simulator reports, in the column form it sends
        for key, value in {"progress": 0.5, "lap": 0, "speed": 41.2, "x": 12.5, "y": -3.25, "heading": 1.5}.items():
            info[key][:] = value
        obs = rng.uniform(0, 1, (n, 13)).astype(np.float32)
        zeros = np.zeros(n, dtype=bool)
        in_frame = protocol.encode_obs(ids, obs, np.full(n, 0.25), zeros, zeros, info, 1, "columns")
        return rate, out_frame, in_frame
    finally:
        env.close()


# The peer of the echo and bridge measurements: answers every frame with the canned observation
# batch (its tick set to the one received); with "hello" it first shakes hands as a v1 game.
ECHO_PEER = """
import asyncio, json, sys
from websockets.asyncio.client import connect
async def main(url, hello, reply):
    async with connect(url, compression=None, max_size=None) as ws:
        if hello:
            await ws.send(json.dumps({"type": "hello", "protocol": 1, "mode": "lockstep",
                                      "capabilities": ["batch", "tick", "info", "columns"]}))
            await ws.recv()
        async for frame in ws:
            tick = json.loads(frame).get("tick")
            await ws.send(reply.replace('"tick":1,', f'"tick":{tick},', 1))
asyncio.run(main(sys.argv[1], sys.argv[2] == "hello", sys.stdin.read()))
"""


def start_peer(url: str, in_frame: bytes, hello: bool) -> subprocess.Popen:
    peer = subprocess.Popen(
        [sys.executable, "-c", ECHO_PEER, url, "hello" if hello else "-"], stdin=subprocess.PIPE, text=True
    )
    peer.stdin.write(in_frame.decode())
    peer.stdin.close()
    return peer


def bench_bridge(out_frame: bytes, in_frame: bytes, seconds: float) -> float:
    """``TrainingBridge.send_action_rows`` + ``get_observations`` against the canned peer: the
    bridge's own cost (validation, slots, running the loop) with no simulator behind it."""
    from rbxenv.bridge import TrainingBridge

    rows = protocol.decode_command(out_frame).data
    ids, actions = rows.agent_ids, rows.actions.astype(np.float32)
    with TrainingBridge(port=0) as bridge:
        peer = start_peer(bridge.url, in_frame, hello=True)
        bridge.wait_for_game(10)
        bridge.data.track(ids, 0)  # as if spawned: the peer only ever sends these cars
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


def bench_echo(out_frame: bytes, in_frame: bytes, num_cars: int, seconds: float) -> float:
    from websockets.asyncio.server import serve

    result: list[float] = []

    async def main() -> None:
        done = asyncio.Event()

        async def handler(ws) -> None:
            text = out_frame.decode()
            for _ in range(20):
                await ws.send(text)
                await ws.recv()
            steps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                await ws.send(text)
                protocol.decode_game_message(await ws.recv(), 13)  # parsing is part of the transport cost
                steps += 1
            result.append(steps * num_cars / (time.perf_counter() - t0))
            done.set()

        async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
            port = server.sockets[0].getsockname()[1]
            peer = start_peer(f"ws://127.0.0.1:{port}", in_frame, hello=False)
            await done.wait()
            peer.terminate()
            peer.wait()

    asyncio.run(main())
    return result[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-venvs", type=int, default=5)
    parser.add_argument("--num-agents", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    args = parser.parse_args()
    cars = args.num_venvs * args.num_agents
    print(f"{args.num_venvs} venvs x {args.num_agents} cars = {cars} cars, frame stack 4, random actions")
    inproc = bench_inprocess(args.num_venvs, args.num_agents, args.seconds)
    print(f"in-process sim       {inproc:10,.0f} agent-steps/s")
    env, out_frame, in_frame = bench_env(args.num_venvs, args.num_agents, args.seconds)
    print(f"env (full stack)     {env:10,.0f} agent-steps/s")
    echo = bench_echo(out_frame, in_frame, cars, args.seconds)
    print(
        f"WebSocket echo       {echo:10,.0f} agent-steps/s  ({len(out_frame)} B out, {len(in_frame)} B back per tick)"
    )
    bridge = bench_bridge(out_frame, in_frame, args.seconds)
    print(f"bridge, canned peer  {bridge:10,.0f} agent-steps/s  (TrainingBridge, no simulator)")
    print(f"env / echo = {env / echo:.2f}   (target >= 0.5)   env / in-process = {env / inproc:.2f}")
    print("where a step's time goes: python bench/step_breakdown.py")


if __name__ == "__main__":
    main()
