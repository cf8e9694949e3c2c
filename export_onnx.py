"""Ship a trained driver: checkpoint -> ONNX (and a Luau module for Roblox), with parity checks.

    python export_onnx.py runs/<run>/checkpoint.pt                      # -> runs/<run>/policy.onnx
    python export_onnx.py runs/<run>/checkpoint.pt -o policy.onnx --luau roblox/src/policies/DriverPolicy.luau
    python -m rbxenv.drive policy.onnx --heldout --episodes 10         # drive with it (no torch)

Reads ONLY the ``"policy"`` section of a checkpoint, never the training scripts: the format below
is the contract between ``ppo_continuous.py`` / ``sac_continuous.py`` and everything that ships a
policy. After writing, the ONNX graph is run with onnxruntime on observations recorded from the
embedded simulator (driven by the policy itself, with noise) and on random vectors of the
observation box, and compared with a PyTorch forward pass of the same section; with ``--luau``
the generated module is run under a real Luau VM (``pluau``, a dev dependency) through the Roblox
side's ``PolicyRunner``, frame stacking included, and compared with onnxruntime.

Exit codes: 0 exported and checked; 1 a parity check failed (max abs difference above
1e-5 for ONNX vs PyTorch, 1e-4 for Luau vs ONNX); 2 bad input (missing file, not a checkpoint,
another format, inconsistent shapes) or an output that cannot be written. Each failure is one
line on stderr.

## Checkpoint format "rbxenv-checkpoint-v1" (``rbxenv/training.py`` writes it with ``torch.save``)

    {"format": "rbxenv-checkpoint-v1", "algo": "ppo" | "sac", "args": dict, "global_step": int,
     "run_name": str, "model": state_dict, "optimizer": state_dict, "extra": dict,
     "policy": {
        "obs_dim": 52,            # network input = frame_stack * obs_size
        "act_dim": 3,
        "frame_stack": 4,         # frames per input, oldest first
        "obs_size": 13,           # floats per frame (num_rays + 3 in the default game)
        "num_rays": 10,
        "obs_mean": Tensor(obs_dim), "obs_var": Tensor(obs_dim),   # observation statistics
        "obs_eps": 1e-8,
        "obs_clip": float | None, # None: no clipping of the normalised observation
        "layers": [{"weight": Tensor(out, in), "bias": Tensor(out)}, ...],  # torch Linear layout
        "activation": "tanh" | "relu",   # between layers, none after the last
        "squash": "clip" | "tanh",       # PPO: clip the mean; SAC: tanh of the mean
        "action_names": ["throttle", "steering", "nitro"],
        "probe_obs": Tensor(256, obs_dim),      # fixed observations (rbxenv.training) ...
        "probe_actions": Tensor(256, act_dim),  # ... and the trainer's own deterministic actions
     }}

Only ``format``, ``policy`` and (for the record) ``algo``, ``run_name``, ``global_step`` are read.
Tensors may also be numpy arrays or lists. The probe makes the export fork-safe: the exporter
recomputes the probe's actions from the declared format below and exits 1 when they differ from
the trainer's (a network changed without its declaration); a checkpoint without a probe is
exported with a note that this check was skipped. The deterministic action is

    x = (obs - obs_mean) / sqrt(obs_var + obs_eps)        # float32
    x = clamp(x, -obs_clip, obs_clip)                      # unless obs_clip is None
    x = act(W_i x + b_i) for every layer but the last;  y = W_last x + b_last
    action = clamp(y, -1, 1)            (squash "clip")
    action = clamp(tanh(y), -1, 1)      (squash "tanh")

## The ONNX model

Input ``obs``: float32 [batch, obs_dim] raw stacked observations (batch is dynamic); output
``action``: float32 [batch, act_dim]. Normalisation is baked in. ``metadata_props`` (strings):
``format`` ("rbxenv-policy-onnx-1"), ``checkpoint_format``, ``obs_dim``, ``obs_size``,
``frame_stack``, ``num_rays``, ``act_dim``, ``action_names`` (JSON list), ``algo``,
``source_run``, ``global_step``, ``activation``, ``squash``, ``hidden_sizes`` (JSON list).
Opset 17, no custom operators.

## The Luau module (``--luau``)

A ModuleScript returning the weights table of ``roblox/src/shared/PolicyRunner.luau`` (format
"rbxenv-mlp-1": obs_size, frame_stack, obs_mean/obs_var/obs_eps/obs_clip, layers of {W = W[out][in],
b}, activation, squash, action_low/high). Put it in ``roblox/src/policies/`` (ServerStorage.
RbxEnvPolicies) and name it after ``Config.PolicyModule`` ("DriverPolicy" by default):
``PolicyRunner.new(require(module))`` then ``runner:act(carId, obs13)`` keeps each car's frame
stack (a car's first observation fills the whole stack, as the Python vector env does) and
returns the action; ``runner:reset(carId)`` at a respawn.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import rbxenv
from rbxenv import cli
from rbxenv.luau import load_pluau
from rbxenv.training import CHECKPOINT_FORMAT

ONNX_FORMAT = "rbxenv-policy-onnx-1"
LUAU_FORMAT = "rbxenv-mlp-1"
ONNX_TOLERANCE = 1e-5
LUAU_TOLERANCE = 1e-4
OPSET = 17
REPO = Path(__file__).resolve().parent
POLICY_RUNNER = REPO / "roblox" / "src" / "shared" / "PolicyRunner.luau"


class ExportError(Exception):
    """Bad input or output: one line for the user, exit code 2."""


class ParityError(Exception):
    """The exported policy does not compute what the checkpoint does: exit code 1."""


class WriteError(Exception):
    """An output file could not be written (full disk, permissions): exit code 1."""


# ====================================================================================================
# Reading a checkpoint


@dataclass
class Policy:
    """The ``policy`` section of a checkpoint, validated, as float32 numpy arrays."""

    obs_dim: int
    act_dim: int
    frame_stack: int
    obs_size: int
    num_rays: int
    obs_mean: np.ndarray
    obs_var: np.ndarray
    obs_eps: float
    obs_clip: float | None
    weights: list[np.ndarray]
    biases: list[np.ndarray]
    activation: str
    squash: str
    action_names: list[str]
    probe_obs: np.ndarray | None = None  # the trainer's probe (None in checkpoints saved before probes)
    probe_actions: np.ndarray | None = None
    algo: str = "unknown"
    run_name: str = ""
    global_step: int = 0
    source: str = ""

    @property
    def hidden_sizes(self) -> list[int]:
        return [int(w.shape[0]) for w in self.weights[:-1]]


def load_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load`` a checkpoint file; ExportError (one line) when it is missing or unreadable."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path}: no such file")
    if path.is_dir():
        raise ExportError(f"{path}: is a directory, not a checkpoint file (try {path / 'checkpoint.pt'})")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise ExportError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    import torch  # after the checks above: a wrong path is refused without loading torch

    unreadable = f"{path}: not a PyTorch checkpoint (the file is corrupt, truncated or of another kind)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about pickle protocols of files it then rejects
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            if "Unsupported global" not in str(exc):
                raise ExportError(unreadable) from None
            # A checkpoint whose "extra" holds other Python objects: the user's own training output,
            # read as the training scripts read it.
            try:
                checkpoint = torch.load(path, map_location="cpu", weights_only=False)
            except Exception:
                raise ExportError(unreadable) from None
    if not isinstance(checkpoint, dict):
        raise ExportError(f"{path}: not an rbxenv checkpoint (holds a {type(checkpoint).__name__}, not a dict)")
    return checkpoint


def _array(value: Any, name: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise ExportError(f"{where}: policy {name} is not numeric") from None
    if array.shape != shape:
        raise ExportError(f"{where}: policy {name} has shape {list(array.shape)}, expected {list(shape)}")
    if not np.isfinite(array).all():
        raise ExportError(f"{where}: policy {name} contains NaN or infinite values")
    return array


def _int(section: dict, key: str, where: str) -> int:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ExportError(f"{where}: policy {key} must be a positive integer, got {value!r}")
    return int(value)


def read_policy(checkpoint: dict, source: str = "checkpoint") -> Policy:
    """Validate the ``policy`` section against the documented format (ExportError on any mismatch)."""
    where = source
    fmt = checkpoint.get("format")
    if fmt is None:
        raise ExportError(f"{where}: not an rbxenv checkpoint (no 'format' key; expected {CHECKPOINT_FORMAT!r})")
    if fmt != CHECKPOINT_FORMAT:
        raise ExportError(
            f"{where}: checkpoint format {fmt!r} is not supported (this exporter reads {CHECKPOINT_FORMAT!r})"
        )
    section = checkpoint.get("policy")
    if not isinstance(section, dict):
        raise ExportError(
            f"{where}: checkpoint has no 'policy' section (it was not saved by an rbxenv training script)"
        )
    obs_dim, act_dim = _int(section, "obs_dim", where), _int(section, "act_dim", where)
    frame_stack, obs_size = _int(section, "frame_stack", where), _int(section, "obs_size", where)
    num_rays = _int(section, "num_rays", where)
    if frame_stack * obs_size != obs_dim:
        raise ExportError(f"{where}: policy obs_dim {obs_dim} != frame_stack {frame_stack} x obs_size {obs_size}")
    if num_rays >= obs_size:
        raise ExportError(f"{where}: policy num_rays {num_rays} must be smaller than obs_size {obs_size}")
    obs_mean = _array(section.get("obs_mean"), "obs_mean", (obs_dim,), where)
    obs_var = _array(section.get("obs_var"), "obs_var", (obs_dim,), where)
    if (obs_var < 0).any():
        raise ExportError(f"{where}: policy obs_var has negative entries")
    obs_eps = section.get("obs_eps", 1e-8)
    if not isinstance(obs_eps, int | float) or not obs_eps >= 0:
        raise ExportError(f"{where}: policy obs_eps must be a non-negative number, got {obs_eps!r}")
    if float(np.min(obs_var)) + obs_eps <= 0:
        raise ExportError(f"{where}: policy obs_var + obs_eps must be positive")
    obs_clip = section.get("obs_clip")
    if obs_clip is not None and (
        isinstance(obs_clip, bool) or not isinstance(obs_clip, int | float) or not obs_clip > 0
    ):
        raise ExportError(f"{where}: policy obs_clip must be a positive number or None, got {obs_clip!r}")
    layers = section.get("layers")
    if not isinstance(layers, list | tuple) or not layers:
        raise ExportError(f"{where}: policy layers must be a non-empty list of {{'weight', 'bias'}}")
    weights, biases, width = [], [], obs_dim
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict) or "weight" not in layer or "bias" not in layer:
            raise ExportError(f"{where}: policy layer {i} must be a dict with 'weight' and 'bias'")
        w = layer["weight"]
        out = int(w.shape[0]) if hasattr(w, "shape") and len(w.shape) == 2 else -1
        if out < 1:
            raise ExportError(f"{where}: policy layer {i} weight must be a 2-D tensor (out, in)")
        weights.append(_array(w, f"layer {i} weight", (out, width), where))
        biases.append(_array(layer["bias"], f"layer {i} bias", (out,), where))
        width = out
    if width != act_dim:
        raise ExportError(f"{where}: policy last layer has {width} outputs but act_dim is {act_dim}")
    activation, squash = section.get("activation"), section.get("squash")
    if activation not in ("tanh", "relu"):
        raise ExportError(f"{where}: policy activation must be 'tanh' or 'relu', got {activation!r}")
    if squash not in ("clip", "tanh"):
        raise ExportError(f"{where}: policy squash must be 'clip' or 'tanh', got {squash!r}")
    names = section.get("action_names") or [f"action_{k}" for k in range(act_dim)]
    if not isinstance(names, list | tuple) or len(names) != act_dim or not all(isinstance(n, str) for n in names):
        raise ExportError(f"{where}: policy action_names must be {act_dim} strings, got {names!r}")
    probe_obs = probe_actions = None
    if "probe_obs" in section or "probe_actions" in section:
        probe = section.get("probe_obs")
        count = int(probe.shape[0]) if hasattr(probe, "shape") and len(probe.shape) == 2 else -1
        if count < 1:
            raise ExportError(f"{where}: policy probe_obs must be a 2-D tensor (count, obs_dim)")
        probe_obs = _array(probe, "probe_obs", (count, obs_dim), where)
        probe_actions = _array(section.get("probe_actions"), "probe_actions", (count, act_dim), where)
    step = checkpoint.get("global_step", 0)
    return Policy(
        obs_dim=obs_dim, act_dim=act_dim, frame_stack=frame_stack, obs_size=obs_size, num_rays=num_rays,
        obs_mean=obs_mean, obs_var=obs_var, obs_eps=float(obs_eps),
        obs_clip=None if obs_clip is None else float(obs_clip),
        weights=weights, biases=biases, activation=activation, squash=squash, action_names=list(names),
        probe_obs=probe_obs, probe_actions=probe_actions,
        algo=str(checkpoint.get("algo", "unknown")), run_name=str(checkpoint.get("run_name", "")),
        global_step=int(step) if isinstance(step, int | np.integer) else 0, source=str(source),
    )  # fmt: skip


# ====================================================================================================
# The three implementations: PyTorch (reference), ONNX, Luau


def torch_actions(policy: Policy, obs: np.ndarray) -> np.ndarray:
    """The reference: the documented formula in PyTorch float32 (what the training scripts compute)."""
    import torch

    with torch.no_grad():
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32))
        mean, var = torch.from_numpy(policy.obs_mean), torch.from_numpy(policy.obs_var)
        x = (x - mean) / torch.sqrt(var + policy.obs_eps)
        if policy.obs_clip is not None:
            x = x.clamp(-policy.obs_clip, policy.obs_clip)
        act = torch.tanh if policy.activation == "tanh" else torch.relu
        last = len(policy.weights) - 1
        for i, (w, b) in enumerate(zip(policy.weights, policy.biases, strict=True)):
            x = torch.nn.functional.linear(x, torch.from_numpy(w), torch.from_numpy(b))
            if i < last:
                x = act(x)
        if policy.squash == "tanh":
            x = torch.tanh(x)
        return x.clamp(-1.0, 1.0).numpy()


def metadata(policy: Policy) -> dict[str, str]:
    return {
        "format": ONNX_FORMAT,
        "checkpoint_format": CHECKPOINT_FORMAT,
        "obs_dim": str(policy.obs_dim),
        "obs_size": str(policy.obs_size),
        "frame_stack": str(policy.frame_stack),
        "num_rays": str(policy.num_rays),
        "act_dim": str(policy.act_dim),
        "action_names": json.dumps(policy.action_names),
        "algo": policy.algo,
        "source_run": policy.run_name,
        "global_step": str(policy.global_step),
        "activation": policy.activation,
        "squash": policy.squash,
        "hidden_sizes": json.dumps(policy.hidden_sizes),
    }


def build_onnx(policy: Policy):
    """The ONNX graph: obs [batch, obs_dim] -> action [batch, act_dim], normalisation baked in."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    # The same float32 arithmetic as the reference: sqrt(var + eps) computed in float32, then a Div.
    std = np.sqrt(policy.obs_var + np.float32(policy.obs_eps), dtype=np.float32)
    nodes.append(helper.make_node("Sub", ["obs", const("obs_mean", policy.obs_mean)], ["centred"]))
    nodes.append(helper.make_node("Div", ["centred", const("obs_std", std)], ["x0"]))
    x = "x0"
    if policy.obs_clip is not None:
        c = policy.obs_clip
        nodes.append(
            helper.make_node("Clip", [x, const("clip_lo", np.float32(-c)), const("clip_hi", np.float32(c))], ["xn"])
        )
        x = "xn"
    last = len(policy.weights) - 1
    for i, (w, b) in enumerate(zip(policy.weights, policy.biases, strict=True)):
        nodes.append(helper.make_node("Gemm", [x, const(f"W{i}", w), const(f"b{i}", b)], [f"z{i}"], transB=1))
        x = f"z{i}"
        if i < last:
            op = "Tanh" if policy.activation == "tanh" else "Relu"
            nodes.append(helper.make_node(op, [x], [f"h{i}"]))
            x = f"h{i}"
    if policy.squash == "tanh":
        nodes.append(helper.make_node("Tanh", [x], ["squashed"]))
        x = "squashed"
    one = const("one", np.float32(1.0))
    nodes.append(helper.make_node("Clip", [x, const("minus_one", np.float32(-1.0)), one], ["action"]))
    graph = helper.make_graph(
        nodes,
        "rbxenv_policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", policy.obs_dim])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", policy.act_dim])],
        inits,
    )
    model = helper.make_model(
        graph,
        producer_name="rbxenv export_onnx.py",
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string=f"rbxenv driving policy ({policy.algo}, run {policy.run_name}, step {policy.global_step}): "
        "raw stacked observations (oldest frame first) -> deterministic action in [-1, 1]",
    )
    model.ir_version = 8  # readable by onnxruntime >= 1.10 and most other runtimes
    helper.set_model_props(model, metadata(policy))
    onnx.checker.check_model(model)
    return model


def onnx_session(model_or_path: Any):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # tiny MLP: threads cost more than they give
    options.inter_op_num_threads = 1
    data = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def onnx_actions(session, obs: np.ndarray) -> np.ndarray:
    return session.run(["action"], {"obs": np.asarray(obs, dtype=np.float32)})[0]


def _fmt(values: np.ndarray) -> str:
    # Shortest decimal that reads back as the same float32 (Luau numbers are doubles).
    return ", ".join(str(np.float32(v)) if v != 0 else "0" for v in np.asarray(values, dtype=np.float32).ravel())


def luau_module(policy: Policy) -> str:
    """A Luau ModuleScript returning the PolicyRunner weights table (format rbxenv-mlp-1)."""
    lines = [
        f"-- {LUAU_FORMAT}: a driving policy exported by export_onnx.py; generated, do not edit.",
        f"-- source: {policy.source} ({policy.algo}, run {policy.run_name!r}, step {policy.global_step})",
        "-- Put it in ServerStorage.RbxEnvPolicies (roblox/src/policies/) named after Config.PolicyModule, or:",
        "--   local runner = PolicyRunner.new(require(thisModule))",
        "--   local action = runner:act(carId, obs)  -- obs: one frame of obs_size numbers; the runner stacks frames",
        "--   runner:reset(carId)                    -- when the car respawns (its next obs refills the stack)",
        "return {",
        f'\tformat = "{LUAU_FORMAT}",',
        f"\tobs_size = {policy.obs_size},",
        f"\tframe_stack = {policy.frame_stack},",
        f"\tnum_rays = {policy.num_rays},",
        f"\tobs_mean = {{ {_fmt(policy.obs_mean)} }},",
        f"\tobs_var = {{ {_fmt(policy.obs_var)} }},",
        f"\tobs_eps = {policy.obs_eps!r},",
    ]
    if policy.obs_clip is not None:
        lines.append(f"\tobs_clip = {policy.obs_clip!r},")
    lines.append("\tlayers = {")
    for w, b in zip(policy.weights, policy.biases, strict=True):
        lines.append("\t\t{")
        lines.append("\t\t\tW = {")
        lines += [f"\t\t\t\t{{ {_fmt(row)} }}," for row in w]
        lines.append("\t\t\t},")
        lines.append(f"\t\t\tb = {{ {_fmt(b)} }},")
        lines.append("\t\t},")
    lines.append("\t},")
    names = ", ".join(json.dumps(n) for n in policy.action_names)
    lines += [
        f'\tactivation = "{policy.activation}",',
        f'\tsquash = "{policy.squash}",',
        f"\taction_low = {{ {', '.join(['-1'] * policy.act_dim)} }},",
        f"\taction_high = {{ {', '.join(['1'] * policy.act_dim)} }},",
        f"\taction_names = {{ {names} }},",
        "\tmeta = {",
        f"\t\talgo = {json.dumps(policy.algo)},",
        f"\t\trun_name = {json.dumps(policy.run_name)},",
        f"\t\tglobal_step = {policy.global_step},",
        f'\t\tcheckpoint_format = "{CHECKPOINT_FORMAT}",',
        "\t},",
        "}",
        "",
    ]
    return "\n".join(lines)


# Runs PolicyRunner:act over recorded per-car frame sequences. Buffers carry float64 both ways.
_LUAU_HARNESS = """
local PolicyRunner, weights, frames, starts, steps, cars, obsSize, bench = ...
local runner, err = PolicyRunner.new(weights)
if runner == nil then error(err) end
if bench > 0 then
    local frame = table.create(obsSize, 0.5)
    local ids = {}
    for c = 1, cars do ids[c] = "car_" .. c end
    for c = 1, cars do runner:act(ids[c], frame) end
    local t0 = os.clock()
    for _ = 1, bench do
        for c = 1, cars do runner:act(ids[c], frame) end
    end
    return (os.clock() - t0) / bench
end
local actSize = runner.actSize
local out = buffer.create(steps * cars * actSize * 8)
local ids = {}
for c = 1, cars do ids[c] = "car_" .. c end
local frame = table.create(obsSize, 0)
for t = 0, steps - 1 do
    for c = 0, cars - 1 do
        local row = t * cars + c
        if buffer.readu8(starts, row) == 1 then runner:reset(ids[c + 1]) end
        for k = 1, obsSize do frame[k] = buffer.readf64(frames, (row * obsSize + k - 1) * 8) end
        local action = runner:act(ids[c + 1], frame)
        for k = 1, actSize do buffer.writef64(out, (row * actSize + k - 1) * 8, action[k]) end
    end
end
return buffer.tostring(out)
"""


class LuauPolicy:
    """The generated module + roblox/src/shared/PolicyRunner.luau in a real Luau VM (pluau)."""

    def __init__(self, module_source: str, runner_path: Path = POLICY_RUNNER):
        pluau = load_pluau()
        if pluau is None:
            raise RuntimeError("pluau is not installed (pip install -r requirements-dev.txt)")
        if not runner_path.exists():
            raise RuntimeError(f"{runner_path} not found (the Roblox side's PolicyRunner module)")
        self.lua = pluau.Lua()
        self.runner = self.lua.load_chunk(runner_path.read_text(encoding="utf-8"), name="@PolicyRunner")()[0]
        self.weights = self.lua.load_chunk(module_source, name="@DriverPolicy")()[0]
        self.harness = self.lua.load_chunk(_LUAU_HARNESS, name="=harness")
        self.obs_size = int(self.weights.get("obs_size"))

    def act(self, frames: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """frames [T, cars, obs_size], starts [T, cars] (a new episode begins) -> actions [T, cars, act]."""
        steps, cars, _ = frames.shape
        fb = self.lua.create_buffer(np.ascontiguousarray(frames, dtype=np.float64).tobytes())
        sb = self.lua.create_buffer(np.ascontiguousarray(starts, dtype=np.uint8).tobytes())
        raw = self.harness(self.runner, self.weights, fb, sb, steps, cars, self.obs_size, 0)[0]
        return np.frombuffer(raw.as_bytes(), dtype=np.float64).reshape(steps, cars, -1)

    def close(self) -> None:
        """Drop the VM (pluau prints "Lua VM is being closed" on stdout then: keep it off the output)."""
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), 1)
                self.runner = self.weights = self.harness = self.lua = None
                gc.collect()
        finally:
            os.dup2(saved, 1)
            os.close(saved)

    def seconds_per_decision(self, cars: int = 25, repeats: int = 200) -> float:
        """os.clock() seconds for one decision of ``cars`` cars (frame stacking + forward pass)."""
        dummy = self.lua.create_buffer(b"\0")
        return float(self.harness(self.runner, self.weights, dummy, dummy, 0, cars, self.obs_size, repeats)[0])


# ====================================================================================================
# Observations to check on


def stack_frames(frames: np.ndarray, starts: np.ndarray, frame_stack: int) -> np.ndarray:
    """The vector env's frame stacking: oldest frame first; an episode starts with its first frame everywhere.

    frames [T, cars, obs_size], starts [T, cars] (row 0 must be all True) -> [T, cars, frame_stack * obs_size].
    """
    steps, cars, size = frames.shape
    stack = np.zeros((cars, frame_stack, size), dtype=np.float32)
    out = np.zeros((steps, cars, frame_stack * size), dtype=np.float32)
    for t in range(steps):
        stack[:, :-1] = stack[:, 1:]
        stack[:, -1] = frames[t]
        stack[starts[t]] = frames[t][starts[t]][:, None, :]
        out[t] = stack.reshape(cars, -1)
    return out


@dataclass
class Recording:
    frames: np.ndarray  # [T, cars, obs_size] newest frame of each step
    starts: np.ndarray  # [T, cars] bool: first observation of an episode
    stacked: np.ndarray  # [T, cars, obs_dim] what the env handed the policy
    source: str


def record_sim(
    policy: Policy, steps: int = 300, num_agents: int = 5, num_venvs: int = 2, seed: int = 0
) -> Recording | None:
    """Drive the embedded simulator with the policy (plus noise) and record what the policy saw.

    None when the simulator's frames do not have the policy's size (a policy trained on a game with
    another ray count).
    """
    import torch

    from rbxenv import make_vec_env

    rng = np.random.default_rng(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # lockstep ping-pong with the simulator process: spinning threads only hurt
    env = make_vec_env(num_agents, num_venvs, policy.frame_stack, track_change_steps=None, sim_seed=seed)
    try:
        if env.obs_size != policy.obs_size:
            return None
        obs, _ = env.reset(seed=seed)
        cars = env.num_envs
        stacked = np.zeros((steps, cars, policy.obs_dim), dtype=np.float32)
        starts = np.zeros((steps, cars), dtype=bool)
        starts[0] = True
        for t in range(steps):
            stacked[t] = obs
            action = torch_actions(policy, obs) + rng.normal(0.0, 0.3, (cars, policy.act_dim))
            obs, _, terminated, truncated, _ = env.step(np.clip(action, -1, 1).astype(np.float32))
            if t + 1 < steps:
                starts[t + 1] = terminated | truncated
    finally:
        env.close()
        torch.set_num_threads(threads)
    frames = stacked[:, :, -policy.obs_size :]
    return Recording(frames, starts, stacked, f"embedded simulator, {cars} cars x {steps} steps")


def random_frames(policy: Policy, steps: int = 40, cars: int = 25, seed: int = 0) -> Recording:
    """Random frames of the observation box (rays, fuel in [0,1], velocity in [-1,1], reverse 0/1)."""
    rng = np.random.default_rng(seed)
    frames = rng.uniform(0.0, 1.0, (steps, cars, policy.obs_size)).astype(np.float32)
    r = policy.num_rays
    if policy.obs_size >= r + 3:
        frames[..., r + 1] = rng.uniform(-1.0, 1.0, (steps, cars))
        frames[..., r + 2] = rng.integers(0, 2, (steps, cars))
    starts = rng.random((steps, cars)) < 0.05
    starts[0] = True
    return Recording(
        frames, starts, stack_frames(frames, starts, policy.frame_stack), f"random frames, {cars} cars x {steps} steps"
    )


# ====================================================================================================
# Checks


def check_declaration(policy: Policy) -> float | None:
    """Max abs difference between the trainer's probe actions and the declared format's (None: no probe).

    ParityError above tolerance: the network that trained is not the one the section declares, so
    every export of it (ONNX, Luau) would drive differently from what was trained."""
    if policy.probe_obs is None or policy.probe_actions is None:
        return None
    diff = float(np.max(np.abs(torch_actions(policy, policy.probe_obs) - policy.probe_actions)))
    if not diff <= ONNX_TOLERANCE:
        raise ParityError(
            f'{policy.source}: the trained network does not compute what its checkpoint\'s "policy" section '
            f"declares (the trainer's actions on its {len(policy.probe_obs)} probe observations differ by up to "
            f"{diff:.3g}): the training script's network and its policy_export() disagree (activation, layers, "
            f"normalisation or squash); make policy_export() describe the network, then train or save again"
        )
    return diff


def check_onnx(policy: Policy, session, observations: np.ndarray) -> float:
    """Max abs difference between onnxruntime and the PyTorch reference (ParityError above tolerance)."""
    diff = float(np.max(np.abs(onnx_actions(session, observations) - torch_actions(policy, observations))))
    if not diff <= ONNX_TOLERANCE:
        raise ParityError(
            f"ONNX parity FAILED: max |onnx - torch| = {diff:.3g} > {ONNX_TOLERANCE:g} on {len(observations)} observations"
        )
    return diff


def check_luau(luau: LuauPolicy, session, recordings: list[Recording]) -> tuple[float, int]:
    """Max abs difference between Luau (PolicyRunner, own frame stacks) and onnxruntime on the env's stacks."""
    worst, count = 0.0, 0
    for rec in recordings:
        got = luau.act(rec.frames, rec.starts)
        want = onnx_actions(session, rec.stacked.reshape(-1, rec.stacked.shape[-1])).reshape(got.shape)
        diff = float(np.max(np.abs(got - want)))
        if not diff <= LUAU_TOLERANCE:
            raise ParityError(
                f"Luau parity FAILED on {rec.source}: max |luau - onnx| = {diff:.3g} > {LUAU_TOLERANCE:g}"
            )
        worst, count = max(worst, diff), count + got.shape[0] * got.shape[1]
    return worst, count


def onnx_seconds_per_batch(session, obs_dim: int, batch: int = 25, repeats: int = 2000) -> float:
    x = np.random.default_rng(0).uniform(0, 1, (batch, obs_dim)).astype(np.float32)
    for _ in range(50):
        onnx_actions(session, x)
    t0 = time.perf_counter()
    for _ in range(repeats):
        onnx_actions(session, x)
    return (time.perf_counter() - t0) / repeats


# ====================================================================================================
# CLI


def _write(path: Path, data: bytes, what: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise WriteError(f"{path}: cannot write the {what} ({exc.strerror or exc})") from None


def export(args: argparse.Namespace) -> None:
    checkpoint = load_checkpoint(args.checkpoint)
    policy = read_policy(checkpoint, str(args.checkpoint))
    del checkpoint
    declared = check_declaration(policy)  # before anything is written: a wrong driver is never shipped
    out = Path(args.output) if args.output else Path(args.checkpoint).with_name("policy.onnx")
    model = build_onnx(policy)
    _write(out, model.SerializeToString(), "ONNX model")
    hidden = "x".join(map(str, policy.hidden_sizes)) or "none"
    print(
        f"wrote {out}: {policy.algo} policy, run {policy.run_name or '?'} step {policy.global_step}, "
        f"obs {policy.frame_stack}x{policy.obs_size}={policy.obs_dim} -> {policy.act_dim} actions, "
        f"hidden {hidden} {policy.activation}, squash {policy.squash}",
        flush=True,
    )

    if declared is None:
        print(
            "  no probe in this checkpoint (saved before probes existed): the network-vs-declaration check is skipped"
        )
    else:
        print(
            f"  trainer vs declared format: max |diff| {declared:.2g} on {len(policy.probe_obs)} probe observations -- OK"
        )
    session = onnx_session(out)
    observations_probe = [] if policy.probe_obs is None else [policy.probe_obs]
    recordings = [random_frames(policy, seed=args.seed)]
    if args.check_steps > 0:
        rec = record_sim(policy, steps=args.check_steps, seed=args.seed)
        if rec is None:
            print("  (the embedded simulator makes frames of another size: checking on random observations only)")
        else:
            recordings.insert(0, rec)
    rng = np.random.default_rng(args.seed)
    box = np.tile(recordings[-1].frames.reshape(-1, policy.obs_size), (1, policy.frame_stack))  # random, in the box
    wild = rng.normal(policy.obs_mean, 3.0 * np.sqrt(policy.obs_var) + 1.0, (500, policy.obs_dim)).astype(np.float32)
    observations = np.concatenate(
        [r.stacked.reshape(-1, policy.obs_dim) for r in recordings] + [box, wild] + observations_probe
    )
    diff = check_onnx(policy, session, observations)
    print(f"  onnxruntime vs PyTorch: max |diff| {diff:.2g} on {len(observations)} observations "
          f"({', '.join(r.source for r in recordings)}, random stacks) -- OK (tolerance {ONNX_TOLERANCE:g})", flush=True)  # fmt: skip
    per_batch = onnx_seconds_per_batch(session, policy.obs_dim)
    print(f"  onnxruntime: {per_batch * 1e6:.0f} us per batch of 25 cars (1 thread)", flush=True)

    if args.luau:
        path = Path(args.luau)
        source = luau_module(policy)
        _write(path, source.encode("utf-8"), "Luau module")
        print(f"wrote {path}: Luau ModuleScript for PolicyRunner ({LUAU_FORMAT}, {len(source) / 1024:.0f} KiB)")
        try:
            luau = LuauPolicy(source)
        except RuntimeError as exc:
            print(f"  Luau check skipped: {exc}")
            return
        try:
            diff, count = check_luau(luau, session, recordings)
            cost = luau.seconds_per_decision(cars=25)
        finally:
            luau.close()
        print(f"  Luau (PolicyRunner, own frame stacks) vs onnxruntime: max |diff| {diff:.2g} on {count} actions "
              f"-- OK (tolerance {LUAU_TOLERANCE:g})")  # fmt: skip
        print(f"  Luau: {cost * 1e3:.2f} ms per decision for 25 cars (pluau os.clock; Roblox at 15 Hz has 66 ms)")


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="export_onnx.py",
        description="Export an rbxenv checkpoint's policy to ONNX (and a Luau module), with parity checks.",
    )
    parser.add_argument("checkpoint", help="checkpoint.pt written by ppo_continuous.py or sac_continuous.py")
    parser.add_argument("-o", "--output", help="ONNX file to write (default: policy.onnx next to the checkpoint)")
    parser.add_argument(
        "--luau", metavar="PATH", help="also write a Luau ModuleScript, e.g. roblox/src/policies/DriverPolicy.luau"
    )
    parser.add_argument("--check-steps", type=int, default=200, help="simulator steps recorded for the parity checks (0: random observations only)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the recorded and random observations")
    args = parser.parse_args(argv)
    cli.check(parser.prog, args, {"--check-steps": cli.at_least(0)})
    try:
        export(args)
    except ExportError as exc:
        print(f"export_onnx.py: error: {exc}", file=sys.stderr)
        return cli.EXIT_BAD_INPUT
    except (ParityError, WriteError) as exc:
        print(f"export_onnx.py: {exc}", file=sys.stderr)
        return cli.EXIT_FAILURE
    except (rbxenv.BridgeClosed, TimeoutError) as exc:  # the simulator recording the parity observations
        print(f"export_onnx.py: the simulator failed while recording observations ({exc}); try --check-steps 0", file=sys.stderr)  # fmt: skip
        return cli.EXIT_FAILURE
    except KeyboardInterrupt:
        print("export_onnx.py: interrupted", file=sys.stderr)
        return cli.EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
