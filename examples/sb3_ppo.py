"""Stable-Baselines3 PPO on rbxenv through the original project's SuperSuit pipeline.

    pip install -r requirements-dev.txt        # stable-baselines3 is a dev dependency
    python examples/sb3_ppo.py --timesteps 200000

The pipeline of the original architecture document:

    env -> ss.frame_stack_v1(env, 4) -> ss.pettingzoo_env_to_vec_env_v1 -> SB3VecEnvWrapper -> VecNormalize

SuperSuit's vector conversion needs every agent present on every step, so cars that end early
are kept as "black death" agents (zero observations, no reward) until the whole ParallelEnv resets;
our own ``make_vec_env`` resets each car on its own instead, which is why the single-file scripts use it.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

import rbxenv
from rbxenv import cli

PROG = "sb3_ppo.py"


def parse_args() -> argparse.Namespace:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=200_000, help="agent steps to train for")
    parser.add_argument("--num-agents", type=int, default=5, help="cars per venv")
    parser.add_argument("--num-venvs", type=int, default=1, help="venvs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default="runs/sb3_ppo", help="where to save the model and normaliser")
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="torch CPU threads (1: the simulator needs a core)"
    )
    args = parser.parse_args()
    cli.check(PROG, args, {
        "--timesteps": cli.at_least(1),
        "--num-agents": cli.at_least(1),
        "--num-venvs": cli.at_least(1),
        "--torch-threads": cli.at_least(1),
    })  # fmt: skip
    return args


if __name__ == "__main__":
    ARGS = parse_args()  # bad flags are refused here, in a second: before torch and SB3 load

import supersuit as ss
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecMonitor, VecNormalize
from supersuit.vector import ConcatVecEnv
from supersuit.vector.sb3_vector_wrapper import SB3VecEnvWrapper


def make_sb3_env(num_agents: int = 5, num_venvs: int = 1, frame_stack: int = 4, **env_kwargs) -> VecNormalize:
    env = rbxenv.make_parallel_env(num_agents=num_agents, num_venvs=num_venvs, **env_kwargs)
    env = ss.black_death_v3(env)  # finished cars stay as zero-observation agents until the env resets
    env = ss.frame_stack_v1(env, frame_stack)
    env = ss.pettingzoo_env_to_vec_env_v1(env)
    # ss.concat_vec_envs_v1 would deep-copy the env (live sockets can't be copied): build its parts directly.
    env = SB3VecEnvWrapper(ConcatVecEnv([lambda: env]))
    # SuperSuit's SB3VecEnvWrapper answers no attribute queries, so SB3 cannot read render_mode
    # (rbxenv renders nothing through the env) and would warn about it on every construction.
    warnings.filterwarnings("ignore", message="The `render_mode` attribute is not defined", category=UserWarning)
    env = VecMonitor(env)
    return VecNormalize(env, norm_obs=True, norm_reward=True, clip_obs=10.0)


def linear_decay(initial: float):
    """SB3 learning-rate schedule: ``initial`` at the start, 0 at the end (SB3 passes the fraction
    of the run still to go, 1 -> 0; below 0 in the last rollout when it overshoots the total)."""
    return lambda progress_remaining: initial * max(progress_remaining, 0.0)


def main(args: argparse.Namespace) -> None:
    try:
        env = make_sb3_env(args.num_agents, args.num_venvs, sim_seed=args.seed)
    except (rbxenv.BridgeClosed, OSError) as error:  # no game, or the port is taken
        cli.fail(PROG, f"no game to train with: {error}")
    try:
        set_random_seed(args.seed)  # not PPO(seed=...): SuperSuit's ConcatVecEnv has no seed() to forward to
        # One torch thread: with the simulator busy on the other core, torch's spinning worker
        # threads make SB3 six times slower on a 2-core machine (2,400 vs 380 agent-steps/s).
        torch.set_num_threads(args.torch_threads)
        # The learning rate decays linearly to 0 over the run, as ppo_continuous.py anneals it: with
        # SB3's constant default the driver got worse late in long runs (BENCHMARKS.md: 43-50 %
        # of held-out tracks lapped after ~6M agent-steps, 77-100 % with the decay).
        model = PPO("MlpPolicy", env, n_steps=256, batch_size=256, learning_rate=linear_decay(3e-4), verbose=1)
        failure, code = None, 0
        try:
            model.learn(total_timesteps=args.timesteps)
        except KeyboardInterrupt:
            failure, code = "interrupted", cli.EXIT_INTERRUPTED
        except (rbxenv.BridgeClosed, TimeoutError) as error:
            failure, code = f"the game was lost ({error})", cli.EXIT_FAILURE
        try:  # what was learned is kept, also after Ctrl-C or a lost game
            model.save(f"{args.save}/model")
            env.save(f"{args.save}/vecnormalize.pkl")
        except OSError as error:
            cli.fail(PROG, f"cannot write {args.save} ({error.strerror or error})")
        saved = f"saved {args.save}/model.zip and {args.save}/vecnormalize.pkl"
        if code == cli.EXIT_FAILURE:
            cli.fail(PROG, f"{failure}; {saved}")
        print(f"{failure}; {saved}" if failure else saved, flush=True)
        if code:
            raise SystemExit(code)
    finally:
        env.close()


if __name__ == "__main__":
    main(ARGS)
