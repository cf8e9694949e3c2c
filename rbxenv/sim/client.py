"""The simulator as a game: serves PROTOCOL.md over a WebSocket, like the Roblox place does.

``SimGame`` turns commands into Sim calls and observation frames (no sockets: easy to test and to
fuzz); ``run`` connects it to a trainer, in lockstep (one decision step per ACTION_BATCH) or in real
time (ticking at ``tick_hz`` with the latest actions, as Roblox does). Against a v0 trainer (its
first frame is not a ``welcome``) it behaves like the original project's Roblox place: real time, one packet per
tick with every car (``[]`` while none is live), ended cars restarted in the same tick (the entry
brings the next episode's first observation and the ended one's ``last_observation``), no packet
answering a spawn, no error frames (a v0 trainer would take them for agents), PING answered with
``__pong`` when it carries a time.

    python -m rbxenv.sim --url ws://127.0.0.1:8000/ws/<modelId> [--realtime --tick-hz 15] [--num-rays 16]
                         [--max-venvs 4 --max-cars 100]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Iterable
from itertools import chain

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from rbxenv import protocol
from rbxenv.protocol import ActionRows, Command, GameSpec, ProtocolError
from rbxenv.sim.rules import SimConfig, sim_config
from rbxenv.sim.world import Sim, StepResult

log = logging.getLogger("rbxenv.sim")


# What one simulator seats: a trainer (or anything that reaches its socket) cannot make it
# allocate without bound. Car indices above MAX_CARS_PER_VENV would build that many grid slots.
MAX_VENVS = 256
MAX_CARS_PER_VENV = 256  # car indices 0..255
MAX_CARS = 4096
# Track specs the simulator builds (beyond protocol.check_track_spec's structure): finite,
# bounded coordinates and widths, points at least MIN_SPACING apart (denser centre lines make the
# ray windows, built once per track, grow quadratically), inner walls not collapsed into a point.
MAX_COORD = 1e5
MAX_HALF_WIDTH = 100.0
MIN_SPACING, MAX_SPACING = 1.0, 100.0
MIN_WALL_SPACING = 0.25


def game_spec(
    sim: Sim, realtime: bool, tick_hz: float, max_venvs: int | None = None, max_cars: int | None = None
) -> GameSpec:
    cfg = sim.config
    return GameSpec(
        protocol=protocol.PROTOCOL_VERSION,
        game="rbxenv-sim",
        obs_size=cfg.obs_size,
        num_rays=cfg.num_rays,
        action_size=3,
        tick_hz=tick_hz,
        mode="realtime" if realtime else "lockstep",
        capabilities=protocol.CAPABILITIES - {"game_tracks"},  # it builds the tracks it is sent
        max_venvs=max_venvs,
        max_cars=max_cars,
    )


class SimGame:
    """Protocol logic of the simulator game: ``handle(command) -> frames to send``.

    ``max_venvs`` / ``max_cars``: what its hello announces it will host (None: no limit beyond the
    simulator's own); a spawn beyond them is refused with a ``capacity`` error."""

    def __init__(self, sim: Sim, realtime: bool = False, max_venvs: int | None = None, max_cars: int | None = None):
        self.sim = sim
        self.realtime = realtime
        self.max_venvs, self.max_cars = max_venvs, max_cars
        # The trainer is the original project's (its first frame is not a welcome): see the module docstring.
        # None until the first command says.
        self.v0_trainer: bool | None = None
        self.batch = False  # until the trainer's welcome says it takes obs batches
        self.columns = False  # ... and obs batches in column form
        self.ticked = False
        self.tick = 0  # tick of the latest command applied
        self.actions: dict[str, list] = {}  # latest action per car (held in real time)
        self.autoreset: set[str] = set()  # cars restarted as soon as their episode ends (column form only)
        self.acted_venvs: set[str] = set()  # lockstep with per-venv ACTIONs: venvs acted since the last step
        self.stats = {"steps": 0, "bad_commands": 0, "internal_errors": 0}
        self._bad = protocol.RateLimitedLog(log, "bad command from trainer")
        self._trainer_errors = protocol.RateLimitedLog(log, "trainer reported an error")
        self._internal = protocol.RateLimitedLog(log, "internal error in the simulator (a bug: please report it)")

    def receive(self, frame: str | bytes) -> list[bytes]:
        """One frame from the trainer -> the frames to send back. Never raises: a bad command
        gets an ``error`` frame (PROTOCOL.md §3.5), counted and logged at a limited rate."""
        tick = self.tick
        try:
            if not isinstance(frame, str):
                raise ProtocolError("binary frame: commands are JSON text frames")
            return self.handle(protocol.decode_command(frame))
        except ProtocolError as err:
            code, message = err.code, str(err)
        except Exception as err:  # noqa: BLE001 - a state the checks missed must not end the game
            # Not the trainer's fault: counted and reported as internal_error, never as a bad command.
            self.tick = tick
            return [self.internal_error(err, "could not apply this command")]
        self.tick = tick  # a refused command does not move the tick
        self.stats["bad_commands"] += 1
        self._bad.warn(code, message)
        if self.v0_trainer:  # the original project's trainer reads every key of a frame as an agent: log only
            return []
        return [protocol.encode_error(code, message[:500])]

    def internal_error(self, err: Exception, what: str) -> bytes:
        """Count a failure of the simulator itself, log it, and the ``internal_error`` frame for the trainer."""
        self.stats["internal_errors"] += 1
        log.debug("internal error in the simulator", exc_info=err)
        message = f"the simulator {what} ({type(err).__name__}: {err})"
        self._internal.warn("internal_error", message)
        return protocol.encode_error("internal_error", message[:500])

    # ------------------------------------------------------------------ commands

    def welcome(self, capabilities: list[str]) -> None:
        self.v0_trainer = False
        self.batch = "batch" in capabilities
        self.columns = self.batch and "columns" in capabilities
        self.ticked = "tick" in capabilities

    def handle(self, cmd: Command) -> list[bytes]:
        if self.v0_trainer is None:
            self.v0_trainer = cmd.name != "WELCOME"
            if self.v0_trainer:
                self.realtime = True  # the original project's place ticks on its own
        if cmd.tick is not None:
            self.tick = max(self.tick, cmd.tick)
        sim = self.sim
        name = cmd.name
        if name == "ACTION_BATCH":  # the lockstep hot path, tested first
            if type(cmd.data) is ActionRows:
                return self._action_rows(cmd.data)
            batch = cmd.data.values()
            for per_venv in batch:  # all or nothing: check every venv before applying any
                self._check_known_actions(per_venv)
            for per_venv in batch:
                self.actions.update(per_venv)  # validated lists; converted and clipped once per step
            return [] if self.realtime else self.step()
        if name == "WELCOME":
            caps = cmd.data.get("capabilities", [])
            if type(caps) is not list or not all(isinstance(c, str) for c in caps):
                raise ProtocolError(f"welcome.capabilities: expected an array of strings, got {protocol._show(caps)}")
            self.welcome(caps)
            return []
        if name == "ERROR":
            self._trainer_errors.warn(cmd.data.code[:40], cmd.data.message[:500])
            return []
        if name == "FREEZE":
            sim.freeze(cmd.data)
            return []
        if name == "PING":  # keep-alive; a time to echo is answered
            return [] if cmd.data is None else [protocol.encode_pong(cmd.data)]
        if name == "CREATE_ENV":  # the simulator builds a venv (and its track) with its first cars
            return []
        if name == "UPDATE_COLLISIONS":
            sim.set_collisions(cmd.data)
            return []
        if name == "CLOSE_ALL":
            sim.close_all()
            self.actions.clear()
            self.autoreset.clear()
            return []
        if name == "CLOSE":
            sim.close_venv(cmd.envid)
            self._forget(cmd.envid)
            return []
        if name == "SPAWN_AGENTS":
            spawn = cmd.data
            self._check_spawn(cmd.envid, spawn)
            sim.spawn(cmd.envid, spawn["agents"], track=spawn["track"], start=spawn["start"], seed=spawn["seed"])
            for aid in spawn["agents"]:
                self.actions[aid] = [0.0, 0.0, 0.0]
            if spawn["autoreset"]:
                self.autoreset.update(spawn["agents"])
            else:
                self.autoreset.difference_update(spawn["agents"])
            return [] if self.v0_trainer else [self._report(spawn["agents"], envid=cmd.envid)]
        if name == "RESET_AGENTS":
            ids = self._known(cmd.data)
            sim.reset_agents(ids)
            for aid in ids:
                self.actions[aid] = [0.0, 0.0, 0.0]
            return [] if self.v0_trainer else [self._report(ids, envid=cmd.envid)]
        if name == "REMOVE_AGENTS":
            ids = self._known(cmd.data)
            sim.remove_agents(ids)
            for aid in ids:
                self.actions.pop(aid, None)
            self.autoreset.difference_update(ids)
            return []
        if name == "ACTION":
            self._check_known_actions(cmd.data)
            self.actions.update(cmd.data)
            if self.realtime:
                return []
            # Lockstep with a v0 trainer: step once every venv with live cars has its actions.
            self.acted_venvs.add(cmd.envid)
            envids = sim.envids
            if not {envids[v] for v in np.unique(sim.venv[sim.live])} <= self.acted_venvs:
                return []
            return self.step()
        raise ProtocolError(f"unhandled command {name}", "unknown_command")

    def _known(self, ids: list[str]) -> list[str]:
        known = [aid for aid in ids if aid in self.actions]
        if len(known) != len(ids):
            missing = sorted(set(ids) - set(known))
            raise ProtocolError(f"agents never spawned: {', '.join(missing[:3])}", "unknown_agent")
        return known

    def _check_spawn(self, envid: str, spawn: dict) -> None:
        """Refuse spawns beyond what this simulator seats, and tracks it cannot build in bounded time."""
        sim = self.sim
        new_venv = envid not in sim.envids
        if new_venv and len(sim.envids) >= MAX_VENVS:
            raise ProtocolError(f"SPAWN_AGENTS: this simulator runs at most {MAX_VENVS} venvs", "too_large")
        if new_venv and self.max_venvs is not None and len(sim.envids) >= self.max_venvs:
            raise ProtocolError(
                f"SPAWN_AGENTS {envid}: this game hosts at most {self.max_venvs} venvs (max_venvs in its hello)",
                "capacity",
            )
        fresh = set()
        for aid in spawn["agents"]:
            index = protocol.parse_agent_id(aid)[0]
            if index >= MAX_CARS_PER_VENV:
                raise ProtocolError(
                    f"SPAWN_AGENTS: {aid}: this simulator seats at most {MAX_CARS_PER_VENV} cars per venv "
                    f"(indices 0..{MAX_CARS_PER_VENV - 1})",
                    "too_large",
                )
            if aid not in self.actions:
                fresh.add(aid)
        if len(self.actions) + len(fresh) > MAX_CARS:
            raise ProtocolError(
                f"SPAWN_AGENTS: {len(fresh)} more cars would make {len(self.actions) + len(fresh)}; "
                f"this simulator runs at most {MAX_CARS}",
                "too_large",
            )
        if self.max_cars is not None and len(self.actions) + len(fresh) > self.max_cars:
            raise ProtocolError(
                f"SPAWN_AGENTS {envid}: {len(fresh)} more cars would make {len(self.actions) + len(fresh)}; "
                f"this game hosts at most {self.max_cars} (max_cars in its hello)",
                "capacity",
            )
        if spawn["track"] is not None:
            check_buildable_track(spawn["track"])

    def _check_known_actions(self, ids: Iterable[str]) -> None:
        """Refuse actions for agents never spawned (``ids``: a list, or an {id: action} dict)."""
        if not all(map(self.actions.__contains__, ids)):  # one C-level pass on the hot path
            unknown = [aid for aid in ids if aid not in self.actions]
            raise ProtocolError(f"actions for agents never spawned: {', '.join(unknown[:3])}", "unknown_agent")

    def _action_rows(self, rows: ActionRows) -> list[bytes]:
        """ACTION_BATCH in column form: it means what the per-venv form means; when it names every
        car in the simulator's order (as the trainer sends it), the step takes its array as it is."""
        ids = rows.agent_ids
        self._check_known_actions(ids)
        self.actions.update(zip(ids, rows.actions.tolist(), strict=True))  # held for cars a later batch leaves out
        if self.realtime:
            return []
        if ids == self.sim.agent_ids:
            return self.step(rows.actions.clip(-1.0, 1.0).astype(np.float32))  # as _action_array would
        return self.step()

    def _forget(self, envid: str) -> None:
        for aid in [a for a in self.actions if protocol.parse_agent_id(a)[1] == envid]:
            del self.actions[aid]
            self.autoreset.discard(aid)

    # ------------------------------------------------------------------ stepping and reporting

    def step(self, actions: np.ndarray | None = None) -> list[bytes]:
        """Advance one decision step with the latest actions (``actions``: the same, already as an
        (n, 3) float32 array in ``Sim.agent_ids`` order); frames for the cars that were live."""
        sim = self.sim
        ids = sim.agent_ids
        if not ids or sim.frozen:
            return [b"[]"] if self.v0_trainer else []  # the original project's place: JSONEncode of no cars
        result = sim.step(self._action_array(ids) if actions is None else actions)
        self.stats["steps"] += 1
        self.acted_venvs.clear()
        reported = np.count_nonzero(result.live)
        if reported == len(ids):  # every car was live (the usual lockstep step): no rows to pick
            return self._frames(ids, result, slice(None))
        if reported == 0:
            return [b"[]"] if self.v0_trainer else []
        live = np.flatnonzero(result.live)
        return self._frames([ids[k] for k in live], result, live)

    def _action_array(self, ids: list[str]) -> np.ndarray:
        """The latest actions of cars ``ids`` as the game applies them: (n, 3) float32 in [-1, 1]."""
        # one flat pass (np.array of n short lists costs twice as much); clipped in float64: a huge
        # (finite) number must not overflow float32 on the way
        flat = np.fromiter(chain.from_iterable(map(self.actions.__getitem__, ids)), np.float64, 3 * len(ids))
        return flat.clip(-1.0, 1.0, out=flat).astype(np.float32).reshape(-1, 3)

    def _report(self, ids: list[str], envid: str) -> bytes:
        """The observation packet answering a spawn or reset (reward 0, not done, lap 0)."""
        n = len(ids)
        idx = np.array([self.sim.index_of(aid) for aid in ids], dtype=np.int64)
        info = self._info(idx, np.zeros(n), np.zeros(n), np.full(n, np.nan), self.sim.speed[idx], np.zeros(n, bool),
                          np.full(n, None))  # fmt: skip
        zeros = np.zeros(n, dtype=bool)
        return protocol.encode_obs(
            ids, self.sim.observe(ids), np.zeros(n), zeros, zeros, info, self._tick(), self._form
        )

    def _frames(self, ids: list[str], result: StepResult, rows: np.ndarray | slice) -> list[bytes]:
        """Observation frames of the cars ``rows`` (indices into ``result``, or ``slice(None)``: all)."""
        r = result
        info = self._info(
            rows, r.progress[rows], r.lap[rows], r.lap_time[rows], r.speed[rows], r.collided[rows], r.cause[rows]
        )
        obs, reward = result.obs[rows], result.reward[rows]
        term, trunc = result.terminated[rows], result.truncated[rows]
        if self.columns:
            reset_ids, reset_obs = self._restart(ids, term | trunc) if self.autoreset else (None, None)
            return [
                protocol.encode_obs(ids, obs, reward, term, trunc, info, self._tick(), "columns", reset_ids, reset_obs)
            ]
        if self.batch:
            return [protocol.encode_obs(ids, obs, reward, term, trunc, info, self._tick(), self._form)]
        if self.v0_trainer:
            return [self._v0_packet(ids, obs, reward, term, trunc)]
        # A v1 trainer without batch: one packet per venv.
        frames = []
        by_venv: dict[str, list[int]] = {}
        for k, aid in enumerate(ids):
            by_venv.setdefault(aid[aid.index("_env_") + 5 :], []).append(k)
        for ks in by_venv.values():
            sel = np.array(ks)
            venv_info = {key: column[sel] for key, column in info.items()}
            frames.append(
                protocol.encode_obs([ids[k] for k in ks], obs[sel], reward[sel], term[sel], trunc[sel], venv_info,
                                    form="v0")
            )  # fmt: skip
        return frames

    def _v0_packet(self, ids: list[str], obs, reward, term, trunc) -> bytes:
        """The v0 place's packet: every car in one object; a car whose episode ended is restarted
        now, its entry the ending (reward, flags) with the new episode's first ``obs`` and the ended
        one's final frame as ``last_observation``."""
        ended = term | trunc
        first = {}
        if ended.any():
            restart = [ids[k] for k in np.flatnonzero(ended)]
            self.sim.reset_agents(restart)
            for aid in restart:
                self.actions[aid] = [0.0, 0.0, 0.0]
            first = dict(zip(restart, self.sim.observe(restart), strict=True))
        agents = {}
        for k, aid in enumerate(ids):
            entry = {
                "obs": obs[k],
                "reward": float(reward[k]),
                "terminated": bool(term[k]),
                "truncated": bool(trunc[k]),
            }
            if aid in first:
                entry["obs"], entry["last_observation"] = first[aid], obs[k]
            agents[aid] = entry
        return protocol.dumps(agents)

    def _restart(self, ids: list[str], ended: np.ndarray) -> tuple[list[str] | None, np.ndarray | None]:
        """Autoreset: restart the cars among ``ids`` whose episode just ended and that were spawned
        with ``autoreset`` (as RESET_AGENTS would), after their ending was read; their ids and first
        observations, or (None, None)."""
        if not ended.any():
            return None, None
        restart = [aid for aid, end in zip(ids, ended.tolist(), strict=True) if end and aid in self.autoreset]
        if not restart:
            return None, None
        self.sim.reset_agents(restart)
        for aid in restart:
            self.actions[aid] = [0.0, 0.0, 0.0]
        return restart, self.sim.observe(restart)

    @property
    def _form(self) -> str:
        return "columns" if self.columns else "batch" if self.batch else "seed"

    def _tick(self) -> int | None:
        return self.tick if self.ticked else None

    def _info(self, rows, progress, lap, lap_time, speed, collided, cause) -> dict[str, np.ndarray]:
        """Info columns (PROTOCOL.md §3.3) of the cars ``rows`` (poses read from the sim)."""
        x, y = self.sim.pos[rows].T.copy()  # contiguous: orjson writes them natively, not through tolist()
        return {
            "progress": progress,
            "lap": lap,
            "lap_time": lap_time,
            "speed": speed,
            "x": x,
            "y": y,
            "heading": self.sim.heading[rows].copy(),  # (a view for slice(None)): autoreset moves the car
            "collided": collided,
            "cause": cause,
        }


def check_buildable_track(track: dict) -> None:
    """Bounds of a track spec the simulator will build (see MAX_COORD ...); ProtocolError if not."""
    from rbxenv import tracks

    c = np.asarray(track["centerline"], dtype=np.float64)
    w = np.asarray(track["half_width"], dtype=np.float64)
    grid = np.asarray(track.get("grid") or np.zeros((0, 3)), dtype=np.float64)
    where = "SPAWN_AGENTS.data.track"
    if not (np.abs(c).max() <= MAX_COORD and (grid.size == 0 or np.abs(grid).max() <= MAX_COORD)):
        raise ProtocolError(f"{where}: coordinates beyond ±{MAX_COORD:g} studs")
    if w.max() > MAX_HALF_WIDTH:
        raise ProtocolError(f"{where}.half_width: at most {MAX_HALF_WIDTH:g} studs, got {w.max():g}")
    seg = np.hypot(*(np.roll(c, -1, axis=0) - c).T)
    if not MIN_SPACING <= seg.min() <= seg.max() <= MAX_SPACING:
        raise ProtocolError(
            f"{where}.centerline: points must be {MIN_SPACING:g}..{MAX_SPACING:g} studs apart "
            f"(about {tracks.SPACING:g} is usual), got {seg.min():.3g}..{seg.max():.3g}"
        )
    for side, wall in zip(("left", "right"), tracks.offset_walls(c, w), strict=True):
        gap = np.hypot(*(np.roll(wall, -1, axis=0) - wall).T).min()
        if not gap >= MIN_WALL_SPACING:
            raise ProtocolError(
                f"{where}: the {side} wall folds onto itself (points {gap:.3g} studs apart): "
                "half_width exceeds the corner radius somewhere"
            )


# ---------------------------------------------------------------------------------------------- socket


async def run(
    url: str,
    *,
    realtime: bool = False,
    tick_hz: float = 15.0,
    seed: int = 0,
    v0: bool = False,
    token: str | None = None,
    connect_timeout: float = 30.0,
    sim: Sim | None = None,
    num_rays: int = 10,
    max_venvs: int | None = None,
    max_cars: int | None = None,
) -> dict:
    """Connect to a trainer and serve it until it closes the connection. Returns the game's stats.

    ``v0``: send no hello (a game that speaks only the v0 formats). ``max_venvs`` / ``max_cars``:
    announced in the hello and enforced (None: no limit)."""
    sim = sim or Sim(SimConfig(num_rays=num_rays), seed=seed)
    game = SimGame(sim, realtime=realtime, max_venvs=max_venvs, max_cars=max_cars)
    if v0:  # as the original project's place: real time, a packet every tick from the start ("[]": no car)
        game.v0_trainer, game.realtime = True, True
    deadline = time.monotonic() + connect_timeout
    delay = 0.1
    while True:
        try:
            ws = await connect(url, max_size=16 * protocol.MAX_FRAME_BYTES, compression=None, open_timeout=10)
            break
        except (OSError, InvalidHandshake, TimeoutError) as err:  # (a refused or garbled handshake: try again)
            if time.monotonic() > deadline:
                raise ConnectionError(
                    f"no trainer at {url} after {connect_timeout:g} s ({err}); start the trainer first"
                ) from err
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)  # back off, as the Roblox client does
    async with ws:
        if not v0:
            spec = game_spec(sim, realtime, tick_hz, max_venvs, max_cars)
            await ws.send(protocol.encode_hello(spec, token).decode())
        ticker = asyncio.create_task(_tick_loop(ws, game, tick_hz)) if game.realtime else None
        try:
            async for frame in ws:
                for out in game.receive(frame):
                    await ws.send(out, text=True)
                if ticker is None and game.realtime:  # a v0 trainer: tick like the original project's place
                    ticker = asyncio.create_task(_tick_loop(ws, game, tick_hz))
        except ConnectionClosed:
            pass
        finally:
            if ticker is not None:
                ticker.cancel()
    return game.stats


async def _tick_loop(ws, game: SimGame, tick_hz: float) -> None:
    """Real-time mode: step at ``tick_hz`` with whatever actions arrived last (Roblox timing)."""
    period = 1.0 / tick_hz
    next_tick = time.monotonic()
    while True:
        next_tick += period
        await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
        if time.monotonic() - next_tick > 5 * period:  # fell far behind (machine busy): don't burst
            next_tick = time.monotonic()
        try:
            frames = game.step()
        except Exception as err:  # noqa: BLE001 - keep ticking, and tell the trainer (it counts these)
            frames = [game.internal_error(err, "failed a real-time tick")]
        for out in frames:
            await ws.send(out, text=True)


def main(argv: list[str] | None = None) -> None:
    from rbxenv import cli

    parser = cli.ArgumentParser(
        prog="python -m rbxenv.sim", description="Headless racing simulator: a game that connects to a trainer."
    )
    parser.add_argument("--url", default=f"ws://127.0.0.1:{protocol.DEFAULT_PORT}", help="trainer WebSocket URL (any path; a v0 trainer serves /ws/<modelId>)")  # fmt: skip
    parser.add_argument("--realtime", action="store_true", help="tick on our own at --tick-hz (like Roblox)")
    parser.add_argument("--tick-hz", type=float, default=15.0, help="decisions per second in real-time mode")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed (own tracks, random starts)")
    parser.add_argument(
        "--v0", action="store_true", help="speak only protocol version 0, the original project's (no hello)"
    )
    parser.add_argument("--seed-protocol", action="store_true", help=argparse.SUPPRESS)  # --v0's old name
    parser.add_argument("--num-rays", type=int, default=10, help="rays per car: the observation is num_rays + 3 floats (the original project's default car: 16)")  # fmt: skip
    parser.add_argument("--max-venvs", type=int, help=f"host at most this many venvs (1..{MAX_VENVS}; default: no limit): announced in hello, a spawn beyond it refused")  # fmt: skip
    parser.add_argument("--max-cars", type=int, help=f"host at most this many cars in all venvs together (1..{MAX_CARS}; default: no limit): announced and enforced alike")  # fmt: skip
    parser.add_argument("--connect-timeout", type=float, default=30.0, help="seconds to keep retrying")
    parser.add_argument(
        "--dynamics",
        default="kinematic",
        help='the car: "kinematic", "dynamic" or "randomized" (rbxenv.sim.rules.sim_config), optionally '
        'with SimConfig overrides, e.g. "dynamic,max_lateral_accel=56,actuator_lag=0.2"',
    )
    args = parser.parse_args(argv)
    if args.seed_protocol:
        print("rbxenv.sim: --seed-protocol is deprecated and will go: use --v0 (the same)", file=sys.stderr)
        args.v0 = True
    cli.check("rbxenv.sim", args, {
        "--url": lambda url: None if url.startswith(("ws://", "wss://")) else "allowed: a ws:// or wss:// URL",
        "--tick-hz": cli.above(0),
        "--connect-timeout": cli.at_least(0),
        "--num-rays": cli.between(1, 256),
        "--max-venvs": cli.between(1, MAX_VENVS),
        "--max-cars": cli.between(1, MAX_CARS),
    })  # fmt: skip
    if args.v0 and (args.max_venvs is not None or args.max_cars is not None):
        # a v0 game says nothing about itself: its trainer would wait for cars it can never spawn
        cli.refuse("rbxenv.sim", "--max-venvs / --max-cars are announced in hello, which --v0 never sends: drop one")
    try:
        config = dataclasses.replace(sim_config(args.dynamics), num_rays=args.num_rays)
    except ValueError as err:
        parser.error(str(err))
    logging.basicConfig(level=logging.WARNING, format="rbxenv.sim: %(message)s")
    try:
        with asyncio.Runner() as runner:
            stats = runner.run(
                run(
                    args.url,
                    realtime=args.realtime,
                    tick_hz=args.tick_hz,
                    seed=args.seed,
                    v0=args.v0,
                    token=os.environ.get("RBXENV_TOKEN") or None,
                    connect_timeout=args.connect_timeout,
                    sim=Sim(config, seed=args.seed),
                    max_venvs=args.max_venvs,
                    max_cars=args.max_cars,
                )
            )
    except ConnectionError as err:
        cli.fail("rbxenv.sim", str(err))
    except KeyboardInterrupt:
        raise SystemExit(cli.EXIT_INTERRUPTED) from None
    log.info("trainer closed the connection after %d steps", stats["steps"])
