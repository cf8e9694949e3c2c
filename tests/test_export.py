"""Shipping a driver: checkpoint -> ONNX / Luau (export_onnx.py) -> driving (rbxenv.drive).

Real parts only: checkpoints from short real runs of ppo_continuous.py and sac_continuous.py,
onnxruntime, the Roblox side's PolicyRunner under a real Luau VM (pluau), the embedded simulator
over real sockets. Hand-built checkpoints in the documented format cover the variants and the
bad inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from netutil import assert_clean_output

import export_onnx as ex

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
needs_luau = pytest.mark.skipif(ex.load_pluau() is None, reason="pluau is not installed")

# Short real runs: a couple of updates each, with small nets so that the Luau checks stay quick.
TRAIN = {
    "ppo": ["ppo_continuous.py", "--num-steps", "32", "--total-timesteps", "320", "--hidden-sizes", "32", "32"],
    "sac": ["sac_continuous.py", "--total-timesteps", "300", "--learning-starts", "150", "--batch-size", "32",
            "--buffer-size", "2000", "--hidden-sizes", "32", "32"],
}  # fmt: skip
COMMON = ["--num-agents", "5", "--num-venvs", "1", "--eval-every", "0", "--save-model", "--torch-threads", "1"]


def run(args: list[str], timeout: float = 120, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One real checkpoint per training script (both runs in parallel, each in its own directory)."""
    procs = {}
    for algo, argv in TRAIN.items():
        cwd = tmp_path_factory.mktemp(algo)
        cmd = [sys.executable, str(REPO / argv[0]), *argv[1:], *COMMON, "--exp-name", algo]
        procs[algo] = (cwd, subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))  # fmt: skip
    found = {}
    for algo, (cwd, proc) in procs.items():
        out, _ = proc.communicate(timeout=150)
        assert proc.returncode == 0, f"{algo} training failed:\n{out[-3000:]}"
        assert_clean_output(out)
        (path,) = cwd.glob("runs/*/checkpoint.pt")
        found[algo] = path
    return found


def make_checkpoint(path: Path, *, obs_size=13, num_rays=10, frame_stack=4, hidden=(16, 16), activation="tanh",
                    squash="clip", obs_clip=10.0, algo="ppo", seed=0) -> Path:  # fmt: skip
    """A checkpoint in the documented format, built from a plain torch MLP (no training script)."""
    gen = torch.Generator().manual_seed(seed)
    obs_dim, sizes = obs_size * frame_stack, [obs_size * frame_stack, *hidden, 3]
    layers = [
        {"weight": torch.randn(o, i, generator=gen) / i**0.5 * 2, "bias": torch.randn(o, generator=gen) * 0.3}
        for i, o in zip(sizes[:-1], sizes[1:], strict=True)
    ]
    var = torch.rand(obs_dim, generator=gen) * 0.2
    var[num_rays + 2 :: obs_size] = 0.0  # a feature that never varied (is_reverse): only eps keeps it finite
    policy = {
        "obs_dim": obs_dim, "act_dim": 3, "frame_stack": frame_stack, "obs_size": obs_size, "num_rays": num_rays,
        "obs_mean": torch.rand(obs_dim, generator=gen) * 0.5, "obs_var": var, "obs_eps": 1e-8, "obs_clip": obs_clip,
        "layers": layers, "activation": activation, "squash": squash,
        "action_names": ["throttle", "steering", "nitro"],
    }  # fmt: skip
    torch.save({"format": ex.CHECKPOINT_FORMAT, "algo": algo, "args": {}, "global_step": 123, "run_name": "hand-built",
                "model": {}, "optimizer": {}, "extra": {}, "policy": policy}, path)  # fmt: skip
    return path


def load(path: Path) -> ex.Policy:
    return ex.read_policy(ex.load_checkpoint(path), str(path))


@pytest.fixture(scope="module")
def recording(checkpoints) -> ex.Recording:
    """What the vector env handed a policy over 120 steps of the embedded simulator (respawns included)."""
    return ex.record_sim(load(checkpoints["ppo"]), steps=120, num_agents=5, num_venvs=1, seed=3)


# ====================================================================================================
# Export from real runs


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_export_cli_from_a_real_run(checkpoints, tmp_path, algo):
    out, luau = tmp_path / "policy.onnx", tmp_path / "DriverPolicy.luau"
    args = ["export_onnx.py", str(checkpoints[algo]), "-o", str(out), "--check-steps", "60"]
    result = run(args + (["--luau", str(luau)] if ex.load_pluau() else []))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "onnxruntime vs PyTorch" in result.stdout and "-- OK" in result.stdout
    if ex.load_pluau():
        assert "Luau (PolicyRunner" in result.stdout and "ms per decision for 25 cars" in result.stdout
        assert luau.read_text().count("rbxenv-mlp-1") >= 1
    assert "Lua VM is being closed" not in result.stdout  # pluau's goodbye stays off the output

    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["format"] == ex.ONNX_FORMAT and meta["checkpoint_format"] == "rbxenv-checkpoint-v1"
    assert (meta["obs_dim"], meta["obs_size"], meta["frame_stack"], meta["num_rays"]) == ("52", "13", "4", "10")
    assert json.loads(meta["action_names"]) == ["throttle", "steering", "nitro"]
    assert meta["algo"] == algo and meta["source_run"].startswith(f"{algo}__") and int(meta["global_step"]) > 0
    dim = model.graph.input[0].type.tensor_type.shape.dim
    assert dim[0].dim_param and dim[1].dim_value == 52  # dynamic batch


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_onnx_matches_the_trainer(checkpoints, recording, algo):
    """The checkpoint's "policy" section, exported, is the policy the trainer trained (tolerance 1e-5):
    on the trainer's own probe (its network's answers, stored by the script) and on recorded stacks."""
    policy = load(checkpoints[algo])
    assert policy.probe_obs is not None and policy.probe_obs.shape == (256, 52)
    assert ex.check_declaration(policy) <= ex.ONNX_TOLERANCE
    session = ex.onnx_session(ex.build_onnx(policy))
    got = ex.onnx_actions(session, policy.probe_obs)
    assert got.shape == (256, 3) and got.dtype == np.float32
    assert np.abs(got - policy.probe_actions).max() <= ex.ONNX_TOLERANCE
    assert np.abs(got).max() <= 1.0 and got.std(0).min() > 0  # the probe spans distinct actions
    obs = recording.stacked.reshape(-1, 52)
    assert np.abs(ex.onnx_actions(session, obs) - ex.torch_actions(policy, obs)).max() <= ex.ONNX_TOLERANCE


def test_a_fork_that_changed_its_network_fails_the_export(tmp_path):
    """A fork of ppo_continuous.py whose network uses ReLU while policy_export() still declares tanh:
    the export refuses it with one line (exit 1) and writes nothing, instead of shipping another driver."""
    source = (REPO / "ppo_continuous.py").read_text()
    assert source.count("nn.Tanh()") == 1
    (tmp_path / "my_fork.py").write_text(source.replace("nn.Tanh()", "nn.ReLU()"))
    argv = TRAIN["ppo"][1:] + COMMON + ["--exp-name", "fork"]
    trained = run([str(tmp_path / "my_fork.py"), *argv], timeout=150, cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    (checkpoint,) = tmp_path.glob("runs/*/checkpoint.pt")
    result = run(["export_onnx.py", str(checkpoint), "-o", str(tmp_path / "fork.onnx"), "--check-steps", "0"])
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "does not compute what its checkpoint's" in line and "policy_export()" in line, line
    assert "Traceback" not in result.stderr and not (tmp_path / "fork.onnx").exists()


def test_a_checkpoint_without_a_probe_still_exports(tmp_path, capsys):
    """Checkpoints saved before probes existed export as before, with a note that the check was skipped."""
    path = make_checkpoint(tmp_path / "c.pt")
    assert ex.main([str(path), "-o", str(tmp_path / "p.onnx"), "--check-steps", "0"]) == 0
    assert "no probe in this checkpoint" in capsys.readouterr().out


def test_recorded_stacks_follow_the_env_semantics(recording):
    """Oldest frame first; an episode starts with every frame equal to its first observation."""
    assert recording.starts[1:].any(), "some car respawned during the recording"
    np.testing.assert_array_equal(ex.stack_frames(recording.frames, recording.starts, 4), recording.stacked)


@needs_luau
@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_luau_policy_runner_matches_onnx(checkpoints, recording, algo):
    """The generated module under PolicyRunner (its own per-car frame stacks) acts like onnxruntime."""
    policy = load(checkpoints[algo])
    session = ex.onnx_session(ex.build_onnx(policy))
    luau = ex.LuauPolicy(ex.luau_module(policy))
    try:
        diff, count = ex.check_luau(luau, session, [recording, ex.random_frames(policy, steps=20, cars=25)])
        assert count == recording.frames.shape[0] * recording.frames.shape[1] + 20 * 25
        assert diff <= ex.LUAU_TOLERANCE
    finally:
        luau.close()


# ====================================================================================================
# Variants of the format (hand-built checkpoints)


@pytest.mark.parametrize(
    "variant",
    [
        {"activation": "relu", "squash": "tanh", "obs_clip": None},
        {"frame_stack": 2, "hidden": (8,), "obs_clip": 5.0},
        {"obs_size": 15, "num_rays": 12, "frame_stack": 3, "hidden": ()},  # one linear layer, another game
    ],
    ids=["relu-tanh-noclip", "stack2-clip5", "linear-15obs"],
)
def test_variants_export_with_parity(tmp_path, variant):
    policy = load(make_checkpoint(tmp_path / "c.pt", **variant))
    session = ex.onnx_session(ex.build_onnx(policy))
    frames = ex.random_frames(policy, steps=30, cars=10, seed=1)
    wild = np.random.default_rng(1).normal(0, 5, (200, policy.obs_dim)).astype(np.float32)  # far outside the box
    for obs in (frames.stacked.reshape(-1, policy.obs_dim), wild):
        assert ex.check_onnx(policy, session, obs) <= ex.ONNX_TOLERANCE
    if ex.load_pluau():
        luau = ex.LuauPolicy(ex.luau_module(policy))
        try:
            assert ex.check_luau(luau, session, [frames])[0] <= ex.LUAU_TOLERANCE
        finally:
            luau.close()


def test_parity_failure_exits_1_with_one_line(tmp_path, monkeypatch, capsys):
    path = make_checkpoint(tmp_path / "c.pt")
    real = ex.torch_actions
    monkeypatch.setattr(ex, "torch_actions", lambda policy, obs: real(policy, obs) + 1e-3)  # a broken exporter
    assert ex.main([str(path), "-o", str(tmp_path / "p.onnx"), "--check-steps", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ONNX parity FAILED" in err[0] and "1e-05" in err[0]


# ====================================================================================================
# Bad inputs: one clear line, exit code 2, no traceback


def bad_checkpoints(tmp_path: Path, good: Path) -> dict[str, tuple[Path, str]]:
    checkpoint = torch.load(good, weights_only=True)
    cases: dict[str, tuple[Path, str]] = {"missing": (tmp_path / "nope.pt", "no such file")}
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x04not a checkpoint" * 50)
    cases["garbage"] = (tmp_path / "garbage.pt", "not a PyTorch checkpoint")
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (tmp_path / "truncated.pt", "not a PyTorch checkpoint")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "state_dict.pt")
    cases["state_dict"] = (tmp_path / "state_dict.pt", "not an rbxenv checkpoint")
    torch.save({**checkpoint, "format": "rbxenv-checkpoint-v0"}, tmp_path / "v0.pt")
    cases["other_format"] = (tmp_path / "v0.pt", "'rbxenv-checkpoint-v0' is not supported")
    policy = dict(checkpoint["policy"])
    policy["layers"] = [dict(layer) for layer in policy["layers"]]
    policy["layers"][1]["weight"] = torch.zeros(16, 7)
    torch.save({**checkpoint, "policy": policy}, tmp_path / "shape.pt")
    cases["layer_shape"] = (tmp_path / "shape.pt", "layer 1 weight has shape [16, 7], expected [16, 16]")
    torch.save({**checkpoint, "policy": {**checkpoint["policy"], "obs_dim": 40}}, tmp_path / "dim.pt")
    cases["obs_dim"] = (tmp_path / "dim.pt", "obs_dim 40 != frame_stack 4 x obs_size 13")
    return cases


def test_bad_checkpoints_give_one_line_and_exit_2(tmp_path, capsys):
    good = make_checkpoint(tmp_path / "good.pt")
    for name, (path, message) in bad_checkpoints(tmp_path, good).items():
        assert ex.main([str(path), "-o", str(tmp_path / "x.onnx"), "--check-steps", "0"]) == 2, name
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and lines[0].startswith("export_onnx.py: error:"), (name, lines)
        assert not (tmp_path / "x.onnx").exists()


def test_bad_checkpoint_cli_has_no_traceback(tmp_path):
    (tmp_path / "garbage.pt").write_bytes(os.urandom(4096))
    result = run(["export_onnx.py", str(tmp_path / "garbage.pt")])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"export_onnx.py: error: {tmp_path / 'garbage.pt'}: not a PyTorch checkpoint (the file is corrupt, truncated or of another kind)"
    ]


# ====================================================================================================
# Driving with the ONNX policy (no torch)

# Runs rbxenv.drive with torch made unimportable: the use mode must not need it.
NO_TORCH = "import sys; sys.modules['torch'] = None; from rbxenv.drive import main; sys.exit(main(sys.argv[1:]))"


def export_to(tmp_path: Path, checkpoint: Path) -> Path:
    out = tmp_path / "policy.onnx"
    out.write_bytes(ex.build_onnx(load(checkpoint)).SerializeToString())
    return out


@pytest.mark.timeout(90)
def test_drive_finishes_an_episode_on_the_embedded_sim(checkpoints, tmp_path):
    policy = export_to(tmp_path, checkpoints["ppo"])
    args = ["-c", NO_TORCH, str(policy), "--num-agents", "3", "--episodes", "1", "--max-steps", "1500", "--heldout"]
    result = run(args, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_clean_output(result.stdout, result.stderr)
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("driving with") and "ppo run" in lines[0]
    assert lines[1].startswith("episode   1 | car_") and " on track " in lines[1] and "| laps " in lines[1]
    assert lines[-1].startswith("summary: 1 episodes |") and "crash rate" in lines[-1]


def test_drive_refuses_a_policy_for_another_game(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "c.pt", obs_size=15, num_rays=12)
    result = run(["-c", NO_TORCH, str(export_to(tmp_path, checkpoint)), "--episodes", "1"], timeout=60)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("rbxenv.drive: error: the game") and "frames of 13 floats (policy: 15)" in line
    assert "10 rays (policy: 12)" in line


@pytest.mark.parametrize("case", ["missing", "garbage", "directory"])
def test_drive_bad_files_give_one_line_and_exit_2(tmp_path, capsys, case):
    from rbxenv.drive import main

    path, message = {
        "missing": (tmp_path / "nope.onnx", "no such file"),
        "garbage": (tmp_path / "garbage.onnx", "not a readable ONNX model"),
        "directory": (tmp_path, "is a directory, not an ONNX file"),
    }[case]
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x07garbage" * 30)
    assert main([str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rbxenv.drive: error: {path}: {message}"), lines
