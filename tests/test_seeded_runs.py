"""Same seeds, same checkpoints: short seeded runs of both scripts reproduce a recorded fingerprint.

The fingerprint (tests/data/seeded_runs.json) holds, for every tensor and number of the checkpoint
(weights, optimiser moments, observation statistics, reward scaler, entropy coefficient, probe
actions), its sum, its sum of absolute values and its first values. A refactoring of the scripts
must leave it unchanged: any change to what the algorithm computes or to the order in which it
draws random numbers moves these figures far beyond the tolerance.

It changes on purpose when the algorithm or its defaults change, and it may change on another CPU
(other float rounding in the matrix kernels). Regenerate it then, and say why in the commit:

    python tests/test_seeded_runs.py      # rewrites tests/data/seeded_runs.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ppo_continuous as ppo  # noqa: E402
import sac_continuous as sac  # noqa: E402

GOLDEN = ROOT / "tests" / "data" / "seeded_runs.json"
TOLERANCE = 1e-6  # relative: the same computation gives the same bits; a change moves figures by 1e-3 or more

# A few thousand agent-steps each; track changes every 100 steps, so truncations (and their
# bootstrap) happen as well as crashes.
COMMON = dict(seed=5, num_agents=4, num_venvs=2, track_change_steps=100, eval_every=0, save_model=True)
RUNS = {
    "ppo": (ppo, dict(exp_name="seeded_ppo", num_steps=64, num_minibatches=4, update_epochs=2, total_timesteps=2048)),
    "sac": (sac, dict(exp_name="seeded_sac", total_timesteps=2000, learning_starts=400, batch_size=64, hidden_sizes=(32, 32),
                      buffer_size=5000, log_every=1000, norm_obs_steps=2000)),
}  # fmt: skip


def fingerprint(value, prefix: str = "") -> dict[str, list[float]]:
    """Every number of a checkpoint (nested dicts, lists, tensors, arrays) as [sum, abs sum, first values]."""
    out: dict[str, list[float]] = {}
    if isinstance(value, dict):
        for key in sorted(value, key=str):
            out.update(fingerprint(value[key], f"{prefix}/{key}"))
    elif isinstance(value, list | tuple) and not all(isinstance(v, int | float) for v in value):
        for i, item in enumerate(value):
            out.update(fingerprint(item, f"{prefix}/{i}"))
    elif isinstance(value, torch.Tensor | np.ndarray | int | float | list | tuple) and not isinstance(value, bool):
        array = np.asarray(value.detach() if isinstance(value, torch.Tensor) else value, dtype=np.float64).ravel()
        out[prefix] = [float(array.sum()), float(np.abs(array).sum()), *map(float, array[:4])]
    return out


def run_fingerprint(name: str, cwd: Path, monkeypatch) -> dict[str, list[float]]:
    script, flags = RUNS[name]
    monkeypatch.chdir(cwd)
    torch.set_num_threads(1)
    path = script.train(script.Args(**COMMON, **flags))
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    # the RNG states are compared through what they drew; "args" and "run_name" are not results
    checkpoint["extra"] = {k: v for k, v in checkpoint["extra"].items() if k not in ("torch_rng", "numpy_rng")}
    return fingerprint({k: checkpoint[k] for k in ("global_step", "model", "optimizer", "extra", "policy")})


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(RUNS))
def test_same_seeds_give_the_recorded_checkpoint(name, tmp_path, monkeypatch):
    got, want = run_fingerprint(name, tmp_path, monkeypatch), json.loads(GOLDEN.read_text())[name]
    assert sorted(got) == sorted(want), "the checkpoint holds other entries than recorded"
    for key, figures in want.items():
        np.testing.assert_allclose(got[key], figures, rtol=TOLERANCE, atol=1e-9, err_msg=f"{name} {key}")


if __name__ == "__main__":
    import tempfile

    recorded = {}
    for run in sorted(RUNS):
        with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
            recorded[run] = run_fingerprint(run, Path(tmp), patch)
    GOLDEN.write_text(json.dumps(recorded, indent=0, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN.relative_to(ROOT)}")
