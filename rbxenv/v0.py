"""Protocol version 0 on the trainer's side: what a game that never says hello needs.

The original Smart Racing Sim AI place sends no handshake: the trainer takes it for a v0 game
(PROTOCOL.md §1). It reads commands only in their object form (``protocol.encode_v0_command``),
closes a socket that stays silent for 20 s (``keep_alive``), says its observation width nowhere
but in its packets (``v0_spec``), and restarts an ended car in the same tick, so that one entry
ends an episode and begins the next (``split_restarts``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from rbxenv import protocol
from rbxenv.protocol import V0_GAME, GameSpec, ObsBatch


def v0_spec(obs_size: int) -> GameSpec:
    """A v0 game whose packets carry ``obs_size`` floats: rays, nitro, velocity, is-reverse (§2)."""
    return replace(V0_GAME, obs_size=obs_size, num_rays=max(obs_size - 3, 0))


def split_restarts(batch: ObsBatch, previous_obs: np.ndarray) -> None:
    """A v0 game's entry that says terminated/truncated ends one episode and is the first
    observation of the next (the game restarted the car in that tick): report it as autoreset
    does, the new episode's observation as ``reset_obs`` and as the episode's final observation
    its ``last_observation`` when the game sent one, else the car's previous frame (the best
    there is: the v0 game sent nothing closer to the ending)."""
    ended = batch.terminated | batch.truncated
    if not ended.any():
        return
    batch.restarted = ended
    batch.reset_obs = np.where(ended[:, None], batch.obs, np.float32(0.0))
    final = previous_obs[ended]  # (fancy indexing: a copy)
    if batch.has_last is not None:
        told = batch.has_last[ended]
        final[told] = batch.last_obs[ended][told]
    batch.obs = batch.obs.copy()
    batch.obs[ended] = final


async def keep_alive(outbox: asyncio.Queue, quiet_for: Callable[[], float], interval: float, stats: Counter) -> None:
    """PING whenever nothing went out for ``interval`` s (``quiet_for()``: seconds since the last
    frame), as the original project's trainer did every 5 s: the game closes a socket that stays
    silent for 20 s. Runs until cancelled."""
    ping = protocol.encode_v0_command("PING")
    while True:
        await asyncio.sleep(max(0.05, interval - quiet_for()))
        if quiet_for() >= interval and outbox.empty():
            outbox.put_nowait(ping)
            stats["pings"] += 1
