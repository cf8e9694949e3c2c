"""The original project's TrainingBridge: blocking, documented calls that drive a game.

Built on ``GameServer`` (``rbxenv.server``: the WebSocket, the handshake, the network thread) and
its observation slots (``rbxenv.observations``). Commands go to the game in its own terms (the
object forms of protocol version 0 to a game that never said hello: ``rbxenv.v0``); the
observations that answer them are read, blocking, with ``get_observation(s)``.

    bridge = TrainingBridge(port=8000).start()
    game = bridge.wait_for_game(timeout=60)          # the GameSpec from its hello, or v0 defaults
    bridge.spawn_agents("a", ["car_0_env_a"])
    first = bridge.get_observation("car_0_env_a")   # {"obs", "reward", "terminated", "truncated", "info"}
    bridge.send_action_batch({"a": {"car_0_env_a": [1.0, 0.0, 0.0]}})
    batch = bridge.get_observations(["car_0_env_a"])

A lost game raises BridgeClosed from whatever call is waiting; it never hangs silently.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np

from rbxenv import protocol
from rbxenv.observations import BridgeClosed, DataBridge, Observations
from rbxenv.protocol import GameSpec
from rbxenv.server import GameLink, GameServer, is_loopback, model_id_of

__all__ = [
    "BridgeClosed",
    "DataBridge",
    "GameLink",
    "GameServer",
    "Observations",
    "TrainingBridge",
    "is_loopback",
    "model_id_of",
]


class TrainingBridge(GameServer):
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
        serves: the model id of the run this trainer serves: games must dial ``/ws/<serves>``
            (``url`` includes it), any other path is closed with 1008 and a reason naming both;
            None (default) accepts any path and takes the model id from it. Runs that serve
            different model ids can share one port in one process.
        max_games: games attached at once (None: any number; one more is closed with 1013). Each
            venv runs on one game (``hosts``, which ``GameSession`` sets; else the first game);
            commands for no venv in particular (FREEZE, UPDATE_COLLISIONS, CLOSE_ALL) go to all.

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
        serves: str | None = None,
        max_games: int | None = 1,
    ):
        super().__init__(
            host,
            port,
            token,
            handshake_timeout=handshake_timeout,
            ping_interval=ping_interval,
            serves=serves,
            max_games=max_games,
        )
        self.obs_timeout = obs_timeout
        self.hosts: dict[str, GameLink] = {}  # venv id -> the game it runs on (absent: the first game)
        self._tick = 0
        self.action_sent_at = 0.0  # time.monotonic() when the latest actions were handed to the network thread

    def _next_tick(self) -> int:
        self._tick += 1
        return self._tick

    def host_of(self, env_id: str) -> GameLink:
        """The game venv ``env_id`` runs on (the first game if it has none); raises BridgeClosed when
        no game is connected. A game that left drops what is sent to it: its cars are reported lost."""
        self._check_open()
        link = self.hosts.get(env_id) or self.link
        if link is None:
            raise BridgeClosed(f"no game is connected to {self.url}")
        return link

    def _command(
        self,
        command: str,
        envid: str | None = None,
        data: object = None,
        tick: int | None = None,
        link: GameLink | None = None,
    ) -> None:
        """Send a command to the game of venv ``envid`` (no venv: to every game, or to ``link``) in
        the form it reads: protocol version 0's object form to a game that never said hello (the
        original project's place), version 1's otherwise."""
        links = [self.host_of(envid)] if envid is not None else [link] if link is not None else self.games
        self._check_open()
        for link in links:
            link.send(_encode(link.spec, command, envid, data, tick))

    @property
    def width_known(self) -> bool:
        """The game's observation width is known (from its hello, or a v0 game's first packet)."""
        return self._obs_width is not None

    def freeze(self, status: bool, link: GameLink | None = None) -> None:
        """Freeze (True) or unfreeze (False) every car of every venv (of one game: ``link``)."""
        self._command("FREEZE", None, bool(status), link=link)

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
        link = self.host_of(env_id)
        game = link.spec
        agents = list(agents)
        tick = self._next_tick()
        self.data.expect_answers(agents, tick, restart=True, host=link.number)
        autoreset = autoreset and _autoresets(game)
        data: object = agents
        if game.has("track_spec") or game.has("random_start") or autoreset:
            data = {"agents": agents, "start": start if game.has("random_start") else "grid"}
            if track is not None and game.has("track_spec"):
                data["track"] = track
            if seed is not None:
                data["seed"] = int(seed)
            if autoreset:
                data["autoreset"] = True
        self._command("SPAWN_AGENTS", env_id, data, tick)

    @property
    def autoresets(self) -> bool:
        """The game restarts cars spawned with ``autoreset=True`` itself: it announced the capability
        (with ``columns``) and steps in lockstep (in real time, packets of the next episode could
        come before the trainer read the ending)."""
        return self.game is not None and _autoresets(self.game)

    def reset_agents(self, env_id: str, agents: Sequence[str]) -> None:
        """Respawn agents (their episodes restart); the game answers with their observations."""
        agents = list(agents)
        tick = self._next_tick()
        self.data.expect_answers(agents, tick, restart=True)
        self._command("RESET_AGENTS", env_id, agents, tick)

    def remove_agents(self, env_id: str, agents: Sequence[str]) -> None:
        agents = list(agents)
        self.data.forget(agents)
        self._command("REMOVE_AGENTS", env_id, agents)

    def send_actions(self, env_id: str, actions: Mapping[str, Sequence[float]]) -> None:
        """Actions for the agents of one venv (the original project's per-venv ACTION)."""
        tick = self._next_tick()
        self.data.expect_answers(actions.keys(), tick)
        self._command("ACTION", env_id, dict(actions), tick)

    def send_action_batch(self, actions: Mapping[str, Mapping[str, Sequence[float]]]) -> int:
        """Actions for every venv at once: one ACTION_BATCH frame per game (per-venv ACTIONs for v0 games).

        ``actions`` is ``{envid: {agent_id: [throttle, steering, nitro]}}`` (rows may be numpy arrays).
        Returns the tick id the observations will answer.
        """
        tick = self._next_tick()
        # orjson takes dicts only; the env's batch already is one (no copy on the hot path)
        actions = {
            env_id: per_venv if type(per_venv) is dict else dict(per_venv) for env_id, per_venv in actions.items()
        }
        self.data.expect_answers([aid for per_venv in actions.values() for aid in per_venv], tick)
        by_game: dict[GameLink, dict] = {}
        for env_id, per_venv in actions.items():
            by_game.setdefault(self.host_of(env_id), {})[env_id] = per_venv
        for link, batch in by_game.items():
            self._send_batch(link, batch, tick)
        self.action_sent_at = time.monotonic()
        return tick

    def _send_batch(self, link: GameLink, actions: dict[str, dict], tick: int) -> None:
        """One game's actions: an ACTION_BATCH, or an ACTION per venv to a game that takes no batch."""
        if link.spec.has("batch"):
            link.send(protocol.encode_command("ACTION_BATCH", None, actions, tick))
            return
        for env_id, per_venv in actions.items():
            link.send(_encode(link.spec, "ACTION", env_id, per_venv, tick))

    def send_action_rows(self, agent_ids: Sequence[str], actions: np.ndarray) -> int:
        """Actions of many agents at once, row k of ``actions`` (n, action_size) for ``agent_ids[k]``:
        one frame per game, under one tick (``send_rows``). Returns the tick id the observations
        will answer."""
        self._check_open()
        tick = self._next_tick()
        self.data.expect_answers(agent_ids, tick)
        for link, rows in self._by_game(agent_ids):
            if rows is None:
                self.send_rows(link, agent_ids, actions, tick)
            else:
                self.send_rows(link, [agent_ids[k] for k in rows], actions[rows], tick)
        self.action_sent_at = time.monotonic()
        return tick

    # (ids, hosts, first game, [(game, rows)]) of the latest call
    _groups: tuple[list[str], dict, GameLink | None, list] | None = None

    def _by_game(self, agent_ids: Sequence[str]) -> list:
        """[(game, row indices or None for all)] of these cars; kept while the cars and hosts stay
        (every step sends the same cars)."""
        cached, first = self._groups, self.link
        if cached is not None and cached[1] == self.hosts and cached[2] is first and cached[0] == agent_ids:
            return cached[3]
        by_game: dict = {}
        for k, aid in enumerate(agent_ids):
            by_game.setdefault(self.host_of(protocol.parse_agent_id(aid)[1]), []).append(k)
        groups = [(link, None if len(by_game) == 1 else rows) for link, rows in by_game.items()]
        self._groups = (list(agent_ids), dict(self.hosts), first, groups)
        return groups

    def send_rows(self, link: GameLink, agent_ids: Sequence[str], actions: np.ndarray, tick: int) -> None:
        """Actions of agents that all run on ``link``, for a step whose answers are already expected
        (``data.expect_answers``): the column form to games that take it, else per venv."""
        if link.spec.has("columns"):
            ids = agent_ids if type(agent_ids) is list else list(agent_ids)
            link.send(protocol.encode_action_rows(ids, np.ascontiguousarray(actions), tick))
            return
        batch: dict[str, dict] = {}
        for aid, row in zip(agent_ids, actions, strict=True):
            batch.setdefault(protocol.parse_agent_id(aid)[1], {})[aid] = row
        self._send_batch(link, batch, tick)

    def close_environment(self, env_id: str) -> None:
        """Destroy a venv (track and cars) in the game."""
        self.data.forget([aid for aid in list(self.data.rows) if protocol.parse_agent_id(aid)[1] == env_id])
        self._command("CLOSE", env_id)

    def close_on(self, link: GameLink, env_id: str) -> None:
        """Destroy a venv on one game (it moved to another; its cars keep their slots)."""
        link.send(_encode(link.spec, "CLOSE", env_id, None, None))

    def close_all(self) -> None:
        """Destroy every venv in every game."""
        self.data.forget(list(self.data.rows))
        self._command("CLOSE_ALL")

    def update_collisions(self, status: bool, link: GameLink | None = None) -> None:
        """Turn car-car collisions inside each venv on (True) or off (False) (of one game: ``link``)."""
        self._command("UPDATE_COLLISIONS", None, bool(status), link=link)

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


def _autoresets(game: GameSpec) -> bool:
    return game.has("autoreset") and game.has("columns") and game.mode == "lockstep"


def _encode(game: GameSpec, command: str, envid: str | None, data: object, tick: int | None) -> bytes:
    """A command in the form ``game`` reads (the tick only to games that echo it)."""
    if not game.protocol:
        return protocol.encode_v0_command(command, envid, data)
    return protocol.encode_command(command, envid, data, tick if game.has("tick") else None)
