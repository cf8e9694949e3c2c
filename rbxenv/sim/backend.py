"""The simulator as an in-process game backend: ``Sim`` called directly, no JSON, socket or process.

``SimBackend`` answers the calls ``GameSession`` makes of a game (``rbxenv.session.GameBackend``:
spawn, reset, remove, step, freeze, collisions) as the simulator game over the protocol
(``rbxenv.sim.client.SimGame`` with a trainer that granted ``columns`` and ``autoreset``) answers
them in lockstep: same Sim calls in the same order, same first observations, same restarts, so a
seeded run gives the same rollout on both (tests/test_backends.py). Lockstep only: a real-time
game has its own clock, which the subprocess simulator provides.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rbxenv.observations import Observations
from rbxenv.protocol import INFO_NUMBERS, GameSpec
from rbxenv.sim.client import check_buildable_track, game_spec
from rbxenv.sim.world import Sim


class SimBackend:
    """Lockstep game backend running a ``Sim`` in this process (see the module docstring)."""

    connected = True  # nothing can disconnect

    def __init__(self, seed: int = 0, sim: Sim | None = None):
        self.sim = sim or Sim(seed=seed)
        self.game: GameSpec = game_spec(self.sim, realtime=False, tick_hz=15.0)
        self.autoresets = True
        self._autoreset = np.zeros(0, bool)  # per car of the sim, in its order
        self._autoreset_ids: set[str] = set()
        self._actions = np.zeros((0, 3), np.float32)  # held per car, as the game holds them
        # agents spawned or reset, not read yet -> their first observation and pose (taken at once,
        # as the game's answer to the spawn or reset is)
        self._pending: dict[str, tuple[np.ndarray, float, float, float, float]] = {}
        self._ids: list[str] = []  # the sim's agent ids, cached between structural changes
        self._everyone: Sequence[str] | None = None  # the list of every id the caller last passed

    # ------------------------------------------------------------------ structure

    def _changed(self) -> None:
        """The sim's cars changed (spawn, remove, close): re-align the per-car arrays."""
        old = dict(zip(self._ids, range(len(self._ids)), strict=True))
        ids = self.sim.agent_ids
        actions = np.zeros((len(ids), 3), np.float32)
        for k, aid in enumerate(ids):
            if aid in old:
                actions[k] = self._actions[old[aid]]
        self._ids, self._actions = ids, actions
        self._everyone = None
        self._autoreset = np.fromiter((aid in self._autoreset_ids for aid in ids), bool, len(ids))

    def spawn_agents(self, env_id: str, agents: Sequence[str], track: dict | None = None, start: str = "grid",
                     seed: int | None = None, autoreset: bool = False) -> None:  # fmt: skip
        agents = list(agents)
        if track is not None:
            check_buildable_track(track)
        self.sim.spawn(env_id, agents, track=track, start=start, seed=seed)
        if autoreset:
            self._autoreset_ids.update(agents)
        else:
            self._autoreset_ids.difference_update(agents)
        self._changed()
        self._started(agents)

    def reset_agents(self, env_id: str, agents: Sequence[str]) -> None:
        agents = list(agents)
        self.sim.reset_agents(agents)
        self._started(agents)

    def _started(self, agents: list[str]) -> None:
        sim = self.sim
        idx = np.array([sim.index_of(aid) for aid in agents], np.int64)
        self._actions[idx] = 0.0
        obs = sim.observe(agents)
        poses = zip(sim.speed[idx].tolist(), *sim.pos[idx].T.tolist(), sim.heading[idx].tolist(), strict=True)
        for aid, row, pose in zip(agents, obs, poses, strict=True):
            self._pending[aid] = (row, *pose)

    def remove_agents(self, env_id: str, agents: Sequence[str]) -> None:
        self.sim.remove_agents(list(agents))
        self._autoreset_ids.difference_update(agents)
        for aid in agents:
            self._pending.pop(aid, None)
        self._changed()

    def close_all(self) -> None:
        self.sim.close_all()
        self._autoreset_ids.clear()
        self._pending.clear()
        self._changed()

    def close(self) -> None:
        pass

    def freeze(self, status: bool) -> None:
        self.sim.freeze(status)

    def update_collisions(self, status: bool) -> None:
        self.sim.set_collisions(status)

    # ------------------------------------------------------------------ stepping

    def step(self, agent_ids: Sequence[str], actions: np.ndarray) -> Observations:
        """Apply actions (row k for ``agent_ids[k]``, held for cars left out), advance one decision
        step, and return these cars' observations; ended cars spawned with ``autoreset`` are
        restarted in the same step (``restarted``/``reset_obs``), as the protocol's autoreset does."""
        sim = self.sim
        if sim.frozen:
            raise TimeoutError("the simulator is frozen: unfreeze it (freeze(False)) before stepping")
        actions = np.asarray(actions, np.float32)  # no clipping here: Sim.step clamps each control itself
        everyone = agent_ids is self._everyone or list(agent_ids) == self._ids
        if everyone:
            self._everyone = agent_ids  # the env passes the same list every step: compared once
            self._actions = actions
        else:
            self._actions[[sim.index_of(aid) for aid in agent_ids]] = actions
        r = sim.step(self._actions)
        if everyone:  # the lockstep hot path: every array as the step made it, no row picking
            rows: slice | np.ndarray = slice(None)
            live, terminated, truncated = r.live, r.terminated, r.truncated
            xy, heading = sim.pos.T.copy(), sim.heading.copy()
        else:
            rows = np.array([sim.index_of(aid) for aid in agent_ids], np.int64)
            live, terminated, truncated = r.live[rows], r.terminated[rows], r.truncated[rows]
            xy, heading = sim.pos[rows].T.copy(), sim.heading[rows]
        if not live.all():
            gone = [aid for aid, ok in zip(agent_ids, live.tolist(), strict=True) if not ok][:3]
            raise TimeoutError(f"no observation for {', '.join(gone)}: their episodes ended (reset or respawn them)")
        info = {
            "progress": r.progress[rows],
            "lap": r.lap[rows].astype(np.float64),
            "lap_time": r.lap_time[rows],
            "speed": r.speed[rows],
            "x": xy[0],
            "y": xy[1],
            "heading": heading,
            "collided": r.collided[rows],
            "cause": r.cause[rows],
        }
        n = len(live)
        reset_obs = np.zeros((n, self.game.obs_size), np.float32)
        ended = (terminated | truncated) & self._autoreset[rows]
        if ended.any():
            # restarted in the order of the batch, as SimGame._restart does (each venv draws in turn)
            cars = np.flatnonzero(ended) if everyone else rows[ended]
            sim.reset_indices(cars)
            self._actions[cars] = 0.0
            reset_obs[ended] = sim.observe([self._ids[k] for k in cars.tolist()])
        return Observations(list(agent_ids), r.obs[rows], r.reward[rows].astype(np.float64), terminated, truncated,
                            info, np.ones(n, bool), ended, reset_obs)  # fmt: skip

    def get_observations(self, agent_ids: Sequence[str], timeout: float | None = None) -> Observations:
        """First observations of cars spawned or reset since the last read (what their spawn or
        reset answers over the protocol): reward 0, not ended, lap 0."""
        missing = [aid for aid in agent_ids if aid not in self._pending]
        if missing:
            raise TimeoutError(f"no observation for {', '.join(missing[:3])}: spawn or reset them first")
        got = [self._pending.pop(aid) for aid in agent_ids]
        n = len(got)
        obs = np.array([g[0] for g in got], np.float32).reshape(n, self.game.obs_size)
        speed, x, y, heading = np.array([g[1:] for g in got], np.float64).reshape(n, 4).T.copy()
        info = {key: np.zeros(n) for key in INFO_NUMBERS}
        info.update(lap_time=np.full(n, np.nan), speed=speed, x=x, y=y, heading=heading)
        info["collided"], info["cause"] = np.zeros(n, bool), np.full(n, None, object)
        zeros = np.zeros(n, bool)
        return Observations(list(agent_ids), obs, np.zeros(n), zeros, zeros.copy(), info, np.ones(n, bool),
                            zeros.copy(), np.zeros((n, self.game.obs_size), np.float32))  # fmt: skip
