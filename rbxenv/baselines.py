"""Hand-written drivers that see only what a policy sees (the stacked observation): yardsticks.

- ``ray_follower``: full throttle, steer toward the side with more free ray distance. Two numbers,
  no training: a learned driver that cannot beat it on tracks it has never seen has not learned
  much (tests/test_ppo.py, tests/test_sac.py, bench/heldout_eval.py).
- ``parked`` (no input at all: the car ends stuck) and ``into_the_wall`` (full throttle, full right
  lock: it crashes): drivers whose tallies are known, which the metric tests drive through every
  evaluation (rbxenv.drive, the scripts' ``evaluate``, bench/learning.py).

Each takes observations ``[n, frame_stack * obs_size]`` (oldest frame first; a frame is ``num_rays``
rays, nitro fuel, forward speed, is-reverse) and returns float32 actions ``[n, 3]`` (throttle,
steering +1 = right, nitro). ``linear`` gives the same drivers as one affine map, which is how
tests export them to ONNX.
"""

from __future__ import annotations

import numpy as np

RAY_GAIN = 8.0  # steering per unit of (mean right ray - mean left ray)
RAY_THROTTLE = 1.0


def linear(name: str, frame_stack: int = 4, obs_size: int = 13, num_rays: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(W [frame_stack * obs_size, 3], b [3]) with actions = clip(obs @ W + b, -1, 1) for driver ``name``."""
    w, b = np.zeros((frame_stack * obs_size, 3), np.float32), np.zeros(3, np.float32)
    if name == "ray_follower":
        last = (frame_stack - 1) * obs_size  # the newest frame; rays -90° (left) .. +90° (right)
        half = num_rays // 2
        w[last : last + half, 1] = -RAY_GAIN / half
        w[last + num_rays - half : last + num_rays, 1] = RAY_GAIN / half
        b[0] = RAY_THROTTLE
    elif name == "into_the_wall":
        b[:2] = 1.0
    elif name != "parked":
        raise ValueError(f"unknown driver {name!r}: ray_follower, into_the_wall or parked")
    return w, b


def driver(name: str, frame_stack: int = 4, obs_size: int = 13, num_rays: int = 10):
    """The driver ``name`` as a function obs -> actions."""
    w, b = linear(name, frame_stack, obs_size, num_rays)

    def act(obs: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(obs, np.float32) @ w + b, -1.0, 1.0).astype(np.float32)

    return act
