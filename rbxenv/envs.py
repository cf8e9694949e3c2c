"""Racing envs over a game backend: a PettingZoo ParallelEnv and a Gymnasium vector env.

``make_parallel_env`` is the original project's PettingZooWSEnv: every car of every venv is an agent, for
multi-agent code and the SuperSuit/SB3 pipeline. ``make_vec_env`` is what the single-file scripts
use: one vector slot per car, each car resetting on its own.

| | |
|---|---|
| Observation | ``Box(obs_size * frame_stack)`` float32: per frame ``num_rays`` rays (0..1), nitro fuel (0..1), forward velocity (-1..1), is-reverse (0/1); oldest frame first (vector env). The ParallelEnv gives single frames. |
| Action | ``Box(-1, 1, (3,))``: throttle, steering, nitro (on above 0.5); clipped before sending |
| Reward | reported by the game (PROTOCOL.md §4): 0.1 per stud of progress, +10 per lap, -10 crash/stuck/wrong way, -0.5 per step touching a car |
| Start | ``start="random"``: a seeded random point of the track (training); ``"grid"``: the start grid (evaluation) |
| Termination | crash into a wall, stuck for 2 s, wrong way for 2 s |
| Truncation | the time limit: 1500 decisions (100 s of game time) on tracks up to 2,500 studs, proportionally more on longer ones (``rules.time_limit_steps``: 12,000 = 13 min on 20,000 studs); or the venv moving to a new track (vector env) or to another game; or its game leaving |
| Tracks | generated (``track_seeds``, ``track_method``, ``track_difficulty``) or your own: ``tracks=[spec, "my.json", "folder/"]`` mixed with generated ones by ``track_mix`` (see ``GameSession``) |

Seeding: ``reset(seed=s)`` seeds the track choice and the random starts; the simulator is
seeded by ``sim_seed``. With the same seeds a lockstep run is reproducible.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from pettingzoo import ParallelEnv

from rbxenv.observations import BridgeClosed, Observations
from rbxenv.protocol import INFO_NUMBERS, GameSpec
from rbxenv.session import HELDOUT_TRACK_SEEDS, TRAIN_TRACK_SEEDS, GameSession

__all__ = [
    "make_parallel_env",
    "make_vec_env",
    "RacingParallelEnv",
    "RacingVectorEnv",
    "HELDOUT_TRACK_SEEDS",
    "TRAIN_TRACK_SEEDS",
]


def observation_space(game: GameSpec, frame_stack: int = 1) -> gym.spaces.Box:
    """The per-car observation space a game offers (PROTOCOL.md §2), stacked ``frame_stack`` times."""
    low = np.zeros(game.obs_size, dtype=np.float32)
    high = np.ones(game.obs_size, dtype=np.float32)
    if game.num_rays + 1 < game.obs_size:
        low[game.num_rays + 1] = -1.0  # forward velocity is the only signed entry
    return gym.spaces.Box(np.tile(low, frame_stack), np.tile(high, frame_stack), dtype=np.float32)


def action_space(game: GameSpec) -> gym.spaces.Box:
    return gym.spaces.Box(-1.0, 1.0, (game.action_size,), dtype=np.float32)


# ====================================================================================================
# PettingZoo


class RacingParallelEnv(ParallelEnv):
    """Every car of every venv is an agent (ids ``car_{i}_env_{venv}``): the original project's PettingZooWSEnv.

    ## Description

    The racing game of ``RacingVectorEnv`` for multi-agent code and the SuperSuit / SB3 pipeline:
    ``num_venvs`` venvs of ``num_agents`` cars each, every car an agent of one ParallelEnv.

    ## Action Space

    ``Box(-1.0, 1.0, (3,), float32)`` per agent: throttle, steering, nitro (on above 0.5), as in
    ``RacingVectorEnv``; clipped before sending; an agent without an action coasts (zeros).

    ## Observation Space

    One frame per agent, no stacking: ``Box(low, high, (num_rays + 3,), float32)``, 13 floats by
    default: the per-frame table of ``RacingVectorEnv`` (rays 0..1, nitro fuel 0..1, forward speed
    -1..1, is-reverse 0..1).

    ## Rewards, Starting State, Episode End

    As ``RacingVectorEnv``, per agent. An agent whose episode ended leaves ``agents`` until the
    next ``reset()``, which respawns every car (no autoreset here). With several games, the agents
    of a game that leaves end truncated (``infos[agent]["cause"] == "disconnected"``) and the
    others drive on; games that join get venvs at the next ``reset()``.

    ## Arguments

    ``make_parallel_env(num_agents=5, num_venvs=1, **game)`` (``game``: see ``GameSession``).

    >>> from rbxenv import make_parallel_env
    >>> env = make_parallel_env(num_agents=2, num_venvs=1, sim_seed=0)
    >>> obs, infos = env.reset(seed=0)
    >>> env.agents[0], obs[env.agents[0]].shape, env.action_space(env.agents[0]).shape
    ('car_0_env_v0', (13,), (3,))
    >>> env.close()

    ## Version History

    * v0 (``metadata["name"]`` ``rbxenv_racing_v0``): the original project's PettingZooWSEnv interface, kept.
    """

    metadata = {"name": "rbxenv_racing_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(self, session: GameSession):
        self.session = session
        self.render_mode = None
        self.game = session.open()
        self.possible_agents = list(session.agent_ids)
        self.agents: list[str] = []
        self._obs_space = observation_space(self.game)
        self._act_space = action_space(self.game)
        self._rng = np.random.default_rng()

    def observation_space(self, agent: str) -> gym.spaces.Box:
        return self._obs_space  # the same object every call, as PettingZoo expects

    def action_space(self, agent: str) -> gym.spaces.Box:
        return self._act_space

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        got = self.session.spawn_all(self._rng)
        self.agents = list(got.agent_ids)
        obs = {aid: got.obs[k] for k, aid in enumerate(got.agent_ids)}
        return obs, {aid: dict(got.infos[k]) for k, aid in enumerate(got.agent_ids)}

    def step(self, actions: dict):
        ids = list(self.agents)
        if not ids:  # every car has finished: nothing to send, nothing will come back
            return {}, {}, {}, {}, {}
        rows = np.zeros((len(ids), self._act_space.shape[0]), dtype=np.float32)  # no action given: coast
        for k, aid in enumerate(ids):
            if aid in actions:
                rows[k] = actions[aid]
        rows = np.clip(rows, -1.0, 1.0)
        try:
            got = self.session.step(ids, rows)
        except BridgeClosed:
            if self.session.reconnect_timeout <= 0:
                raise
            self.session.reconnect()  # every episode was interrupted: all agents end, truncated
            self.agents = []
            lost = {"cause": "disconnected"}
            return ({a: np.zeros_like(self._obs_space.low) for a in ids}, dict.fromkeys(ids, 0.0),
                    dict.fromkeys(ids, False), dict.fromkeys(ids, True), {a: dict(lost) for a in ids})  # fmt: skip
        lost = got.lost if got.lost is not None else np.zeros(len(ids), bool)
        obs, rewards, terms, truncs, infos = {}, {}, {}, {}, {}
        for k, aid in enumerate(got.agent_ids):
            obs[aid] = got.obs[k]
            rewards[aid] = 0.0 if lost[k] else float(got.reward[k])
            terms[aid] = bool(got.terminated[k]) and not lost[k]
            truncs[aid] = bool(got.truncated[k] or lost[k])  # its game left: the episode ends, truncated
            infos[aid] = {"cause": "disconnected"} if lost[k] else dict(got.infos[k])
        self.agents = [aid for aid in ids if not (terms[aid] or truncs[aid])]
        return obs, rewards, terms, truncs, infos

    def freeze(self, on: bool = True) -> None:
        """Freeze (or unfreeze) every car in the game, as the original project did during training."""
        self.session.backend.freeze(on)

    def update_collisions(self, on: bool) -> None:
        self.session.collisions = on
        self.session.backend.update_collisions(on)

    def close(self) -> None:
        self.session.close()


# ====================================================================================================
# Gymnasium vector env


class RacingVectorEnv(VectorEnv):
    """One vector slot per car across all venvs, each car auto-resetting on its own (same step).

    ## Description

    AI drivers race on closed-loop tracks in a game: the embedded simulator (``rbxenv.sim``, the
    default), or a Roblox place over the protocol (PROTOCOL.md). ``num_venvs`` venvs each hold a
    track and ``num_agents`` cars that race each other (venvs never interact); every car is one
    slot of this vector env (``num_envs = num_agents * num_venvs``) and all are driven by one
    policy. Written by hand rather than as SuperSuit's ``pettingzoo_env_to_vec_env_v1(
    frame_stack_v1(...))``: SuperSuit resets a ParallelEnv only when *all* its agents are done and
    stacks frames per env; here a crashed car is respawned alone (the others keep driving) and
    only its frame stack is refilled.

    ## Action Space

    ``Box(-1.0, 1.0, (3,), float32)`` per car, clipped before it is sent:

    | Num | Action   | Effect (simulator, ``SimConfig``)                                         |
    |-----|----------|---------------------------------------------------------------------------|
    | 0   | throttle | > 0 accelerates to 60 studs/s; < 0 brakes, then reverses (to 15 studs/s)  |
    | 1   | steering | -1 full left .. +1 full right (max_steer 0.5 rad)                          |
    | 2   | nitro    | on above 0.5 (with throttle > 0 and fuel): top speed 90 studs/s            |

    ## Observation Space

    ``Box(low, high, (obs_size * frame_stack,), float32)``: ``frame_stack`` frames of
    ``obs_size = num_rays + 3`` floats (13 by default: 52 with 4 frames), oldest frame first. A
    new episode starts with every frame equal to its first observation (no zeros that a policy
    could mistake for walls). Per frame:

    | Num         | Observation                                                 | Min  | Max |
    |-------------|-------------------------------------------------------------|------|-----|
    | 0..rays-1   | ray k: distance to a wall or car / ray_length (100 studs)   | 0.0  | 1.0 |
    | rays        | nitro fuel                                                  | 0.0  | 1.0 |
    | rays + 1    | forward speed / nitro_max_speed (90), negative reversing    | -1.0 | 1.0 |
    | rays + 2    | is-reverse: 1 when the car faces against the track          | 0.0  | 1.0 |

    ## Rewards

    Reported by the game (PROTOCOL.md §4); the simulator's, per decision step (15 Hz): 0.1 per
    stud of progress along the centre line (negative backwards), +10 per lap, -0.5 per step
    touching another car, -10 when the car crashes, is stuck or drives the wrong way.

    ## Starting State

    ``start="random"`` (training): a seeded random point of the centre line, facing the track
    direction, at rest with full nitro fuel; ``start="grid"`` (evaluation): the start grid.

    ## Episode End

    Terminated: the car touches a wall, is stuck (under 2 studs/s) for 30 steps, or drives the
    wrong way for 30 steps. Truncated: the time limit, 1500 decision steps (100 s) on tracks up to
    2500 studs and proportionally more on longer ones (``rules.time_limit_steps``); the venv moving
    to a new track (every ``track_change_steps``); a lost game. Same-step autoreset: the
    observation returned for a finished car is its first of the next episode; the last one of the
    finished episode is in ``infos["final_obs"][k]`` (rows where ``infos["_final_obs"]``), so
    truncated episodes can bootstrap from it. Finished episodes put their statistics in
    ``infos["episode"]`` (``r``, ``l``, ``laps``, ``progress``, ``lap_time``, ``crashed``) with the
    mask ``infos["_episode"]``. The per-car info arrays (``lap``, ``progress``, ``x``, ...) describe
    the step just taken, also for cars that were respawned in it. Several games may serve one env
    (``GameSession``): when a game joins, some venvs move to it, which ends their cars' episodes
    (truncated). When a game is lost (``infos["reconnected"]``), its cars' episodes end truncated
    and its venvs restart on another game (or on the game that comes back);
    ``infos["lost_step"][k]`` marks a car whose step got no answer (reward 0, final observation =
    its last real one): off-policy learners should not store those rows.

    A v0 game (the original project's Roblox place: protocol v0, no hello) restarts an ended car
    itself, in the same tick: its packet is both the ending and the first observation of the next
    episode. That is reported exactly as above, with no RESET_AGENTS sent: ``final_obs`` ends with
    the ``last_observation`` the game sent with it, or, from a game that sends none, with the car's
    previous frame (the closest to the ending there is).

    ## Arguments

    ``make_vec_env(num_agents=5, num_venvs=5, frame_stack=4, track_change_steps=1500, **game)``;
    ``game`` chooses the game and how to reach it (``sim="inprocess"`` / ``"subprocess"`` / None
    for Roblox), the stepping mode, starts, tracks, seeds and timeouts: see ``GameSession``.
    ``reset(seed=s)`` seeds the track choice and the random starts, ``sim_seed`` the simulator:
    with the same seeds a lockstep run is reproducible.

    >>> from rbxenv import make_vec_env
    >>> envs = make_vec_env(num_agents=2, num_venvs=3, frame_stack=4, sim_seed=0)
    >>> envs.num_envs, envs.single_observation_space.shape, envs.single_action_space.shape
    (6, (52,), (3,))
    >>> obs, infos = envs.reset(seed=0)
    >>> obs, reward, terminated, truncated, infos = envs.step(envs.action_space.sample())
    >>> obs.shape, reward.shape, sorted(infos)[:3]
    ((6, 52), (6,), ['cause', 'collided', 'heading'])
    >>> envs.close()

    ## Version History

    * v1: protocol v1 games (hello, batched ticks, autoreset), in-process simulator backend,
      per-car same-step autoreset with ``final_obs``, episode statistics in ``infos``.
    * v0: the original project's PettingZoo env over its protocol (v0) (``RacingParallelEnv`` keeps it).
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, session: GameSession, frame_stack: int = 4, track_change_steps: int | None = 1500):
        self.session = session
        self.game = session.open()
        self.num_envs = len(session.agent_ids)
        self.frame_stack = frame_stack
        self.track_change_steps = track_change_steps
        self.obs_size = self.game.obs_size
        self.single_observation_space = observation_space(self.game, frame_stack)
        self.single_action_space = action_space(self.game)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self._stack = np.zeros((self.num_envs, frame_stack, self.obs_size), dtype=np.float32)
        self._ep_return = np.zeros(self.num_envs)
        self._ep_length = np.zeros(self.num_envs, dtype=np.int64)
        self._ep_best_lap = np.full(self.num_envs, np.nan)
        self._steps = 0
        self._rng = np.random.default_rng()
        # In lockstep the game restarts ended cars itself where it can (no RESET_AGENTS round trip);
        # in real time, packets of the next episode could arrive before the ending is read.
        session.autoreset = self.game.mode == "lockstep"

    def _restart_stacks(self, rows: np.ndarray | slice, obs: np.ndarray) -> None:
        # A new episode starts with every frame equal to its first observation (no zeros that a
        # policy could mistake for walls); the Luau frame stack helper does the same in Roblox.
        self._stack[rows] = obs[:, None, :]
        self._ep_return[rows] = 0.0
        self._ep_length[rows] = 0
        self._ep_best_lap[rows] = np.nan

    def _stacked(self) -> np.ndarray:
        return self._stack.reshape(self.num_envs, -1).copy()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        got = self.session.spawn_all(self._rng)
        self._restart_stacks(slice(None), got.obs)
        self._steps = 0
        self._last_infos = dict(got.info)
        return self._stacked(), self._last_infos

    def step(self, actions: np.ndarray):
        actions = np.asarray(actions, dtype=np.float32)
        if actions.shape != self.action_space.shape:
            raise ValueError(f"actions must have shape {self.action_space.shape} (cars, controls), got {actions.shape}")
        actions = np.minimum(np.maximum(actions, -1.0), 1.0)  # np.clip's Python wrapper costs 3x more
        try:
            got = self.session.step(self.session.agent_ids, actions)
        except BridgeClosed:
            if self.session.reconnect_timeout <= 0:
                raise
            got = None  # the game left before answering: handled in _advance
        return self._advance(got)

    def _advance(self, got: Observations | None):
        n = self.num_envs
        if got is None:
            # No answer, so this step has no data: every episode ends here, truncated, at its last
            # real observation with reward 0 (``infos["lost_step"]``), and restarts on the returned game.
            reward = np.zeros(n, dtype=np.float32)
            terminated, truncated = np.zeros(n, dtype=bool), np.ones(n, dtype=bool)
            infos = {key: self._last_infos[key].copy() for key in (*INFO_NUMBERS, "collided")}
            infos["cause"] = np.full(n, None, dtype=object)
            infos["lost_step"] = np.ones(n, dtype=bool)
            return self._finish(reward, terminated, truncated, infos, [], None)
        self._steps += 1
        lost = got.lost if got.lost is not None and got.lost.any() else None
        if lost is not None:
            last_frames = self._stack[lost]
        self._stack[:, :-1] = self._stack[:, 1:]
        self._stack[:, -1] = got.obs
        reward = got.reward.astype(np.float32)
        terminated, truncated = got.terminated.copy(), got.truncated.copy()
        infos = dict(got.info)  # fresh arrays: the bridge copied them out of its slots
        moved = self.session.spread()  # games joined: venvs move to them
        if lost is not None:
            # These cars' game left before answering: their episodes end at their last real
            # observation, truncated, reward 0 (``lost_step``), and their venvs move to another game.
            self._stack[lost] = last_frames
            reward[lost], terminated[lost], truncated[lost] = 0.0, False, True
            infos["lost_step"] = lost
            moved = sorted({*moved, *np.unique(self.session.venv_of[lost]).tolist()})
        self._last_infos = infos
        self._ep_return += reward
        self._ep_length += 1 if lost is None else ~lost
        self._ep_best_lap = np.fmin(self._ep_best_lap, infos["lap_time"])
        rotate = self._venvs_due_for_new_track()
        for venv in (*rotate, *moved):  # a venv moving to a new track or game ends its cars' episodes (truncation)
            truncated[self.session.venv_of == venv] |= ~terminated[self.session.venv_of == venv]
        return self._finish(reward, terminated, truncated, infos, rotate, got, moved)

    def _finish(self, reward, terminated, truncated, infos, rotate, got: Observations | None, moved=()):
        """Report the episodes that ended, restart their cars (same step) and their stacks: cars
        the game restarted itself (autoreset) come with their first observation, the others
        (and every car of a venv moving to a new track, or ``moved`` to another game) are respawned."""
        done = terminated | truncated
        if not done.any():
            return self._stacked(), reward, terminated, truncated, infos
        n = self.num_envs
        first_obs = np.zeros((n, self.obs_size), dtype=np.float32)
        restarted = np.zeros(n, dtype=bool)
        if got is not None and got.restarted is not None:
            restarted = done & got.restarted
            if rotate or moved:  # (np.isin costs more than the rest of this method)
                restarted &= ~np.isin(self.session.venv_of, [*rotate, *moved])
            first_obs[restarted] = got.reset_obs[restarted]
        respawn = np.flatnonzero(done & ~restarted)
        lost = got is None
        if not lost and (len(respawn) or rotate or moved):
            try:
                fresh = self.session.respawn(respawn, rotate, self._rng, moved)
            except BridgeClosed:
                if self.session.reconnect_timeout <= 0:
                    raise
                lost = True
            else:
                if self.session.interrupted:
                    # their game left while they respawned: the venvs restarted whole on another,
                    # so their cars still driving end here too (truncated at this step's observation)
                    cut = np.isin(self.session.venv_of, self.session.interrupted)
                    respawn = np.flatnonzero((done & ~restarted) | cut)
                    truncated |= ~done & cut
                    done |= cut
                    infos["reconnected"] = True
                first_obs[respawn] = _obs_of(fresh, [self.session.agent_ids[k] for k in respawn])
        if moved and "lost_step" in infos:
            infos["reconnected"] = True
        if lost:
            # Lost now (or before this step's answer): the cars still driving end here as well,
            # truncated at this step's real observation, and every car restarts on the returned game.
            truncated |= ~done
            done[:] = True
            fresh = self.session.reconnect()
            infos["reconnected"] = True
            first_obs[:] = _obs_of(fresh, self.session.agent_ids)
        rows = np.flatnonzero(done)
        infos["final_obs"] = final_obs = np.zeros((n, self._stack[0].size), np.float32)
        final_obs[rows] = self._stack[rows].reshape(len(rows), -1)
        infos["_final_obs"] = done
        laps = _zero_nan(infos["lap"])
        infos["episode"] = {
            "r": np.where(done, self._ep_return, 0.0).astype(np.float32),
            "l": np.where(done, self._ep_length, 0),
            "laps": np.where(done, laps, 0).astype(np.int64),
            "progress": np.where(done, laps + _zero_nan(infos["progress"]), 0.0),
            "lap_time": np.where(done, self._ep_best_lap, np.nan),
            "crashed": done & (infos["cause"] == "wall"),
        }
        infos["_episode"] = done
        self._restart_stacks(rows, first_obs[rows])
        return self._stacked(), reward, terminated, truncated, infos

    def _venvs_due_for_new_track(self) -> list[int]:
        # Venvs change tracks in turn (staggered) so the policy keeps seeing new shapes.
        n = self.track_change_steps
        game = self.session.game
        if not n or game is None or not game.has("track_spec") or game.has("game_tracks"):
            return []
        per = max(1, n // self.session.num_venvs)
        if self._steps % per:
            return []
        return [(self._steps // per - 1) % self.session.num_venvs]

    def freeze(self, on: bool = True) -> None:
        """Freeze (or unfreeze) every car in the game, as the original project did during training."""
        self.session.backend.freeze(on)

    def close_extras(self, **kwargs) -> None:
        self.session.close()


def _zero_nan(a: np.ndarray) -> np.ndarray:
    """NaN (not reported) -> 0: np.nan_to_num costs ~5x more on a few dozen cars."""
    return np.where(np.isnan(a), 0.0, a)


def _obs_of(got: Observations, agent_ids: list[str]) -> np.ndarray:
    """The rows of ``got.obs`` of these agents, in this order."""
    row = {aid: k for k, aid in enumerate(got.agent_ids)}
    return got.obs[[row[aid] for aid in agent_ids]]


# ====================================================================================================
# Constructors


def make_parallel_env(num_agents: int = 5, num_venvs: int = 1, **game) -> RacingParallelEnv:
    """A PettingZoo ParallelEnv of ``num_venvs`` venvs with ``num_agents`` cars each.

    Keyword arguments choose the game and how to reach it (``sim="inprocess"``: the simulator in
    this process, the default; ``"subprocess"``: the simulator over a loopback WebSocket; ``None``:
    wait for Roblox on host, port, token), the stepping mode, starts, tracks and timeouts: see
    ``rbxenv.session.GameSession``.
    Your own tracks: ``tracks=["my_track.json", "tracks/"]`` (specs, files or folders) with
    ``track_mix`` the share of track draws that take them (1.0: only them).
    """
    return RacingParallelEnv(GameSession(num_agents, num_venvs, **game))


def make_vec_env(
    num_agents: int = 5,
    num_venvs: int = 5,
    frame_stack: int = 4,
    *,
    track_change_steps: int | None = 1500,
    **game,
) -> RacingVectorEnv:
    """A Gymnasium vector env with one slot per car (``num_envs = num_agents * num_venvs``).

    ``frame_stack`` frames per observation (oldest first); ``track_change_steps``: every this many
    steps each venv moves to a new track (staggered across venvs; None keeps tracks). Other
    keyword arguments choose the game, as for ``make_parallel_env`` (see ``GameSession``).
    """
    return RacingVectorEnv(
        GameSession(num_agents, num_venvs, **game), frame_stack=frame_stack, track_change_steps=track_change_steps
    )
