"""A crash-heavy rollout of the vector env, shared by the autoreset tests over different games."""

from __future__ import annotations

import numpy as np


def crash_rollout(env, autoreset: bool, steps: int, infos: bool = False) -> tuple[list, int, int]:
    """``steps`` steps of 6 cars at full throttle, most of them steering into a wall sooner or
    later, with the game restarting ended cars itself (``autoreset``) or the env resetting them.

    Returns everything the env handed out (observations, rewards, flags, final observations,
    episode returns; with ``infos`` every step's whole infos), the number of steps in which a car ended with one frame sent (no
    RESET_AGENTS round trip), and the number of episodes that ended."""
    env.session.autoreset = autoreset
    obs, _ = env.reset(seed=3)
    rng = np.random.default_rng(0)
    steer = np.linspace(-0.9, 0.9, 6)
    out, lone_frames, ended = [obs], 0, 0
    bridge = env.session.bridge  # None in process: no frames to count
    for _ in range(steps):
        sent = bridge.stats["frames_out"] if bridge else 0
        actions = rng.uniform(-1, 1, (6, 3)).astype(np.float32)
        actions[:, 0], actions[:, 1] = 1.0, np.clip(0.3 * actions[:, 1] + steer, -1, 1)
        obs, reward, term, trunc, info = env.step(actions)
        done = term | trunc
        ended += int(done.sum())
        lone_frames += bridge is not None and bridge.stats["frames_out"] - sent == 1 and done.any()
        out += [obs, reward, term, trunc, info if infos else info.get("final_obs"), info.get("episode", {}).get("r")]
    return out, lone_frames, ended


def assert_autoreset_changes_nothing(auto: tuple[list, int, int], manual: tuple[list, int, int]) -> None:
    """The rollouts with and without autoreset are the same, and only the first saved round trips."""
    (auto_steps, auto_lone, ended), (manual_steps, manual_lone, _) = auto, manual
    assert ended > 10, "random driving crashes cars"
    assert auto_lone > 5 and manual_lone == 0, "restarted by the game: no RESET_AGENTS round trip"
    assert len(auto_steps) == len(manual_steps)
    for a, b in zip(auto_steps, manual_steps, strict=True):
        np.testing.assert_array_equal(a, b)
