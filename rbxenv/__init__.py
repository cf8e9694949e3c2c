"""rbxenv: train AI drivers for Roblox racing games with reinforcement learning.

The game (Roblox, or the headless simulator in ``rbxenv.sim``) and the trainer talk over one
WebSocket (PROTOCOL.md). ``make_vec_env`` and ``make_parallel_env`` wrap that as Gymnasium and
PettingZoo envs; by default they run the headless simulator in this process (``sim="inprocess"``:
no socket), and ``sim="subprocess"`` runs it as a game over the protocol.
"""

from importlib import import_module

# Names load on first use (PEP 562): ``from rbxenv import cli`` (every command's flag checks) then
# costs no numba or websockets import, so a refused flag answers at once.
_HOME = {
    "BridgeClosed": "rbxenv.bridge",
    "TrainingBridge": "rbxenv.bridge",
    "HELDOUT_TRACK_SEEDS": "rbxenv.envs",
    "TRAIN_TRACK_SEEDS": "rbxenv.envs",
    "RacingParallelEnv": "rbxenv.envs",
    "RacingVectorEnv": "rbxenv.envs",
    "make_parallel_env": "rbxenv.envs",
    "make_vec_env": "rbxenv.envs",
    "ProtocolError": "rbxenv.protocol",
}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'rbxenv' has no attribute {name!r}")
    value = getattr(import_module(_HOME[name]), name)
    globals()[name] = value
    return value


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
