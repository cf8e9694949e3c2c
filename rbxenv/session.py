"""One training session with its games: the backend, venvs, tracks, and which game hosts each venv.

Both env flavours (``envs.py``) sit on this: it opens a game backend (``GameBackend``), hands each
venv a track, spawns and resets cars, and steps all of them at once. Backends: the simulator in
this process (``sim="inprocess"``, the default: ``rbxenv.sim.backend.SimBackend``, ``Sim`` called
directly), the simulator in child processes over a loopback WebSocket (``sim="subprocess"``: the
protocol's conformance path) or games that connect on their own, such as Roblox (``sim=None``);
the last two through the TrainingBridge. Over the WebSocket several games can serve one session:
each venv runs on one game, spread evenly over those connected and within what each announced
it can host; games may join and leave mid-run. It knows nothing about Gym or PettingZoo.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import numpy as np

from rbxenv import tracks
from rbxenv.bridge import GameLink, TrainingBridge
from rbxenv.observations import BridgeClosed, Observations
from rbxenv.protocol import GameSpec, agent_id
from rbxenv.sim.rules import sim_config
from rbxenv.tracks import load_tracks

log = logging.getLogger("rbxenv")

# Track seeds: training draws from the first range, held-out evaluation uses the second, so a
# policy is always evaluated on tracks it has never driven.
TRAIN_TRACK_SEEDS = range(0, 1_000_000)
HELDOUT_TRACK_SEEDS = range(1_000_000, 1_001_000)


class GameBackend(Protocol):
    """What the session needs of a game: the TrainingBridge's calls, plus ``step``.

    Cars are named by agent id (``car_{i}_env_{venv}``); a spawn or reset is answered by the cars'
    first observations, read with ``get_observations``; ``step`` sends one action row per car and
    returns that step's observations. Cars spawned with ``autoreset`` (where ``autoresets``) are
    restarted by the game in the step their episode ends (``Observations.restarted/reset_obs``).
    """

    game: GameSpec | None
    connected: bool
    autoresets: bool

    def spawn_agents(self, env_id: str, agents: Sequence[str], track: dict | None = None, start: str = "grid",
                     seed: int | None = None, autoreset: bool = False) -> None: ...  # fmt: skip
    def reset_agents(self, env_id: str, agents: Sequence[str]) -> None: ...
    def remove_agents(self, env_id: str, agents: Sequence[str]) -> None: ...
    def get_observations(self, agent_ids: Sequence[str], timeout: float | None = None) -> Observations: ...
    def step(self, agent_ids: Sequence[str], actions: np.ndarray) -> Observations: ...
    def freeze(self, status: bool) -> None: ...
    def update_collisions(self, status: bool) -> None: ...
    def close_all(self) -> None: ...
    def close(self) -> None: ...


class RemoteGame(TrainingBridge):
    """Games over the WebSocket (Roblox, ``python -m rbxenv.sim``, v0 games) as a GameBackend.

    ``step`` sends each game the rows of the cars it hosts (one frame per game, one tick for all)
    and waits for every answer; the cars of a game that left come back marked ``lost``.
    """

    def step(self, agent_ids: Sequence[str], actions: np.ndarray) -> Observations:
        self.send_action_rows(agent_ids, actions)
        try:
            return self.data.wait(agent_ids, self.obs_timeout, partial=True)
        except TimeoutError:
            silent = self.data.silent_hosts(agent_ids)
            if not any(link.number not in silent for link in self.games):
                raise  # no game answered: the run says the game stopped answering
            for link in self.games:
                if link.number in silent:
                    self.drop(link, f"it stopped answering for {self.obs_timeout:g} s while the other games answered")
            return self.data.wait(agent_ids, self.obs_timeout, partial=True)


def _stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class GameSession:
    """Game backend + venvs.

    Args:
        num_agents: cars per venv.
        num_venvs: venvs (each with its own track; venvs never interact).
        host, port: where the trainer listens (port 0: any free port; the game must know it).
        token: shared secret, required when ``host`` is not loopback (default: RBXENV_TOKEN).
        sim: ``"inprocess"`` runs the headless simulator in this process (no socket, no JSON: the
            fastest); ``"subprocess"`` launches it in a child process that connects over a loopback
            WebSocket (the protocol path a game takes; stopped by ``close()``; ``"embedded"`` is its
            old name); ``None`` waits up to ``wait_timeout`` seconds for a game such as Roblox Studio.
            ``host``, ``port``, ``token``, ``serves``, ``wait_timeout`` and ``reconnect_timeout``
            concern the WebSocket, so not ``"inprocess"``. Over the WebSocket any number of games
            may connect, join and leave mid-run: see ``place``.
        sim_games: with ``sim="subprocess"``, how many simulator processes to run (each hosts an
            even share of the venvs; a real-time run gets that many times the agent-steps/s).
        serves: the run's model id: games must dial ``/ws/<serves>``, other paths are refused with
            a clear reason (``TrainingBridge``'s ``serves``); None accepts any path.
        mode: ``"lockstep"`` or ``"realtime"`` for the simulator (a game announces its own). A
            real-time game keeps its own clock, so ``"realtime"`` runs the simulator as a subprocess.
        tick_hz: decisions per second for the simulator in real-time mode.
        start: ``"random"`` starts (training) or ``"grid"`` (evaluation, lap times).
        collisions: car-car collisions inside a venv.
        track_seeds: tracks to use, in order (e.g. ``HELDOUT_TRACK_SEEDS`` for evaluation);
            None draws training tracks at random from ``TRAIN_TRACK_SEEDS``.
        track_method: restrict tracks to one generation method ("polar", "hull", "grid", and
            "circuit" with a difficulty).
        tracks: your own tracks: specs (dicts) or paths of spec files or folders of ``*.json``
            (checked by ``tracks.validate``; a bad one raises ValueError naming the file and the fix).
        track_mix: with ``tracks``, the share of track draws that take one of them, the rest being
            generated. 1.0 (default): only those tracks, handed out in order (evaluation on given
            tracks: one venv per track); below 1: drawn at random, e.g. 0.5 = half your tracks,
            half generated ones (a driver that also generalises).
        track_difficulty: None: the classic generated tracks; 0..1: the varied generators
            (``tracks.generate``'s difficulty: hairpins, chicanes, width changes, narrower roads).
            An attribute: a curriculum changes it between track draws.
        wait_timeout: seconds to wait for a game to connect when ``sim=None``.
        obs_timeout: seconds to wait for observations before raising TimeoutError.
        reconnect_timeout: when a game disconnects mid-run, its interrupted episodes end as
            truncated and its venvs move to the other games; with none that can host them, the
            session waits this many seconds for a game to come back (the embedded simulator is
            relaunched), then raises ``rbxenv.BridgeClosed``; 0 raises at once.
        sim_seed: seed of the simulator.
        dynamics: the simulator's car (``rbxenv.sim.rules.sim_config``): "kinematic"
            (default), "dynamic" (actuator lag, yaw inertia, tyres that slide past their grip),
            "randomized" (dynamic, its constants drawn per episode), optionally followed by
            SimConfig overrides ("dynamic,max_lateral_accel=56,actuator_lag=0.2").
    """

    def __init__(
        self,
        num_agents: int = 5,
        num_venvs: int = 1,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        sim: str | None = "inprocess",
        mode: str = "lockstep",
        tick_hz: float = 15.0,
        start: str = "random",
        collisions: bool = True,
        track_seeds: Sequence[int] | None = None,
        track_method: str | None = None,
        tracks: Sequence | None = None,
        track_mix: float = 1.0,
        track_difficulty: float | None = None,
        wait_timeout: float = 300.0,
        obs_timeout: float = 10.0,
        reconnect_timeout: float = 60.0,
        sim_seed: int = 0,
        serves: str | None = None,
        dynamics: str = "kinematic",
        sim_games: int = 1,
    ):
        if num_agents < 1 or num_venvs < 1:
            raise ValueError(f"need at least one car and one venv, got num_agents={num_agents}, num_venvs={num_venvs}")
        if sim not in ("inprocess", "subprocess", "embedded", None):
            raise ValueError(
                f'sim must be "inprocess" or "subprocess" (headless simulator) or None (wait for Roblox), got {sim!r}'
            )
        if mode not in ("lockstep", "realtime"):
            raise ValueError(f'mode must be "lockstep" or "realtime", got {mode!r}')
        if sim == "embedded" or sim == "inprocess" and mode == "realtime":
            sim = "subprocess"
        if sim_games < 1 or sim_games > 1 and sim != "subprocess":
            raise ValueError(
                f'sim_games={sim_games}: several simulator processes need sim="subprocess" (--sim subprocess)'
            )
        if start not in ("grid", "random"):
            raise ValueError(f'start must be "grid" or "random", got {start!r}')
        sim_config(dynamics)  # a bad --dynamics fails here, with the simulator's own message
        self.dynamics = dynamics
        self.num_agents, self.num_venvs = num_agents, num_venvs
        self.sim, self.mode, self.tick_hz, self.start = sim, mode, tick_hz, start
        self.collisions = collisions
        self.track_seeds = list(track_seeds) if track_seeds is not None else None
        self.track_method = track_method
        self.given_tracks = load_tracks(tracks) if tracks is not None else []
        if tracks is not None and not self.given_tracks:
            raise ValueError("tracks: an empty list (give spec dicts, files or folders of *.json)")
        if not 0.0 <= track_mix <= 1.0:
            raise ValueError(f"track_mix must be within 0..1 (the share of draws from your tracks), got {track_mix}")
        self.track_mix, self.track_difficulty = track_mix, track_difficulty
        self.wait_timeout, self.sim_seed = wait_timeout, sim_seed
        self.reconnect_timeout = reconnect_timeout
        self.reconnects = 0  # times venvs were respawned because their game left
        self.sim_games = sim_games
        # Cars are spawned asking the game to restart them when their episodes end (games that can:
        # TrainingBridge.autoresets); the vector env sets it, PettingZoo's agents stay done instead.
        self.autoreset = False
        self.venv_ids = [f"v{k}" for k in range(num_venvs)]
        self.agent_ids = [agent_id(i, v) for v in self.venv_ids for i in range(num_agents)]
        self.venv_of = np.repeat(np.arange(num_venvs), num_agents)
        self.tracks: dict[str, dict | None] = dict.fromkeys(self.venv_ids)
        # the WebSocket server, for a game in another process (None with the in-process simulator)
        self.bridge: RemoteGame | None = None
        if sim != "inprocess":
            self.bridge = RemoteGame(host, port, token, obs_timeout=obs_timeout, serves=serves, max_games=None)
        if self.bridge is None:
            from rbxenv.sim.backend import SimBackend  # (loads the simulator's kernels: not for Roblox)
            from rbxenv.sim.world import Sim

            self.backend: GameBackend = SimBackend(sim=Sim(sim_config(dynamics), seed=sim_seed))
        else:
            self.backend = self.bridge
        self.game: GameSpec | None = None
        self.processes: list[subprocess.Popen] = []  # sim="subprocess": the simulators launched
        self._finalizers: list[weakref.finalize] = []
        self._joins_seen = 0  # bridge.joins when venvs were last spread over the games
        self._set_up: set[int] = set()  # the games that got the session's settings (``_set_up_game``)
        self._launched_at: list[float] = []  # when each simulator process was (re)launched
        self._venv_of_id = dict(zip(self.agent_ids, self.venv_of.tolist(), strict=True))
        # venvs respawned whole by the latest spawn or respawn because their game left meanwhile
        self.interrupted: list[int] = []
        self._track_draws = 0
        self.freezer: FreezeWhenIdle | None = None  # a real-time game's (set by open)

    # ------------------------------------------------------------------ connecting

    def open(self) -> GameSpec:
        """Start the backend (launch or wait for the games), place the venvs, apply the collision setting."""
        if self.game is not None:
            return self.game
        if self.bridge is None:
            self.game = self.backend.game
            self.backend.update_collisions(self.collisions)
            return self.game
        self.bridge.start()
        deadline = time.monotonic() + self.wait_timeout
        try:
            if self.sim == "subprocess":
                self.processes = [self._launch_sim() for _ in range(self.sim_games)]
                self._launched_at = [time.monotonic()] * self.sim_games
                self.game = self._wait_for_children()
            else:
                print(
                    f"rbxenv: waiting up to {self.wait_timeout:g} s for a game on {self.bridge.url} "
                    "(Roblox Studio: set the trainer URL in the place's Config, then press Play; "
                    f"a Smart Racing Sim AI place dials ws://localhost:{self.bridge.port}/ws/<modelId>)",
                    flush=True,
                )
                self.game = self.bridge.wait_for_game(self.wait_timeout)
            self.place(range(self.num_venvs), max(0.0, deadline - time.monotonic()))
            if not self.bridge.width_known:
                self.game = self._learn_width()
        except BridgeClosed:
            self.close()
            raise
        return self.game

    def _set_up_game(self, link: GameLink) -> None:
        """Before a game's first cars: the session's collision setting, a freeze in force, and the
        freeze watchdog if it is the first real-time game."""
        self._set_up.add(link.number)
        self.bridge.update_collisions(self.collisions, link)
        if self.freezer is None and link.spec.mode == "realtime":
            self.freezer = FreezeWhenIdle(self)
        elif self.freezer is not None and self.freezer.frozen:
            self.bridge.freeze(True, link)

    def _learn_width(self) -> GameSpec:
        """A v0 game (no hello) says how many floats it observes only in its packets, and sends
        none before it has cars: spawn them now (reset respawns them) and read the first packet."""
        ids: list[str] = []
        for venv in range(self.num_venvs):
            ids += self._spawn(venv, None)
        try:
            self.bridge.get_observations(ids)
        except TimeoutError as err:
            raise BridgeClosed(f"the game connected but never reported its cars: {err}") from None
        assert self.bridge.game is not None
        return self.bridge.game

    @property
    def model_id(self) -> str | None:
        """The model id in the game's URL (``ws://host:8000/ws/<modelId>``, as the original project's places dial), or None."""
        return self.bridge.model_id if self.bridge is not None else None

    @property
    def process(self) -> subprocess.Popen | None:
        """The (first) simulator process of ``sim="subprocess"``."""
        return self.processes[0] if self.processes else None

    def _wait_for_children(self, limit: float = 300.0) -> GameSpec:
        """Wait while the embedded simulators start (on a busy machine their imports alone can take
        half a minute), but not for a child that died."""
        deadline = time.monotonic() + limit
        while len(self.bridge.games) < len(self.processes):
            for proc in self.processes:
                if proc.poll() is not None:
                    raise BridgeClosed(
                        f"the embedded simulator exited with code {proc.returncode} before it connected "
                        "(its error is above)"
                    )
            if time.monotonic() > deadline:
                raise BridgeClosed(f"the embedded simulator did not connect within {limit:g} s")
            time.sleep(0.05)
        return self.bridge.wait_for_game(0)

    # ------------------------------------------------------------------ placing venvs on games

    def capacity(self, link: GameLink) -> int:
        """How many of this session's venvs ``link`` can host (what it announced in hello, else all)."""
        venvs = link.spec.max_venvs or self.num_venvs
        cars = link.spec.max_cars
        return min(venvs, cars // self.num_agents) if cars is not None else venvs

    def hosted(self) -> dict[GameLink, list[int]]:
        """The connected games, each with the venvs it hosts."""
        load: dict[GameLink, list[int]] = {link: [] for link in self.bridge.games if link.lost is None}
        for venv, envid in enumerate(self.venv_ids):
            link = self.bridge.hosts.get(envid)
            if link in load:
                load[link].append(venv)
        return load

    def place(self, venvs: Sequence[int], timeout: float) -> None:
        """Give each of these venvs that has no connected game one: the least loaded game that can
        host another (its cars must then be spawned there). When none can, wait (one line says so)
        up to ``timeout`` seconds for a game to connect (a simulator that died is relaunched), then
        raise BridgeClosed."""
        deadline, said = time.monotonic() + timeout, False
        load = self.hosted()
        left = {self.bridge.hosts[self.venv_ids[v]] for v in venvs if self.venv_ids[v] in self.bridge.hosts} - set(load)
        if left:
            self.reconnects += 1
            names = ", ".join(self.venv_ids[v] for v in venvs if self.bridge.hosts.get(self.venv_ids[v]) in left)
            print(
                f"rbxenv: the game disconnected: {', '.join(map(repr, left))}; venvs {names} ended their episodes (truncated) "
                f"and move to {'the other games' if load else 'a game that connects'}",
                flush=True,
            )
        while True:
            load = self.hosted()
            homeless = [v for v in venvs if self.bridge.hosts.get(self.venv_ids[v]) not in load]
            for venv in list(homeless):
                free = [link for link, hosted in load.items() if len(hosted) < self.capacity(link)]
                if not free:
                    break
                link = min(free, key=lambda g: len(load[g]))
                self.bridge.hosts[self.venv_ids[venv]] = link
                load[link].append(venv)
                homeless.remove(venv)
            if not homeless:
                if self.bridge.data.lost is not None:
                    self.bridge.wait_for_game(0)  # a game came back after every one had left: take it
                return
            names = ", ".join(self.venv_ids[v] for v in homeless)
            if not said:
                print(
                    f"rbxenv: venvs {names} wait for a game to host them ({self._room(load)}); waiting up to "
                    f"{round(timeout, 1):g} s for one on {self.bridge.url}"
                    + (" (relaunching the simulator)" if self.sim == "subprocess" else ""),
                    flush=True,
                )
                said = True
            self._relaunch_dead_sims()
            if time.monotonic() > deadline:
                if self.bridge.data.fatal is not None:
                    raise BridgeClosed(self.bridge.data.fatal)
                load = self.hosted()
                which = f"game with room for venvs {names}" if load else "game"
                raise BridgeClosed(
                    f"no {which} connected to {self.bridge.url} within {round(timeout, 1):g} s ({self._room(load)}): "
                    "start one (python -m rbxenv.sim --url ..., or press Play in Roblox Studio)"
                )
            time.sleep(0.05)

    def _room(self, load: dict[GameLink, list[int]]) -> str:
        """What the connected games host and can host, for the lines that say venvs wait."""
        if not load:
            return "no game connected"
        said = []
        for link, hosted in load.items():
            cap = self.capacity(link)
            why = f" (max_cars {link.spec.max_cars}: a venv has {self.num_agents} cars)" if cap == 0 else ""
            said.append(f"{link!r} hosts {len(hosted)} venv(s), room for {cap}{why}")
        return "; ".join(said)

    def spread(self) -> list[int]:
        """When games joined since the last call, move venvs from the busiest games to them, until
        every game hosts within one venv of the others (and within its capacity). Returns the venvs
        moved: the caller ends their episodes (truncated) and respawns them (``respawn(moved=...)``)."""
        if self.processes:
            self._relaunch_dead_sims()
        if self.bridge is None or self.bridge.joins == self._joins_seen:
            return []
        self._joins_seen = self.bridge.joins
        load = self.hosted()
        moved: list[int] = []
        while load:
            busiest = max(load, key=lambda g: len(load[g]))
            free = [link for link, hosted in load.items() if len(hosted) < self.capacity(link)]
            idlest = min(free, key=lambda g: len(load[g]), default=None)
            if idlest is None or len(load[busiest]) - len(load[idlest]) < 2:
                break
            venv = load[busiest].pop()
            load[idlest].append(venv)
            moved.append(venv)
        for venv in moved:
            envid = self.venv_ids[venv]
            old = self.bridge.hosts[envid]
            self.bridge.close_on(old, envid)  # (before the spawn on the new game: see DataBridge's host)
            self.bridge.hosts[envid] = next(link for link, hosted in load.items() if venv in hosted)
        if moved:
            where = ", ".join(f"{self.venv_ids[v]} to {self.bridge.hosts[self.venv_ids[v]]!r}" for v in moved)
            print(f"rbxenv: games joined; venvs move: {where}", flush=True)
        return moved

    def reconnect(self) -> Observations:
        """Every game went away (or the step could not tell which): respawn every venv, on the
        games connected or, failing that, on a game that comes back within ``reconnect_timeout``
        (``place``). Venvs come back on the tracks they had. Raises BridgeClosed when no game does.
        """
        if self.bridge.data.fatal is not None:  # not a loss a reconnect mends
            raise BridgeClosed(self.bridge.data.fatal)
        self.place(range(self.num_venvs), self.reconnect_timeout)
        self.game = self.bridge.game
        ids: list[str] = []
        for venv, envid in enumerate(self.venv_ids):
            ids += self._spawn(venv, self.tracks[envid])
        got = self._first_observations(ids)
        print(f"rbxenv: every venv respawned on {len(self.bridge.games)} game(s)", flush=True)
        return got

    def _relaunch_dead_sims(self) -> None:
        """Start again the simulator processes that exited (at most once a second each)."""
        now = time.monotonic()
        for k, proc in enumerate(self.processes):
            if proc.poll() is not None and now - self._launched_at[k] > 1.0:
                print(f"rbxenv: simulator process {k} exited (code {proc.returncode}); relaunching it", flush=True)
                self._finalizers.pop(k)()
                self.processes[k], self._launched_at[k] = self._launch_sim(k), now

    def _launch_sim(self, slot: int | None = None) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "rbxenv.sim", "--url", self.bridge.url, "--seed", str(self.sim_seed)]
        if self.dynamics != "kinematic":
            cmd += ["--dynamics", self.dynamics]
        if self.mode == "realtime":
            cmd += ["--realtime", "--tick-hz", str(self.tick_hz)]
        env = dict(os.environ)
        # The child must import this very rbxenv, whatever the working directory (no install needed).
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        # The simulator is elementwise numpy: BLAS worker threads would only spin against the trainer.
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, "1")
        if self.bridge.token:
            env["RBXENV_TOKEN"] = self.bridge.token  # the sim client presents it in its hello
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env)
        # If the user never calls close() (or the interpreter dies on an exception), still stop the child.
        finalizer = weakref.finalize(self, _stop_process, proc)  # (runs at exit too: atexit=True)
        self._finalizers.insert(len(self._finalizers) if slot is None else slot, finalizer)
        return proc

    def close(self) -> None:
        """Close every venv, the backend and the simulator processes (idempotent, never raises)."""
        if self.freezer is not None:
            self.freezer.stop()
        if self.bridge is None:
            self.backend.close_all()
            self.game = None
            return
        try:
            if self.bridge.connected:
                self.bridge.close_all()
                time.sleep(0.05)  # let CLOSE_ALL reach the game before the socket goes
        except BridgeClosed:
            pass
        self.bridge.close()
        for proc in self.processes:
            try:
                proc.wait(timeout=5)  # the sim exits when the trainer closes the socket
            except subprocess.TimeoutExpired:
                pass
        for finalizer in self._finalizers:
            finalizer()
        self.processes, self._finalizers = [], []
        self.game = None

    # ------------------------------------------------------------------ tracks and spawning

    def next_track(self, rng: np.random.Generator) -> dict | None:
        """The next training (or evaluation) track spec, or None when the game builds its own."""
        if self.game is None or not self.game.has("track_spec") or self.game.has("game_tracks"):
            return None
        if self.given_tracks and self.track_mix >= 1.0:
            self._track_draws += 1
            return self.given_tracks[(self._track_draws - 1) % len(self.given_tracks)]
        if self.given_tracks and rng.uniform() < self.track_mix:
            return self.given_tracks[int(rng.integers(len(self.given_tracks)))]
        if self.track_seeds is not None:
            seed = self.track_seeds[self._track_draws % len(self.track_seeds)]
            self._track_draws += 1
        else:
            seed = int(rng.integers(TRAIN_TRACK_SEEDS.start, TRAIN_TRACK_SEEDS.stop))
        return tracks.generate(seed, self.track_method, difficulty=self.track_difficulty)

    def _spawn(self, venv: int, track: dict | None, seed: int | None = None) -> list[str]:
        """(Re)spawn every car of one venv on ``track`` (on its game, which it gets first if its
        game left); returns the agent ids spawned."""
        envid = self.venv_ids[venv]
        game = self.game
        if self.bridge is not None:
            self.place([venv], self.reconnect_timeout)
            link = self.bridge.host_of(envid)
            if link.number not in self._set_up:
                self._set_up_game(link)
            game = link.spec
        if game is not None and game.has("game_tracks"):
            track = None  # the game owns its track (announced in hello): nothing to send
        self.tracks[envid] = track if track is not None else (game.track if game else None)
        ids = self.agent_ids[venv * self.num_agents : (venv + 1) * self.num_agents]
        self.backend.spawn_agents(envid, ids, track=track, start=self.start, seed=seed, autoreset=self.autoreset)
        return ids

    def spawn_venv(self, venv: int, rng: np.random.Generator) -> list[str]:
        """(Re)spawn every car of one venv on a new track; returns the agent ids spawned."""
        return self._spawn(venv, self.next_track(rng), seed=int(rng.integers(2**31)))

    def spawn_all(self, rng: np.random.Generator) -> Observations:
        self.spread()  # (every venv starts anew: games that joined get theirs now)
        ids: list[str] = []
        for venv in range(self.num_venvs):
            ids += self.spawn_venv(venv, rng)
        return self._first_observations(ids)

    def respawn(
        self, cars: Sequence[int], new_track_venvs: Sequence[int], rng: np.random.Generator, moved: Sequence[int] = ()
    ) -> Observations:
        """Start new episodes for ``cars`` (indices into ``agent_ids``): the venvs listed in
        ``new_track_venvs`` move to new tracks with all their cars, those in ``moved`` (their game
        left, or ``spread`` gave them another) are respawned with all their cars on the track they
        had, on their game (``place``); the other cars are reset one by one (their venv and its
        other cars carry on). Returns the first observations."""
        ids: list[str] = []
        if moved:
            self.place(moved, self.reconnect_timeout)
        for venv in new_track_venvs:
            ids += self.spawn_venv(venv, rng)
        for venv in moved:
            if venv not in new_track_venvs:
                ids += self._spawn(venv, self.tracks[self.venv_ids[venv]])
        whole = {*new_track_venvs, *moved}
        by_venv: dict[str, list[str]] = {}
        for k in cars:
            if self.venv_of[k] not in whole:
                by_venv.setdefault(self.venv_ids[self.venv_of[k]], []).append(self.agent_ids[k])
        for envid, venv_ids in by_venv.items():
            self.backend.reset_agents(envid, venv_ids)
            ids += venv_ids
        return self._first_observations(ids)

    def _first_observations(self, ids: list[str]) -> Observations:
        """The first observations of cars just spawned or reset. A venv whose game left before they
        came is placed again and respawned whole on its track (``place``: it may wait for a game);
        its cars' first observations are in the answer too, also those of its cars that were not
        asked for: ``interrupted`` lists such venvs (their running episodes ended)."""
        self.interrupted = []
        if self.bridge is None:
            return self.backend.get_observations(ids)
        ids = list(ids)
        while lost := self.bridge.data.lost_before_answering(ids, self.bridge.obs_timeout):
            again = sorted({self._venv_of_id[aid] for aid in lost})
            self.interrupted = sorted({*self.interrupted, *again})
            asked = set(ids)
            for venv in again:
                ids += [aid for aid in self._spawn(venv, self.tracks[self.venv_ids[venv]]) if aid not in asked]
        # every agent answered now (an answer stays an answer when its game leaves after it)
        return self.bridge.data.wait(ids, self.bridge.obs_timeout, partial=True)

    # ------------------------------------------------------------------ stepping

    def step(self, ids: Sequence[str], actions: np.ndarray) -> Observations:
        """One decision step of the given cars (rows of ``actions`` in the order of ``ids``); a
        real-time game is unfrozen for it and frozen again once no step comes (``FreezeWhenIdle``)."""
        if self.freezer is None:
            return self.backend.step(ids, actions)
        with self.freezer.stepping():
            return self.backend.step(ids, actions)


class FreezeWhenIdle:
    """Real-time games keep driving while the learner updates; freeze them when no step comes.

    The original project froze the game during training. Here a watchdog freezes it once no step
    has been running for ``idle`` seconds, and the next step unfreezes it: no script has to
    remember to. Never while a step waits for its answer: a frozen game sends nothing, the step
    would hang.
    """

    def __init__(self, session: GameSession, idle: float = 0.25):
        self.session, self.idle = session, idle
        self.frozen = False
        self.busy = False  # a step is under way
        self.last_step = time.monotonic()  # when the last step ended
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="rbxenv-freeze", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.idle / 4):
            with self._lock:
                idle = not self.busy and time.monotonic() - self.last_step > self.idle
                if idle and not self.frozen and self.session.backend.connected:
                    try:
                        self.session.backend.freeze(True)
                        self.frozen = True
                    except BridgeClosed:  # the game just left; the stepping thread will notice
                        pass

    @contextmanager
    def stepping(self) -> Iterator[None]:
        """A step runs: the game unfrozen first (raises BridgeClosed if it left meanwhile)."""
        try:
            with self._lock:
                self.busy = True
                if self.frozen:
                    self.frozen = False  # a game that comes back after a loss starts unfrozen anyway
                    self.session.backend.freeze(False)
            yield
        finally:
            with self._lock:
                self.busy = False
                self.last_step = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
