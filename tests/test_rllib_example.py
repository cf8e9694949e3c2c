"""examples/rllib_ppo.py: RLlib PPO with 2 env runners on a local Ray instance, and its autoreset adapter.

The adapter test needs no Ray; the training test runs Ray on loopback (no dashboard, 2 CPUs) and is
skipped only when Ray is not installed (``pip install -r requirements-rllib.txt``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import rllib_ppo  # noqa: E402

from rbxenv import make_vec_env  # noqa: E402

HAVE_RAY = importlib.util.find_spec("ray") is not None


@pytest.mark.timeout(120)
def test_next_step_autoreset_hands_rllib_each_episode_whole():
    """A car that crashes: its final observation on the ending step, then one coasting step that
    RLlib reads as the new episode's reset (reward 0, not done), then ordinary steps."""
    envs = rllib_ppo.NextStepAutoreset(make_vec_env(num_agents=2, num_venvs=2, frame_stack=2, track_seeds=[3, 4]))
    try:
        obs, _ = envs.reset(seed=0)
        assert obs.shape == (4, envs.single_observation_space.shape[0])
        full_throttle_left = np.tile(np.array([1.0, -1.0, 0.0], dtype=np.float32), (4, 1))
        inner = envs.env
        for step in range(400):  # noqa: B007 (read below): full lock into a wall ends every episode soon
            before = inner._stack.reshape(4, -1).copy()
            obs, reward, term, trunc, infos = envs.step(full_throttle_left)
            if (term | trunc).any():
                break
        else:
            pytest.fail("no car's episode ended in 400 full-lock steps")
        ended = term | trunc
        size, num_rays = inner.obs_size, inner.game.num_rays
        assert infos["_episode"].tolist() == ended.tolist()
        assert (infos["episode"]["l"][ended] == step + 1).all(), "every step of the episode is in its statistics"
        k = int(np.flatnonzero(ended)[0])
        # The ending step returns the car's last real frames: its stack moved on by one frame...
        assert np.array_equal(obs[k][:-size], before[k][size:]), "the final observation continues the car's stack"
        spawn = inner._stack[k, -1].copy()  # ...while rbxenv has already restarted it (same-step autoreset)
        assert not np.array_equal(obs[k][-size:], spawn)
        obs2, reward2, term2, trunc2, infos2 = envs.step(full_throttle_left)
        assert (reward2[ended] == 0.0).all(), "RLlib's reset step carries no reward"
        assert not (term2 | trunc2)[ended].any()
        assert "_episode" not in infos2 or not infos2["_episode"][ended].any()
        # RLlib's first observation of the new episode: the spawn frame, then one step coasting from
        # it. The car starts at rest and coasting keeps it there (full throttle, sent by RLlib, would not).
        assert spawn[num_rays + 1] == 0.0, "the car starts at rest"
        assert np.array_equal(obs2[k][:size], spawn) and np.array_equal(obs2[k][-size:], spawn)
        assert envs.agent_steps == 4 * (step + 2)
    finally:
        envs.close()


@pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed: pip install -r requirements-rllib.txt")
@pytest.mark.timeout(600)
def test_rllib_ppo_two_env_runners_on_loopback():
    args = rllib_ppo.Args(
        num_env_runners=2, num_cpus=2, num_agents=2, num_venvs=1, num_steps=32, total_timesteps=10_000,
        num_minibatches=2, update_epochs=2, eval_episodes=1,
    )  # fmt: skip
    rllib_ppo.check_args(args)
    rllib_ppo.start_ray(args)
    import ray  # after start_ray, which sets Ray's single-machine (loopback) mode

    assert [node["NodeManagerAddress"] for node in ray.nodes()] == ["127.0.0.1"]
    algo = None
    try:
        algo = rllib_ppo.build_config(args).build_algo()
        module = algo.get_module()
        before = [p.detach().clone() for p in module.parameters()]
        batch = 2 * 2 * 32  # runners x cars x steps
        for _ in range(2):
            result = algo.train()
        assert rllib_ppo.env_steps(result) >= 2 * batch
        learner = result["learners"]["default_policy"]
        assert learner["num_module_steps_trained_lifetime"] >= 2 * batch, "both train batches went through the learner"
        changed = [not torch.equal(a, b.detach()) for a, b in zip(before, module.parameters(), strict=True)]
        assert any(changed), "gradient steps changed the policy"
        lr = learner["default_optimizer_learning_rate"]
        assert 0 < lr < args.learning_rate, f"the learning rate anneals toward 0 over --total-timesteps, got {lr}"
        # Each env runner stepped its own env (own process, own simulator).
        runners = algo.env_runner_group.foreach_env_runner(
            lambda r: (os.getpid(), r.env.unwrapped.agent_steps), local_env_runner=False
        )
        assert len({pid for pid, _ in runners}) == 2, runners
        assert all(steps >= batch // 2 for _, steps in runners), f"both runners sampled: {runners}"
        # The held-out evaluation of the script, with the trained module.
        envs = rllib_ppo.make_eval_env(args)
        try:
            scores = rllib_ppo.evaluate_heldout(module, envs, seed=0)
        finally:
            envs.close()
        assert 0.0 <= scores["lap_completion"] <= 1.0 and scores["progress"] > 0.0
    finally:
        if algo is not None:
            algo.stop()
        ray.shutdown()
