"""Event loops that spin briefly before they sleep: the lockstep round trip without wake-up latency.

In lockstep the trainer and the game wait for each other a few hundred microseconds per step. A
CPU left idle that long is put to sleep (a virtual CPU is handed back to the host), and waking it
again when the answer arrives costs about as much as the round trip itself. Polling the sockets
for a moment first keeps both processes awake for the next message; after ``spin`` seconds
without one the loop sleeps as usual, so an idle trainer or game does not burn a core.
``python bench/env_speed.py --busy-wait-us 0`` measures the difference (BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import os
import selectors
import time

SPIN = 1e-3  # seconds: longer than a lockstep step's wait, short enough to cost nothing when idle


def default_spin() -> float:
    """``SPIN`` where a second core can run the other process meanwhile, else 0: on one core the
    spinning side would only delay the one it waits for."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return SPIN if min(cores, _cpu_quota()) >= 2 else 0.0


def _cpu_quota(path: str = "/sys/fs/cgroup/cpu.max") -> float:
    """The CPUs a container may use (cgroup v2 ``cpu.max``: quota and period), inf when unlimited."""
    try:
        with open(path) as f:
            quota, period = f.read().split()[:2]
        return float("inf") if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return float("inf")


class SpinningSelector(selectors.DefaultSelector):
    """A selector whose blocking ``select`` polls for ``spin`` seconds before it sleeps."""

    def __init__(self, spin: float):
        super().__init__()
        self.spin = spin

    def select(self, timeout: float | None = None):
        ready = super().select(0)
        if ready or timeout is not None and timeout <= 0:
            return ready
        spin = self.spin if timeout is None else min(self.spin, timeout)
        deadline = time.perf_counter() + spin
        while time.perf_counter() < deadline:
            ready = super().select(0)
            if ready:
                return ready
        return super().select(None if timeout is None else timeout - spin)


def new_event_loop(spin: float) -> asyncio.AbstractEventLoop:
    """An asyncio event loop that spins ``spin`` seconds before sleeping (0: the default loop)."""
    if spin <= 0:
        return asyncio.new_event_loop()
    return asyncio.SelectorEventLoop(SpinningSelector(spin))
