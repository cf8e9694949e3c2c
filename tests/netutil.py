"""Loopback port helpers shared by the tests that start servers and games."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Nothing listens there any more and a new trainer could bind it (TIME_WAIT is fine, as for asyncio)."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# What a healed crash leaves in a process's output: the bridge's and the simulator's internal-error
# lines, a handler that died (websockets), a lost game the env reconnected, a traceback.
CRASH_MARKS = ("internal error", "internal_error", "connection handler failed", "the game disconnected", "Traceback")


def assert_clean_output(*outputs: str) -> None:
    """A subprocess (a training script, ``python -m rbxenv.sim``) met no hidden crash: none of CRASH_MARKS."""
    for text in outputs:
        for line in text.splitlines():
            assert not any(mark.lower() in line.lower() for mark in CRASH_MARKS), f"hidden crash: {line[:300]}"
