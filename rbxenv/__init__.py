"""rbxenv: train AI drivers for Roblox racing games with reinforcement learning.

The game (Roblox, or the headless simulator in ``rbxenv.sim``) and the trainer talk over one
WebSocket (PROTOCOL.md). ``make_vec_env`` and ``make_parallel_env`` wrap that as Gymnasium and
PettingZoo envs; by default they run the headless simulator in this process (``sim="inprocess"``:
no socket), and ``sim="subprocess"`` runs it as a game over the protocol.
"""

from rbxenv.bridge import BridgeClosed, TrainingBridge
from rbxenv.envs import (
    HELDOUT_TRACK_SEEDS,
    TRAIN_TRACK_SEEDS,
    RacingParallelEnv,
    RacingVectorEnv,
    make_parallel_env,
    make_vec_env,
)
from rbxenv.protocol import ProtocolError

__all__ = [
    "BridgeClosed",
    "HELDOUT_TRACK_SEEDS",
    "ProtocolError",
    "RacingParallelEnv",
    "RacingVectorEnv",
    "TRAIN_TRACK_SEEDS",
    "TrainingBridge",
    "make_parallel_env",
    "make_vec_env",
]
