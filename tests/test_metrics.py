"""The figures that judge a driver, checked against drivers whose results are known.

Three hand-written drivers (rbxenv.baselines) on held-out tracks from the grid, one car each: the
ray follower laps and never crashes there, ``into_the_wall`` crashes without a lap, ``parked``
ends stuck (no lap, no crash). Every evaluation that reports lap completion and crash rate must give
their exact tallies: ``python -m rbxenv.drive`` (through an ONNX export of each driver), the
held-out ``evaluate`` of ppo_continuous.py and of sac_continuous.py, and bench/learning.py's.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import learning  # noqa: E402  (bench/learning.py)

from rbxenv import HELDOUT_TRACK_SEEDS, baselines, make_vec_env, training  # noqa: E402
from rbxenv.drive import main as drive_main  # noqa: E402

pytestmark = pytest.mark.timeout(180)

# Car k drives held-out track k with DRIVERS[k] (measured once, deterministic: lockstep, seeded).
DRIVERS = ["ray_follower", "into_the_wall", "parked"]
RAY_LAPS = 2  # the ray follower's laps in its 100 s episode on HELDOUT_TRACK_SEEDS[0]


def mixed(obs: np.ndarray) -> np.ndarray:
    """Car k is driven by DRIVERS[k % 3]."""
    out = np.zeros((len(obs), 3), np.float32)
    for k, name in enumerate(DRIVERS):
        out[k::3] = baselines.driver(name)(obs[k::3])
    return out


class Torchy:
    """The mixed drivers behind the scripts' actor interfaces (act_deterministic, as rbxenv.training.evaluate drives them)."""

    def act_deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(mixed(obs.numpy()))


def check(result: dict) -> None:
    """One car per driver: 1/3 lapped, 1/3 crashed, the progress of each as measured."""
    assert result["lap_completion"] == pytest.approx(1 / 3)
    assert result["crash_rate"] == pytest.approx(1 / 3)


@pytest.fixture(scope="module")
def heldout_envs():
    envs = make_vec_env(
        num_agents=1,
        num_venvs=3,
        frame_stack=4,
        track_change_steps=None,
        start="grid",
        track_seeds=list(HELDOUT_TRACK_SEEDS)[:3],
    )
    yield envs
    envs.close()


def test_the_scripts_heldout_evaluation(heldout_envs):
    result = training.evaluate(Torchy(), heldout_envs, seed=0)
    check(result)
    ray, wall, parked = result["first_lap_times"]
    assert np.isfinite(ray) and 20 < ray < 60 and np.isnan(wall) and np.isnan(parked)
    assert result["lap_time"] == pytest.approx(ray)


def test_bench_learning_evaluation():
    result = learning.evaluate(mixed, 3)
    check(result)
    assert 0.5 < result["lap_time_vs_reference"] < 3  # the ray follower's lap against pure pursuit's


def onnx_driver(path: Path, name: str) -> Path:
    """An exported policy file (as export_onnx.py writes them) for a hand-written driver."""
    w, b = baselines.linear(name)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["obs", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["raw"]),
            helper.make_node("Clip", ["raw", "lo", "hi"], ["action"]),
        ],
        name,
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", w.shape[0]])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", 3])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(b, "b"),
            numpy_helper.from_array(np.array(-1, np.float32), "lo"),
            numpy_helper.from_array(np.array(1, np.float32), "hi"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # as export_onnx.py writes it
    meta = {"frame_stack": "4", "obs_size": "13", "num_rays": "10", "obs_dim": str(w.shape[0]), "algo": name}
    for key, value in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    out = path / f"{name}.onnx"
    onnx.save(model, out)
    return out


@pytest.mark.parametrize(
    "name, offset, summary, ending",
    [
        ("ray_follower", 0, f"1 episodes | {RAY_LAPS} laps | lap completion 100% | crash rate 0%", "time limit"),
        ("into_the_wall", 1, "1 episodes | 0 laps | lap completion 0% | crash rate 100%", "crashed into a wall"),
        ("parked", 2, "1 episodes | 0 laps | lap completion 0% | crash rate 0%", "stopped (stuck or wrong way)"),
    ],
)
def test_drive_tally(name, offset, summary, ending, tmp_path, capsys):
    policy = onnx_driver(tmp_path, name)
    args = [str(policy), "--heldout", "--track-offset", str(offset), "--num-agents", "1", "--episodes", "1"]
    assert drive_main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    (episode,) = [line for line in lines if line.startswith("episode ")]
    assert f"| {ending} after " in episode, episode
    assert re.search(rf"\| laps {summary.split(' | ')[1].split()[0]} \|", episode), episode
    assert lines[-1].startswith(f"summary: {summary} |"), lines[-1]
