"""The checkpoint format's shared facts: its name, and the probe that makes an export fork-safe.

A training script writes its deterministic actor into the checkpoint's ``"policy"`` section in a
declared format (layers, activation, squash: ``export_onnx.py`` documents it). A fork that changes
the network but not that declaration would ship a different driver than it trained. So the script
also stores ``probe_obs`` (fixed observations) and ``probe_actions`` (what its own network answers
for them); the exporter recomputes the actions from the declaration and refuses any mismatch.
"""

from __future__ import annotations

import numpy as np

CHECKPOINT_FORMAT = "rbxenv-checkpoint-v1"
PROBE_SIZE = 256


def probe_observations(obs_mean: np.ndarray, obs_var: np.ndarray, size: int = PROBE_SIZE, seed: int = 0) -> np.ndarray:
    """``size`` float32 observations the policy is checked on: half drawn around the running
    observation statistics (the inputs a driver sees, out to where normalisation clips), half
    uniform in [-1, 1] (every feature's raw range). Fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    mean, std = np.asarray(obs_mean, np.float64), np.sqrt(np.asarray(obs_var, np.float64))
    near = rng.normal(mean, 2.0 * std + 0.1, (size - size // 2, mean.shape[0]))
    wide = rng.uniform(-1.0, 1.0, (size // 2, mean.shape[0]))
    return np.concatenate([near, wide]).astype(np.float32)
