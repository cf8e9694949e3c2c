"""The trainer under real-time load: can it answer every tick of a game that will not wait?

    python bench/realtime_load.py [--num-venvs 5 --num-agents 20 --tick-hz 15 --seconds 30 --policy torch]

The embedded simulator runs in real-time mode (ticks at ``--tick-hz`` on its own, applies the latest
action it has, as Roblox does) with ``num_venvs x num_agents`` cars; the trainer steps
``make_vec_env`` with a policy doing real work per step (a small torch MLP forward on the batch,
or ``--policy numpy``: a numpy stand-in of about 1 ms). Measured, from always-on instrumentation
in the bridge:

- latency: from the arrival of the observation that completed a step (``DataBridge.ready_at``:
  the network thread stored the last awaited observation) to the next action being handed to the
  network thread (``TrainingBridge.action_sent_at``); it covers the env's bookkeeping (frame stack,
  infos, respawns) and the policy;
- game ticks: observation packets the game sent (``stats["obs_packets"]``) minus the answers to
  spawns and resets; dropped ticks = game ticks - trainer steps (ticks that no new action
  answered: the game applied an old action again);
- stale packets (``stats["stale_packets"]``): packets that arrived after the trainer had sent a
  newer action (their rewards still count);
- decision rate: trainer steps per second vs ``--tick-hz``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

# One BLAS thread: on a small machine a multi-threaded policy fights the simulator for the cores
# (the simulator child inherits this too). Set OPENBLAS_NUM_THREADS yourself to override.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rbxenv import cli, make_vec_env  # noqa: E402


def count_answers(bridge) -> list[int]:
    """A counter (``[n]``) of the bridge's spawns and resets: each is answered by a packet that is
    not a game tick, which a tick count must leave out. Wraps the two calls."""
    answers = [0]
    for name in ("spawn_agents", "reset_agents"):
        original = getattr(bridge, name)

        def counted(*a, _original=original, **kw):
            answers[0] += 1
            return _original(*a, **kw)

        setattr(bridge, name, counted)
    return answers


def make_policy(kind: str, obs_dim: int, seed: int = 0):
    """obs batch (n, obs_dim) float32 -> actions (n, 3) float32."""
    if kind == "torch":
        import torch

        torch.manual_seed(seed)
        torch.set_num_threads(1)  # a 2-core machine shared with the simulator process
        net = torch.nn.Sequential(
            torch.nn.Linear(obs_dim, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
            torch.nn.Linear(64, 3), torch.nn.Tanh(),
        )  # fmt: skip

        @torch.inference_mode()
        def act(obs: np.ndarray) -> np.ndarray:
            out = net(torch.from_numpy(obs)).numpy()
            out[:, 0] = 0.6 + 0.4 * out[:, 0]  # mostly throttle: cars drive instead of stalling
            return out

        return act
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (obs_dim, 256)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (256, 3)).astype(np.float32)

    def act_np(obs: np.ndarray) -> np.ndarray:
        h = obs
        for _ in range(12):  # ~1 ms of matmuls for 100 cars (one BLAS thread)
            h = np.tanh(h @ w1) @ w1.T
        out = np.tanh(np.tanh(h @ w1) @ w2)
        out[:, 0] = 0.6 + 0.4 * out[:, 0]
        return out

    return act_np


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-venvs", type=int, default=5)
    parser.add_argument("--num-agents", type=int, default=20)
    parser.add_argument("--tick-hz", type=float, default=15.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--policy", choices=["torch", "numpy"], default="torch")
    args = parser.parse_args()
    cli.check(parser.prog, args, {
        "--num-venvs": cli.at_least(1),
        "--num-agents": cli.at_least(1),
        "--tick-hz": cli.above(0),
        "--seconds": cli.above(0),
    })  # fmt: skip

    env = make_vec_env(
        num_agents=args.num_agents, num_venvs=args.num_venvs, mode="realtime", tick_hz=args.tick_hz, sim_seed=0
    )
    bridge = env.session.bridge
    answers = count_answers(bridge)
    try:
        obs, _ = env.reset(seed=0)
        policy = make_policy(args.policy, obs.shape[1])
        for _ in range(15):  # warm up: one second of ticks
            obs, *_ = env.step(policy(obs))
        base = dict(bridge.stats)
        answers0 = answers[0]
        latency, policy_ms, after, respawned, steps, ends = [], [], [], [], 0, 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            ready = bridge.data.ready_at
            p0 = time.perf_counter()
            actions = policy(obs)
            policy_ms.append((time.perf_counter() - p0) * 1e3)
            obs, reward, term, trunc, infos = env.step(actions)
            latency.append((bridge.action_sent_at - ready) * 1e3)  # this step's action vs the last obs
            after.append((time.monotonic() - bridge.data.ready_at) * 1e3)  # env work once the obs is in
            respawned.append(bool((term | trunc).any()))
            ends += int((term | trunc).sum())
            steps += 1
        elapsed = time.monotonic() - t0
        stats = {k: v - base.get(k, 0) for k, v in bridge.stats.items()}
    finally:
        env.close()

    packets = stats.get("obs_packets", 0)
    game_ticks = packets - (answers[0] - answers0)
    dropped = game_ticks - steps
    lat, after = np.array(latency[1:]), np.array(after[:-1])
    respawned = np.array(respawned[:-1])  # lat[j]: the action that answered step j's observation
    cars = args.num_venvs * args.num_agents
    rows = [
        ("cars", f"{cars} ({args.num_venvs} venvs x {args.num_agents})"),
        ("policy", f"{args.policy} MLP, {np.median(policy_ms):.2f} ms median per batch"),
        ("run", f"{elapsed:.1f} s"),
        ("decision rate", f"{steps / elapsed:.2f} Hz of {args.tick_hz:g} Hz ({steps / elapsed / args.tick_hz:.1%})"),
        ("game ticks", f"{game_ticks} ({game_ticks / elapsed:.2f} Hz)"),
        ("trainer steps", f"{steps}"),
        ("dropped ticks", f"{dropped} ({dropped / max(game_ticks, 1):.2%} of game ticks)"),
        ("stale packets", f"{stats.get('stale_packets', 0)}"),
        ("latency p50", f"{np.percentile(lat, 50):.2f} ms  (obs arrival -> action sent)"),
        ("latency p99", f"{np.percentile(lat, 99):.2f} ms"),
        ("latency max", f"{lat.max():.2f} ms"),
        (
            "  env part p50/p99",
            f"{np.percentile(after, 50):.2f} / {np.percentile(after, 99):.2f} ms  (wait returns -> step returns)",
        ),
        ("  policy p50/p99", f"{np.percentile(policy_ms, 50):.2f} / {np.percentile(policy_ms, 99):.2f} ms"),
        ("  p99, steps w/o respawn", f"{np.percentile(lat[~respawned], 99):.2f} ms" if (~respawned).any() else "-"),
        ("  p99, steps with respawn", f"{np.percentile(lat[respawned], 99):.2f} ms" if respawned.any() else "-"),
        ("episode ends", f"{ends} (respawned in the same step)"),
        ("bad frames", f"{stats.get('bad_frames', 0)}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\nrbxenv real-time load: {args.tick_hz:g} Hz game, {cars} cars, {args.seconds:g} s")
    print("-" * 72)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print("-" * 72)


if __name__ == "__main__":
    main()
