"""The original project's SB3 pipeline (examples/sb3_ppo.py) trains on the embedded simulator."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from sb3_ppo import linear_decay, make_sb3_env  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.utils import set_random_seed  # noqa: E402


@pytest.mark.timeout(180)
def test_sb3_ppo_trains_a_few_thousand_steps():
    torch.set_num_threads(1)  # see examples/sb3_ppo.py
    set_random_seed(0)  # with a fixed track and grid starts, the lockstep run is the same every time
    env = make_sb3_env(num_agents=3, num_venvs=1, frame_stack=4, track_seeds=[3], start="grid")
    try:
        assert env.observation_space.shape == (52,)
        model = PPO("MlpPolicy", env, n_steps=128, batch_size=128, n_epochs=2, learning_rate=linear_decay(3e-4))
        params_before = [p.detach().clone() for p in model.policy.parameters()]
        model.learn(total_timesteps=3000)
        assert model.num_timesteps >= 3000
        changed = [
            not np.allclose(a, b.detach()) for a, b in zip(params_before, model.policy.parameters(), strict=True)
        ]
        assert any(changed), "gradient steps changed the policy"
        assert len(model.ep_info_buffer) > 0, "episodes finished and were recorded by VecMonitor"
        lr = model.policy.optimizer.param_groups[0]["lr"]
        assert 0 <= lr < 0.2 * 3e-4, f"the learning rate decays to 0 over the run (never below), got {lr}"
    finally:
        env.close()
