"""In-process simulator speed: agent-steps per second with random actions.

    python bench/sim_speed.py [--steps 1000] [--repeat 5] [--profile] [--spawn] [--lengths]

Ended cars are restarted with ``Sim.reset_indices`` (the trainer's auto-reset), so every step
moves every car. Runs 5 venvs x 5 cars (the target: >= 500,000 agent-steps/s, i.e. <= 0.05 ms per
step, on 2 cores), 20 venvs x 5 and 100 venvs x 5 cars, each venv on its own generated track,
collisions off and on. ``--profile`` samples every 0.1 ms: the compiled kernels show as one line
(``Sim.step``'s own time), the rest is the Python around them.

``--spawn`` times instead what a rollout does besides stepping: the trainer's
``tracks.generate(seed)`` for seeds drawn like its training seeds, ``Sim.spawn`` of a venv's 5
cars onto a new track (random starts) in a 5 x 5 simulator, and ``Sim.reset_indices`` of 1 and 3
cars of different venvs. It uses the public API only, so it also runs on older versions.

``--lengths`` times 5 venvs x 5 cars on one track shape laid out at 1,000 and at 20,000 studs,
the two sizes interleaved round by round: a step's cost must not grow with the track's length
(cars search a few segments around their last one; rays read a window of wall points).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from rbxenv import cli, tracks  # noqa: E402
from rbxenv.sim import Sim  # noqa: E402


def make_sim(num_venvs: int, cars: int, collisions: bool, seed: int = 0) -> Sim:
    sim = Sim(seed=seed)
    for v in range(num_venvs):
        envid = f"v{v}"
        track = tracks.generate(seed + v, tracks.METHODS[v % len(tracks.METHODS)])
        sim.spawn(envid, [f"car_{i}_env_{envid}" for i in range(cars)], track=track, start="random", seed=v)
    sim.set_collisions(collisions)
    return sim


def run(sim: Sim, steps: int, seed: int = 0, repeat: int = 1) -> tuple[float, float]:
    """Agent-steps per second over ``steps`` decision steps (after a short warm-up), per second of
    wall time and per second of this process's CPU time; the best of ``repeat`` rounds, since
    other processes on the machine only ever slow a round down."""
    rng = np.random.default_rng(seed)
    n = len(sim.agent_ids)
    # biased towards driving forward so that episodes last a while, as a learning policy's would
    actions = rng.uniform(-1, 1, size=(steps + 50, n, 3)) + np.array([0.6, 0.0, 0.0])
    for t in range(50):
        sim.step(actions[t])
    best, best_cpu = 0.0, 0.0
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        for t in range(50, steps + 50):
            res = sim.step(actions[t])
            ended = np.flatnonzero(res.terminated | res.truncated)
            if len(ended):
                sim.reset_indices(ended)
        best = max(best, steps * n / (time.perf_counter() - start))
        best_cpu = max(best_cpu, steps * n / (time.process_time() - start_cpu))
    return best, best_cpu


def time_structural(tracks_count: int = 200, resets: int = 2000, seed: int = 0) -> None:
    """Print the mean time of generate, of a new-track spawn and of a reset of a few cars."""
    rng = np.random.default_rng(seed)
    seeds = [int(s) for s in rng.integers(0, 1_000_000, tracks_count)]  # like session.TRAIN_TRACK_SEEDS
    start = time.perf_counter()
    specs = [tracks.generate(s) for s in seeds]
    generate_ms = 1e3 * (time.perf_counter() - start) / len(specs)
    sim = make_sim(5, 5, collisions=True)
    spawns = []
    for k, spec in enumerate(specs):
        envid = f"v{k % 5}"
        start = time.perf_counter()
        sim.spawn(envid, [f"car_{i}_env_{envid}" for i in range(5)], track=spec, start="random", seed=k)
        spawns.append(time.perf_counter() - start)
    print(f"tracks.generate(seed): {generate_ms:.2f} ms (mean of {len(specs)} training seeds)")
    print(f"Sim.spawn of 5 cars on a new track: {1e3 * np.mean(spawns):.2f} ms (mean of {len(spawns)}, "
          f"median {1e3 * np.median(spawns):.2f} ms)")  # fmt: skip
    for cars in (1, 3):
        picks = [rng.choice(5, cars, replace=False) * 5 + rng.integers(0, 5, cars) for _ in range(resets)]
        best = np.inf
        for _ in range(3):  # best of 3 rounds: other processes only ever slow a round down
            start = time.perf_counter()
            for idx in picks:
                sim.reset_indices(idx)
            best = min(best, (time.perf_counter() - start) / resets)
        print(f"Sim.reset_indices of {cars} car{'s' if cars > 1 else ''}: {1e6 * best:.1f} us (mean of {resets})")


def stadium(length: float) -> dict:
    """A rounded rectangle 3:1 of about ``length`` studs (the same shape at every size)."""
    w = length / (8 - 0.6 * (4 - math.pi))  # four corners of radius 0.3 w cut 0.6 w (4 - pi)
    return tracks.from_waypoints([(0, 0), (3 * w, 0), (3 * w, w), (0, w)], 12.0, 0.3 * w, name=f"stadium-{length:g}")


def time_lengths(steps: int, repeat: int) -> None:
    sims = {}
    for length in (1000.0, 20000.0):
        spec = stadium(length)
        sim = Sim(seed=0)
        for v in range(5):
            sim.spawn(f"v{v}", [f"car_{i}_env_v{v}" for i in range(5)], track=spec, start="random", seed=v)
        sims[length] = (spec, sim)
    best = dict.fromkeys(sims, 0.0)
    for _ in range(repeat):  # interleaved: a busy moment of the machine slows both sizes alike
        for length, (_, sim) in sims.items():
            best[length] = max(best[length], run(sim, steps)[0])
    for length, (spec, _) in sims.items():
        print(f"5 venvs x 5 cars on a {spec['length']:,.0f}-stud track: {best[length]:9,.0f} agent-steps/s, "
              f"{1e3 * 25 / best[length]:.3f} ms per step")  # fmt: skip
    print(f"20,000 / 1,000 studs: {best[1000.0] / best[20000.0]:.2f}x the time per step")


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5, help="report the best of this many rounds")
    parser.add_argument("--profile", action="store_true", help="profile 5x5 with pyinstrument")
    parser.add_argument("--spawn", action="store_true", help="time generate, new-track spawns and restarts")
    parser.add_argument("--lengths", action="store_true", help="step cost on a 1,000- and a 20,000-stud track")
    args = parser.parse_args()
    cli.check(parser.prog, args, {"--steps": cli.at_least(1), "--repeat": cli.at_least(1)})
    if args.lengths:
        time_lengths(args.steps, args.repeat)
        return
    if args.spawn:
        time_structural()
        return
    if args.profile:
        from pyinstrument import Profiler

        sim = make_sim(5, 5, collisions=True)
        with Profiler(interval=1e-4) as prof:
            run(sim, args.steps)
        print(prof.output_text(unicode=False, color=False, show_all=False))
        return
    for venvs, cars in ((5, 5), (20, 5), (100, 5)):
        for collisions in (False, True):
            sim = make_sim(venvs, cars, collisions)
            rate, cpu_rate = run(sim, args.steps, repeat=args.repeat)
            print(
                f"{venvs:3d} venvs x {cars} cars, collisions {'on ' if collisions else 'off'}: "
                f"{rate:9,.0f} agent-steps/s (wall), {cpu_rate:9,.0f} per CPU second, "
                f"{1e3 * venvs * cars / rate:.3f} ms per step"
            )


if __name__ == "__main__":
    main()
