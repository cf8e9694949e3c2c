"""ppo_continuous.py end to end through the real embedded simulator, and a learning test that can fail.

The script runs as users run it (a subprocess in a temporary directory, so ``runs/`` lands there);
the tests import it only for its model and evaluation helpers.
"""

from __future__ import annotations

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

import ppo_continuous as ppo  # noqa: E402

TINY = ["--num-agents", "2", "--num-venvs", "2", "--num-steps", "16", "--num-minibatches", "2", "--update-epochs", "2"]


def run_script(cwd: Path, *flags: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "ppo_continuous.py"), *flags],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def only_run_dir(cwd: Path) -> Path:
    runs = list((cwd / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


@pytest.mark.timeout(240)
def test_end_to_end_run_checkpoint_and_resume(tmp_path):
    first = run_script(
        tmp_path, *TINY, "--total-timesteps", "128", "--save-model", "--eval-every", "64", "--eval-episodes", "2",
        "--capture-video", "--seed", "3",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    assert_clean_output(first.stdout, first.stderr)
    assert "step 64/128" in first.stdout and "eval on 2 held-out tracks" in first.stdout
    run_dir = only_run_dir(tmp_path)
    introduction = first.stdout.splitlines()[:2]  # what runs where, and where to look
    assert introduction == [
        "ppo_continuous.py: PPO on the simulator in this process (kinematic car, lockstep) | 2 cars x 2 venvs"
        " | generated training tracks, new every 1500 steps | 128 agent-steps",
        f"run directory runs/{run_dir.name} (watch: tensorboard --logdir runs)",
    ], introduction
    assert "expected duration " in first.stdout
    ckpt_path = run_dir / "checkpoint.pt"
    assert f"checkpoint: runs/{run_dir.name}/checkpoint.pt" in first.stdout.splitlines()[-1]

    ckpt = torch.load(ckpt_path, weights_only=False)
    assert ckpt["format"] == "rbxenv-checkpoint-v1" and ckpt["algo"] == "ppo"
    assert ckpt["global_step"] == 128 and ckpt["run_name"] == run_dir.name
    assert ckpt["args"]["num_venvs"] == 2
    policy = ckpt["policy"]
    assert (policy["obs_dim"], policy["act_dim"], policy["frame_stack"], policy["obs_size"], policy["num_rays"]) == (
        52, 3, 4, 13, 10,
    )  # fmt: skip
    assert policy["squash"] == "clip" and policy["action_names"] == ["throttle", "steering", "nitro"]
    assert not list(run_dir.glob("*.tmp*")), "atomic save leaves no temp file"

    tags = scalars(run_dir)
    for tag in [
        "charts/SPS", "charts/learning_rate", "losses/value_loss", "losses/policy_loss", "losses/entropy",
        "losses/old_approx_kl", "losses/approx_kl", "losses/clipfrac", "losses/explained_variance",
        "eval/lap_completion", "eval/crash_rate", "eval/lap_time",
    ]:  # fmt: skip
        assert tag in tags, f"{tag} missing from {sorted(tags)}"
    assert list((run_dir / "videos").glob("eval_*.gif")), "--capture-video wrote a GIF"

    # --resume continues the same run: same directory, the step goes on from 128, flags from the checkpoint.
    second = run_script(tmp_path, "--resume", str(ckpt_path.relative_to(tmp_path)), "--total-timesteps", "256")
    assert second.returncode == 0, second.stderr[-3000:]
    assert_clean_output(second.stdout, second.stderr)
    assert f"resumed {run_dir.name} at step 128" in second.stdout
    assert "step 192/256" in second.stdout and "step 64/" not in second.stdout
    assert only_run_dir(tmp_path) == run_dir
    resumed = torch.load(ckpt_path, weights_only=False)
    assert resumed["global_step"] == 256 and resumed["args"]["num_venvs"] == 2
    assert resumed["model"]["obs_count"] > ckpt["model"]["obs_count"], "observation statistics carried on"
    sps_steps = [step for step, _ in scalars(run_dir)["charts/SPS"]]
    assert max(sps_steps) == 256 and 192 in sps_steps


@pytest.mark.timeout(120)
def test_sigint_saves_a_checkpoint_and_says_where(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "ppo_continuous.py"), *TINY, "--total-timesteps", "10000000", "--eval-every", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        for line in proc.stdout:  # wait for training to be under way
            if line.startswith("step "):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]  # 128 + SIGINT, after saving
    assert_clean_output(out, err)
    last = out.strip().splitlines()[-1]
    assert last.startswith("interrupted at step ") and "checkpoint: runs/" in last, last
    ckpt = torch.load(only_run_dir(tmp_path) / "checkpoint.pt", weights_only=False)
    assert ckpt["global_step"] > 0


def test_policy_entry_reproduces_the_deterministic_actor():
    """What export_onnx.py does with a checkpoint's "policy" entry gives the model's own actions."""
    torch.manual_seed(0)
    agent = ppo.Agent(52, 3, (32, 16))
    agent.update_obs_stats(torch.rand(500, 52) * 3 - 1)
    policy = ppo.policy_export(agent, frame_stack=4, num_rays=10)
    obs = torch.rand(64, 52) * 4 - 2
    x = np.clip(
        (obs.numpy() - policy["obs_mean"].numpy()) / np.sqrt(policy["obs_var"].numpy() + policy["obs_eps"]),
        -policy["obs_clip"],
        policy["obs_clip"],
    )
    for k, layer in enumerate(policy["layers"]):
        x = x @ layer["weight"].numpy().T + layer["bias"].numpy()
        if k < len(policy["layers"]) - 1:
            x = np.tanh(x)
    np.testing.assert_allclose(np.clip(x, -1, 1), agent.act_deterministic(obs).detach().numpy(), atol=1e-5)
    assert [tuple(layer["weight"].shape) for layer in policy["layers"]] == [(32, 52), (16, 32), (3, 16)]


# ----------------------------------------------------------------------------------------------------
# Learning with teeth: trained on training tracks, judged on held-out tracks it has never seen,
# against the hand-written ray follower (tests/yardstick.py). Seed-fixed and lockstep: deterministic.

LEARN_COMMAND = [str(ROOT / "ppo_continuous.py"), "--seed", "1", "--total-timesteps", "500000", "--eval-every", "0"]
MARGIN = 0.5  # laps of mean progress over the ray follower (see tests/mutations.py for what it must catch)


@pytest.mark.learning
@pytest.mark.timeout(900)
def test_short_run_beats_the_ray_follower_on_heldout_tracks(request, learning_runs):
    def load(ckpt: dict) -> ppo.Agent:
        agent = ppo.Agent(52, 3, tuple(ckpt["args"]["hidden_sizes"]))
        agent.load_state_dict(ckpt["model"])
        return agent

    run = learning_runs[request.node.nodeid]  # trained beside the other learning runs (tests/conftest.py)
    yardstick.assert_learning_run_beats_the_ray_follower(run, load, "PPO", MARGIN)
