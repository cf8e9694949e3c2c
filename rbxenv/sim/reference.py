"""A privileged reference driver: pure pursuit on the centre line with a planned speed profile.

It sees the track (not only the rays), so its lap time is the yardstick for learned drivers
(``reference_lap_time``). Steering: aim at the centre-line point ``lookahead`` studs ahead
(pure pursuit: curvature 2 sin(alpha) / L). Speed: the grip limit v <= sqrt(a_lat / curvature)
along the track, propagated backwards with the braking deceleration so the car brakes *before*
corners; nitro whenever the plan allows more than ``max_speed``.
"""

from __future__ import annotations

import math

import numpy as np

from rbxenv.sim.rules import SimConfig
from rbxenv.sim.world import Sim, Track


def speed_profile(track: Track, cfg: SimConfig, grip: float = 0.7, braking: float = 0.5) -> np.ndarray:
    """Target speed at each centre-line point (M,): cornering limit, then braking distance.

    Curvature at point i = turning angle / mean length of the two segments, taken as the max over
    a few neighbours (the car cuts corners a bit and needs margin). Cornering limit
    sqrt(grip * max_lateral_accel / curvature), capped by nitro_max_speed; then backwards (twice
    around the loop) v_i <= sqrt(v_{i+1}² + 2 * braking * brake * len_i).
    """
    seg = track.segments
    d, length = seg[:, 2:4], seg[:, 5]
    heading = np.arctan2(d[:, 1], d[:, 0])
    turn = np.abs(np.angle(np.exp(1j * (heading - np.roll(heading, 1)))))
    curvature = turn / (0.5 * (length + np.roll(length, 1)))
    curvature = np.max([np.roll(curvature, k) for k in range(-3, 4)], axis=0)
    v = np.minimum(np.sqrt(grip * cfg.max_lateral_accel / np.maximum(curvature, 1e-9)), cfg.nitro_max_speed)
    decel = 2.0 * braking * cfg.brake
    m = len(v)
    for _ in range(2):
        for i in range(m - 1, -1, -1):
            v[i] = min(v[i], math.sqrt(v[(i + 1) % m] ** 2 + decel * length[i]))
    return v


class PurePursuitDriver:
    """Actions (n, 3) for every car of a Sim, in ``sim.agent_ids`` order."""

    def __init__(self, sim: Sim, lookahead: float = 10.0, lookahead_time: float = 0.35):
        self.sim = sim
        self.lookahead = lookahead  # studs, plus lookahead_time * speed
        self.lookahead_time = lookahead_time
        self._key = None

    def _pack(self) -> None:
        """Concatenate every venv's segment table (arc lengths shifted so they are increasing)."""
        tracks = [self.sim.track(e) for e in self.sim.envids]
        key = tuple(id(t) for t in tracks)
        if key == self._key:
            return
        self._key = key
        cfg = self.sim.config
        segs, speeds, offsets, offset = [], [], [], 0.0
        for t in tracks:
            seg = t.segments.copy()
            seg[:, 6] += offset
            segs.append(seg)
            speeds.append(speed_profile(t, cfg))
            offsets.append(offset)
            offset += t.length + 1.0
        self._seg = np.concatenate(segs) if segs else np.zeros((0, 9))
        self._speed = np.concatenate(speeds) if speeds else np.zeros(0)
        self._offset = np.array(offsets)
        self._length = np.array([t.length for t in tracks])

    def _at(self, venv: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(packed segment index, point (n, 2)) at arc lengths s of each car's track."""
        g = self._offset[venv] + np.mod(s, self._length[venv])
        k = np.searchsorted(self._seg[:, 6], g, side="right") - 1
        seg = self._seg[k]
        t = np.clip((g - seg[:, 6]) / seg[:, 5], 0.0, 1.0)
        return k, seg[:, :2] + t[:, None] * seg[:, 2:4]

    def act(self) -> np.ndarray:
        sim, cfg = self.sim, self.sim.config
        self._pack()
        n = len(sim.agent_ids)
        if n == 0:
            return np.zeros((0, 3))
        speed = sim.speed
        _, target = self._at(sim.venv, sim.s + self.lookahead + self.lookahead_time * np.abs(speed))
        rel = target - sim.pos
        dist = np.maximum(np.hypot(rel[:, 0], rel[:, 1]), 1e-6)
        alpha = np.arctan2(rel[:, 1], rel[:, 0]) - sim.heading  # > 0: target on the left
        curvature = 2.0 * np.sin(alpha) / dist
        steer = -np.arctan(curvature * cfg.wheelbase) / cfg.max_steer  # +1 = right

        # the slowest planned speed over the distance covered in the next ~0.5 s
        ahead = [self._speed[self._at(sim.venv, sim.s + d)[0]] for d in np.linspace(0, 0.5, 6)[:, None] * speed]
        v_target = np.min(ahead, axis=0)
        throttle = np.clip((v_target - speed) * 0.5, -1.0, 1.0)
        nitro = (v_target > cfg.max_speed + 1.0) & (speed > cfg.max_speed - 10.0)
        return np.column_stack([throttle, np.clip(steer, -1.0, 1.0), nitro.astype(np.float64)])


def drive_laps(specs: list[dict], config: SimConfig | None = None) -> np.ndarray:
    """Drive one car per track (all at once, one venv each) from grid slot 0 until it completes a
    lap or its episode ends; returns the lap times in seconds (inf where it failed)."""
    sim = Sim(config)
    for i, spec in enumerate(specs):
        sim.spawn(f"ref{i}", [f"car_0_env_ref{i}"], track=spec)
    driver = PurePursuitDriver(sim)
    times = np.full(len(specs), np.inf)
    while sim.live.any():
        res = sim.step(driver.act())
        done = res.live & (res.lap >= 1)
        times[done] = res.lap_time[done]
        sim.live &= ~done  # park the cars that finished
    return times


def reference_lap_time(spec: dict, config: SimConfig | None = None) -> float:
    """Seconds the reference driver takes for one lap from the grid (inf if it fails)."""
    return float(drive_laps([spec], config)[0])
