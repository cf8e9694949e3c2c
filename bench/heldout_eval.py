"""Held-out evaluation of a checkpoint (or of a hand-written driver) against the reference driver.

    python bench/heldout_eval.py runs/<run>/checkpoint.pt --tracks 100     # a PPO or SAC checkpoint
    python bench/heldout_eval.py --driver ray_follower --tracks 100         # rbxenv.baselines

One car per held-out track (``HELDOUT_TRACK_SEEDS[:tracks]``, never used in training) from the
start grid, deterministic policy, one episode (up to 100 s): the scripts' own ``evaluate`` (so the
figures are the ones their TensorBoard ``eval/*`` scalars show). Prints lap completion (>= 1 lap),
crash rate, mean progress in laps, the mean first lap from the grid, and that lap divided by the
privileged pure-pursuit reference's on the same track (``rbxenv.sim.reference.drive_laps``).
BENCHMARKS.md's 100-track PPO figures and hyper-parameter table come from this script.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rbxenv import HELDOUT_TRACK_SEEDS, baselines, make_vec_env, training  # noqa: E402
from rbxenv.sim.reference import drive_laps  # noqa: E402
from rbxenv.tracks import generate  # noqa: E402


class Driver:
    """A hand-written driver behind the scripts' actor interfaces."""

    def __init__(self, name: str):
        self.act_numpy = baselines.driver(name)

    def act_deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.act_numpy(obs.numpy()))


def load_actor(path: str):
    """(evaluate function, actor) of a ppo_continuous.py or sac_continuous.py checkpoint."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    hidden = tuple(ckpt["args"]["hidden_sizes"])
    obs_dim, act_dim = ckpt["policy"]["obs_dim"], ckpt["policy"]["act_dim"]
    if ckpt["algo"] == "ppo":
        import ppo_continuous as script

        actor = script.Agent(obs_dim, act_dim, hidden)
        actor.load_state_dict(ckpt["model"])
    else:
        import sac_continuous as script

        actor = script.Actor(obs_dim, act_dim, hidden)
        actor.load_state_dict(ckpt["model"]["actor"])
    return training.evaluate, actor


def heldout_eval(evaluate, actor, tracks: int, frame_stack: int = 4) -> dict:
    """The scripts' held-out evaluation on ``tracks`` tracks, plus the first lap against the reference's."""
    seeds = list(HELDOUT_TRACK_SEEDS)[:tracks]
    envs = make_vec_env(
        num_agents=1,
        num_venvs=tracks,
        frame_stack=frame_stack,
        start="grid",
        track_seeds=seeds,
        track_change_steps=None,
    )
    try:
        with torch.no_grad():
            result = evaluate(actor, envs, seed=0)
    finally:
        envs.close()
    reference = drive_laps([generate(seed) for seed in seeds])
    result["reference_lap_time"] = float(np.mean(reference))
    result["lap_time_vs_reference"] = float(np.nanmean(result["first_lap_times"] / reference))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "checkpoint", nargs="?", help="rbxenv-checkpoint-v1 file of ppo_continuous.py or sac_continuous.py"
    )
    parser.add_argument("--driver", choices=["ray_follower", "into_the_wall", "parked"], help="a hand-written driver instead")  # fmt: skip
    parser.add_argument("--tracks", type=int, default=100, help="held-out tracks, one car each")
    args = parser.parse_args()
    if bool(args.checkpoint) == bool(args.driver):
        parser.error("give a checkpoint or --driver, not both")
    torch.set_num_threads(1)
    if args.driver:
        evaluate, actor, what = training.evaluate, Driver(args.driver), f"driver {args.driver}"
    else:
        evaluate, actor = load_actor(args.checkpoint)
        what = args.checkpoint
    t0 = time.monotonic()
    r = heldout_eval(evaluate, actor, args.tracks)
    print(
        f"{what} on {args.tracks} held-out tracks: lap completion {r['lap_completion']:.1%} | "
        f"crash rate {r['crash_rate']:.1%} | progress {r['progress']:.2f} laps | first lap {r['lap_time']:.2f} s | "
        f"reference {r['reference_lap_time']:.2f} s | lap time / reference {r['lap_time_vs_reference']:.3f} "
        f"({time.monotonic() - t0:.0f} s)"
    )


if __name__ == "__main__":
    main()
