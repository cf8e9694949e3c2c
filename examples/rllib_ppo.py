"""Ray RLlib PPO on rbxenv: env runners that each own a simulator, from a laptop to a Ray cluster.

    pip install -r requirements-rllib.txt
    python examples/rllib_ppo.py                                       # Ray on this machine, 2 env runners
    python examples/rllib_ppo.py --address auto --num-env-runners 16   # a running Ray cluster (README)

The same task as ``ppo_continuous.py``: one vector slot per car (``rbxenv.make_vec_env``, 4 stacked
frames), random starts on training tracks that change every 1,500 steps, then the deterministic
policy drives tracks it never trained on (``HELDOUT_TRACK_SEEDS``), scored by
``rbxenv.training.evaluate`` (the scripts' own). Every RLlib env runner (a Ray actor, one CPU) builds its own vector
env, so its own simulator, on the node it runs on; the learner stays in this process. Scaling out
is one flag: ``--num-env-runners``. The train batch grows with it (``--num-steps`` steps of every car
of every runner), as with more venvs in ``ppo_continuous.py``.

RLlib runs the vector env as it is (``gym_env_vectorize_mode="vector_entry_point"``), behind
``NextStepAutoreset``: RLlib's env runners expect gymnasium's next-step autoreset, rbxenv resets each
car within the step that ended its episode.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROG = "rllib_ppo.py"

import rbxenv  # noqa: E402
from rbxenv import cli  # noqa: E402
from rbxenv.training import evaluate  # noqa: E402  (the project's held-out tally)


@dataclass
class Args:
    exp_name: str = "rllib_ppo"
    """the name of this experiment (first part of the run name)"""
    seed: int = 1
    """seed of RLlib (torch, numpy) and the simulators; each env runner draws tracks and starts from seed + its index"""
    torch_threads: int = 1
    """torch CPU threads of the learner in this process (1 is fastest on small machines)"""

    # Ray
    num_env_runners: int = 2
    """env runners (Ray actors, one CPU each), each stepping its own simulator; 0 samples in this process"""
    address: str | None = None
    """Ray cluster to join: "auto" (a `ray start` node on this machine) or ip:port of the head node; default: start Ray here"""
    num_cpus: int | None = None
    """CPUs of the Ray instance started here (default: all); ignored with --address"""

    # Game / environment (per env runner)
    num_agents: int = 5
    """cars per venv"""
    num_venvs: int = 8
    """venvs per env runner (2 runners x 8 venvs x 5 cars = ppo_continuous.py's 80 cars)"""
    frame_stack: int = 4
    """observations stacked per car (oldest first)"""

    # Algorithm (ppo_continuous.py's defaults where RLlib has the same knob)
    total_timesteps: int = 5_000_000
    """total agent-steps (cars x steps) of the run"""
    num_steps: int = 64
    """steps per car per rollout (the train batch is num_steps x all cars of all runners)"""
    learning_rate: float = 3e-4
    """the learning rate, annealed linearly to 0 at --total-timesteps"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 4
    """mini-batches per epoch"""
    update_epochs: int = 4
    """epochs per train batch"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    ent_coef: float = 0.0
    """coefficient of the entropy"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    vf_clip: float = 1000.0
    """RLlib clips the value loss at this (rewards are not scaled here: keep it large)"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """hidden layer widths of the actor and of the critic (tanh)"""

    # Evaluation, checkpoint
    eval_every: int = 1_000_000
    """agent-steps between held-out evaluations (0: only at the end)"""
    eval_episodes: int = 10
    """held-out tracks per evaluation (one car, one episode each, from the start grid)"""
    save_dir: str | None = None
    """where to save the final RLlib checkpoint (default: runs/{run_name}/checkpoint); "" saves nothing"""


RULES = {
    "--num-env-runners": cli.at_least(0),
    "--num-agents": cli.at_least(1),
    "--num-venvs": cli.at_least(1),
    "--frame-stack": cli.at_least(1),
    "--total-timesteps": cli.at_least(1),
    "--num-steps": cli.at_least(1),
    "--num-minibatches": cli.at_least(1),
    "--update-epochs": cli.at_least(1),
    "--eval-episodes": cli.between(1, cli.HELDOUT_TRACKS),
    "--eval-every": cli.at_least(0),
    "--torch-threads": cli.at_least(1),
    "--num-cpus": cli.at_least(1),
    "--learning-rate": cli.above(0),
    "--gamma": cli.between(0, 1),
    "--gae-lambda": cli.between(0, 1),
    "--clip-coef": cli.above(0),
    "--vf-clip": cli.above(0),
    "--max-grad-norm": cli.above(0),
    "--hidden-sizes": cli.at_least(1),
}


def check_args(args: Args) -> None:
    """Refuse impossible flags before Ray starts: one line, exit code 2 (as the training scripts do)."""
    cli.check(PROG, args, RULES)
    cars = args.num_agents * args.num_venvs * max(args.num_env_runners, 1)
    if cars * args.num_steps < args.num_minibatches:
        cli.refuse(PROG, f"--num-minibatches {args.num_minibatches}: allowed: 1 to {cars * args.num_steps} (the train batch: {cars} cars x {args.num_steps} steps)")  # fmt: skip


# ====================================================================================================
# The env as RLlib runs it


class NextStepAutoreset(gym.vector.VectorEnv):
    """rbxenv's vector env with gymnasium's next-step autoreset, the mode RLlib's env runners expect.

    rbxenv restarts a car in the step that ended its episode (same-step autoreset: the returned
    observation is the new episode's first, the last one is in ``infos["final_obs"]``). RLlib reads
    the step after an ending as the new episode's reset: it ignores that step's action and reward.
    So this wrapper returns the final observation on the ending step and, on the next step, lets the
    restarted car coast (zero action) and hands its observation after that step to RLlib as the new
    episode's first (reward 0, not done): nothing RLlib stores comes from a state it did not see.
    Finished episodes put rbxenv's statistics (laps, crashed, progress, ...) in ``infos["episode"]``.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, env: rbxenv.RacingVectorEnv):
        self.env = env
        self.num_envs = env.num_envs
        self.single_observation_space, self.single_action_space = env.single_observation_space, env.single_action_space
        self.observation_space, self.action_space = env.observation_space, env.action_space
        self._restarting = np.zeros(self.num_envs, dtype=bool)  # cars whose next step is RLlib's reset
        self.agent_steps = 0  # cars x steps taken by this env (each env runner has its own)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._restarting[:] = False
        obs, _ = self.env.reset(seed=seed, options=options)
        return obs, {}

    def step(self, actions: np.ndarray):
        restarting = self._restarting
        actions = np.array(actions, dtype=np.float32)
        actions[restarting] = 0.0
        obs, reward, terminated, truncated, infos = self.env.step(actions)
        self.agent_steps += self.num_envs
        ended = (terminated | truncated) & ~restarting  # a restarting car that ends again starts anew here
        out = {}
        if ended.any():
            obs = np.where(ended[:, None], infos["final_obs"], obs)
            out = {"episode": infos["episode"], "_episode": ended}
        reward = np.where(restarting, 0.0, reward).astype(np.float32)
        self._restarting = ended
        return obs, reward, terminated & ~restarting, truncated & ~restarting, out

    def close_extras(self, **kwargs) -> None:
        self.env.close()


ENV_NAME = "rbxenv_racing"


def make_env(config: dict) -> NextStepAutoreset:
    """RLlib's env creator: runs in each env runner, which gets its own simulator. RLlib resets it
    with seed + the runner's index, which draws that runner's tracks and starts."""
    import rbxenv.sim  # noqa: F401  compiles the simulator here (or loads numba's cache) before its process starts

    envs = rbxenv.make_vec_env(
        num_agents=config["num_agents"],
        num_venvs=config["num_venvs"],
        frame_stack=config["frame_stack"],
        sim_seed=config["seed"],
    )
    if "num_envs" in config and config["num_envs"] != envs.num_envs:
        envs.close()
        raise ValueError(f"RLlib asked for {config['num_envs']} cars, the env has {envs.num_envs}")
    return NextStepAutoreset(envs)


# ====================================================================================================
# Evaluation with the project's tally


class DeterministicPolicy:
    """The mean action of an RLlib module, in the interface ``rbxenv.training.evaluate`` drives."""

    def __init__(self, module):
        self.module = module

    @torch.no_grad()
    def act_deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        out = self.module.forward_inference({"obs": obs})
        act_dim = out["action_dist_inputs"].shape[-1] // 2  # diagonal Gaussian: [mean, log_std]
        return out["action_dist_inputs"][:, :act_dim].clamp(-1.0, 1.0)


def evaluate_heldout(module, envs, seed: int) -> dict:
    return evaluate(DeterministicPolicy(module), envs, seed=seed)


def make_eval_env(args: Args) -> rbxenv.RacingVectorEnv:
    # As ppo_continuous.py: one car per held-out track, from the start grid, on the embedded simulator in lockstep.
    return rbxenv.make_vec_env(
        num_agents=1,
        num_venvs=args.eval_episodes,
        frame_stack=args.frame_stack,
        track_change_steps=None,
        start="grid",
        track_seeds=list(rbxenv.HELDOUT_TRACK_SEEDS)[: args.eval_episodes],
        sim_seed=args.seed,
    )


# ====================================================================================================
# RLlib


def build_config(args: Args):
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    cars = args.num_agents * args.num_venvs
    batch = args.num_steps * cars * max(args.num_env_runners, 1)
    env_config = {
        "num_agents": args.num_agents,
        "num_venvs": args.num_venvs,
        "frame_stack": args.frame_stack,
        "seed": args.seed,
    }
    return (
        PPOConfig()
        .environment(ENV_NAME, env_config=env_config)
        .env_runners(
            num_env_runners=args.num_env_runners,
            num_envs_per_env_runner=cars,
            gym_env_vectorize_mode="vector_entry_point",  # the creator already returns a vector env
            rollout_fragment_length=args.num_steps,
            num_cpus_per_env_runner=1,
        )
        .learners(num_learners=0)  # the learner runs in this process
        .training(
            lr=[[0, args.learning_rate], [args.total_timesteps, 0.0]],  # linear to 0, as ppo_continuous.py
            gamma=args.gamma,
            lambda_=args.gae_lambda,
            clip_param=args.clip_coef,
            vf_clip_param=args.vf_clip,
            vf_loss_coeff=args.vf_coef,
            entropy_coeff=args.ent_coef,
            use_kl_loss=False,
            grad_clip=args.max_grad_norm,
            train_batch_size_per_learner=batch,
            minibatch_size=batch // args.num_minibatches,
            num_epochs=args.update_epochs,
        )
        .rl_module(
            model_config=DefaultModelConfig(
                fcnet_hiddens=list(args.hidden_sizes), fcnet_activation="tanh", vf_share_layers=False
            )
        )
        .debugging(seed=args.seed)
    )


def start_ray(args: Args) -> None:
    """Join the cluster at ``--address``, or start Ray on this machine with every server on loopback."""
    if not args.address:
        # Ray's single-machine mode (its default on macOS and Windows): the node's address is
        # 127.0.0.1, so the GCS, raylets and workers listen on loopback only. Read when ray is imported.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray.tune.registry import register_env

    if args.address:
        # Ships this checkout to every node of the cluster: there rbxenv and this script need not be
        # installed, only the requirements (README, "Training on several machines").
        runtime_env = {"working_dir": str(ROOT), "excludes": [".git", "runs", "*.onnx", "__pycache__"]}
        ray.init(address=args.address, runtime_env=runtime_env, log_to_driver=False)
    else:
        # Workers import this checkout in place (and reuse its compiled simulator cache); no dashboard.
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        ray.init(
            address="local",  # a new instance, even when this machine runs a `ray start` node
            num_cpus=args.num_cpus,
            include_dashboard=False,
            runtime_env={"env_vars": {"PYTHONPATH": path}},
            log_to_driver=False,
        )
        address = ray.util.get_node_ip_address()
        if address != "127.0.0.1":
            ray.shutdown()
            raise RuntimeError(f"Ray started on {address}, not loopback: call start_ray before importing ray")
    if __name__ != "__main__":  # imported (tests): env runners cannot import this file, send it by value
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    register_env(ENV_NAME, make_env)


def env_steps(result: dict) -> int:
    return int(result["env_runners"]["num_env_steps_sampled_lifetime"])


def train(args: Args) -> dict:
    torch.set_num_threads(args.torch_threads)
    run_name = f"{args.exp_name}__{args.seed}__{int(time.time())}"
    start_ray(args)
    import ray  # after start_ray: ray reads its single-machine setting when first imported

    algo = None
    eval_envs = None
    final: dict = {}
    try:
        resources = ray.cluster_resources()
        print(f"Ray: {len(ray.nodes())} node(s), {resources.get('CPU', 0):g} CPUs; "
              f"{args.num_env_runners} env runner(s) x {args.num_agents * args.num_venvs} cars", flush=True)  # fmt: skip
        algo = build_config(args).build_algo()
        eval_envs = make_eval_env(args)
        start, sampled, next_eval = time.time(), 0, args.eval_every or None
        while sampled < args.total_timesteps:
            result = algo.train()
            sampled = env_steps(result)
            sps = int(sampled / (time.time() - start))
            runners = result["env_runners"]
            line = f"step {sampled}/{args.total_timesteps} | {sps} SPS"
            if np.isfinite(runners.get("episode_return_mean", np.nan)):  # nan until episodes have ended
                line += f" | return {runners['episode_return_mean']:.1f}"
            print(line, flush=True)
            if next_eval is not None and sampled >= next_eval and sampled < args.total_timesteps:
                next_eval += args.eval_every
                t0 = time.time()
                report(evaluate_heldout(algo.get_module(), eval_envs, seed=args.seed), args, time.time() - t0)
                start += time.time() - t0  # SPS counts training time only
        train_time = time.time() - start
        final = evaluate_heldout(algo.get_module(), eval_envs, seed=args.seed)
        report(final, args, 0.0)
        final.update(agent_steps=sampled, train_seconds=train_time, sps=sampled / train_time)
        print(f"finished: {sampled} agent-steps in {train_time:.0f} s ({final['sps']:.0f} agent-steps/s)", flush=True)
        save_dir = args.save_dir if args.save_dir is not None else os.path.join("runs", run_name, "checkpoint")
        if save_dir:
            print(f"checkpoint: {algo.save_to_path(os.path.abspath(save_dir))}", flush=True)
    finally:
        if eval_envs is not None:
            eval_envs.close()
        if algo is not None:
            algo.stop()
        ray.shutdown()
    return final


def report(result: dict, args: Args, seconds: float) -> None:
    lap = "-" if np.isnan(result["lap_time"]) else f"{result['lap_time']:.1f} s"
    print(
        f"eval on {args.eval_episodes} held-out tracks: lap completion {result['lap_completion']:.0%}"
        f" | crash rate {result['crash_rate']:.0%} | lap time {lap} | progress {result['progress']:.2f} laps"
        + (f" ({seconds:.1f} s)" if seconds else ""),
        flush=True,
    )


if __name__ == "__main__":
    args = cli.tyro_cli(Args, PROG)
    check_args(args)
    if importlib.util.find_spec("ray") is None:
        cli.fail(PROG, "Ray is not installed: pip install -r requirements-rllib.txt")
    train(args)
