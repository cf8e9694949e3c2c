"""One training session with a game: its backend, venvs and tracks.

Both env flavours (``envs.py``) sit on this: it opens a game backend (``GameBackend``), hands each
venv a track, spawns and resets cars, and steps all of them at once. Backends: the simulator in
this process (``sim="inprocess"``, the default: ``rbxenv.sim.backend.SimBackend``, ``Sim`` called
directly), the simulator in a child process over a loopback WebSocket (``sim="subprocess"``: the
protocol's conformance path) or a game that connects on its own, such as Roblox (``sim=None``);
the last two through the TrainingBridge. It knows nothing about Gym or PettingZoo.
"""

from __future__ import annotations

import atexit
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
from rbxenv.bridge import TrainingBridge
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
    """A game over the WebSocket (Roblox, ``python -m rbxenv.sim``, a v0 game) as a GameBackend."""

    def step(self, agent_ids: Sequence[str], actions: np.ndarray) -> Observations:
        self.send_action_rows(agent_ids, actions)
        return self.get_observations(agent_ids)


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
            concern the WebSocket, so not ``"inprocess"``.
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
        reconnect_timeout: when the game disconnects mid-run, seconds to wait for it to come back
            (the embedded simulator is relaunched); the interrupted episodes end as truncated and
            every venv is respawned. After that ``rbxenv.BridgeClosed`` is raised; 0 raises at once.
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
        self.reconnects = 0
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
            self.bridge = RemoteGame(host, port, token, obs_timeout=obs_timeout, serves=serves)
        if self.bridge is None:
            from rbxenv.sim.backend import SimBackend  # (loads the simulator's kernels: not for Roblox)
            from rbxenv.sim.world import Sim

            self.backend: GameBackend = SimBackend(sim=Sim(sim_config(dynamics), seed=sim_seed))
        else:
            self.backend = self.bridge
        self.game: GameSpec | None = None
        self.process: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None
        self._track_draws = 0
        self.freezer: FreezeWhenIdle | None = None  # a real-time game's (set by open)

    # ------------------------------------------------------------------ connecting

    def open(self) -> GameSpec:
        """Start the backend (launch or wait for the game), apply the collision setting."""
        if self.game is not None:
            return self.game
        if self.bridge is None:
            self.game = self.backend.game
            self.backend.update_collisions(self.collisions)
            return self.game
        self.bridge.start()
        if self.sim == "subprocess":
            self.process = self._launch_sim()
            timeout = None
        else:
            print(
                f"rbxenv: waiting up to {self.wait_timeout:g} s for a game on {self.bridge.url} "
                "(Roblox Studio: set the trainer URL in the place's Config, then press Play; "
                f"a Smart Racing Sim AI place dials ws://localhost:{self.bridge.port}/ws/<modelId>)",
                flush=True,
            )
            timeout = self.wait_timeout
        try:
            self.game = self._wait_for_child() if timeout is None else self.bridge.wait_for_game(timeout)
            self.bridge.update_collisions(self.collisions)
            if not self.bridge.width_known:
                self.game = self._learn_width()
        except BridgeClosed:
            self.close()
            raise
        if self.game.mode == "realtime":
            self.freezer = FreezeWhenIdle(self)
        return self.game

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

    def _wait_for_child(self, limit: float = 300.0) -> GameSpec:
        """Wait while the embedded simulator starts (on a busy machine its imports alone can take
        half a minute), but not for a child that died."""
        deadline = time.monotonic() + limit
        while True:
            try:
                return self.bridge.wait_for_game(0.25)
            except BridgeClosed:
                if self.process is not None and self.process.poll() is not None:
                    raise BridgeClosed(
                        f"the embedded simulator exited with code {self.process.returncode} before it connected "
                        "(its error is above)"
                    ) from None
                if time.monotonic() > deadline:
                    raise BridgeClosed(f"the embedded simulator did not connect within {limit:g} s") from None

    def reconnect(self) -> Observations:
        """The game went away mid-run: wait for it to come back, then respawn every venv.

        The embedded simulator is relaunched; a Roblox game has ``reconnect_timeout`` seconds to
        reconnect (one line says so). Venvs come back on the tracks they had. Raises BridgeClosed
        when the game does not return in time, or returns with other spaces.
        """
        if self.bridge.data.fatal is not None:  # not a loss a reconnect mends
            raise BridgeClosed(self.bridge.data.fatal)
        old = self.game
        print(
            f"rbxenv: the game disconnected; waiting up to {self.reconnect_timeout:g} s for it to reconnect "
            f"to {self.bridge.url}" + (" (relaunching the simulator)" if self.sim == "subprocess" else ""),
            flush=True,
        )
        if self.sim == "subprocess":
            if self.process is not None:
                _stop_process(self.process)
            self.process = self._launch_sim()
        self.game = self.bridge.wait_for_game(self.reconnect_timeout)
        # (a v0 game is taken to send what it sent before: the bridge ends the run if it does not)
        if old is not None and (self.game.obs_size, self.game.action_size) != (old.obs_size, old.action_size):
            raise BridgeClosed(
                f"the game came back with obs_size={self.game.obs_size}, action_size={self.game.action_size} "
                f"instead of {old.obs_size}, {old.action_size}: restart the training run"
            )
        self.reconnects += 1
        self.bridge.update_collisions(self.collisions)
        ids: list[str] = []
        for venv, envid in enumerate(self.venv_ids):
            ids += self._spawn(venv, self.tracks[envid])
        got = self.bridge.get_observations(ids)
        print(f"rbxenv: the game is back ({self.game.game}); every venv respawned", flush=True)
        return got

    def _launch_sim(self) -> subprocess.Popen:
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
        if self._finalizer is not None:
            self._finalizer()
        self._finalizer = weakref.finalize(self, _stop_process, proc)
        atexit.register(self._finalizer)
        return proc

    def close(self) -> None:
        """Close every venv, the backend and the simulator process (idempotent, never raises)."""
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
        if self.process is not None:
            try:
                self.process.wait(timeout=5)  # the sim exits when the trainer closes the socket
            except subprocess.TimeoutExpired:
                pass
            if self._finalizer is not None:
                self._finalizer()
            self.process = None
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
        """(Re)spawn every car of one venv on ``track``; returns the agent ids spawned."""
        envid = self.venv_ids[venv]
        if self.game is not None and self.game.has("game_tracks"):
            track = None  # the game owns its track (announced in hello): nothing to send
        self.tracks[envid] = track if track is not None else (self.game.track if self.game else None)
        ids = self.agent_ids[venv * self.num_agents : (venv + 1) * self.num_agents]
        self.backend.spawn_agents(envid, ids, track=track, start=self.start, seed=seed, autoreset=self.autoreset)
        return ids

    def spawn_venv(self, venv: int, rng: np.random.Generator) -> list[str]:
        """(Re)spawn every car of one venv on a new track; returns the agent ids spawned."""
        return self._spawn(venv, self.next_track(rng), seed=int(rng.integers(2**31)))

    def spawn_all(self, rng: np.random.Generator) -> Observations:
        ids: list[str] = []
        for venv in range(self.num_venvs):
            ids += self.spawn_venv(venv, rng)
        return self.backend.get_observations(ids)

    def respawn(self, cars: Sequence[int], new_track_venvs: Sequence[int], rng: np.random.Generator) -> Observations:
        """Start new episodes for ``cars`` (indices into ``agent_ids``): the venvs listed in
        ``new_track_venvs`` move to new tracks with all their cars, the other cars are reset one by
        one (their venv and its other cars carry on). Returns the first observations."""
        ids: list[str] = []
        for venv in new_track_venvs:
            ids += self.spawn_venv(venv, rng)
        by_venv: dict[str, list[str]] = {}
        for k in cars:
            if self.venv_of[k] not in new_track_venvs:
                by_venv.setdefault(self.venv_ids[self.venv_of[k]], []).append(self.agent_ids[k])
        for envid, venv_ids in by_venv.items():
            self.backend.reset_agents(envid, venv_ids)
            ids += venv_ids
        return self.backend.get_observations(ids)

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
