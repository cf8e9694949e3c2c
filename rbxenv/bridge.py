"""The trainer's end of the WebSocket: server, DataBridge and the TrainingBridge facade.

Threads: the WebSocket server's asyncio loop runs in a background thread; training code calls the
blocking TrainingBridge methods from its own thread. Observations flow into per-agent slots of the
DataBridge, and the training thread blocks on its Condition until they are there; commands flow out
through an asyncio queue (``loop.call_soon_threadsafe``), one frame each.

    bridge = TrainingBridge(port=8000).start()
    game = bridge.wait_for_game(timeout=60)          # the GameSpec from its hello, or v0 defaults
    bridge.spawn_agents("a", ["car_0_env_a"])
    first = bridge.get_observation("car_0_env_a")   # {"obs", "reward", "terminated", "truncated", "info"}
    bridge.send_action_batch({"a": {"car_0_env_a": [1.0, 0.0, 0.0]}})
    batch = bridge.get_observations(["car_0_env_a"])

A lost game raises BridgeClosed from whatever call is waiting; it never hangs silently.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from rbxenv import protocol
from rbxenv.protocol import V0_GAME, GameSpec, Hello, ObsBatch, ProtocolError

log = logging.getLogger("rbxenv.bridge")

HARD_FRAME_LIMIT = 16 * protocol.MAX_FRAME_BYTES  # beyond this websockets closes the connection (1009)


class BridgeClosed(RuntimeError):
    """The game went away (or never came) while the trainer needed it."""


_MODEL_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def model_id_of(path: str) -> str | None:
    """The model id of a v0 game's URL path ``/ws/<modelId>`` (it names the run), or None."""
    parts = [unquote(part) for part in urlparse(path).path.split("/") if part]
    if len(parts) == 2 and parts[0] == "ws" and _MODEL_ID.fullmatch(parts[1]) and parts[1] not in (".", ".."):
        return parts[1]
    return None


def v0_spec(obs_size: int) -> GameSpec:
    """A v0 game whose packets carry ``obs_size`` floats: rays, nitro, velocity, is-reverse (§2)."""
    return replace(V0_GAME, obs_size=obs_size, num_rays=max(obs_size - 3, 0))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Observations:
    """What ``get_observations`` returns: row k belongs to ``agent_ids[k]``."""

    agent_ids: list[str]
    obs: np.ndarray  # (n, obs_size) float32
    reward: np.ndarray  # (n,) float64: sum of all rewards reported since the last read
    terminated: np.ndarray  # (n,) bool
    truncated: np.ndarray  # (n,) bool
    info: dict[str, np.ndarray]  # one column per protocol.INFO_KEYS (NaN / None where not reported)
    has_info: np.ndarray  # (n,) bool: the game sent info for this agent
    # The game restarted the agent as its episode ended (autoreset; spawn_agents(autoreset=True))
    # and reset_obs is its first observation of the next episode (zeros where not restarted).
    restarted: np.ndarray | None = None  # (n,) bool
    reset_obs: np.ndarray | None = None  # (n, obs_size) float32

    @property
    def infos(self) -> list[dict]:
        """One dict per agent ({} where the game sent no info): the per-agent view of ``info``."""
        return [d if h else {} for d, h in zip(protocol.info_dicts(self.info), self.has_info.tolist(), strict=True)]


class DataBridge:
    """Observation slots shared by the network thread and the training thread.

    One row per agent in flat arrays (its latest observation plus what accumulated since the
    trainer last read it), so that a packet is stored and a step's answer handed over with a few
    array operations for all cars, not a Python loop per car. One Condition guards them.
    """

    def __init__(self):
        self.cond = threading.Condition()
        self.rows: dict[str, int] = {}  # agent id -> row of the arrays below
        self._free: list[int] = []  # rows not in use
        self._c: dict[str, np.ndarray] = {}
        self._alloc(0, 0)
        self._selected: tuple[list[str], np.ndarray | slice] | None = None  # select()'s last answer
        self.lost: str | None = None  # why the game is gone, when it is
        self.fatal: str | None = None  # why the run cannot go on with this game (raised before ``lost``)
        # A v0 game restarts an ended car itself in the same tick: its entry carries the ending
        # AND the first observation of the next episode (see put_batch).
        self.self_restart = False
        self.stats: Counter[str] = Counter()
        # time.monotonic() when the observation that completed the latest wait() arrived (latency
        # figures: bench/realtime_load.py); one clock read per packet, one max() per wait
        self.ready_at = 0.0

    def _alloc(self, capacity: int, obs_size: int) -> None:
        """(Re)allocate the row arrays, keeping what the existing rows hold."""
        new = {
            "obs": np.zeros((capacity, obs_size), np.float32),
            "reward": np.zeros(capacity),  # summed since the last read
            "terminated": np.zeros(capacity, bool),
            "truncated": np.zeros(capacity, bool),
            "fresh": np.zeros(capacity, bool),  # an observation answering the latest command is waiting
            "fresh_at": np.zeros(capacity),  # time.monotonic() when it arrived
            "expected_tick": np.full(capacity, -1, np.int64),
            "episode_tick": np.full(capacity, -1, np.int64),  # tick of the spawn/reset that began the episode
            "has_info": np.zeros(capacity, bool),
            "info_numbers": np.full((len(protocol.INFO_NUMBERS), capacity), np.nan),  # a row per INFO_NUMBERS key
            "info_collided": np.zeros(capacity, bool),
            "info_cause": np.full(capacity, None, object),
            "restarted": np.zeros(capacity, bool),  # autoreset: restarted by the game as its episode ended
            "reset_obs": np.zeros((capacity, obs_size), np.float32),  # ... and its first observation since
        }
        for key, old in self._c.items():
            if key == "info_numbers":
                new[key][:, : old.shape[1]] = old
            elif new[key].shape[1:] == old.shape[1:]:  # (observations of another width are dropped)
                new[key][: len(old)] = old
        self._free += range(capacity - 1, len(self._c.get("reward", ())) - 1, -1)
        self._c = new

    def _drain(self, rows: np.ndarray) -> None:
        """Forget what accumulated (handed over, or cleared): the next packets start afresh."""
        c = self._c
        c["reward"][rows] = 0.0
        c["terminated"][rows] = c["truncated"][rows] = c["fresh"][rows] = c["has_info"][rows] = False
        c["restarted"][rows] = False

    def ready(self, rows: np.ndarray | slice) -> bool:
        """Every agent of these rows (``select``) has an observation waiting."""
        with self.cond:
            return bool(self._c["fresh"][rows].all())

    def rows_of(self, agent_ids: Sequence[str]) -> np.ndarray:
        """The rows of these agents (stable while they are known)."""
        try:
            return np.array([self.rows[aid] for aid in agent_ids], np.int64)
        except KeyError as err:
            raise KeyError(f"agent {err.args[0]} was never spawned through this bridge") from None

    def select(self, agent_ids: Sequence[str]) -> np.ndarray | slice:
        """``rows_of``, as a slice when the rows are consecutive (cars spawned together are). Every
        step asks for the same cars, so the last answer is kept: a step indexes its rows with a
        slice, not a lookup per car."""
        if type(agent_ids) is not list:  # (a tuple or an array of ids: compared as a list)
            agent_ids = list(agent_ids)
        with self.cond:
            selected = self._selected
            if selected is not None and selected[0] == agent_ids:
                return selected[1]
            rows = self.rows_of(agent_ids)
            first = int(rows[0]) if len(rows) else 0
            consecutive = np.array_equal(rows, np.arange(first, first + len(rows)))
            selection = slice(first, first + len(rows)) if consecutive else rows
            self._selected = (list(agent_ids), selection)
            return selection

    def expect_answers(self, agent_ids: Iterable[str], tick: int, restart: bool = False) -> None:
        """Make agents known and wait for an answer to the command sent with ``tick``.

        ``restart`` (spawn, reset): whatever was pending belongs to the episode that just ended.
        """
        with self.cond:
            c = self._c
            agent_ids = list(agent_ids)
            known = self._selected is not None and self._selected[0] == agent_ids  # the cars of every step
            new = [] if known else [aid for aid in agent_ids if aid not in self.rows]
            if len(new) > len(self._free):
                self._alloc(max(64, 2 * (len(self.rows) + len(new))), c["obs"].shape[1])
                c = self._c
            for aid in new:
                self.rows[aid] = self._free.pop()
            if new:
                self._selected = None
            rows = self.select(agent_ids)
            if restart or new:
                restarted = rows if restart else self.rows_of(new)
                self._drain(restarted)
                c["episode_tick"][restarted] = tick
            # An ending already received stays deliverable: a parked car sends nothing more.
            c["fresh"][rows] = c["terminated"][rows] | c["truncated"][rows]
            c["expected_tick"][rows] = tick

    def forget(self, agent_ids: Iterable[str]) -> None:
        with self.cond:
            self._selected = None
            for aid in agent_ids:
                row = self.rows.pop(aid, None)
                if row is not None:
                    self._drain(row)
                    self._free.append(row)
            self.cond.notify_all()

    def put_batch(self, batch: ObsBatch) -> list[str]:
        """Store a packet (network thread). Returns the agent ids nobody spawned (ignored)."""
        now = time.monotonic()
        with self.cond:
            c = self._c
            if batch.obs.shape[1] != c["obs"].shape[1]:  # the first packet of a game tells the width
                self._alloc(len(c["reward"]), batch.obs.shape[1])
                c = self._c
            self.stats["obs_packets"] += 1
            rows = self._current(batch)
            unknown: list[str] = []
            if rows is None:
                rows, batch, unknown = self._sift(batch)
            else:
                c["reward"][rows] += batch.reward
                c["terminated"][rows] |= batch.terminated
                c["truncated"][rows] |= batch.truncated
            if self.self_restart and batch.tick is None:
                self._split_restarts(batch, rows)
            c["obs"][rows] = batch.obs
            if batch.has_info.any():
                told = rows if batch.has_info.all() else _rows(rows)[batch.has_info]
                info = batch.info
                c["has_info"][told] = True
                numbers = np.array([info[key] for key in protocol.INFO_NUMBERS])
                c["info_numbers"][:, told] = numbers if told is rows else numbers[:, batch.has_info]
                c["info_collided"][told] = info["collided"][batch.has_info]
                c["info_cause"][told] = info["cause"][batch.has_info]
            if batch.restarted is not None and batch.restarted.any():
                restarted = _rows(rows)[batch.restarted]
                c["restarted"][restarted] = True
                c["reset_obs"][restarted] = batch.reset_obs[batch.restarted]
                if batch.tick is not None:
                    # older packets belong to the episode that ended (and stay below expected_tick)
                    c["episode_tick"][restarted] = batch.tick
                    c["expected_tick"][restarted] = np.maximum(c["expected_tick"][restarted], batch.tick)
            c["fresh_at"][rows] = np.where(c["fresh"][rows], c["fresh_at"][rows], now)
            c["fresh"][rows] = True
            self.cond.notify_all()
        return unknown

    def _split_restarts(self, batch: ObsBatch, rows: np.ndarray | slice) -> None:
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
        final = self._c["obs"][rows][ended]  # (fancy indexing: a copy)
        if batch.has_last is not None:
            told = batch.has_last[ended]
            final[told] = batch.last_obs[ended][told]
        batch.obs = batch.obs.copy()
        batch.obs[ended] = final

    def _current(self, batch: ObsBatch) -> np.ndarray | slice | None:
        """The rows of a packet that is the plain answer to the latest command (every car known,
        none from an old episode, none stale), or None: then ``_sift`` sorts it out."""
        if not batch.agent_ids:
            return None
        try:
            rows = self.select(batch.agent_ids)
        except KeyError:
            return None
        # expected_tick >= episode_tick (track() sets both, to the same tick on a restart)
        if batch.tick is not None and not batch.tick >= self._c["expected_tick"][rows].max():
            return None
        if self._c["restarted"][rows].any():  # a restart not read yet: see _sift
            return None
        return rows

    def _sift(self, batch: ObsBatch) -> tuple[np.ndarray, ObsBatch, list[str]]:
        """A packet with unknown agents, old episodes or stale answers: accumulate the rewards and
        endings that count, and return the rows and part of the packet to deliver, and the unknown."""
        c = self._c
        get = self.rows.get
        rows = np.array([get(aid, -1) for aid in batch.agent_ids], np.int64)
        unknown = [aid for aid, row in zip(batch.agent_ids, rows.tolist(), strict=True) if row < 0]
        rows, batch = _keep(rows, batch, rows >= 0)
        if batch.tick is not None:
            # sent before the game applied the spawn/reset: the episode it belongs to is over
            old = batch.tick < c["episode_tick"][rows]
            if old.any():
                self.stats["old_episode_packets"] += int(old.sum())
                rows, batch = _keep(rows, batch, ~old)
        # After an autoreset the trainer reads the ending first; the next episode's packets that come
        # before that are dropped, as a parked car would send none (one slot holds one episode).
        after_restart = c["restarted"][rows]
        if after_restart.any():
            self.stats["after_restart_packets"] += int(after_restart.sum())
            rows, batch = _keep(rows, batch, ~after_restart)
        c["reward"][rows] += batch.reward
        c["terminated"][rows] |= batch.terminated
        c["truncated"][rows] |= batch.truncated
        if batch.tick is not None:
            # the answer to the latest command (a stale one only counts its reward), or an ending
            deliver = (batch.tick >= c["expected_tick"][rows]) | batch.terminated | batch.truncated
            if not deliver.all():
                self.stats["stale_packets"] += int(len(deliver) - deliver.sum())
                rows, batch = _keep(rows, batch, deliver)
        return rows, batch, unknown

    def wait(self, agent_ids: Sequence[str], timeout: float) -> Observations:
        """Block until every agent has a fresh observation, then hand them over (and reset)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if self.fatal is not None:
                    raise BridgeClosed(self.fatal)
                if self.lost is not None:
                    raise BridgeClosed(self.lost)
                rows = self.select(agent_ids)
                ready = self._c["fresh"][rows]
                if ready.all():
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    missing = [aid for aid, ok in zip(agent_ids, ready, strict=True) if not ok]
                    shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
                    raise TimeoutError(
                        f"no observation for {len(missing)} of {len(agent_ids)} agents ({shown}) within "
                        f"{timeout:g} s: is the game paused, frozen, or not spawning these agents?"
                    )
                self.cond.wait(remaining)
            c = self._c
            self.ready_at = float(c["fresh_at"][rows].max()) if len(agent_ids) else time.monotonic()
            take = _copy if type(rows) is slice else _same  # a slice gives views: the slots change
            info = dict(zip(protocol.INFO_NUMBERS, take(c["info_numbers"][:, rows]), strict=True))
            info["collided"], info["cause"] = take(c["info_collided"][rows]), take(c["info_cause"][rows])
            out = Observations(
                list(agent_ids),
                take(c["obs"][rows]),
                take(c["reward"][rows]),
                take(c["terminated"][rows]),
                take(c["truncated"][rows]),
                info,
                take(c["has_info"][rows]),
                take(c["restarted"][rows]),
                take(c["reset_obs"][rows]),
            )
            self._drain(rows)
            return out


def _rows(rows: np.ndarray | slice) -> np.ndarray:
    return np.arange(rows.start, rows.stop) if type(rows) is slice else rows


def _copy(a: np.ndarray) -> np.ndarray:
    return a.copy()


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _keep(rows: np.ndarray, batch: ObsBatch, keep: np.ndarray) -> tuple[np.ndarray, ObsBatch]:
    """The rows and the part of a packet where ``keep`` is True."""
    return (rows, batch) if keep.all() else (rows[keep], _rows_of_batch(batch, keep))


def _rows_of_batch(batch: ObsBatch, keep: np.ndarray) -> ObsBatch:
    """The part of a packet for the agents where ``keep`` is True."""
    return ObsBatch(
        batch.tick,
        [aid for aid, k in zip(batch.agent_ids, keep.tolist(), strict=True) if k],
        batch.obs[keep],
        batch.reward[keep],
        batch.terminated[keep],
        batch.truncated[keep],
        {key: column[keep] for key, column in batch.info.items()},
        batch.has_info[keep],
        None if batch.restarted is None else batch.restarted[keep],
        None if batch.reset_obs is None else batch.reset_obs[keep],
        None if batch.last_obs is None else batch.last_obs[keep],
        None if batch.has_last is None else batch.has_last[keep],
    )


class TrainingBridge:
    """The original project's TrainingBridge: a WebSocket server plus blocking, documented methods.

    Args:
        host: interface to bind; anything but loopback requires ``token``.
        port: TCP port; 0 picks a free one (see ``port`` after ``start()``).
        token: shared secret the game must present (``hello.token`` or ``?token=`` in the URL).
            Defaults to the RBXENV_TOKEN environment variable.
        handshake_timeout: seconds to wait for a ``hello`` before treating the game as a v0 game.
        obs_timeout: default seconds ``get_observation(s)`` waits before raising TimeoutError.
        ping_interval: a v0 game (no hello) closes its socket after 20 s without a message, so
            it gets a PING whenever nothing else went out for this many seconds, from the network
            thread: also while the training thread is busy (updates, evaluation, checkpoints).

    Bound to a loopback address (the default) or "localhost", the trainer listens on both
    127.0.0.1 and ::1 (same port): "localhost" in a game's URL may resolve to either.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = protocol.DEFAULT_PORT,
        token: str | None = None,
        *,
        handshake_timeout: float = 1.0,
        obs_timeout: float = 10.0,
        ping_interval: float = 2.0,
    ):
        token = token if token is not None else os.environ.get("RBXENV_TOKEN") or None
        if not is_loopback(host) and not token:
            raise ValueError(
                f"binding {host} exposes the trainer beyond this machine: set a shared token "
                "(--token or the RBXENV_TOKEN environment variable), or bind 127.0.0.1"
            )
        self.host, self.port, self._token = host, port, token
        self.handshake_timeout, self.obs_timeout = handshake_timeout, obs_timeout
        self.ping_interval = ping_interval
        self.data = DataBridge()
        self.game: GameSpec | None = None
        # The model id of the game's URL path /ws/<modelId> (the original project's places dial one), or None.
        self.model_id: str | None = None
        # The observation width the trainer's spaces are built on: from the hello, or learned from
        # a v0 game's first agent entry; a game that changes it mid-run cannot go on.
        self._obs_width: int | None = None
        self._sent_at = 0.0  # time.monotonic() of the latest frame written (PING keeps a v0 game alive)
        self._servers: list = []
        self._tick = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conn: ServerConnection | None = None
        self._outbox: asyncio.Queue | None = None
        self._attached = threading.Event()
        self._bad = protocol.RateLimitedLog(log, "bad frame from game")
        self._game_errors = protocol.RateLimitedLog(log, "game reported an error")
        self._game_internal = protocol.RateLimitedLog(log, "internal error in the game (a bug on its side)")
        self._closing = False
        self.action_sent_at = 0.0  # time.monotonic() when the latest actions were handed to the network thread

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> TrainingBridge:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._servers = loop.run_until_complete(self._serve())
            except BaseException as err:  # noqa: BLE001 - reported to the starting thread
                failure.append(err)
                self._loop = None  # nothing to close()
                loop.close()
                ready.set()
                return
            self.port = self._servers[0].sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()  # until close()
            for server in self._servers:
                server.close()
                loop.run_until_complete(server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=run, name="rbxenv-bridge", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            err = failure[0]
            if isinstance(err, OSError):
                raise OSError(
                    f"cannot listen on {self.host}:{self.port} ({err.strerror}); "
                    "is another trainer running? pick another --port"
                ) from err
            raise err
        log.info("trainer listening on %s", self.url)
        return self

    async def _serve(self) -> list:
        def listen(host: str, port: int):
            return serve(
                self._handle,
                host,
                port,
                max_size=HARD_FRAME_LIMIT,
                compression=None,  # loopback: deflate only costs CPU
                ping_interval=20,
                ping_timeout=60,
            )

        loopbacks = {"localhost": ("127.0.0.1", "::1"), "127.0.0.1": ("127.0.0.1", "::1"), "::1": ("::1", "127.0.0.1")}
        if self.host not in loopbacks:
            return [await listen(self.host, self.port)]
        first, second = loopbacks[self.host]
        servers = [await listen(first, self.port)]
        try:  # the other loopback on the same port, where the machine has it (no IPv6: only 127.0.0.1)
            servers.append(await listen(second, servers[0].sockets[0].getsockname()[1]))
        except OSError as err:
            log.debug("not listening on %s too: %s", second, err)
        return servers

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    @property
    def token(self) -> str | None:
        return self._token

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def stats(self) -> Counter[str]:
        return self.data.stats

    def wait_for_game(self, timeout: float | None = None) -> GameSpec:
        """Block until a game is attached and its handshake (or the lack of one) is settled.

        After a game disconnected, every call raises BridgeClosed until this is called again and
        returns: the caller takes the new game knowingly (and respawns its venvs).
        """
        if not self._attached.wait(timeout):
            raise BridgeClosed(
                f"no game connected to {self.url} within {timeout:g} s: start the game "
                "(python -m rbxenv.sim --url ..., or press Play in Roblox Studio) and point it at this URL "
                f"(a Smart Racing Sim AI place: ws://localhost:{self.port}/ws/<modelId>)"
            )
        assert self.game is not None
        with self.data.cond:
            self.data.lost = None  # the caller has the (new) game now; a previous one is forgotten
        return self.game

    def close(self) -> None:
        """Stop the server and the network thread (idempotent)."""
        if self._loop is None or self._closing:
            return
        self._closing = True

        async def shutdown() -> None:
            if self._conn is not None:
                await self._conn.close(1001, "trainer shutting down")

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=2)
        except Exception:  # noqa: BLE001 - best effort: the game may be gone already
            pass
        try:
            self._loop.call_soon_threadsafe(self._loop.stop)
        except RuntimeError:  # the background thread already closed the loop
            pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self.data.cond:
            self.data.lost = self.data.lost or "the trainer closed the bridge"
            self.data.cond.notify_all()

    def __enter__(self) -> TrainingBridge:
        return self.start() if self._loop is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- network thread

    async def _handle(self, conn: ServerConnection) -> None:
        if self._conn is not None:
            # One game per trainer: a second one would fight over the same agents.
            await conn.close(1013, "another game is already attached to this trainer; stop it first")
            self.data.stats["rejected_second_game"] += 1
            return
        query = parse_qs(urlparse(conn.request.path).query) if conn.request else {}
        first: str | bytes | None = None
        try:
            first = await asyncio.wait_for(conn.recv(), self.handshake_timeout)
        except TimeoutError:
            pass
        except ConnectionClosed:
            return
        game = V0_GAME
        token = (query.get("token") or [None])[0]
        first_is_hello = first is not None and _is_hello(first)
        if first_is_hello:
            try:
                msg = protocol.decode_game_message(first, V0_GAME.obs_size)
            except ProtocolError as err:
                await conn.send(protocol.encode_error(err.code, str(err)).decode())
                if err.code == "unsupported_version":
                    await conn.close(1002, str(err)[:120])
                    return
                msg = None
            if isinstance(msg, Hello):
                game, token = msg.spec, msg.token or token
        if self._token and not (token and hmac.compare_digest(token.encode(), self._token.encode())):
            await conn.send(protocol.encode_error("unauthorized", "missing or wrong token").decode())
            await conn.close(1008, "missing or wrong token")
            self.data.stats["rejected_token"] += 1
            log.warning("rejected a game: missing or wrong token")
            return
        if self._conn is not None:  # another game won the race during our handshake
            await conn.close(1013, "another game is already attached to this trainer; stop it first")
            return
        if game.protocol:
            await conn.send(protocol.encode_welcome(game.capabilities).decode())
            self._obs_width = game.obs_size
        elif self._obs_width is not None:
            game = v0_spec(self._obs_width)  # a v0 game coming back: expected to send what it sent
        # ``data.lost`` stays set: a game that left is only forgotten once the trainer takes the
        # new one with wait_for_game() (and respawns what it had), never silently here.
        self._conn, self.game, self._outbox = conn, game, asyncio.Queue()
        self.model_id = model_id_of(conn.request.path) if conn.request else None
        self.data.self_restart = not game.protocol
        self._sent_at = time.monotonic()
        self._attached.set()
        log.info("game attached: %s (protocol %d, %s mode)", game.game, game.protocol, game.mode)
        sender = asyncio.create_task(self._send_loop(conn, self._outbox))
        keepalive = None if game.protocol else asyncio.create_task(self._keepalive(self._outbox))
        try:
            if first is not None and not first_is_hello:
                await self._receive(conn, first)
            async for frame in conn:
                await self._receive(conn, frame)
        except ConnectionClosed:
            pass
        except Exception:
            # A bug in the trainer: count it and say so. The connection ends (the env reconnects),
            # and stats["internal_errors"] keeps it from passing unnoticed.
            self.data.stats["internal_errors"] += 1
            log.error("internal error in the bridge's connection handler (a bug: please report it)", exc_info=True)
            await conn.close(1011, "internal error in the trainer")
        finally:
            sender.cancel()
            if keepalive is not None:
                keepalive.cancel()
            code = conn.close_code
            reason = conn.close_reason or "no reason given"
            self._attached.clear()  # first, so wait_for_game() cannot hand out the departing game
            self._conn, self._outbox = None, None
            with self.data.cond:
                self.data.lost = (
                    f"the game disconnected (close code {code}: {reason}); restart it and the trainer"
                    if not self._closing
                    else "the trainer closed the bridge"
                )
                self.data.cond.notify_all()
            if not self._closing:
                log.warning("game detached: close code %s (%s)", code, reason)

    async def _send_loop(self, conn: ServerConnection, outbox: asyncio.Queue) -> None:
        try:
            while True:
                frame = await outbox.get()
                await conn.send(frame, text=True)
                self._sent_at = time.monotonic()
                self.data.stats["frames_out"] += 1
        except ConnectionClosed:
            pass

    async def _keepalive(self, outbox: asyncio.Queue) -> None:
        """(A v0 game) PING whenever nothing went out for ``ping_interval`` s, as the original project's
        trainer did every 5 s: the game closes a socket that stays silent for 20 s."""
        ping = protocol.encode_v0_command("PING")
        while True:
            await asyncio.sleep(max(0.05, self._sent_at + self.ping_interval - time.monotonic()))
            if time.monotonic() - self._sent_at >= self.ping_interval and outbox.empty():
                self._sent_at = time.monotonic()
                outbox.put_nowait(ping)
                self.data.stats["pings"] += 1

    async def _receive(self, conn: ServerConnection, frame: str | bytes) -> None:
        stats = self.data.stats
        stats["frames_in"] += 1
        game = self.game or V0_GAME
        try:
            if not isinstance(frame, str):
                raise ProtocolError("binary frame: send JSON as WebSocket text frames", "bad_message")
            # decode_game_message also refuses oversized frames; a v0 game's width is read off its packets
            msg = protocol.decode_game_message(frame, game.obs_size if game.protocol else None)
            if isinstance(msg, ObsBatch):
                if not msg.agent_ids:  # a v0 game's "[]" (no car active) or only "__" keys
                    return
                if not game.protocol and msg.obs.shape[1] != self._obs_width:
                    await self._v0_width(conn, msg.obs.shape[1])
                    if self.data.fatal is not None:
                        return
                unknown = self.data.put_batch(msg)
                if unknown:
                    raise ProtocolError(
                        f"observations for agents this trainer never spawned: {', '.join(unknown[:3])}",
                        "unknown_agent",
                    )
            elif isinstance(msg, protocol.ErrorMessage):
                stats["errors_from_game"] += 1
                stats[f"errors_from_game.{msg.code}"] += 1
                errors = self._game_internal if msg.code == "internal_error" else self._game_errors
                errors.warn(msg.code, msg.message)
            elif isinstance(msg, Hello):
                raise ProtocolError("hello is only valid as the first frame of a connection")
        except ProtocolError as err:
            stats["bad_frames"] += 1
            stats[f"bad_frames.{err.code}"] += 1
            self._bad.warn(err.code, str(err))
            if game.protocol:  # a v0 game has no use for error frames: it would only warn about them
                await conn.send(protocol.encode_error(err.code, str(err)[:500]).decode())

    async def _v0_width(self, conn: ServerConnection, width: int) -> None:
        """A v0 game's packet of ``width`` floats per car: the width of the run if none is known
        yet, else (another width) the end of the run, with one clear error."""
        if self._obs_width is None:
            self._obs_width = width
            self.game = v0_spec(width)
            log.info("v0 game: %d floats per observation (rays, nitro, velocity, is-reverse)", width)
            return
        message = (
            f"the game's observations changed from {self._obs_width} to {width} floats per car mid-run "
            "(another car model or ray count?); a policy takes one width: restart the trainer"
        )
        log.error(message)
        with self.data.cond:
            self.data.fatal = message
            self.data.cond.notify_all()
        await conn.close(1003, "observation width changed")

    # ---------------------------------------------------------------- sending (training thread)

    def _send(self, frame: bytes) -> None:
        loop, outbox, lost = self._loop, self._outbox, self.data.lost
        if lost is not None:  # also when a new game is already attached: it has not been set up yet
            raise BridgeClosed(lost)
        if loop is None or outbox is None:
            raise BridgeClosed(f"no game is connected to {self.url}")
        loop.call_soon_threadsafe(outbox.put_nowait, frame)  # (callbacks run in order: so do frames)

    def _next_tick(self) -> int:
        self._tick += 1
        return self._tick

    def _ticked(self) -> bool:
        return self.game is not None and self.game.has("tick")

    def _command(self, command: str, envid: str | None = None, data: object = None, tick: int | None = None) -> None:
        """Send a command in the form the game reads: the original project's object form to a game that never
        said hello (the original project's place), rbxenv's otherwise."""
        if self.game is not None and not self.game.protocol:
            self._send(protocol.encode_v0_command(command, envid, data))
        else:
            self._send(protocol.encode_command(command, envid, data, tick))

    @property
    def width_known(self) -> bool:
        """The game's observation width is known (from its hello, or a v0 game's first packet)."""
        return self._obs_width is not None

    def freeze(self, status: bool) -> None:
        """Freeze (True) or unfreeze (False) every car of every venv."""
        self._command("FREEZE", None, bool(status))

    def spawn_agents(
        self,
        env_id: str,
        agents: Sequence[str],
        track: dict | None = None,
        start: str = "grid",
        seed: int | None = None,
        autoreset: bool = False,
    ) -> None:
        """(Re)spawn agents of a venv; creates the venv (and its track) if it is new.

        ``track``/``start``/``seed`` are sent only to games that announced ``track_spec`` /
        ``random_start``; a v0 game gets the original project's ``{"agents": [...]}``. ``autoreset``: the
        game restarts each of these cars in the step its episode ends, and that step's observations
        bring its first observation of the next one (``Observations.restarted``/``reset_obs``), so
        no RESET_AGENTS round trip is needed; asked only of games that announced ``autoreset`` and
        ``columns`` (see ``autoresets``).
        """
        protocol.check_envid(env_id)
        agents = list(agents)
        tick = self._next_tick()
        self.data.expect_answers(agents, tick, restart=True)
        game = self.game or V0_GAME
        data: object = agents
        if game.has("track_spec") or game.has("random_start") or autoreset and self.autoresets:
            data = {"agents": agents, "start": start if game.has("random_start") else "grid"}
            if track is not None and game.has("track_spec"):
                data["track"] = track
            if seed is not None:
                data["seed"] = int(seed)
            if autoreset and self.autoresets:
                data["autoreset"] = True
        self._command("SPAWN_AGENTS", env_id, data, tick if self._ticked() else None)

    @property
    def autoresets(self) -> bool:
        """The game restarts cars spawned with ``autoreset=True`` itself: it announced the capability
        (with ``columns``) and steps in lockstep (in real time, packets of the next episode could
        come before the trainer read the ending)."""
        game = self.game
        return game is not None and game.has("autoreset") and game.has("columns") and game.mode == "lockstep"

    def reset_agents(self, env_id: str, agents: Sequence[str]) -> None:
        """Respawn agents (their episodes restart); the game answers with their observations."""
        agents = list(agents)
        tick = self._next_tick()
        self.data.expect_answers(agents, tick, restart=True)
        self._command("RESET_AGENTS", env_id, agents, tick if self._ticked() else None)

    def remove_agents(self, env_id: str, agents: Sequence[str]) -> None:
        agents = list(agents)
        self.data.forget(agents)
        self._command("REMOVE_AGENTS", env_id, agents)

    def send_actions(self, env_id: str, actions: Mapping[str, Sequence[float]]) -> None:
        """Actions for the agents of one venv (the original project's per-venv ACTION)."""
        tick = self._next_tick()
        self.data.expect_answers(actions.keys(), tick)
        self._command("ACTION", env_id, dict(actions), tick if self._ticked() else None)

    def send_action_batch(self, actions: Mapping[str, Mapping[str, Sequence[float]]]) -> int:
        """Actions for every venv at once: one ACTION_BATCH frame (per-venv ACTIONs for v0 games).

        ``actions`` is ``{envid: {agent_id: [throttle, steering, nitro]}}`` (rows may be numpy arrays).
        Returns the tick id the observations will answer.
        """
        if self.game is not None and self.game.has("batch"):
            tick = self._next_tick()
            # orjson takes dicts only; the env's batch already is one (no copy on the hot path)
            actions = {
                env_id: per_venv if type(per_venv) is dict else dict(per_venv) for env_id, per_venv in actions.items()
            }
            self.data.expect_answers([aid for per_venv in actions.values() for aid in per_venv], tick)
            self._send(protocol.encode_command("ACTION_BATCH", None, actions, tick))
            self.action_sent_at = time.monotonic()
            return tick
        for env_id, per_venv in actions.items():
            self.send_actions(env_id, per_venv)
        self.action_sent_at = time.monotonic()
        return self._tick

    def send_action_rows(self, agent_ids: Sequence[str], actions: np.ndarray) -> int:
        """Actions of many agents at once, row k of ``actions`` (n, action_size) for ``agent_ids[k]``:
        one ACTION_BATCH in column form to games that announced ``columns`` (no dict per car to
        build or parse), else ``send_action_batch``. Returns the tick id the observations will answer.
        """
        if self.game is not None and self.game.has("columns"):
            tick = self._next_tick()
            self.data.expect_answers(agent_ids, tick)
            ids = agent_ids if type(agent_ids) is list else list(agent_ids)
            self._send(protocol.encode_action_rows(ids, np.ascontiguousarray(actions), tick))
            self.action_sent_at = time.monotonic()
            return tick
        batch: dict[str, dict] = {}
        for aid, row in zip(agent_ids, actions, strict=True):
            batch.setdefault(protocol.parse_agent_id(aid)[1], {})[aid] = row
        return self.send_action_batch(batch)

    def close_environment(self, env_id: str) -> None:
        """Destroy a venv (track and cars) in the game."""
        self.data.forget([aid for aid in list(self.data.rows) if protocol.parse_agent_id(aid)[1] == env_id])
        self._command("CLOSE", env_id)

    def close_all(self) -> None:
        """Destroy every venv in the game."""
        self.data.forget(list(self.data.rows))
        self._command("CLOSE_ALL")

    def update_collisions(self, status: bool) -> None:
        """Turn car-car collisions inside each venv on (True) or off (False)."""
        self._command("UPDATE_COLLISIONS", None, bool(status))

    # ---------------------------------------------------------------- receiving (training thread)

    def get_observation(self, agent: str, timeout: float | None = None) -> dict:
        """The next observation of one agent (blocking): {"obs", "reward", "terminated", "truncated", "info"}."""
        got = self.get_observations([agent], timeout)
        return {
            "obs": got.obs[0],
            "reward": float(got.reward[0]),
            "terminated": bool(got.terminated[0]),
            "truncated": bool(got.truncated[0]),
            "info": got.infos[0],
        }

    def get_observations(self, agent_ids: Sequence[str], timeout: float | None = None) -> Observations:
        """The next observations of many agents at once (blocking), as arrays."""
        return self.data.wait(agent_ids, self.obs_timeout if timeout is None else timeout)


def _is_hello(frame: str | bytes) -> bool:
    """Whether a frame is a JSON object with ``"type": "hello"`` (wherever the key comes: Roblox's
    JSONEncode orders keys as it likes). The substring test spares parsing v0 packets twice."""
    if '"hello"' not in frame if isinstance(frame, str) else b'"hello"' not in frame:
        return False
    try:
        msg = protocol.load_json(frame)
    except ProtocolError:
        return True  # too large or broken: let decode_game_message say so to the game
    return type(msg) is dict and msg.get("type") == "hello"
