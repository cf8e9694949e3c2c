"""rbxenv's trainer against the original project's place (emulated from its facts: tests/v0_emulation.py).

    python bench/v0_place.py [--num-venvs 5 --num-agents 5 --seconds 20 --pause 25]

The place ticks at 15 Hz on its own clock, sends every car in one packet per tick and restarts ended
cars itself; ``make_vec_env(sim=None)`` steps it with random actions for ``--seconds``, then the
trainer does nothing for ``--pause`` seconds (a long update, evaluation or checkpoint: longer than
the place's 20 s idle timeout), then steps again for a second. Printed: the decision rate against
the tick rate (a step waits for each car's next packet, so it cannot beat 15 Hz, and should not
fall behind it), ticks the place started late, endings (all reported as same-step autoresets:
RESET_AGENTS stays 0), the longest silence the place saw from the trainer (PINGs keep it under
5 s), whether it closed for idleness, and its warnings (none expected).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # rbxenv, and the emulation and loopback helpers of the tests

from netutil import free_port  # noqa: E402
from v0_emulation import V0Game  # noqa: E402

from rbxenv import make_vec_env  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-venvs", type=int, default=5)
    parser.add_argument("--num-agents", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20.0, help="stepping time")
    parser.add_argument("--pause", type=float, default=25.0, help="seconds without a step (a busy trainer)")
    args = parser.parse_args()
    port = free_port()
    game = V0Game(f"ws://localhost:{port}/ws/bench", seed=0)
    thread = threading.Thread(target=lambda: asyncio.run(game.run()), daemon=True)
    thread.start()
    env = make_vec_env(args.num_agents, args.num_venvs, sim=None, port=port, wait_timeout=30)
    rng = np.random.default_rng(0)
    n = env.num_envs
    try:
        env.reset(seed=0)
        steps, endings, t0 = 0, 0, time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            actions = np.column_stack([rng.uniform(0.3, 1, n), rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)])
            _, _, term, trunc, _ = env.step(actions.astype(np.float32))
            steps += 1
            endings += int((term | trunc).sum())
        elapsed = time.monotonic() - t0
        time.sleep(args.pause)
        for _ in range(15):
            env.step(np.zeros((n, 3), np.float32))
        stats = dict(env.session.bridge.stats)
    finally:
        env.close()
    thread.join(10)
    print(f"{args.num_venvs} venvs x {args.num_agents} cars, v0 place at 15 Hz, {elapsed:.1f} s of steps")
    print(f"  decisions: {steps / elapsed:.2f} per second ({steps * n / elapsed:.0f} agent-steps/s); late ticks {game.late_ticks}")  # fmt: skip
    print(f"  endings: {endings} reported by the env, {game.episodes} restarts by the place, RESET_AGENTS sent: {game.commands['RESET_AGENTS']}")  # fmt: skip
    print(f"  packets of a next episode before its ending was read (dropped): {stats.get('after_restart_packets', 0)}")
    print(f"  {args.pause:g} s pause: longest silence the place saw {game.max_silence:.2f} s, PINGs {game.commands['PING']}, idle close: {game.idle_closed}")  # fmt: skip
    print(f"  FREEZE commands {game.commands['FREEZE']}; place warnings: {len(game.warnings)} {game.warnings[:3]}")


if __name__ == "__main__":
    main()
