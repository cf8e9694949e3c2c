"""The trainer's WebSocket server: listening, token auth, the handshake, the games' frames in and out.

A ``Listener`` owns a port: an asyncio loop in a background thread ("rbxenv-bridge") and the
sockets, on loopback (both 127.0.0.1 and ::1) or beyond with a shared token. Each connection is
routed by its URL path ``/ws/<modelId>`` to the ``GameServer`` of that run, so one process can
serve several runs on one port. A connection's first frame decides whether it is a game at all
and which protocol it speaks: version 1 (``hello``) or version 0 (a valid observation packet:
``rbxenv.v0``); anything else is a stranger and is dropped. A ``GameServer`` holds several games
at once (``GameLink``); every frame they send is validated (``rbxenv.protocol``) and their
observations stored in one ``DataBridge`` (``rbxenv.observations``), which wakes the training
thread; frames to a game are handed to the loop with ``call_soon_threadsafe`` and go out in the
order sent. ``TrainingBridge`` (``rbxenv.bridge``) adds the commands on top.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import itertools
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
# one for at most the handshake timeout, and these bound how many it can hold at once (per port).
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


class GameLink:
    """One connected game: what it announced, its socket, its outbox, and whether it is gone.

    ``number`` names it in the observation slots (each car's row remembers its host), so a
    departing game's cars are reported lost and a moved venv's old host is not heard from.
    """

    def __init__(self, number: int, conn: ServerConnection, spec: GameSpec, loop: asyncio.AbstractEventLoop):
        self.number, self.conn, self.spec, self.loop = number, conn, spec, loop
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.lost: str | None = None  # why it left, once it has
        self.sent_at = time.monotonic()  # the latest frame written (PING keeps a v0 game alive)
        self.address = str(conn.remote_address[0]) if conn.remote_address else "?"

    def send(self, frame: bytes) -> None:
        """Queue a frame (any thread). A game that left drops it: its cars are reported lost."""
        if self.lost is None:
            self.loop.call_soon_threadsafe(self.outbox.put_nowait, frame)  # (callbacks run in order: so do frames)

    def __repr__(self) -> str:
        return f"game #{self.number} ({self.spec.game}, {self.address})"


class Listener:
    """A port this process listens on, shared by the runs (``GameServer``) that serve model ids on it.

    Ports given explicitly are shared: a second run on the same host and port adds its model id
    to the routes instead of binding again. Port 0 gives each run a port of its own.
    """

    _open: dict[tuple[str, int], Listener] = {}
    _lock = threading.Lock()

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.routes: dict[str | None, GameServer] = {}  # model id -> run (None: any path)
        self.pending: Counter[str] = Counter()  # connections in their handshake, per address
        self.loop: asyncio.AbstractEventLoop | None = None
        self._servers: list = []
        self._thread: threading.Thread | None = None

    @classmethod
    def attach(cls, server: GameServer) -> Listener:
        """The listener of ``server``'s host and port (started if new), with the run's route added."""
        with cls._lock:
            key = (server.host, server.port)
            listener = cls._open.get(key) if server.port else None
            if listener is None:
                listener = cls(server.host, server.port)
                listener._start()
                cls._open[(listener.host, listener.port)] = listener
            if server.serves in listener.routes or None in listener.routes or server.serves is None and listener.routes:
                taken = ", ".join(f"/ws/{m}" if m else "any path" for m in listener.routes)
                raise OSError(
                    f"cannot listen on {listener.host}:{listener.port} (this process serves {taken} there already): "
                    "pick another --port, or give each run on it its own model id (serves=...)"
                )
            listener.routes[server.serves] = server
            return listener

    def detach(self, server: GameServer) -> None:
        """Remove a run's route; the last one stops the listener."""
        with self._lock:
            if self.routes.get(server.serves) is server:
                del self.routes[server.serves]
            if self.routes:
                return
            self._open.pop((self.host, self.port), None)
        if self.loop is not None:
            try:
                self.loop.call_soon_threadsafe(self.loop.stop)
            except RuntimeError:  # the background thread already closed the loop
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            try:
                self._servers = loop.run_until_complete(self._serve())
            except BaseException as err:  # noqa: BLE001 - reported to the starting thread
                failure.append(err)
                loop.close()
                ready.set()
                return
            self.port = self._servers[0].sockets[0].getsockname()[1]
            self.loop = loop
            ready.set()
            loop.run_forever()  # until the last run detaches
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

    async def _serve(self) -> list:
        def listen(host: str, port: int):
            return serve(
                self._route,
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

    def _count(self, what: str) -> None:
        for run in list(self.routes.values()):  # a connection refused at the door: every run on the port sees it
            run.data.stats[what] += 1

    async def _route(self, conn: ServerConnection) -> None:
        address = str(conn.remote_address[0]) if conn.remote_address else "?"
        if self.pending.total() >= MAX_PENDING or self.pending[address] >= MAX_PENDING_PER_ADDRESS:
            self._count("rejected_pending")
            await conn.close(1013, "too many connections in their handshake; try again later")
            return
        path = conn.request.path if conn.request else "/"
        run = self.routes.get(model_id_of(path)) or self.routes.get(None)
        if run is None:
            self._count("rejected_path")
            served = " or ".join(f"/ws/{m}" for m in self.routes)
            await conn.close(
                1008,
                f"this trainer serves {served}, not {urlparse(path).path[:40]}: is the game pointed at another run?",
            )
            return
        self.pending[address] += 1
        try:
            first = await run.first_frame(conn)
        finally:
            self.pending[address] -= 1
            if not self.pending[address]:
                del self.pending[address]
        if first is not None:
            await run.serve_game(conn, path, first)


class GameServer:
    """The WebSocket side of one run: the games that connected to its path, their frames in and out.

    Arguments as ``TrainingBridge``'s (the documented facade, which adds ``obs_timeout``), plus
    ``max_games``: how many games may be attached at once (None: any number; a game beyond it is
    closed with 1013).
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
        max_games: int | None = 1,
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
        self.max_games = max_games
        self.data = DataBridge()
        # The spaces of the run: the first game's (every later game must observe as many floats).
        self.game: GameSpec | None = None
        self.games: list[GameLink] = []  # attached, in the order they came (the network thread edits it)
        # The run this trainer serves: games dial /ws/<serves>, any other path is refused (None: any path).
        self.serves = serves
        # The model id of the game's URL path /ws/<modelId> (the original project's places dial one), or None.
        self.model_id: str | None = serves
        # The observation width the trainer's spaces are built on: from the hello, or learned from
        # a v0 game's first agent entry; a game with another width cannot join the run.
        self._obs_width: int | None = None
        self._listener: Listener | None = None
        self._numbers = itertools.count(1)
        self._attached = threading.Event()
        self.joins = 0  # games attached so far (the session spreads venvs when it grows)
        self._bad = protocol.RateLimitedLog(log, "bad frame from game")
        self._game_errors = protocol.RateLimitedLog(log, "game reported an error")
        self._game_internal = protocol.RateLimitedLog(log, "internal error in the game (a bug on its side)")
        self._closing = False

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        self._listener = Listener.attach(self)
        self.port = self._listener.port
        log.info("trainer listening on %s", self.url)
        return self

    @property
    def _loop(self) -> asyncio.AbstractEventLoop | None:
        return self._listener.loop if self._listener is not None else None

    @property
    def _pending(self) -> Counter[str]:
        return self._listener.pending if self._listener is not None else Counter()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}" + (f"/ws/{self.serves}" if self.serves else "")

    @property
    def token(self) -> str | None:
        return self._token

    @property
    def connected(self) -> bool:
        return bool(self.games)

    @property
    def link(self) -> GameLink | None:
        """The game commands go to when no venv says otherwise: the first attached one."""
        games = self.games
        return games[0] if games else None

    @property
    def stats(self) -> Counter[str]:
        return self.data.stats

    def wait_for_game(self, timeout: float | None = None) -> GameSpec:
        """Block until a game is attached and its handshake (or the lack of one) is settled.

        After every game disconnected, every call raises BridgeClosed until this is called again
        and returns: the caller takes the new game knowingly (and respawns its venvs).
        """
        if not self._attached.wait(timeout):
            raise BridgeClosed(
                f"no game connected to {self.url} within {timeout:g} s: start the game "
                "(python -m rbxenv.sim --url ..., or press Play in Roblox Studio) and point it at this URL "
                f"(a Smart Racing Sim AI place: ws://localhost:{self.port}/ws/<modelId>)"
            )
        with self.data.cond:
            self.data.lost = None  # the caller has the (new) game now; a previous one is forgotten
        assert self.game is not None
        return self.game

    def close(self) -> None:
        """Close the games' connections and stop listening for this run (idempotent)."""
        if self._listener is None or self._closing:
            return
        self._closing = True

        async def shutdown() -> None:
            await asyncio.gather(
                *(link.conn.close(1001, "trainer shutting down") for link in list(self.games)), return_exceptions=True
            )

        loop = self._loop
        if loop is not None:
            try:
                asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=2)
            except Exception:  # noqa: BLE001 - best effort: the games may be gone already
                pass
        self._listener.detach(self)
        with self.data.cond:
            self.data.lost = self.data.lost or "the trainer closed the bridge"
            self.data.cond.notify_all()

    def __enter__(self) -> Self:
        return self.start() if self._listener is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- network thread

    async def first_frame(self, conn: ServerConnection) -> str | bytes | None:
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

    async def serve_game(self, conn: ServerConnection, path: str, first: str | bytes) -> None:
        """A connection that spoke the protocol: authenticate it, attach it, serve it until it leaves."""
        stats = self.data.stats
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
            stats["rejected_token"] += 1
            log.warning("rejected a game: missing or wrong token")
            return
        if self.max_games is not None and len(self.games) >= self.max_games:
            # (one game per bare TrainingBridge: a second one would fight over the same agents)
            reason = (
                "another game is already attached to this trainer; stop it first"
                if self.max_games == 1
                else f"this trainer takes {self.max_games} games at once, all attached; stop one first"
            )
            await conn.close(1013, reason)
            stats["rejected_extra_game"] += 1
            return
        if game.protocol and self._obs_width is not None and game.obs_size != self._obs_width:
            # one policy, one observation width: a game with another car model or ray count cannot join
            message = (
                f"this run's cars observe {self._obs_width} floats, this game's {game.obs_size} "
                "(another ray count?): give it the run's car, or start another run"
            )
            await conn.send(protocol.encode_error("incompatible_game", message).decode())
            await conn.close(1003, message[:120])
            stats["rejected_width"] += 1
            log.warning("refused a game: %s", message)
            return
        if game.protocol:
            await conn.send(protocol.encode_welcome(game.capabilities).decode())
            self._obs_width = game.obs_size
        elif self._obs_width is not None:
            game = v0.v0_spec(self._obs_width)  # a v0 game coming back: expected to send what it sent
        loop = asyncio.get_running_loop()
        link = GameLink(next(self._numbers), conn, game, loop)
        # ``data.lost`` stays set: a game that left is only forgotten once the trainer takes the
        # new one with wait_for_game() (and respawns what it had), never silently here.
        if self.game is None or not self.games:
            self.game = game
        self.games = [*self.games, link]
        self.model_id = self.serves or model_id_of(path)
        self.joins += 1
        self._attached.set()
        log.info("game attached: %r (protocol %d, %s mode)", link, game.protocol, game.mode)
        sender = asyncio.create_task(self._send_loop(link))
        keepalive = None
        if not game.protocol:

            def quiet_for() -> float:
                return time.monotonic() - link.sent_at

            keepalive = asyncio.create_task(v0.keep_alive(link.outbox, quiet_for, self.ping_interval, stats))
        try:
            if not first_is_hello:
                await self._receive(link, first)
            async for frame in conn:
                await self._receive(link, frame)
        except ConnectionClosed:
            pass
        except Exception:
            # A bug in the trainer: count it and say so. The connection ends (the env reconnects),
            # and stats["internal_errors"] keeps it from passing unnoticed.
            stats["internal_errors"] += 1
            log.error("internal error in the bridge's connection handler (a bug: please report it)", exc_info=True)
            await conn.close(1011, "internal error in the trainer")
        finally:
            sender.cancel()
            if keepalive is not None:
                keepalive.cancel()
            self._detach(link, conn.close_code, conn.close_reason or "no reason given")

    def _detach(self, link: GameLink, code: int | None, reason: str) -> None:
        """A game left: its cars are reported lost; with no game left, every call says so."""
        link.lost = link.lost or f"the game disconnected (close code {code}: {reason}); restart it and the trainer"
        self.games = [g for g in self.games if g is not link]
        if not self.games:
            self._attached.clear()  # first, so wait_for_game() cannot hand out the departing game
        with self.data.cond:
            self.data.lose(link.number)
            if not self.games:
                self.data.lost = link.lost if not self._closing else "the trainer closed the bridge"
            self.data.cond.notify_all()
        if not self._closing:
            log.warning("game detached: %r, close code %s (%s)", link, code, reason)

    async def _send_loop(self, link: GameLink) -> None:
        try:
            while True:
                frame = await link.outbox.get()
                await link.conn.send(frame, text=True)
                link.sent_at = time.monotonic()
                self.data.stats["frames_out"] += 1
        except ConnectionClosed:
            pass

    async def _receive(self, link: GameLink, frame: str | bytes) -> None:
        stats = self.data.stats
        stats["frames_in"] += 1
        game = link.spec
        try:
            if not isinstance(frame, str):
                raise ProtocolError("binary frame: send JSON as WebSocket text frames", "bad_message")
            # decode_game_message also refuses oversized frames; a v0 game's width is read off its packets
            msg = protocol.decode_game_message(frame, game.obs_size if game.protocol else None)
            if isinstance(msg, ObsBatch):
                if not msg.agent_ids:  # a v0 game's "[]" (no car active) or only "__" keys
                    return
                if not game.protocol and msg.obs.shape[1] != self._obs_width:
                    if not await self._v0_width(link, msg.obs.shape[1]):
                        return
                unknown = self.data.put_batch(msg, link.number, self_restart=not game.protocol)
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
                await link.conn.send(protocol.encode_error(err.code, str(err)[:500]).decode())

    async def _v0_width(self, link: GameLink, width: int) -> bool:
        """A v0 game's packet of ``width`` floats per car: the width of the run if none is known
        yet (True: store it); else (another width) this game is closed when others serve the run,
        or the run ends with one clear error (False)."""
        if self._obs_width is None:
            self._obs_width = width
            link.spec = v0.v0_spec(width)
            if self.game is None or not self.game.protocol:
                self.game = link.spec
            log.info("v0 game: %d floats per observation (rays, nitro, velocity, is-reverse)", width)
            return True
        if len(self.games) > 1:  # another game sets the run's width: refuse this one, the run goes on
            message = (
                f"this run's cars observe {self._obs_width} floats, this game's {width} "
                "(another ray count?): give it the run's car, or start another run"
            )
            self.data.stats["rejected_width"] += 1
            log.warning("closed %r: %s", link, message)
            await link.conn.close(1003, message[:120])
            return False
        message = (
            f"the game's observations changed from {self._obs_width} to {width} floats per car mid-run "
            "(another car model or ray count?); a policy takes one width: restart the trainer"
        )
        log.error(message)
        with self.data.cond:
            self.data.fatal = message
            self.data.cond.notify_all()
        await link.conn.close(1003, "observation width changed")
        return False

    def drop(self, link: GameLink, reason: str) -> None:
        """Close a game the run cannot wait for (training thread): its cars are reported lost at once."""
        log.warning("closing %r: %s", link, reason)
        link.lost = reason
        self.data.lose(link.number)
        loop = self._loop
        if loop is not None:
            asyncio.run_coroutine_threadsafe(link.conn.close(1011, reason[:120]), loop)

    def _check_open(self) -> None:
        """Raise BridgeClosed when every game left (until ``wait_for_game`` takes a new one) or none came."""
        lost = self.data.lost
        if lost is not None:  # also when a new game is already attached: it has not been set up yet
            raise BridgeClosed(lost)
        if not self.games:
            raise BridgeClosed(f"no game is connected to {self.url}")


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
