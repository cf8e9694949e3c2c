"""The in-process vector env's rollout against the bare simulator it wraps.

    python bench/rollout_speed.py [--windows 6 --seconds 2]

5 venvs x 5 cars, collisions on, uniformly random actions. In turn, ``--windows`` times each:

- bare ``Sim.step``: the simulator alone, ended cars restarted with ``Sim.reset_indices`` (what
  bench/sim_speed.py measures), tracks never change;
- ``make_vec_env`` in process (frame stack 4, autoreset), tracks kept (``track_change_steps=None``):
  everything the env adds to the simulator's step;
- the same with the default track changes (a venv moves to a new generated track every 300 steps);
- ``make_vec_env(sim="subprocess")``: the simulator in a child process over a loopback WebSocket.

Prints agent-steps per second (medians over the windows, and their range) and each env's ratio to
the bare simulator.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rbxenv import make_vec_env, tracks  # noqa: E402
from rbxenv.sim import Sim  # noqa: E402

NUM_VENVS, NUM_AGENTS = 5, 5
CARS = NUM_VENVS * NUM_AGENTS


def bare_sim():
    sim = Sim(seed=0)
    sim.set_collisions(True)
    for v in range(NUM_VENVS):
        sim.spawn(f"v{v}", [f"car_{i}_env_v{v}" for i in range(NUM_AGENTS)], track=tracks.generate(v), start="random")

    def step(actions: np.ndarray) -> None:
        res = sim.step(actions)
        ended = np.flatnonzero(res.terminated | res.truncated)
        if len(ended):
            sim.reset_indices(ended)

    return step, lambda: None


def env(**kwargs):
    envs = make_vec_env(num_agents=NUM_AGENTS, num_venvs=NUM_VENVS, frame_stack=4, **kwargs)
    envs.reset(seed=0)
    return envs.step, envs.close


def window(step, actions: np.ndarray, seconds: float) -> float:
    """Agent-steps per second of ``step`` over about ``seconds`` (whole batches of 100 steps)."""
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for k in range(100):
            step(actions[(done + k) % len(actions)])
        done += 100
    return done * CARS / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    actions = np.random.default_rng(0).uniform(-1, 1, (1000, CARS, 3)).astype(np.float32)
    setups = {
        "bare Sim.step": bare_sim(),
        "make_vec_env in process, tracks kept": env(track_change_steps=None),
        "make_vec_env in process, track changes (default)": env(),
        "make_vec_env subprocess (WebSocket)": env(sim="subprocess"),
    }
    for step, _ in setups.values():
        window(step, actions, 0.5)  # warm-up: compiled kernels, caches
    rates: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(args.windows):
        for name, (step, _) in setups.items():
            rates[name].append(window(step, actions, args.seconds))
    for _, close in setups.values():
        close()
    bare = statistics.median(rates["bare Sim.step"])
    print(f"{NUM_VENVS} venvs x {NUM_AGENTS} cars, collisions on, random actions; {args.windows} windows of "
          f"{args.seconds:g} s each, in turn; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'setup':50} {'agent-steps/s':>14} {'range':>19} {'/ bare':>7}")
    for name, r in rates.items():
        med = statistics.median(r)
        print(f"{name:50} {med:>14,.0f} {min(r):>9,.0f}-{max(r):<9,.0f} {med / bare:>7.2f}")


if __name__ == "__main__":
    main()
