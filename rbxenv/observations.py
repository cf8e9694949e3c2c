"""Per-agent observation slots that the network thread fills and the training thread reads.

``DataBridge`` keeps one row per agent in flat arrays (latest observation, rewards and endings
accumulated since the trainer last read it, tick bookkeeping, info) under one Condition: the
network thread stores each packet with a few array operations for all cars, and a training thread
blocked in ``wait`` wakes when every car it asked for has its answer. ``Observations`` is what it
hands over.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from rbxenv import protocol, v0
from rbxenv.protocol import ObsBatch


class BridgeClosed(RuntimeError):
    """The game went away (or never came) while the trainer needed it."""


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
    # The agent's game left before it answered (``wait(partial=True)``): its row holds nothing new.
    lost: np.ndarray | None = None  # (n,) bool

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
        self.lost: str | None = None  # why the game is gone, when it is (the last one, with several)
        self.fatal: str | None = None  # why the run cannot go on with this game (raised before ``lost``)
        self.gone_hosts: set[int] = set()  # the numbers of the games that left (``lose``)
        self.stats: Counter[str] = Counter()
        # Agents the trainer removed: a real-time game's tick in flight may still name them (dropped
        # quietly, not "unknown"), until they are spawned again.
        self.removed: set[str] = set()
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
            "host": np.zeros(capacity, np.int64),  # the number of the game that runs the car (0: not placed)
            "gone": np.zeros(capacity, bool),  # ... and that game left
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

    def expect_answers(
        self, agent_ids: Iterable[str], tick: int, restart: bool = False, host: int | None = None
    ) -> None:
        """Make agents known and wait for an answer to the command sent with ``tick``.

        ``restart`` (spawn, reset): whatever was pending belongs to the episode that just ended.
        ``host`` (spawn): the number of the game the agents now run on; only it is listened to.
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
                self.removed.difference_update(new)
            rows = self.select(agent_ids)
            if restart or new:
                restarted = rows if restart else self.rows_of(new)
                self._drain(restarted)
                c["episode_tick"][restarted] = tick
            if host is not None:
                c["host"][rows] = host
                c["gone"][rows] = host in self.gone_hosts
            # An ending already received stays deliverable: a parked car sends nothing more.
            c["fresh"][rows] = c["terminated"][rows] | c["truncated"][rows]
            c["expected_tick"][rows] = tick

    def silent_hosts(self, agent_ids: Sequence[str]) -> set[int]:
        """The games of these agents that owe an answer (not fresh, not gone)."""
        with self.cond:
            rows = self.select(agent_ids)
            c = self._c
            return set(c["host"][rows][~c["fresh"][rows] & ~c["gone"][rows]].tolist())

    def lose(self, host: int) -> None:
        """Game ``host`` left: its cars will never answer (``wait`` reports them lost)."""
        with self.cond:
            self.gone_hosts.add(host)
            c = self._c
            c["gone"] |= c["host"] == host
            self.cond.notify_all()

    def forget(self, agent_ids: Iterable[str]) -> None:
        with self.cond:
            self._selected = None
            for aid in agent_ids:
                row = self.rows.pop(aid, None)
                self.removed.add(aid)
                if row is not None:
                    self._drain(row)
                    self._free.append(row)
            self.cond.notify_all()

    def put_batch(self, batch: ObsBatch, host: int = 0, self_restart: bool = False) -> list[str]:
        """Store a packet of game ``host`` (network thread). Returns the agent ids nobody spawned (ignored).

        ``self_restart``: a v0 game restarts an ended car itself in the same tick: its entry carries
        the ending AND the first observation of the next episode.
        """
        now = time.monotonic()
        with self.cond:
            c = self._c
            if batch.obs.shape[1] != c["obs"].shape[1]:  # the first packet of a game tells the width
                self._alloc(len(c["reward"]), batch.obs.shape[1])
                c = self._c
            self.stats["obs_packets"] += 1
            rows = self._current(batch, host)
            unknown: list[str] = []
            if rows is None:
                rows, batch, unknown = self._sift(batch, host)
            else:
                c["reward"][rows] += batch.reward
                c["terminated"][rows] |= batch.terminated
                c["truncated"][rows] |= batch.truncated
            if self_restart and batch.tick is None:
                v0.split_restarts(batch, c["obs"][rows])
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

    def _current(self, batch: ObsBatch, host: int) -> np.ndarray | slice | None:
        """The rows of a packet that is the plain answer to the latest command (every car known
        and run by ``host``, none from an old episode, none stale), or None: then ``_sift`` sorts it out."""
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
        if batch.tick is None and host:  # (a ticked packet of a moved venv's old game is older than its spawn)
            hosts = self._c["host"][rows]
            if not ((hosts == host) | (hosts == 0)).all():  # a venv that moved to another game
                return None
        return rows

    def _sift(self, batch: ObsBatch, host: int) -> tuple[np.ndarray, ObsBatch, list[str]]:
        """A packet with unknown agents, old episodes or stale answers: accumulate the rewards and
        endings that count, and return the rows and part of the packet to deliver, and the unknown."""
        c = self._c
        get = self.rows.get
        rows = np.array([get(aid, -1) for aid in batch.agent_ids], np.int64)
        unknown = [
            aid for aid, row in zip(batch.agent_ids, rows.tolist(), strict=True) if row < 0 and aid not in self.removed
        ]
        rows, batch = _keep(rows, batch, rows >= 0)
        if host:
            # the venv moved to another game: its old host's packets in flight are not its answers
            elsewhere = (c["host"][rows] != host) & (c["host"][rows] != 0)
            if elsewhere.any():
                self.stats["moved_packets"] += int(elsewhere.sum())
                rows, batch = _keep(rows, batch, ~elsewhere)
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

    def lost_before_answering(self, agent_ids: Sequence[str], timeout: float) -> list[str]:
        """Block until each agent answered or its game left; the agents whose game left first (the
        answers of the others stay waiting for ``wait``)."""
        with self.cond:
            rows = self._await(agent_ids, timeout, partial=True)
            lost = self._c["gone"][rows] & ~self._c["fresh"][rows]
            return [aid for aid, gone in zip(agent_ids, lost.tolist(), strict=True) if gone]

    def _await(self, agent_ids: Sequence[str], timeout: float, partial: bool) -> np.ndarray | slice:
        """``wait``'s blocking part (under ``cond``): the rows, once every agent answered (or, with
        ``partial``, answered or lost its game)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.fatal is not None:
                raise BridgeClosed(self.fatal)
            if self.lost is not None and not partial:
                raise BridgeClosed(self.lost)
            rows = self.select(agent_ids)
            if not partial:
                if self._c["gone"][rows].any():
                    raise BridgeClosed("the game of these agents disconnected; respawn them on another")
                ready = self._c["fresh"][rows]
            else:
                ready = self._c["fresh"][rows] | self._c["gone"][rows]
            if ready.all():
                return rows
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = [aid for aid, ok in zip(agent_ids, ready, strict=True) if not ok]
                shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
                raise TimeoutError(
                    f"no observation for {len(missing)} of {len(agent_ids)} agents ({shown}) within "
                    f"{timeout:g} s: is the game paused, frozen, or not spawning these agents?"
                )
            self.cond.wait(remaining)

    def wait(self, agent_ids: Sequence[str], timeout: float, partial: bool = False) -> Observations:
        """Block until every agent has a fresh observation, then hand them over (and reset).

        A lost game raises BridgeClosed; with ``partial``, its agents come back marked
        ``Observations.lost`` instead, with the others' answers (several games, one left).
        """
        with self.cond:
            rows = self._await(agent_ids, timeout, partial)
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
                c["gone"][rows] & ~c["fresh"][rows] if partial else None,  # (answered before it left: not lost)
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
