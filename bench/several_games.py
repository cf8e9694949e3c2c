"""Env throughput with several games serving one session: 1, 2 and 4 simulator games.

    python bench/several_games.py [--games 1 2 4 --num-agents 25 --seconds 10 --rounds 2]

Each game is a ``python -m rbxenv.sim`` process over a loopback WebSocket (``sim="subprocess"``,
``sim_games=N``): the path several Roblox Studio windows or machines take, each game hosting one
venv of ``--num-agents`` cars. A constant-throttle policy steps the vector env for ``--seconds``
after a warm-up, in turn for every game count, ``--rounds`` times.

* real time (``--tick-hz`` 15, as Roblox): each game ticks on its own clock, so the ideal is linear,
  N x cars x tick_hz agent-steps/s (375, 750, 1,500 for 25 cars at 15 Hz); printed as the share
  of it reached.
* lockstep: each step waits for every game; the games share the machine's cores, so the figure is
  the ratio to one game (above 1 only while cores are free).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from rbxenv import cli, make_vec_env  # noqa: E402


def throughput(games: int, mode: str, num_agents: int, tick_hz: float, seconds: float) -> float:
    """Agent-steps/s of a vector env whose ``games`` simulator games host one venv each."""
    env = make_vec_env(
        num_agents=num_agents,
        num_venvs=games,
        sim="subprocess",
        sim_games=games,
        mode=mode,
        tick_hz=tick_hz,
        sim_seed=0,
    )
    try:
        assert sorted(len(v) for v in env.session.hosted().values()) == [1] * games, "one venv per game"
        env.reset(seed=0)
        actions = np.tile(np.float32([0.6, 0.0, 0.0]), (env.num_envs, 1))
        for _ in range(int(tick_hz)):  # warm-up: a second of game time
            env.step(actions)
        steps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            env.step(actions)
            steps += 1
        return steps * env.num_envs / (time.perf_counter() - t0)
    finally:
        env.close()


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", type=int, nargs="+", default=[1, 2, 4], help="game counts to measure")
    parser.add_argument("--num-agents", type=int, default=25, help="cars per game (one venv each)")
    parser.add_argument("--tick-hz", type=float, default=15.0, help="decisions per second of a real-time game")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per window")
    parser.add_argument("--rounds", type=int, default=2, help="windows per configuration, taken in turn")
    parser.add_argument("--modes", nargs="+", default=["realtime", "lockstep"], choices=["realtime", "lockstep"])
    args = parser.parse_args()
    cli.check(parser.prog, args, {
        "--num-agents": cli.at_least(1),
        "--tick-hz": cli.above(0),
        "--seconds": cli.above(0),
        "--rounds": cli.at_least(1),
    })  # fmt: skip
    if min(args.games) < 1:
        cli.refuse(parser.prog, f"--games {min(args.games)}: at least 1 game")
    print(
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; {args.num_agents} cars per game, "
        f"{args.seconds:g} s x {args.rounds} rounds",
        flush=True,
    )
    results: dict[tuple[str, int], list[float]] = {}
    for r in range(args.rounds):
        for mode in args.modes:
            for games in args.games:
                rate = throughput(games, mode, args.num_agents, args.tick_hz, args.seconds)
                results.setdefault((mode, games), []).append(rate)
                print(f"  round {r + 1}: {mode:8s} {games} game(s): {rate:8,.0f} agent-steps/s", flush=True)
    print(f"\nmedians (load {os.getloadavg()[0]:.1f} at the end)")
    print("| mode | games | agent-steps/s | range | vs ideal / vs 1 game |")
    print("|---|---|---|---|---|")
    for mode in args.modes:
        one = statistics.median(results.get((mode, args.games[0]), [float("nan")]))
        for games in args.games:
            rates = results[(mode, games)]
            median = statistics.median(rates)
            if mode == "realtime":
                ideal = games * args.num_agents * args.tick_hz
                ratio = f"{median / ideal:.2f} of ideal {ideal:,.0f}"
            else:
                ratio = f"{median / one:.2f}x {args.games[0]} game(s)"
            print(f"| {mode} | {games} | {median:,.0f} | {min(rates):,.0f}-{max(rates):,.0f} | {ratio} |")


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"({time.time() - t0:.0f} s)")
