"""The simulator's decision step, observation rays and restarts, compiled with numba.

Why: a decision step of 25 cars was a few hundred numpy calls on arrays of 25 elements, and numpy's
per-call overhead, not arithmetic, was nearly all of its time. Here the step is a few loops over
the cars that apply the game rules to one car at a time. Restarting a few crashed cars was the
same story (~50 us of numpy bookkeeping, more than a whole step); ``reset`` takes ~6 us.

These kernels are the compiled form of ``rules.py`` (the readable specification, PROTOCOL.md §4,
which the Luau port follows): the same formulas in the same order of operations with the same
float types. Physics, contacts and the centre-line projection run in float64; wall rays run in
float32 on coordinates relative to the car; rays at cars run in float64. The results therefore
equal the numpy rules' bit for bit, except where ``tan`` or a sum of several simultaneous car
contacts rounds differently (an ulp). ``tests/test_sim.py`` replays golden steps recorded from
the numpy simulator (``tests/vectors/sim_steps.npz``) and checks windowed rays against brute
force. A rule changes in ``rules.py`` first, then here.

``step``, ``observe`` and ``reset`` (what ``world.py`` calls) run kernels with explicit
signatures, so importing this module compiles them, or loads them from numba's on-disk cache in
``__pycache__``: the simulator never compiles in the middle of a step, and arrays of other types
raise TypeError instead of compiling silently. No fastmath (results must not move) and no
parallel (the trainer uses the other core).
"""

from __future__ import annotations

import math
import typing
from typing import NamedTuple

import numba
import numpy as np
from numba import types

from rbxenv.sim.rules import DynamicConfig, SimConfig

# --------------------------------------------------------------------------- argument types


class Constants(NamedTuple):
    """The SimConfig fields the kernels read (one argument numba can type, instead of twenty)."""

    dt: float
    substeps: int
    project_window: int  # segments searched either side of a car's index (world.PROJECT_WINDOW)
    max_steer: float
    wheelbase: float
    nitro_threshold: float
    max_speed: float
    nitro_max_speed: float
    reverse_max_speed: float
    accel: float
    nitro_accel: float
    brake: float
    drag_linear: float
    drag_const: float
    max_lateral_accel: float
    nitro_burn: float
    nitro_regen: float
    car_radius: float
    contact_restitution: float
    ray_length: float
    progress_reward: float
    lap_reward: float
    contact_penalty: float
    end_penalty: float
    stuck_speed: float
    stuck_steps: int
    wrong_way_steps: int
    max_steps: int
    time_limit_length: float
    tick_hz: float  # lap times divide by it
    dynamic: int  # 1: the dynamic car (rules.car_dynamics_substep), 0: the kinematic one


_KINDS = typing.get_type_hints(Constants)  # field -> int or float


def constants(cfg: SimConfig, project_window: int) -> Constants:
    """The kernels' constants from a SimConfig, each cast to its field's type (so one signature
    fits); a count that is not a whole number is refused rather than rounded."""
    values = {name: getattr(cfg, name) for name in Constants._fields if name not in ("project_window", "dynamic")}
    values["project_window"] = project_window
    values["dynamic"] = int(isinstance(cfg, DynamicConfig))
    for name, v in values.items():
        if _KINDS[name] is int and v != int(v):
            raise ValueError(f"SimConfig.{name} must be a whole number, got {v!r}")
    return Constants(**{name: _KINDS[name](v) for name, v in values.items()})


class Cars(NamedTuple):
    """The Sim's per-car arrays that a step reads and updates in place (index = car)."""

    pos: np.ndarray  # (n, 2) float64
    heading: np.ndarray
    speed: np.ndarray
    fuel: np.ndarray
    hint: np.ndarray  # int64: nearest centre-line segment, within the venv's track
    s: np.ndarray
    net: np.ndarray
    laps: np.ndarray  # int64
    lap_start: np.ndarray  # int64
    lap_time: np.ndarray
    steps: np.ndarray  # int64
    slow: np.ndarray  # int64
    back: np.ndarray  # int64
    live: np.ndarray  # bool
    collided: np.ndarray  # bool
    dyn: np.ndarray  # (n, 8) float64, the dynamic car only: u, r, thr, steer, then its constants
    # grip, accel scale, actuator_lag, yaw_inertia (rules.car_dynamics_substep's state and params)


class Tables(NamedTuple):
    """What a step reads and never writes: the packed track tables and each car's place in them."""

    base: np.ndarray  # (n,) int64: the car's venv's segment 0 in the packed tables
    length: np.ndarray  # (n,) float64: the car's track length
    seg_count: np.ndarray  # (n,) int64: segments of the car's track
    others: np.ndarray  # (n, C) int64: the other cars of the car's venv (padded)
    others_valid: np.ndarray  # (n, C) bool
    segments: np.ndarray  # (T, 9) float64: rules.segment_table rows of every venv, padded
    headings: np.ndarray  # (T,) float64: heading of each segment's direction (numpy's arctan2)
    wall_pts: np.ndarray  # (T, 2, 2) float64: wall point i of both sides
    ray_lo: np.ndarray  # (T,) int64: rays from index h reach wall cells h - lo .. h - lo + span - 1
    ray_span: np.ndarray  # (T,) int64
    angles: np.ndarray  # (R,) float64: rules.ray_angles
    ray_points: int  # the longest ray window in wall points (size of the rays' scratch)


# Numba types of the three tuples: the kernels take them as plain tuples, which numba types in C
# when it dispatches a call (named tuples cost ~3 us more per call, a tenth of a 25-car step).
_F8, _I8, _B1 = types.float64, types.int64, types.boolean
_F1, _F2, _I1, _B = _F8[::1], _F8[:, ::1], _I8[::1], _B1[::1]


def _tuple_type(cls: type, **fields: types.Type) -> types.Tuple:
    """The numba type of a plain tuple of ``cls``'s fields, given each field's type by name."""
    assert tuple(fields) == cls._fields, f"{cls.__name__}: types for {cls._fields}, got {tuple(fields)}"
    return types.Tuple(list(fields.values()))


_CARS = _tuple_type(Cars, pos=_F2, heading=_F1, speed=_F1, fuel=_F1, hint=_I1, s=_F1, net=_F1, laps=_I1,
                    lap_start=_I1, lap_time=_F1, steps=_I1, slow=_I1, back=_I1, live=_B, collided=_B, dyn=_F2)  # fmt: skip
_TABLES = _tuple_type(Tables, base=_I1, length=_F1, seg_count=_I1, others=_I8[:, ::1], others_valid=_B1[:, ::1],
                      segments=_F2, headings=_F1, wall_pts=_F8[:, :, ::1], ray_lo=_I1, ray_span=_I1, angles=_F1,
                      ray_points=_I8)  # fmt: skip
_CONSTANTS = _tuple_type(Constants, **{name: _F8 if _KINDS[name] is float else _I8 for name in Constants._fields})
_STEP_OUT = types.Tuple([types.float32[:, ::1], types.float32[::1], _B, _B, types.int8[::1]])

# rules.end_cause's strings by the code ``step`` returns (0: the episode goes on)
CAUSES = (None, "wall", "stuck", "wrong_way", "time_limit")

# The helpers below compile into the two entry kernels (and are cached with them). numpy's error
# model: x / 0 gives inf or nan, as in rules.py, instead of raising.
_jit = numba.njit(error_model="numpy")

# --------------------------------------------------------------------------- physics (float64)


@_jit
def _input(value: float, live: bool) -> float:
    """An action entry as the car gets it: a parked car (not live) and a NaN give no input (0)."""
    return value if live and value == value else 0.0


@_jit
def _controls(action: np.ndarray, live: bool, c: Constants) -> tuple[float, float, bool]:
    """rules.car_controls for one car: (throttle, curvature, wants_nitro)."""
    throttle = min(max(_input(action[0], live), -1.0), 1.0)
    steer = min(max(_input(action[1], live), -1.0), 1.0)
    curvature = math.tan(steer * c.max_steer) * (-1.0 / c.wheelbase)
    return throttle, curvature, _input(action[2], live) > c.nitro_threshold and throttle > 0.0


@_jit
def _new_speed(v: float, throttle: float, boost: bool, c: Constants, scale: float) -> float:
    """Step 2 of rules.car_physics_step: gas, brake, reverse or coast (the branches of its np.where),
    with accel and nitro_accel times ``scale`` (1.0 for the kinematic car: x * 1.0 is exact, so its
    steps stay bit-identical; the dynamic car's engine strength otherwise)."""
    coast = math.copysign(max(abs(v) * (1.0 - c.drag_linear * c.dt) - c.drag_const * c.dt, 0.0), v)
    if throttle > 0.0:
        if v < 0.0:
            return min(v + throttle * (c.brake * c.dt), 0.0)
        top = c.nitro_max_speed if boost else c.max_speed
        if v < top:
            return min(v + throttle * ((c.nitro_accel * scale) * c.dt if boost else (c.accel * scale) * c.dt), top)
        return max(coast, top)
    if throttle < 0.0:
        if v > 0.0:
            return max(v + throttle * (c.brake * c.dt), 0.0)
        return max(v + throttle * ((c.accel * scale) * c.dt), -c.reverse_max_speed)
    return coast


@_jit
def _physics_substep(cars: Cars, i: int, throttle: float, curvature: float, wants: bool, c: Constants) -> None:
    """rules.car_physics_substep for car i, in place: speed, fuel, heading, then position."""
    fuel = cars.fuel[i]
    boost = wants and fuel > 0.0
    v = _new_speed(cars.speed[i], throttle, boost, c, 1.0)
    if boost:
        cars.fuel[i] = max(fuel - c.nitro_burn * c.dt, 0.0)
    elif not wants:
        cars.fuel[i] = min(fuel + c.nitro_regen * c.dt, 1.0)
    cap = c.max_lateral_accel / max(v * v, 1e-12)  # grip: |curvature| <= a / v²
    heading = cars.heading[i] + v * min(max(curvature, -cap), cap) * c.dt
    step = v * c.dt
    cars.speed[i] = v
    cars.heading[i] = heading
    cars.pos[i, 0] = cars.pos[i, 0] + step * math.cos(heading)
    cars.pos[i, 1] = cars.pos[i, 1] + step * math.sin(heading)


@_jit
def _dynamic_substep(cars: Cars, i: int, throttle: float, steer_cmd: float, wants: bool, c: Constants) -> None:
    """rules.car_dynamics_substep for car i, in place (cars.dyn holds its u, r, actuators and
    constants): actuators, speed and fuel, yaw rate, slide within the grip, then position."""
    d = cars.dyn
    dt = c.dt
    lag, inertia = d[i, 6], d[i, 7]
    follow = 1.0 - math.exp(-dt / lag) if lag > 0.0 else 1.0
    thr = d[i, 2] + (throttle - d[i, 2]) * follow
    steer = d[i, 3] + (steer_cmd - d[i, 3]) * follow
    fuel = cars.fuel[i]
    boost = wants and fuel > 0.0
    v = _new_speed(cars.speed[i], thr, boost, c, d[i, 5])
    if boost:
        cars.fuel[i] = max(fuel - c.nitro_burn * dt, 0.0)
    elif not wants:
        cars.fuel[i] = min(fuel + c.nitro_regen * dt, 1.0)
    k = math.tan(steer * c.max_steer) * (-1.0 / c.wheelbase)
    settle = 1.0 - math.exp(-dt / inertia) if inertia > 0.0 else 1.0
    r = d[i, 1] + (v * k - d[i, 1]) * settle
    u = d[i, 0]
    v, u = v + r * u * dt, u - r * v * dt
    u = math.copysign(max(abs(u) - d[i, 4] * dt, 0.0), u)
    h = cars.heading[i] + r * dt
    cars.speed[i] = v
    cars.heading[i] = h
    cars.pos[i, 0] = cars.pos[i, 0] + (v * math.cos(h) - u * math.sin(h)) * dt
    cars.pos[i, 1] = cars.pos[i, 1] + (v * math.sin(h) + u * math.cos(h)) * dt
    d[i, 0], d[i, 1], d[i, 2], d[i, 3] = u, r, thr, steer


# --------------------------------------------------------------------------- car contacts (float64)


@_jit
def _contacts(
    cars: Cars, tables: Tables, live: np.ndarray, c: Constants, collided: np.ndarray, push: np.ndarray
) -> None:
    """Resolve overlaps between live cars of the same venv (PROTOCOL §4 car contacts), in place.

    Overlapping circles are pushed apart (half the overlap each) and, when approaching, get an
    inelastic impulse along the contact normal n: each car's velocity changes by
    ±(1 + restitution) / 2 * (relative velocity · n) * n, of which the car keeps the part along
    its heading (the car model cannot slide). Coincident cars separate along ±x by index order.
    Every push is computed from the positions before any is applied (``push``: (n, 4) scratch),
    summing a car's contacts in the order of ``tables.others``.
    """
    r2 = 2.0 * c.car_radius
    pos, heading, speed = cars.pos, cars.heading, cars.speed
    n = len(live)
    for i in range(n):
        push[i] = 0.0
        if not live[i]:
            continue
        for m in range(tables.others.shape[1]):
            j = tables.others[i, m]
            if not (tables.others_valid[i, m] and live[j]):
                continue
            rx = pos[j, 0] - pos[i, 0]
            ry = pos[j, 1] - pos[i, 1]
            d2 = rx * rx + ry * ry
            if not d2 < r2 * r2:
                continue
            collided[i] = True
            d = math.sqrt(d2)
            if d > 1e-9:
                nx, ny = rx / max(d, 1e-9), ry / max(d, 1e-9)
            else:
                nx, ny = float(np.sign(j - i)), 0.0
            depth = (r2 - d) * 0.5
            fx_i, fy_i = math.cos(heading[i]), math.sin(heading[i])
            vx_i, vy_i = speed[i] * fx_i, speed[i] * fy_i
            vx_j, vy_j = speed[j] * math.cos(heading[j]), speed[j] * math.sin(heading[j])
            closing = (vx_j - vx_i) * nx + (vy_j - vy_i) * ny  # < 0: approaching
            impulse = 0.5 * (1.0 + c.contact_restitution) * closing if closing < 0.0 else 0.0
            push[i, 0] += depth * nx
            push[i, 1] += depth * ny
            push[i, 2] += impulse * nx
            push[i, 3] += impulse * ny
    for i in range(n):
        if push[i, 0] != 0.0 or push[i, 1] != 0.0 or push[i, 2] != 0.0 or push[i, 3] != 0.0:
            pos[i, 0] -= push[i, 0]
            pos[i, 1] -= push[i, 1]
            speed[i] = speed[i] + push[i, 2] * math.cos(heading[i]) + push[i, 3] * math.sin(heading[i])


# --------------------------------------------------------------------------- centre line (float64)


@_jit
def _project(x: float, y: float, segments: np.ndarray, first: int, count: int) -> tuple[int, float, float, float]:
    """rules.project_window for one point over segment rows first .. first + count - 1.

    Returns (k, s, lateral, half_width) of the nearest candidate k (the first one on ties).
    """
    best, k, tk, rxk, ryk = np.inf, 0, 0.0, 0.0, 0.0
    for m in range(count):
        row = segments[first + m]
        rx, ry, dx, dy = x - row[0], y - row[1], row[2], row[3]
        t = min(max((rx * dx + ry * dy) * row[4], 0.0), 1.0)
        ex, ey = rx - t * dx, ry - t * dy
        d2 = ex * ex + ey * ey
        if d2 < best:
            best, k, tk, rxk, ryk = d2, m, t, rx, ry
    row = segments[first + k]
    s = row[6] + tk * row[5]
    lateral = (row[2] * ryk - row[3] * rxk) / row[5]
    half_width = row[7] + tk * (row[8] - row[7])
    return k, s, lateral, half_width


@_jit
def _is_reverse(heading: float, row: np.ndarray) -> bool:
    """rules.is_reverse against the unit tangent of segment table row ``row``."""
    return math.cos(heading) * (row[2] / row[5]) + math.sin(heading) * (row[3] / row[5]) < 0.0


@_jit
def _point_at(tables: Tables, i: int, s: float) -> tuple[int, float, float, float]:
    """world.Track.point_at on car i's track: (segment k, x, y, heading of its tangent) at arc
    length s (wrapped), k being the last segment that starts at or before s."""
    segments, first, count = tables.segments, tables.base[i], tables.seg_count[i]
    s = np.mod(s, tables.length[i])
    lo, hi = 0, count  # searchsorted(start arc lengths, s, side="right") - 1 by bisection
    while lo < hi:
        mid = (lo + hi) // 2
        if segments[first + mid, 6] <= s:
            lo = mid + 1
        else:
            hi = mid
    k = min(max(lo - 1, 0), count - 1)
    row = segments[first + k]
    t = (s - row[6]) / row[5]
    return k, row[0] + t * row[2], row[1] + t * row[3], tables.headings[first + k]


@_jit
def _drive(cars: Cars, tables: Tables, actions: np.ndarray, live: np.ndarray, collisions: bool, c: Constants):
    """The physics of one decision step for every car, in place; returns (crashed, collided).

    Per substep: rules.car_physics_substep for every car, then car contacts, then
    rules.project_window on the segments around the car's index at the start of the step and
    rules.is_crash. A live car that touched a wall is put back where it first did (position,
    heading, fuel, projection), stopped; only car contacts in the remaining substeps saw it drive
    on. Parked cars (not live) get no input and do not move; their speed and fuel are put back by
    ``step``.
    """
    n = len(live)
    throttle, curvature, wants = np.empty(n), np.empty(n), np.empty(n, np.bool_)
    steer = np.zeros(n)  # the dynamic car's commanded steering (it turns through its actuator)
    for i in range(n):
        throttle[i], curvature[i], wants[i] = _controls(actions[i], live[i], c)
        if c.dynamic:
            steer[i] = min(max(_input(actions[i, 1], live[i]), -1.0), 1.0)
        if not live[i]:
            cars.speed[i] = 0.0
            if c.dynamic:  # a parked car neither slides nor turns
                cars.dyn[i, 0], cars.dyn[i, 1] = 0.0, 0.0
    crashed, collided = np.zeros(n, np.bool_), np.zeros(n, np.bool_)
    at_crash = np.empty((n, 4))  # x, y, heading, fuel where the car first touched a wall
    k, s = np.empty(n, np.int64), np.empty(n)  # projection at that substep, else at the last one
    push = np.empty((n, 4))
    window = 2 * c.project_window + 1
    for _ in range(c.substeps):
        for i in range(n):
            if c.dynamic:
                _dynamic_substep(cars, i, throttle[i], steer[i], wants[i], c)
            else:
                _physics_substep(cars, i, throttle[i], curvature[i], wants[i], c)
        if collisions:
            _contacts(cars, tables, live, c, collided, push)
        for i in range(n):
            if crashed[i]:
                continue
            first = tables.base[i] + cars.hint[i] - c.project_window
            k[i], s[i], lateral, half_width = _project(cars.pos[i, 0], cars.pos[i, 1], tables.segments, first, window)
            if live[i] and abs(lateral) + c.car_radius >= half_width:  # rules.is_crash
                crashed[i] = True
                at_crash[i, 0], at_crash[i, 1] = cars.pos[i, 0], cars.pos[i, 1]
                at_crash[i, 2], at_crash[i, 3] = cars.heading[i], cars.fuel[i]
    for i in range(n):
        if crashed[i]:
            cars.pos[i, 0], cars.pos[i, 1] = at_crash[i, 0], at_crash[i, 1]
            cars.heading[i], cars.fuel[i], cars.speed[i] = at_crash[i, 2], at_crash[i, 3], 0.0
            if c.dynamic:
                cars.dyn[i, 0], cars.dyn[i, 1] = 0.0, 0.0
        cars.s[i] = s[i]
        cars.hint[i] = (cars.hint[i] + k[i] - c.project_window) % tables.seg_count[i]
    return crashed, collided


# --------------------------------------------------------------------------- reward and endings


@_jit
def _score(cars: Cars, tables: Tables, live: np.ndarray, s_before: np.ndarray, crashed, collided, c: Constants):
    """Score the step every car just drove; returns (reward, terminated, truncated, cause code).

    Per car, as the numpy rules in this order: rules.progress_delta (0 for parked cars) into the
    net progress, rules.laps_completed and the lap time, rules.is_reverse and
    rules.update_counters (parked cars keep their counters), rules.step_reward, rules.end_cause.
    """
    n = len(live)
    reward = np.empty(n, np.float32)
    terminated, truncated = np.zeros(n, np.bool_), np.zeros(n, np.bool_)
    cause = np.zeros(n, np.int8)
    for i in range(n):
        progress = 0.0
        if live[i]:
            d = cars.s[i] - s_before[i]
            progress = d - tables.length[i] * np.rint(d / tables.length[i])
        cars.net[i] += progress
        cars.steps[i] += live[i]
        laps = np.int64(max(np.floor(cars.net[i] / tables.length[i]), 0.0))
        gained = max(laps - cars.laps[i], 0)
        if gained > 0:
            cars.lap_time[i] = (cars.steps[i] - cars.lap_start[i]) / c.tick_hz
            cars.lap_start[i] = cars.steps[i]
            cars.laps[i] += gained
        reverse = _is_reverse(cars.heading[i], tables.segments[tables.base[i] + cars.hint[i]])
        slow = cars.slow[i] + 1 if abs(cars.speed[i]) < c.stuck_speed else 0
        back = cars.back[i] + 1 if reverse else 0
        stuck = live[i] and slow >= c.stuck_steps
        wrong_way = live[i] and back >= c.wrong_way_steps
        if live[i]:
            cars.slow[i], cars.back[i] = slow, back
        terminated[i] = crashed[i] or stuck or wrong_way
        limit = math.ceil(c.max_steps * max(1.0, tables.length[i] / c.time_limit_length))  # rules.time_limit_steps
        truncated[i] = live[i] and not terminated[i] and cars.steps[i] >= limit
        reward[i] = np.float32(
            c.progress_reward * progress
            + c.lap_reward * gained
            - c.contact_penalty * collided[i]
            - c.end_penalty * terminated[i]
        )
        cause[i] = 1 if crashed[i] else 2 if stuck else 3 if wrong_way else 4 if truncated[i] else 0  # CAUSES
    return reward, terminated, truncated, cause


# --------------------------------------------------------------------------- rays and observation


@_jit
def _cast_walls(x: float, y: float, rays: np.ndarray, wall_pts: np.ndarray, first: int, points: int, q, cross, dist):
    """Distance along each ray to the first wall segment of wall points first .. first + points - 1
    of both sides (inf when none): a ray window (``raycast.ray_windows``) holds every wall segment
    a ray can reach, so this equals the brute force over all walls (``raycast.cast_segments``).

    In float32 on coordinates relative to the car: with q = point - car, c = r × q tells on which
    side of the ray's line a point lies; segment k can only be hit when c_k * c_{k+1} <= 0 (it
    straddles the line), at t = (q_k × e) / (r × e) with e = q_{k+1} - q_k, and only for t >= 0
    (a parallel segment gives inf or nan there: no hit). ``rays`` (R, 2) float32 directions;
    scratch ``q`` (2, 2, >= points) float32 for (side, x or y, point) and ``cross`` (>= points,)
    float32 for c. Per ray and side, all the c come first, in a loop the compiler vectorises.
    """
    for side in range(2):
        for p in range(points):
            q[side, 0, p] = np.float32(wall_pts[first + p, side, 0] - x)
            q[side, 1, p] = np.float32(wall_pts[first + p, side, 1] - y)
    for r in range(len(rays)):
        rx, ry = rays[r, 0], rays[r, 1]
        best = np.float32(np.inf)
        for side in range(2):
            qx, qy = q[side, 0], q[side, 1]
            for p in range(points):
                cross[p] = rx * qy[p] - ry * qx[p]
            for p in range(1, points):
                if cross[p - 1] * cross[p] <= 0.0:
                    ex, ey = qx[p] - qx[p - 1], qy[p] - qy[p - 1]
                    t = (qx[p - 1] * ey - qy[p - 1] * ex) / (rx * ey - ry * ex)
                    if t >= 0.0 and t < best:
                        best = t
        dist[r] = np.float64(best)


@_jit
def _cast_cars(i: int, dirs: np.ndarray, pos: np.ndarray, visible: np.ndarray, tables: Tables, c: Constants, dist):
    """Lower ``dist`` to the first car each ray of car i hits, among the other cars of its venv that
    are ``visible``: float64 circles of radius car_radius.

    With v = centre - car: b = r · v, disc = b² - (|v|² - radius²); hit when disc >= 0 and the far
    root b + sqrt(disc) >= 0, at max(b - sqrt(disc), 0). Cars farther than ray_length + car_radius
    are skipped (they cannot be hit).
    """
    reach = c.ray_length + c.car_radius
    x, y = pos[i, 0], pos[i, 1]
    for m in range(tables.others.shape[1]):
        j = tables.others[i, m]
        if not (tables.others_valid[i, m] and visible[j]):
            continue
        vx, vy = pos[j, 0] - x, pos[j, 1] - y
        if not vx * vx + vy * vy < reach * reach:
            continue
        for r in range(len(dist)):
            b = dirs[r, 0] * vx + dirs[r, 1] * vy
            disc = b * b - (vx * vx + vy * vy - c.car_radius * c.car_radius)
            root = math.sqrt(max(disc, 0.0))
            if disc >= 0.0 and b + root >= 0.0:
                dist[r] = min(dist[r], max(b - root, 0.0))


@_jit
def _observations(cars: Cars, tables: Tables, idx: np.ndarray, visible: np.ndarray, collisions: bool, c: Constants):
    """rules.observation (len(idx), num_rays + 3) float32 of cars ``idx``: rays at the walls (and,
    with collisions on, at the cars of the venv that are ``visible``), fuel, velocity, is_reverse."""
    num_rays = len(tables.angles)
    out = np.empty((len(idx), num_rays + 3), np.float32)
    dirs, rays, dist = np.empty((num_rays, 2)), np.empty((num_rays, 2), np.float32), np.empty(num_rays)
    q, cross = np.empty((2, 2, tables.ray_points), np.float32), np.empty(tables.ray_points, np.float32)
    for row in range(len(idx)):
        i = idx[row]
        for r in range(num_rays):
            angle = cars.heading[i] - tables.angles[r]  # right-positive angles turn clockwise
            dirs[r, 0], dirs[r, 1] = math.cos(angle), math.sin(angle)
            rays[r, 0], rays[r, 1] = np.float32(dirs[r, 0]), np.float32(dirs[r, 1])
        at = tables.base[i] + cars.hint[i]
        first, points = at - tables.ray_lo[at], tables.ray_span[at] + 1
        _cast_walls(cars.pos[i, 0], cars.pos[i, 1], rays, tables.wall_pts, first, points, q, cross, dist)
        if collisions:
            _cast_cars(i, dirs, cars.pos, visible, tables, c, dist)
        for r in range(num_rays):
            out[row, r] = np.float32(min(dist[r] / c.ray_length, 1.0))
        out[row, num_rays] = np.float32(cars.fuel[i])
        out[row, num_rays + 1] = np.float32(min(max(cars.speed[i] / c.nitro_max_speed, -1.0), 1.0))
        out[row, num_rays + 2] = np.float32(1.0 if _is_reverse(cars.heading[i], tables.segments[at]) else 0.0)
    return out


# --------------------------------------------------------------------------- restarts


@_jit
def _restart(cars: Cars, tables: Tables, i: int, x: float, y: float, heading: float, hint: int, c: Constants):
    """Start a new episode of car i at (x, y, heading), near centre-line segment ``hint``: stopped,
    full fuel, progress and counters at 0, live, projected on the segments around ``hint``."""
    k, s, _, _ = _project(x, y, tables.segments, tables.base[i] + hint - c.project_window, 2 * c.project_window + 1)
    cars.pos[i, 0], cars.pos[i, 1], cars.heading[i] = x, y, heading
    cars.hint[i] = (hint + k - c.project_window) % tables.seg_count[i]
    cars.s[i] = s
    cars.speed[i], cars.fuel[i], cars.net[i], cars.lap_time[i] = 0.0, 1.0, 0.0, np.nan
    cars.laps[i], cars.lap_start[i], cars.steps[i], cars.slow[i], cars.back[i] = 0, 0, 0, 0, 0
    cars.live[i], cars.collided[i] = True, False
    cars.dyn[i, 0], cars.dyn[i, 1], cars.dyn[i, 2], cars.dyn[i, 3] = 0.0, 0.0, 0.0, 0.0  # at rest


# --------------------------------------------------------------------------- entry points


def observe(cars: Cars, tables: Tables, idx: np.ndarray, collisions: bool, c: Constants) -> np.ndarray:
    """Observations (len(idx), num_rays + 3) float32 of cars ``idx`` in their current state."""
    return _observe(tuple(cars), tuple(tables), idx, collisions, tuple(c))


def step(cars: Cars, tables: Tables, actions: np.ndarray, live: np.ndarray, collisions: bool, c: Constants):
    """Advance every live car one decision step and score it, updating ``cars`` in place.

    ``live``: a copy of ``cars.live`` at the start of the step; ``actions`` (n, 3) float64.
    Returns (obs, reward, terminated, truncated, cause code: an index of CAUSES, 0 = none).
    """
    return _step(tuple(cars), tuple(tables), actions, live, collisions, tuple(c))


def reset(cars: Cars, tables: Tables, idx: np.ndarray, spawn_pose: np.ndarray, spawn_hint: np.ndarray,
          random_start: np.ndarray, draws: np.ndarray, c: Constants) -> None:  # fmt: skip
    """Restart the episodes of cars ``idx``, in place (``world.Sim.reset_indices``): car ``idx[r]``
    at its grid pose ``spawn_pose`` (n, 3: x, y, heading; near segment ``spawn_hint``), or where
    ``random_start`` (n,) is set, at arc length ``draws[r] * track length``, facing along the track.
    """
    _reset(tuple(cars), tuple(tables), idx, spawn_pose, spawn_hint, random_start, draws, tuple(c))


@numba.njit(types.float32[:, ::1](_CARS, _TABLES, _I1, _B1, _CONSTANTS), cache=True, error_model="numpy")
def _observe(car_arrays, table_arrays, idx, collisions, constants):
    cars = Cars(*car_arrays)
    return _observations(cars, Tables(*table_arrays), idx, cars.live, collisions, Constants(*constants))


@numba.njit(_STEP_OUT(_CARS, _TABLES, _F2, _B, _B1, _CONSTANTS), cache=True, error_model="numpy")
def _step(car_arrays, table_arrays, actions, live, collisions, constants):
    """``step``, in the order of the numpy simulator: drive, score, observe (the rays see the cars
    live at the start of the step), then parked cars get their speed and fuel back (they had 0 and
    regenerated fuel during the step, which their observation shows) and headings wrap to [-pi, pi).
    """
    cars, tables, c = Cars(*car_arrays), Tables(*table_arrays), Constants(*constants)
    s_before, speed_before, fuel_before = cars.s.copy(), cars.speed.copy(), cars.fuel.copy()
    crashed, collided = _drive(cars, tables, actions, live, collisions, c)
    reward, terminated, truncated, cause = _score(cars, tables, live, s_before, crashed, collided, c)
    obs = _observations(cars, tables, np.arange(len(live)), live, collisions, c)
    for i in range(len(live)):
        if not live[i]:
            cars.speed[i], cars.fuel[i] = speed_before[i], fuel_before[i]
        cars.heading[i] = np.mod(cars.heading[i] + np.pi, 2.0 * np.pi) - np.pi
        cars.collided[i] = collided[i]
        cars.live[i] = live[i] and not (terminated[i] or truncated[i])
    return obs, reward, terminated, truncated, cause


@numba.njit(types.void(_CARS, _TABLES, _I1, _F2, _I1, _B, _F1, _CONSTANTS), cache=True, error_model="numpy")
def _reset(car_arrays, table_arrays, idx, spawn_pose, spawn_hint, random_start, draws, constants):
    cars, tables, c = Cars(*car_arrays), Tables(*table_arrays), Constants(*constants)
    for r in range(len(idx)):
        i = idx[r]
        if random_start[i]:
            k, x, y, heading = _point_at(tables, i, draws[r] * tables.length[i])
            _restart(cars, tables, i, x, y, heading, k, c)
        else:
            _restart(cars, tables, i, spawn_pose[i, 0], spawn_pose[i, 1], spawn_pose[i, 2], spawn_hint[i], c)
