"""sac_continuous.py end to end: real embedded simulator, real sockets, real gradient steps."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yardstick  # noqa: E402
from netutil import assert_clean_output  # noqa: E402

import sac_continuous as sac  # noqa: E402

pytestmark = pytest.mark.timeout(240)

TINY = dict(
    num_agents=2,
    num_venvs=2,
    total_timesteps=800,
    learning_starts=200,
    batch_size=32,
    hidden_sizes=(32, 32),
    buffer_size=5_000,
    utd=0.5,
    log_every=200,
    eval_every=400,
    eval_episodes=2,
    save_every=400,
)


def run_policy(policy: dict, obs: np.ndarray) -> np.ndarray:
    """The checkpoint's "policy" entry evaluated by hand, as export_onnx.py / Luau do it."""
    x = (obs - policy["obs_mean"].numpy()) / np.sqrt(policy["obs_var"].numpy() + policy["obs_eps"])
    x = np.clip(x, -policy["obs_clip"], policy["obs_clip"])
    for k, layer in enumerate(policy["layers"]):
        x = x @ layer["weight"].numpy().T + layer["bias"].numpy()
        if k < len(policy["layers"]) - 1:
            x = np.maximum(x, 0.0)  # relu
    return np.tanh(x)


def test_tanh_gaussian_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    actor = sac.Actor(8, 3, (16, 16))
    x = torch.randn(64, 8)
    torch.manual_seed(1)
    action, log_prob, mean_action = actor.get_action(x)
    mean, log_std = actor(x)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()), [torch.distributions.TanhTransform(cache_size=1)]
    )
    expected = dist.log_prob(action.clamp(-1 + 1e-6, 1 - 1e-6)).sum(1, keepdim=True)
    assert torch.allclose(log_prob, expected, atol=2e-3, rtol=1e-3)
    assert torch.equal(mean_action, torch.tanh(mean)) and action.abs().max() <= 1


def test_replay_buffer_wraps_and_keeps_rows_together():
    rb = sac.ReplayBuffer(10, 2, 1, np.random.default_rng(0))
    for start in range(0, 14, 7):  # 14 rows into 10 slots
        rows = np.arange(start, start + 7, dtype=np.float32)
        rb.add(np.stack([rows, rows], 1), np.stack([rows + 1, rows + 1], 1), rows[:, None], rows, rows % 2)
    assert len(rb) == 10 and rb.full
    obs, next_obs, actions, rewards, dones = rb.sample(200)
    assert set(obs[:, 0].tolist()) == set(range(4, 14))  # the 4 oldest rows were overwritten
    assert torch.equal(next_obs, obs + 1) and torch.equal(actions[:, 0], obs[:, 0])
    assert torch.equal(rewards[:, 0], obs[:, 0]) and torch.equal(dones[:, 0], obs[:, 0] % 2)


def test_end_to_end_events_checkpoint_video_and_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    handler = signal.getsignal(signal.SIGINT)
    path = sac.train(sac.Args(exp_name="e2e", seed=3, save_model=True, capture_video=True, **TINY))
    assert signal.getsignal(signal.SIGINT) is handler  # train() gives Ctrl-C back when it returns
    run_dir = Path(path).parent
    first_line = capsys.readouterr().out.splitlines()[0]  # what runs where
    assert (
        first_line.startswith("sac_continuous.py: SAC on the simulator in this process")
        and "2 cars x 2 venvs" in first_line
    )
    assert Path(path).exists() and glob.glob(f"{run_dir}/events.out.tfevents.*")
    assert glob.glob(f"{run_dir}/videos/eval_*.gif")
    assert not glob.glob(f"{run_dir}/*.tmp*")  # atomic writes leave no temp files behind

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert ckpt["format"] == "rbxenv-checkpoint-v1" and ckpt["algo"] == "sac"
    assert ckpt["global_step"] == 800 and ckpt["run_name"] == run_dir.name
    assert ckpt["args"]["num_agents"] == 2
    assert set(ckpt["model"]) == {"actor", "qf1", "qf2", "qf1_target", "qf2_target"}
    assert set(ckpt["optimizer"]) == {"q", "actor", "alpha"}
    policy = ckpt["policy"]
    assert (policy["obs_dim"], policy["act_dim"], policy["frame_stack"]) == (52, 3, 4)
    assert (policy["obs_size"], policy["num_rays"], policy["obs_clip"]) == (13, 10, 10.0)
    assert policy["squash"] == "tanh" and policy["activation"] == "relu"
    assert policy["action_names"] == ["throttle", "steering", "nitro"]
    assert [tuple(layer["weight"].shape) for layer in policy["layers"]] == [(32, 52), (32, 32), (3, 32)]
    assert policy["obs_var"].min() > 0 and not torch.equal(policy["obs_mean"], torch.zeros(52))  # stats were learned
    assert not torch.equal(policy["obs_var"], torch.ones(52))  # from the initial var 1, not only the mean

    # the exported MLP is exactly the actor's deterministic action tanh(mean)
    actor = sac.Actor(52, 3, (32, 32))
    actor.load_state_dict(ckpt["model"]["actor"])
    obs = np.random.default_rng(0).uniform(0, 1, (16, 52)).astype(np.float32)
    expected = actor.act_deterministic(torch.as_tensor(obs)).numpy()
    np.testing.assert_allclose(run_policy(policy, obs), expected, atol=1e-5)

    # --resume continues the global step in the same run directory and checkpoint
    resumed = sac.Args(**{**ckpt["args"], "resume": path, "total_timesteps": 1200})
    assert sac.train(resumed) == path
    after = torch.load(path, map_location="cpu", weights_only=False)
    assert after["global_step"] == 1200 and after["run_name"] == run_dir.name
    assert after["extra"]["grad_steps"] > ckpt["extra"]["grad_steps"]
    assert len(glob.glob(f"{run_dir}/events.out.tfevents.*")) >= 2  # the resumed writer logs into the same run


def test_sigterm_saves_a_checkpoint_and_exits_with_one_line(tmp_path):
    cmd = [sys.executable, str(ROOT / "sac_continuous.py"), "--exp-name", "sig", "--num-agents", "2", "--num-venvs",
           "1", "--total-timesteps", "10000000", "--learning-starts", "100", "--batch-size", "32", "--hidden-sizes",
           "32", "32", "--log-every", "100", "--eval-every", "0"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:  # wait until it is really training
            if line.startswith("step ") and "q " in line:
                break
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM  # after saving
    assert_clean_output(out)
    last = out.strip().splitlines()[-1]
    assert last.startswith("interrupted at step ") and "--resume" in last
    ckpt_path = last.split("checkpoint: ")[1].split(" ")[0]
    assert torch.load(tmp_path / ckpt_path, map_location="cpu", weights_only=False)["algo"] == "sac"


# ----------------------------------------------------------------------------------------------------
# Learning with teeth: trained on training tracks, judged on held-out tracks it has never seen,
# against the hand-written ray follower (tests/yardstick.py). Seed-fixed and lockstep: deterministic.

LEARN_COMMAND = [
    str(ROOT / "sac_continuous.py"), "--seed", "0", "--num-agents", "5", "--num-venvs", "5", "--total-timesteps", "50000",
    "--learning-starts", "2500", "--hidden-sizes", "64", "64", "--utd", "0.125", "--batch-size", "128",
    "--gamma", "0.995",  # a longer horizon than the default 0.99: a crash forfeits more than its penalty
    "--eval-every", "0", "--log-every", "10000",
]  # fmt: skip
MARGIN = 0.5  # laps of mean progress over the ray follower (see tests/mutations.py for what it must catch)


@pytest.mark.learning
@pytest.mark.timeout(900)
def test_short_run_beats_the_ray_follower_on_heldout_tracks(request, learning_runs):
    def load(ckpt: dict) -> sac.Actor:
        actor = sac.Actor(52, 3, tuple(ckpt["args"]["hidden_sizes"]))
        actor.load_state_dict(ckpt["model"]["actor"])
        return actor

    run = learning_runs[request.node.nodeid]  # trained beside the other learning runs (tests/conftest.py)
    yardstick.assert_learning_run_beats_the_ray_follower(run, load, "SAC", MARGIN)
