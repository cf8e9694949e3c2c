"""The trainer's WebSocket server: listening, token auth, the handshake, one game's frames in and out.

``GameServer`` runs an asyncio loop in a background thread ("rbxenv-bridge"). It listens on
loopback (both 127.0.0.1 and ::1), or beyond with a shared token; a game's first frame decides
whether it speaks version 1 (``hello``) or version 0 (anything else, or nothing within the
handshake timeout: ``rbxenv.v0``). Every frame the game sends is validated (``rbxenv.protocol``)
and its observations stored in the ``DataBridge`` (``rbxenv.observations``), which wakes the
training thread; frames to the game are handed to the loop with ``call_soon_threadsafe`` and go
out in the order sent. ``TrainingBridge`` (``rbxenv.bridge``) adds the commands on top.
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
from typing import Self
from urllib.parse import parse_qs, unquote, urlparse

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from rbxenv import protocol, v0
from rbxenv.observations import BridgeClosed, DataBridge
from rbxenv.protocol import V0_GAME, GameSpec, Hello, ObsBatch, ProtocolError

log = logging.getLogger("rbxenv.bridge")

HARD_FRAME_LIMIT = 16 * protocol.MAX_FRAME_BYTES  # beyond this websockets closes the connection (1009)
# Connections that have not spoken the protocol yet (a hello, or a v0 packet): a stranger holds
# one for at most the handshake timeout, and these bound how many it can hold at once.
MAX_PENDING = 256
MAX_PENDING_PER_ADDRESS = 32


_MODEL_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def model_id_of(path: str) -> str | None:
    """The model id of a v0 game's URL path ``/ws/<modelId>`` (it names the run), or None."""
    parts = [unquote(part) for part in urlparse(path).path.split("/") if part]
    if len(parts) == 2 and parts[0] == "ws" and _MODEL_ID.fullmatch(parts[1]) and parts[1] not in (".", ".."):
        return parts[1]
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class GameServer:
    """The WebSocket server a game connects to: one game at a time, its handshake, frames in and out.

    Arguments as ``TrainingBridge``'s (the documented facade, which adds ``obs_timeout``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = protocol.DEFAULT_PORT,
        token: str | None = None,
        *,
        handshake_timeout: float = 1.0,
        ping_interval: float = 2.0,
        serves: str | None = None,
    ):
        if serves is not None and model_id_of(f"/ws/{serves}") != serves:
            raise ValueError(f"serves={serves!r}: a model id is 1-64 of A-Z a-z 0-9 _ . - (it goes in /ws/<modelId>)")
        token = token if token is not None else os.environ.get("RBXENV_TOKEN") or None
        if not is_loopback(host) and not token:
            raise ValueError(
                f"binding {host} exposes the trainer beyond this machine: set a shared token "
                "(--token or the RBXENV_TOKEN environment variable), or bind 127.0.0.1"
            )
        self.host, self.port, self._token = host, port, token
        self.handshake_timeout = handshake_timeout
        self.ping_interval = ping_interval
        self.data = DataBridge()
        self.game: GameSpec | None = None
        # The run this trainer serves: games dial /ws/<serves>, any other path is refused (None: any path).
        self.serves = serves
        # The model id of the game's URL path /ws/<modelId> (the original project's places dial one), or None.
        self.model_id: str | None = serves
        # The observation width the trainer's spaces are built on: from the hello, or learned from
        # a v0 game's first agent entry; a game that changes it mid-run cannot go on.
        self._obs_width: int | None = None
        self._sent_at = 0.0  # time.monotonic() of the latest frame written (PING keeps a v0 game alive)
        self._servers: list = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conn: ServerConnection | None = None
        self._outbox: asyncio.Queue | None = None
        self._attached = threading.Event()
        self._bad = protocol.RateLimitedLog(log, "bad frame from game")
        self._game_errors = protocol.RateLimitedLog(log, "game reported an error")
        self._game_internal = protocol.RateLimitedLog(log, "internal error in the game (a bug on its side)")
        self._closing = False
        self._pending: Counter[str] = Counter()  # connections in their handshake, per address

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> Self:
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
                open_timeout=5,  # a TCP connection that never sends its HTTP upgrade is dropped after this
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
        return f"ws://{host}:{self.port}" + (f"/ws/{self.serves}" if self.serves else "")

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

    def __enter__(self) -> Self:
        return self.start() if self._loop is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- network thread

    async def _handle(self, conn: ServerConnection) -> None:
        stats = self.data.stats
        address = str(conn.remote_address[0]) if conn.remote_address else "?"
        if self._pending.total() >= MAX_PENDING or self._pending[address] >= MAX_PENDING_PER_ADDRESS:
            stats["rejected_pending"] += 1
            await conn.close(1013, "too many connections in their handshake; try again later")
            return
        path = conn.request.path if conn.request else "/"
        if self.serves is not None and model_id_of(path) != self.serves:
            stats["rejected_path"] += 1
            shown = urlparse(path).path[:40]
            await conn.close(
                1008, f"this trainer serves /ws/{self.serves}, not {shown}: is the game pointed at another run?"
            )
            return
        self._pending[address] += 1
        try:
            first = await self._first_frame(conn)
        finally:
            self._pending[address] -= 1
            if not self._pending[address]:
                del self._pending[address]
        if first is None:
            return
        query = parse_qs(urlparse(path).query)
        game = V0_GAME
        token = (query.get("token") or [None])[0]
        first_is_hello = _is_hello(first)
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
        if self._conn is not None:  # one game per trainer: a second one would fight over the same agents
            await conn.close(1013, "another game is already attached to this trainer; stop it first")
            stats["rejected_second_game"] += 1
            return
        if game.protocol:
            await conn.send(protocol.encode_welcome(game.capabilities).decode())
            self._obs_width = game.obs_size
        elif self._obs_width is not None:
            game = v0.v0_spec(self._obs_width)  # a v0 game coming back: expected to send what it sent
        # ``data.lost`` stays set: a game that left is only forgotten once the trainer takes the
        # new one with wait_for_game() (and respawns what it had), never silently here.
        self._conn, self.game, self._outbox = conn, game, asyncio.Queue()
        self.model_id = self.serves or model_id_of(path)
        self.data.self_restart = not game.protocol
        self._sent_at = time.monotonic()
        self._attached.set()
        log.info("game attached: %s (protocol %d, %s mode)", game.game, game.protocol, game.mode)
        sender = asyncio.create_task(self._send_loop(conn, self._outbox))
        keepalive = None
        if not game.protocol:

            def quiet_for() -> float:
                return time.monotonic() - self._sent_at

            keepalive = asyncio.create_task(v0.keep_alive(self._outbox, quiet_for, self.ping_interval, self.data.stats))
        try:
            if not first_is_hello:
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

    async def _first_frame(self, conn: ServerConnection) -> str | bytes | None:
        """The frame that makes a connection a game: a ``hello`` (checked by the caller) or a valid
        v0 packet (the original project's place sends one, ``[]`` with no car, every tick from the
        start). None, with the connection closed, for a stranger: silent for the handshake
        timeout, or anything else first. A stranger never attaches, so it cannot make the
        trainer wait for it, refuse the real game, or end the run when it leaves."""
        try:
            first = await asyncio.wait_for(conn.recv(), self.handshake_timeout)
        except TimeoutError:
            reason = f"nothing within {self.handshake_timeout:g} s: a game sends hello (or a v0 packet) first"
        except ConnectionClosed:
            return None
        else:
            if _is_hello(first):
                return first
            try:
                if isinstance(first, str) and isinstance(
                    protocol.decode_game_message(first, self._obs_width), ObsBatch
                ):
                    return first
                reason = "not a game: the first frame must be a hello or an observation packet"
            except ProtocolError as err:
                reason = f"not a game: {err}"
        self.data.stats["strangers_dropped"] += 1
        log.debug("dropped a connection that is not a game: %s", reason)
        await conn.close(1002, reason[:120])
        return None

    async def _send_loop(self, conn: ServerConnection, outbox: asyncio.Queue) -> None:
        try:
            while True:
                frame = await outbox.get()
                await conn.send(frame, text=True)
                self._sent_at = time.monotonic()
                self.data.stats["frames_out"] += 1
        except ConnectionClosed:
            pass

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
            self.game = v0.v0_spec(width)
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

    def _send(self, frame: bytes) -> None:
        loop, outbox, lost = self._loop, self._outbox, self.data.lost
        if lost is not None:  # also when a new game is already attached: it has not been set up yet
            raise BridgeClosed(lost)
        if loop is None or outbox is None:
            raise BridgeClosed(f"no game is connected to {self.url}")
        loop.call_soon_threadsafe(outbox.put_nowait, frame)  # (callbacks run in order: so do frames)


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
