"""Where the time of one lockstep env step goes, across the trainer and the simulator process.

    python bench/step_breakdown.py [--steps 3000 --num-venvs 5 --num-agents 5]

Runs ``make_vec_env`` (frame stack 4, random policy, no track changes) against the simulator in a
child process, both instrumented with time stamps on the same clock (``time.perf_counter`` is
CLOCK_MONOTONIC on Linux, shared by processes), and prints the median time of each leg of a step:
the trainer's own work, the bridge's, the wire and the simulator's. (The bridge's event loop runs
in its own thread: handing a frame to it and waking the training thread are legs of their own.)
Steps in which the simulator restarted a car (autoreset, inside the encode leg) or the
trainer reset one (a second round trip) are left out and counted, so the legs add up to the
median step.
"""

from __future__ import annotations

import bisect
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # rbxenv, and the loopback helpers of the tests

from netutil import free_port  # noqa: E402

from rbxenv import cli, make_vec_env  # noqa: E402
from rbxenv.bridge import TrainingBridge  # noqa: E402

# The simulator process, with time stamps around each command it handles and after each Sim.step.
# Each row: received, stepped, done, and whether it restarted cars (autoreset).
SIM = """
import sys, time
import numpy as np
from rbxenv.sim import client
from rbxenv.sim.world import Sim
stamps, stepped, restarted = [], [0.0], [False]
receive, step, restart = client.SimGame.receive, Sim.step, client.SimGame._restart
def timed_receive(self, frame):
    t, restarted[0] = time.perf_counter(), False
    out = receive(self, frame)
    stamps.append((t, stepped[0], time.perf_counter(), restarted[0]))
    return out
def timed_step(self, actions):
    out = step(self, actions)
    stepped[0] = time.perf_counter()
    return out
def timed_restart(self, ids, ended):
    out = restart(self, ids, ended)
    restarted[0] = restarted[0] or out[0] is not None
    return out
client.SimGame.receive, Sim.step, client.SimGame._restart = timed_receive, timed_step, timed_restart
try:
    client.main(["--url", sys.argv[1]])
finally:
    np.save(sys.argv[2], np.array(stamps))
"""

LEGS = [
    ("trainer: clip actions, build ACTION_BATCH", "step start -> send"),
    ("trainer: hand the frame to the network thread", "send -> sent"),
    ("wire + simulator's asyncio receive", "sent -> sim has the frame"),
    ("simulator: decode command, Sim.step", "-> stepped"),
    ("simulator: encode the obs batch", "stepped -> sim done"),
    ("simulator's asyncio send + wire + bridge's receive", "sim done -> bridge has the frame"),
    ("bridge: decode, store in slots", "-> stored"),
    ("bridge: wake the training thread", "stored -> answer in hand"),
    ("trainer: read slots, frame stack, infos", "awake -> step end"),
]


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--num-venvs", type=int, default=5)
    parser.add_argument("--num-agents", type=int, default=5)
    args = parser.parse_args()
    cli.check(parser.prog, args, {
        "--steps": cli.at_least(1),
        "--num-venvs": cli.at_least(1),
        "--num-agents": cli.at_least(1),
    })  # fmt: skip

    port = free_port()  # for the trainer, known before the simulator starts
    with tempfile.TemporaryDirectory() as tmp:
        sim_stamps = Path(tmp) / "sim.npy"
        sim = subprocess.Popen([sys.executable, "-c", SIM, f"ws://127.0.0.1:{port}", str(sim_stamps)])
        env = make_vec_env(
            args.num_agents, args.num_venvs, 4, sim=None, port=port, wait_timeout=60, track_change_steps=None,
        )  # fmt: skip
        bridge = env.session.bridge
        sends, stored, woke = [], [], []

        def timed(method, out: list, both: bool):
            def wrapper(*a, **k):
                t = time.perf_counter()
                result = method(*a, **k)
                out.append((t, time.perf_counter()) if both else time.perf_counter())
                return result

            return wrapper

        rng = np.random.default_rng(0)
        env.reset(seed=0)
        for _ in range(100):  # warm up
            env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
        receive = TrainingBridge._receive.__get__(bridge)  # the network thread's frame handler

        async def timed_receive(conn, frame):
            t = time.perf_counter()
            await receive(conn, frame)
            stored.append((t, time.perf_counter()))

        bridge._receive = timed_receive
        bridge.send_rows = timed(bridge.send_rows, sends, True)
        bridge.data.wait = timed(bridge.data.wait, woke, False)
        steps = []
        for _ in range(args.steps):
            actions = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
            t = time.perf_counter()
            env.step(actions)
            steps.append((t, time.perf_counter()))
        env.close()
        sim.wait(timeout=30)
        sim_at = np.load(sim_stamps)

    sends, stored, steps = np.array(sends), np.array(stored), np.array(steps)
    rows, restarts, resets = [], 0, 0
    for t0, t_end in steps:
        i = bisect.bisect_left(sends[:, 0], t0)
        if i + 1 < len(sends) and sends[i + 1, 0] < t_end:
            resets += 1  # a car was reset within this step: a second round trip
            continue
        s0, s1 = sends[i]
        a0, a1, a2, restarted = sim_at[bisect.bisect_left(sim_at[:, 0], s0)]
        if restarted:
            restarts += 1  # the simulator restarted a car after its step: part of the encode leg
            continue
        r0, r1 = stored[bisect.bisect_left(stored[:, 0], a2)]
        w = woke[bisect.bisect_left(woke, r1)]
        rows.append([s0 - t0, s1 - s0, a0 - s1, a1 - a0, a2 - a1, r0 - a2, r1 - r0, w - r1, t_end - w])
    legs = np.median(np.array(rows) * 1e6, axis=0)
    cars = args.num_venvs * args.num_agents
    print(
        f"{cars} cars, {len(rows)} of {args.steps} steps measured ({restarts} with "
        f"cars restarted by the simulator and {resets} with a reset round trip left out); median µs per leg:"
    )
    for (what, span), us in zip(LEGS, legs, strict=True):
        print(f"  {us:7.1f}  {what:52s} ({span})")
    step_us = float(np.median(np.diff(steps[:, 0])) * 1e6)
    print(
        f"  {legs.sum():7.1f}  sum of the legs;  median step {step_us:.1f} µs = {cars / step_us * 1e6:,.0f} agent-steps/s"
    )


if __name__ == "__main__":
    main()
