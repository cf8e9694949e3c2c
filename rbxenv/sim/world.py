"""The in-process headless racing simulator: venvs, cars, and the bookkeeping around ``step``.

Every car of every venv lives in flat numpy arrays (index = position in ``agent_ids``) with the
index of its venv. The tracks of all venvs are packed into tables (centre-line segments, wall
points, ray windows), each venv's block padded with wrapped copies so that a window of segments
around any index is a plain slice: ``base[car] + hint[car] - K .. + K``, with no modulo and no
per-venv loop. The hot path (``step``, the observation rays, restarts of crashed cars) is one call
of a compiled kernel of ``rbxenv.sim.kernels`` on these arrays and tables.
Structural changes (spawn, remove, close) rebuild these tables from each track's padded block
(``Track.blocks``, kept while the padding stays); a new track also builds its ray windows
(``raycast.ray_windows``, compiled too: ~0.45 ms).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from rbxenv import tracks
from rbxenv.sim import kernels, rules
from rbxenv.sim.raycast import ray_windows
from rbxenv.sim.rules import DynamicConfig, SimConfig

PROJECT_WINDOW = 4  # segments searched either side of the index at the start of a decision step
# A car moves at most nitro_max_speed / 15 Hz = 6 studs per decision step, under two ~4-stud
# segments, so its nearest segment at every substep is within ±2 of the previous step's; 4 leaves
# room for short segments and collision pushes.

_CAR_INDEX = re.compile(r"^car_(\d+)_env_")
_CAUSES = np.array(kernels.CAUSES, dtype=object)  # the kernels' cause codes -> rules.end_cause strings


@dataclass
class StepResult:
    """Arrays over all cars, in ``Sim.agent_ids`` order: new arrays each step, which later steps leave alone."""

    obs: np.ndarray  # (n, obs_size) float32
    reward: np.ndarray  # (n,) float32
    terminated: np.ndarray  # (n,) bool
    truncated: np.ndarray  # (n,) bool
    live: np.ndarray  # (n,) bool: the car was live at the start of this step
    progress: np.ndarray  # (n,) fraction of the current lap driven
    lap: np.ndarray  # (n,) laps completed in this episode
    lap_time: np.ndarray  # (n,) seconds of the last completed lap, nan = none yet
    speed: np.ndarray  # (n,) studs/s
    collided: np.ndarray  # (n,) bool: touched another car during this step
    cause: np.ndarray  # (n,) object: "wall" | "stuck" | "wrong_way" | "time_limit" | None

    def info(self, i: int) -> dict:
        """PROTOCOL §3.3 info dict of car ``i``."""
        lap_time = float(self.lap_time[i])
        return {
            "progress": float(self.progress[i]),
            "lap": int(self.lap[i]),
            "lap_time": None if np.isnan(lap_time) else lap_time,
            "speed": float(self.speed[i]),
            "collided": bool(self.collided[i]),
            "cause": self.cause[i],
        }


class Blocks(NamedTuple):
    """One track's rows of the packed tables (``kernels.Tables``), wrapped ``pad`` rows past both ends."""

    segments: np.ndarray  # (M + 2 pad, 9)
    headings: np.ndarray  # (M + 2 pad,)
    wall_pts: np.ndarray  # (M + 2 pad, 2, 2): wall point i of both sides
    ray_lo: np.ndarray  # (M + 2 pad,)
    ray_span: np.ndarray  # (M + 2 pad,) ray_lo + ray_hi + 1


_NO_BLOCKS = Blocks(np.zeros((0, 9)), np.zeros(0), np.zeros((0, 2, 2)), np.zeros(0, np.int64), np.zeros(0, np.int64))


@dataclass
class Track:
    """Geometry of one venv's track (read-only for users)."""

    spec: dict
    centerline: np.ndarray  # (M, 2)
    half_width: np.ndarray  # (M,)
    left: np.ndarray  # (M, 2) wall points
    right: np.ndarray  # (M, 2)
    segments: np.ndarray  # (M, 9) rules.segment_table
    length: float
    ray_lo: np.ndarray  # (M,) rays from centre-line index h reach wall cells h - lo[h] .. h + hi[h]
    ray_hi: np.ndarray
    _blocks: dict = field(default_factory=dict, repr=False, compare=False)  # pad -> Blocks

    @classmethod
    def from_spec(cls, spec: dict, cfg: SimConfig) -> Track:
        c = tracks.centerline_array(spec)
        w = np.asarray(spec["half_width"], dtype=np.float64)
        left, right = tracks.offset_walls(c, w)  # the walls Roblox builds: tracks.walls(spec)
        seg = rules.segment_table(c, w)
        lo, hi = ray_windows(left, right, cfg.ray_length)
        return cls(
            spec=spec,
            centerline=c,
            half_width=w,
            left=left,
            right=right,
            segments=seg,
            length=float(seg[:, 5].sum()),
            ray_lo=lo,
            ray_hi=hi,
        )

    def blocks(self, pad: int) -> Blocks:
        """This track's rows of the packed tables; kept, since every spawn or removal in any venv
        repacks all venvs, most of them on the same track and pad as before."""
        if pad not in self._blocks:
            wrap = np.arange(-pad, len(self.segments) + pad) % len(self.segments)
            self._blocks = {
                pad: Blocks(
                    segments=self.segments[wrap],
                    headings=_headings(self.segments)[wrap],
                    wall_pts=np.stack([self.left, self.right], axis=1)[wrap],
                    ray_lo=self.ray_lo[wrap],
                    ray_span=(self.ray_lo + self.ray_hi + 1)[wrap],
                )
            }
        return self._blocks[pad]

    def point_at(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(segment index, point (k, 2), unit tangent (k, 2)) at arc lengths s (wrapped)."""
        s = np.mod(s, self.length)
        k = np.clip(np.searchsorted(self.segments[:, 6], s, side="right") - 1, 0, len(self.segments) - 1)
        seg = self.segments[k]
        t = (s - seg[:, 6]) / seg[:, 5]
        point = seg[:, :2] + t[:, None] * seg[:, 2:4]
        return k, point, seg[:, 2:4] / seg[:, 5:6]

    def project(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment index, arc length) of points (k, 2) projected on the whole loop (spawns, teleports):
        ``rules.project`` with every segment as a candidate, on the table already built."""
        seg = np.broadcast_to(self.segments, (len(pos), *self.segments.shape))
        k, _, s, _, _ = rules.project_window(np.asarray(pos, dtype=np.float64), seg)
        return k, s


@dataclass
class Venv:
    envid: str
    track: Track
    rng: np.random.Generator
    base: int = 0  # index of segment 0 of this venv in the packed tables
    grid: list = field(default_factory=list)  # cached grid poses (x, y, heading)


class Sim:
    """Headless racing simulator; see the ``rbxenv.sim`` package docstring for the rules."""

    def __init__(self, config: SimConfig | None = None, seed: int = 0):
        self.config = config or SimConfig()
        self.rng = np.random.default_rng(seed)
        self._dynamics_rng = np.random.default_rng([seed, 1])  # domain randomisation draws
        self._angles = rules.ray_angles(self.config.num_rays)
        self._constants = kernels.constants(self.config, PROJECT_WINDOW)
        self._venvs: dict[str, Venv] = {}
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self._car_env: dict[str, str] = {}  # agent id -> envid
        self.collisions = False
        self.frozen = False
        self.__dict__.update(self._car_arrays(0))  # self.pos, self.speed, ...: one array per car field
        self._repack()

    # ------------------------------------------------------------------ car storage

    @staticmethod
    def _car_arrays(n: int) -> dict[str, np.ndarray]:
        """The per-car arrays (index = position in ``agent_ids``) for n new cars, by attribute name."""
        return {
            "venv": np.zeros(n, np.int64),  # index into list(self._venvs)
            "pos": np.zeros((n, 2)),
            "heading": np.zeros(n),
            "speed": np.zeros(n),
            "fuel": np.ones(n),
            "hint": np.zeros(n, np.int64),  # centre-line segment index (within the venv's track)
            "s": np.zeros(n),  # arc length of the projection
            "base": np.zeros(n, np.int64),  # the venv's base in the packed tables
            "length": np.ones(n),  # the venv's track length
            "seg_count": np.ones(n, np.int64),  # segments of the venv's track
            "net": np.zeros(n),  # net progress since spawn / reset
            "laps": np.zeros(n, np.int64),
            "lap_start": np.zeros(n, np.int64),  # step count when the current lap started
            "lap_time": np.full(n, np.nan),
            "steps": np.zeros(n, np.int64),
            "slow": np.zeros(n, np.int64),  # consecutive slow steps
            "back": np.zeros(n, np.int64),  # consecutive wrong-way steps
            "live": np.zeros(n, bool),
            "collided": np.zeros(n, bool),
            "cause": np.full(n, None, dtype=object),
            "slot": np.zeros(n, np.int64),  # grid slot
            "random_start": np.zeros(n, bool),
            "spawn_pose": np.zeros((n, 3)),  # grid pose (x, y, heading)
            "spawn_hint": np.zeros(n, np.int64),
            "dyn": np.zeros((n, 8)),  # the dynamic car's u, r, actuators and own constants (kernels.Cars)
        }

    def _append_cars(self, k: int) -> None:
        for name, new in self._car_arrays(k).items():
            setattr(self, name, np.concatenate([getattr(self, name), new]))

    def _delete_cars(self, idx: np.ndarray) -> None:
        for name in self._car_arrays(0):
            setattr(self, name, np.delete(getattr(self, name), idx, axis=0))
        gone = set(int(i) for i in idx)
        self._ids = [a for i, a in enumerate(self._ids) if i not in gone]
        self._index = {a: i for i, a in enumerate(self._ids)}

    def _repack(self) -> None:
        """Rebuild the packed track tables and the per-venv neighbour table of every car."""
        venvs = list(self._venvs.values())
        # one window length for all cars: the longest window of any venv (extra cells are harmless)
        span = max([int((v.track.ray_lo + v.track.ray_hi).max()) + 1 for v in venvs], default=1)
        pad = max(span, PROJECT_WINDOW) + 1
        base = 0
        for v in venvs:
            v.base = base + pad
            base += len(v.track.segments) + 2 * pad
        blocks = [v.track.blocks(pad) for v in venvs]
        packed = Blocks(*(np.concatenate(parts) for parts in zip(_NO_BLOCKS, *blocks, strict=True)))

        order = {v.envid: i for i, v in enumerate(venvs)}
        self.venv = np.array([order[self._car_env[a]] for a in self._ids], np.int64)
        self.base = np.array([v.base for v in venvs], np.int64)[self.venv]
        self.length = np.array([v.track.length for v in venvs])[self.venv]
        self.seg_count = np.array([len(v.track.segments) for v in venvs], np.int64)[self.venv]
        self._others, self._others_valid = _mates(self.venv, len(venvs))
        self._tables = kernels.Tables(
            base=self.base,
            length=self.length,
            seg_count=self.seg_count,
            others=self._others,
            others_valid=self._others_valid,
            segments=packed.segments,
            headings=packed.headings,
            wall_pts=packed.wall_pts,  # (T, side, xy): wall point i of both sides
            ray_lo=packed.ray_lo,
            ray_span=packed.ray_span,
            angles=self._angles,
            ray_points=span + 1,
        )

    # ------------------------------------------------------------------ public API

    @property
    def agent_ids(self) -> list[str]:
        return list(self._ids)

    @property
    def envids(self) -> list[str]:
        return list(self._venvs)

    def index_of(self, agent_id: str) -> int:
        return self._index[agent_id]

    def track(self, envid: str) -> Track:
        return self._venvs[envid].track

    def venv_of(self, agent_id: str) -> str:
        return self._car_env[agent_id]

    def spawn(
        self,
        envid: str,
        agent_ids: list[str],
        track: dict | None = None,
        start: str = "grid",
        seed: int | None = None,
    ) -> None:
        """Create the venv if new, then (re)spawn these cars at their start (PROTOCOL SPAWN_AGENTS)."""
        if start not in ("grid", "random"):
            raise ValueError(f"start must be 'grid' or 'random', got {start!r}")
        venv = self._venvs.get(envid)
        new_track = venv is None or (track is not None and not _same_track(track, venv.track.spec))
        if venv is None:
            if track is None:
                track = tracks.generate(int(self.rng.integers(2**31)))
            rng_seed = seed if seed is not None else int(self.rng.integers(2**63))
            venv = self._venvs[envid] = Venv(
                envid, Track.from_spec(track, self.config), np.random.default_rng(rng_seed)
            )
        else:
            if new_track:
                venv.track = Track.from_spec(track, self.config)
                venv.grid = []
            if seed is not None:
                venv.rng = np.random.default_rng(seed)
        # cars of another venv with the same id move here
        moved = [a for a in agent_ids if a in self._index and self._car_env[a] != envid]
        if moved:
            self.remove_agents(moved)
        fresh = [a for a in dict.fromkeys(agent_ids) if a not in self._index]
        if fresh:
            first = len(self._ids)
            self._append_cars(len(fresh))
            taken = {int(self.slot[i]) for i, a in enumerate(self._ids) if self._car_env[a] == envid}
            for j, a in enumerate(fresh):
                self._ids.append(a)
                self._index[a] = first + j
                self._car_env[a] = envid
                match = _CAR_INDEX.match(a)
                slot = int(match.group(1)) if match else min(set(range(len(taken) + 1)) - taken)
                taken.add(slot)
                self.slot[first + j] = slot
        if fresh or new_track:
            self._repack()
        idx = np.array([self._index[a] for a in agent_ids], np.int64)
        self.random_start[idx] = start == "random"
        if new_track:  # the venv's other cars were placed on the old track: all of them restart
            idx = np.flatnonzero(self.venv == list(self._venvs).index(envid))
        self._set_spawn_poses(venv, idx)
        self.reset_indices(idx)

    def reset_agents(self, agent_ids: list[str]) -> None:
        self.reset_indices(np.array([self._index[a] for a in agent_ids], np.int64))

    def remove_agents(self, agent_ids: list[str]) -> None:
        idx = np.array([self._index[a] for a in agent_ids if a in self._index], np.int64)
        for a in agent_ids:
            self._car_env.pop(a, None)
        if len(idx):
            self._delete_cars(idx)
            self._repack()

    def close_venv(self, envid: str) -> None:
        if envid not in self._venvs:
            return
        self.remove_agents([a for a in self._ids if self._car_env[a] == envid])
        del self._venvs[envid]
        self._repack()

    def close_all(self) -> None:
        for envid in list(self._venvs):
            self.close_venv(envid)

    def set_collisions(self, on: bool) -> None:
        self.collisions = bool(on)

    def freeze(self, on: bool) -> None:
        self.frozen = bool(on)

    # ------------------------------------------------------------------ starts

    def _grid_pose(self, venv: Venv, slot: int) -> np.ndarray:
        """Grid slot pose (x, y, heading): the spec's slots, then more rows further back."""
        grid = venv.grid or list(np.asarray(venv.track.spec.get("grid", []), dtype=np.float64).reshape(-1, 3))
        venv.grid = grid
        while len(grid) <= slot:
            tr = venv.track
            s = tr.project(grid[-1][None, :2])[1][0] if grid else 0.0
            k, p, t = tr.point_at(np.array([s - 8.0]))
            side = 1.0 if len(grid) % 2 == 0 else -1.0
            lateral = side * 0.4 * tr.half_width[k[0]]
            xy = p[0] + lateral * np.array([-t[0, 1], t[0, 0]])
            grid.append(np.array([xy[0], xy[1], np.arctan2(t[0, 1], t[0, 0])]))
        return grid[slot]

    def _set_spawn_poses(self, venv: Venv, idx: np.ndarray) -> None:
        if len(idx):
            self.spawn_pose[idx] = [self._grid_pose(venv, slot) for slot in self.slot[idx].tolist()]
        self.spawn_hint[idx] = venv.track.project(self.spawn_pose[idx, :2])[0]

    def reset_indices(self, idx: np.ndarray) -> None:
        """Restart the episodes of cars ``idx`` at their start (grid slot or seeded random point)."""
        idx = np.ascontiguousarray(idx, np.int64)
        if len(idx) == 0:
            return
        draws = self._start_draws(idx)
        kernels.reset(self._cars(), self._tables, idx, self.spawn_pose, self.spawn_hint, self.random_start, draws,
                      self._constants)  # fmt: skip
        self.cause[idx] = None
        if isinstance(self.config, DynamicConfig):
            self.dyn[idx, 4:] = self._dynamics_draws(len(idx))

    def _dynamics_draws(self, n: int) -> np.ndarray:
        """The dynamic car's own constants for n new episodes (grip, accel scale, actuator_lag,
        yaw_inertia): the config's, each times a uniform factor in [1 - randomize, 1 + randomize]
        (from a generator of its own, so random starts do not depend on it)."""
        cfg = self.config
        assert isinstance(cfg, DynamicConfig)
        nominal = np.array([cfg.max_lateral_accel, 1.0, cfg.actuator_lag, cfg.yaw_inertia])
        if cfg.randomize == 0.0:
            return np.tile(nominal, (n, 1))
        return nominal * self._dynamics_rng.uniform(1.0 - cfg.randomize, 1.0 + cfg.randomize, (n, 4))

    def _start_draws(self, idx: np.ndarray) -> np.ndarray:
        """Per car of ``idx``, the uniform draw in [0, 1) that places its random start along the
        track (0 for grid starts): one draw per car from its venv's rng, in the order of ``idx``,
        so that each venv's starts depend on its own seed and resets alone."""
        draws = np.zeros(len(idx))
        rand = np.flatnonzero(self.random_start[idx])
        if len(rand):
            venvs = list(self._venvs.values())
            for r in rand.tolist():
                draws[r] = venvs[self.venv[idx[r]]].rng.random()
        return draws

    def teleport(self, agent_id: str, x: float, y: float, heading: float, speed: float = 0.0) -> None:
        """Move a car (tests, demos); its progress bookkeeping restarts from the new point."""
        i = self._index[agent_id]
        k, s = self._venvs[self._car_env[agent_id]].track.project(np.array([[x, y]]))
        self.pos[i] = x, y
        self.heading[i] = heading
        self.speed[i] = speed
        self.dyn[i, :4] = 0.0  # no slide, no yaw rate, actuators at rest
        self.hint[i] = k[0]
        self.s[i] = s[0]

    # ------------------------------------------------------------------ observation

    def _cars(self) -> kernels.Cars:
        """The per-car arrays a kernel reads and updates in place."""
        return kernels.Cars(
            self.pos, self.heading, self.speed, self.fuel, self.hint, self.s, self.net, self.laps, self.lap_start,
            self.lap_time, self.steps, self.slow, self.back, self.live, self.collided, self.dyn,
        )  # fmt: skip

    def _observe(self, idx: np.ndarray | None = None) -> np.ndarray:
        idx = np.arange(len(self._ids)) if idx is None else idx
        return kernels.observe(self._cars(), self._tables, idx, self.collisions, self._constants)

    def observe(self, agent_ids: list[str] | None = None) -> np.ndarray:
        """Current observations (n, obs_size) float32 of these cars (default: all, in order)."""
        if agent_ids is None:
            return self._observe()
        return self._observe(np.array([self._index[a] for a in agent_ids], np.int64))

    # ------------------------------------------------------------------ step

    def step(self, actions: np.ndarray) -> StepResult:
        """Advance every live car one decision step (``substeps`` physics steps) and score it.

        The rules are applied by ``kernels.step`` (the compiled form of ``rules``); parked cars
        (not live) get no input, do not move and score nothing. NaN actions count as 0.
        """
        n = len(self._ids)
        live = self.live.copy()
        if self.frozen:
            none = np.zeros(n, bool)
            return self._result(self._observe(), np.zeros(n, np.float32), none, none, none, np.full(n, None, object))
        act = np.ascontiguousarray(actions, dtype=np.float64).reshape(n, 3)
        obs, reward, terminated, truncated, code = kernels.step(
            self._cars(), self._tables, act, live, self.collisions, self._constants
        )
        cause = _CAUSES[code]
        if np.count_nonzero(code):  # a third of code.any()'s cost on small arrays
            self.cause = np.where(code > 0, cause, self.cause)
        return self._result(obs, reward, terminated, truncated, live, cause)

    def _result(self, obs, reward, terminated, truncated, live, cause) -> StepResult:
        progress = self.net / self.length - self.laps  # of the current lap; clipped in place (np.clip costs 2x)
        return StepResult(
            obs=obs,
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            live=live,
            progress=progress.clip(0.0, 1.0, out=progress),
            lap=self.laps.copy(),
            lap_time=self.lap_time.copy(),
            speed=self.speed.copy(),
            collided=self.collided & live,
            cause=cause,
        )


def _mates(venv: np.ndarray, num_venvs: int) -> tuple[np.ndarray, np.ndarray]:
    """(others, others_valid): others[c] lists the other cars of car c's venv (by index), padded
    with c itself, which others_valid masks out."""
    n = len(venv)
    members = [np.flatnonzero(venv == i) for i in range(num_venvs)]
    width = max([len(m) - 1 for m in members] + [1])
    others = np.tile(np.arange(n)[:, None], (1, width))
    for m in members:
        if len(m) > 1:  # row j: m without its j-th car, in order (column i holds car i, or i + 1 from j on)
            col = np.arange(len(m) - 1)
            others[m, : len(m) - 1] = m[col + (col >= np.arange(len(m))[:, None])]
    return others, others != np.arange(n)[:, None]


def _headings(segments: np.ndarray) -> np.ndarray:
    """Heading of each segment table row's direction, as ``Track.point_at``'s tangent gives it
    (numpy's arctan2, which can differ from the libm one the kernels would call by an ulp)."""
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero-length segment is never a start
        return np.arctan2(segments[:, 3] / segments[:, 5], segments[:, 2] / segments[:, 5])


def _same_track(a: dict, b: dict) -> bool:
    if a is b:
        return True
    return a.get("name") == b.get("name") and np.array_equal(np.asarray(a["centerline"]), np.asarray(b["centerline"]))
