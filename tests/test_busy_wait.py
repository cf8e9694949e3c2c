"""rbxenv.busy_wait: event loops that poll briefly before sleeping, and who uses them."""

from __future__ import annotations

import asyncio
import selectors
import socket
import threading
import time

import pytest

from rbxenv import busy_wait
from rbxenv.session import GameSession

pytestmark = pytest.mark.timeout(30)


def test_spinning_selector_spins_then_sleeps_and_returns_what_arrives():
    a, b = socket.socketpair()
    with a, b, busy_wait.SpinningSelector(0.05) as selector:
        selector.register(a, selectors.EVENT_READ)
        t0, cpu0 = time.perf_counter(), time.process_time()
        assert selector.select(0.2) == []  # spins 50 ms (on the CPU), then sleeps out the rest
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        assert 0.18 < wall < 1.0
        assert 0.02 < cpu < 0.15, f"spun {cpu:.3f} s of CPU in a 0.2 s wait with a 50 ms spin"
        assert selector.select(0) == []
        # a message that comes during the spin is returned at once
        sender = threading.Timer(0.01, b.send, (b"x",))
        t0 = time.perf_counter()
        sender.start()
        assert [key.fileobj for key, _ in selector.select(None)] == [a]
        assert time.perf_counter() - t0 < 0.04
        sender.join()
        a.recv(1)
        t0 = time.perf_counter()
        assert selector.select(0.01) == []
        assert time.perf_counter() - t0 < 0.04  # the spin never outlasts the timeout


def test_a_spinning_event_loop_serves_a_round_trip():
    async def echo_once() -> bytes:
        async def handle(reader, writer):
            writer.write(await reader.readexactly(4))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        answer = await reader.readexactly(4)
        writer.close()
        server.close()
        await server.wait_closed()
        return answer

    loop = busy_wait.new_event_loop(1e-3)
    try:
        assert isinstance(loop._selector, busy_wait.SpinningSelector)
        assert loop.run_until_complete(echo_once()) == b"ping"
    finally:
        loop.close()


def test_no_spinning_on_one_core(monkeypatch):
    monkeypatch.setattr(busy_wait, "_cpu_quota", lambda: float("inf"))
    monkeypatch.setattr(busy_wait.os, "sched_getaffinity", lambda pid: {0})
    assert busy_wait.default_spin() == 0.0
    monkeypatch.setattr(busy_wait.os, "sched_getaffinity", lambda pid: {0, 1})
    assert busy_wait.default_spin() == busy_wait.SPIN
    monkeypatch.setattr(busy_wait, "_cpu_quota", lambda: 1.5)  # a container limited to 1.5 CPUs
    assert busy_wait.default_spin() == 0.0


def test_cpu_quota_of_a_container(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert busy_wait._cpu_quota(str(cpu_max)) == 1.5
    cpu_max.write_text("max 100000\n")
    assert busy_wait._cpu_quota(str(cpu_max)) == float("inf")
    assert busy_wait._cpu_quota(str(tmp_path / "missing")) == float("inf")


def test_the_session_spins_only_with_its_subprocess_simulator():
    assert GameSession(sim=None).busy_wait == 0.0  # Roblox Studio keeps its CPU
    assert GameSession(sim=None, busy_wait=2e-3).bridge.busy_wait == 2e-3
    session = GameSession(sim="subprocess", busy_wait=5e-4)
    try:
        session.open()
        assert session.process.args[-2:] == ["--busy-wait-us", "500"]
        assert isinstance(session.bridge._loop._selector, busy_wait.SpinningSelector)
    finally:
        session.close()
    assert GameSession(sim="subprocess").busy_wait == busy_wait.default_spin()
    assert GameSession().busy_wait == 0.0 and GameSession().bridge is None  # in process: no socket to poll
