"""The game rules of PROTOCOL.md §4 as small pure vectorised numpy functions.

Every function here works on arrays over cars (leading axis ``n``) and has no hidden state, so the
Roblox side can port it to Luau line by line; ``tests/vectors/rules.json`` pins the outputs.
Conventions: positions ``(x, y)`` in studs, headings in radians (0 = +x, counter-clockwise), speeds
in studs/s along the car's forward direction (negative when reversing).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class SimConfig:
    """Every constant of the game rules (PROTOCOL.md §4). The single source of truth."""

    tick_hz: int = 15  # decisions per second
    substeps: int = 4  # physics steps per decision (60 Hz)
    ray_length: float = 100.0  # studs covered by a ray (observation 1.0)
    num_rays: int = 10
    car_radius: float = 2.5  # collision circle, for walls and cars
    max_speed: float = 60.0
    nitro_max_speed: float = 90.0
    reverse_max_speed: float = 15.0
    accel: float = 30.0
    nitro_accel: float = 60.0
    brake: float = 60.0
    drag_linear: float = 0.2  # drag = drag_linear * |v| + drag_const, when throttle is off
    drag_const: float = 5.0
    wheelbase: float = 8.0
    max_steer: float = 0.5  # rad
    max_lateral_accel: float = 80.0  # grip: yaw rate <= max_lateral_accel / |v|
    nitro_threshold: float = 0.5  # nitro action must exceed this to boost
    nitro_burn: float = 0.35  # fuel per second while boosting
    nitro_regen: float = 0.05  # fuel per second otherwise
    contact_restitution: float = 0.2  # car-car bumps: 0 = cars end at equal speed, 1 = elastic
    progress_reward: float = 0.1  # per stud of signed progress
    lap_reward: float = 10.0
    contact_penalty: float = 0.5  # per decision step in contact with another car
    end_penalty: float = 10.0  # crash, stuck or wrong way
    stuck_speed: float = 2.0
    stuck_steps: int = 30
    wrong_way_steps: int = 30
    max_steps: int = 1500  # time limit in decision steps on a track up to time_limit_length studs
    time_limit_length: float = 2500.0  # longer tracks get proportionally more steps (time_limit_steps)

    @property
    def dt(self) -> float:
        """Seconds per physics substep."""
        return 1.0 / (self.tick_hz * self.substeps)

    @property
    def obs_size(self) -> int:
        return self.num_rays + 3


@dataclass(frozen=True)
class DynamicConfig(SimConfig):
    """The dynamic car, closer to a Roblox physics car than the kinematic one: SimConfig plus
    an actuator lag (inputs reach the car through a first-order lag), a yaw inertia (the yaw
    rate follows the steering) and tyres that hold the car's velocity to its heading only up to
    max_lateral_accel (beyond it the car slides: drift). See car_dynamics_substep. With
    randomize = r > 0 each car draws, per episode, its own grip, accel, actuator_lag and
    yaw_inertia, each scaled by a uniform factor in [1 - r, 1 + r] (domain randomisation).

    A subclass, so that SimConfig's fields (the constants the Luau port reads, pinned by
    tests/vectors/rules.json) stay exactly the kinematic game's."""

    actuator_lag: float = 0.1  # seconds: time constant of throttle and steering
    yaw_inertia: float = 0.1  # seconds: time constant of the yaw rate
    randomize: float = 0.0  # domain randomisation half-width (0: every car has the constants above)

    def __post_init__(self) -> None:
        if not 0.0 <= self.randomize < 1.0:
            raise ValueError(f"randomize must be in [0, 1), got {self.randomize!r}")
        if self.actuator_lag < 0.0 or self.yaw_inertia < 0.0:
            raise ValueError("actuator_lag and yaw_inertia are time constants: >= 0 seconds")


# What a script's --dynamics NAME means (``sim_config``): the car, and its randomisation.
DYNAMICS_PRESETS: dict[str, tuple[type, dict]] = {
    "kinematic": (SimConfig, {}),
    "dynamic": (DynamicConfig, {}),
    "randomized": (DynamicConfig, {"randomize": 0.35}),
}


def sim_config(spec: str = "kinematic") -> SimConfig:
    """A SimConfig from a --dynamics choice: a preset name (``DYNAMICS_PRESETS``), optionally
    followed by field overrides, e.g. ``"dynamic,max_lateral_accel=56,actuator_lag=0.2"``."""
    name, *pairs = [part.strip() for part in spec.split(",")]
    if name not in DYNAMICS_PRESETS:
        raise ValueError(f"--dynamics: unknown car {name!r}; choose one of {', '.join(DYNAMICS_PRESETS)}")
    cls, preset = DYNAMICS_PRESETS[name]
    types = {f.name: f.type for f in cls.__dataclass_fields__.values()}
    values = dict(preset)
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        if not eq or key not in types:
            raise ValueError(f"--dynamics: {pair!r} is not FIELD=VALUE with a field of {cls.__name__}")
        kind = int if str(types[key]) == "int" else float
        try:
            values[key] = kind(raw)
        except ValueError:
            raise ValueError(f"--dynamics: {key} needs a {kind.__name__}, got {raw!r}") from None
    return cls(**values)


# --------------------------------------------------------------------------- observation


def ray_angles(num_rays: int) -> np.ndarray:
    """Ray angles relative to the car's forward direction, in radians (PROTOCOL §2).

    Ray k points at -90° + 180° * k / (num_rays - 1); negative = left, positive = right.
    Because headings are counter-clockwise, a ray's world angle is ``heading - angle``.
    """
    if num_rays == 1:
        return np.zeros(1)
    return np.deg2rad(-90.0 + 180.0 * np.arange(num_rays) / (num_rays - 1))


def is_reverse(heading: np.ndarray, tangent: np.ndarray) -> np.ndarray:
    """True where the car faces against the track: (cos h, sin h) · tangent < 0."""
    return np.cos(heading) * tangent[..., 0] + np.sin(heading) * tangent[..., 1] < 0.0


def observation(
    ray_dist: np.ndarray, fuel: np.ndarray, speed: np.ndarray, reverse: np.ndarray, cfg: SimConfig
) -> np.ndarray:
    """Assemble the observation (n, num_rays + 3) float32 of PROTOCOL §2.

    rays = clip(dist / ray_length, 0, 1) (inf = nothing hit -> 1), then fuel,
    velocity = clip(speed / nitro_max_speed, -1, 1) and is_reverse as 0/1.
    """
    n = ray_dist.shape[0]
    obs = np.empty((n, ray_dist.shape[1] + 3), dtype=np.float32)
    obs[:, :-3] = np.minimum(ray_dist / cfg.ray_length, 1.0)
    obs[:, -3] = fuel
    obs[:, -2] = np.clip(speed / cfg.nitro_max_speed, -1.0, 1.0)
    obs[:, -1] = reverse
    return obs


# --------------------------------------------------------------------------- physics


def car_controls(action: np.ndarray, cfg: SimConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode actions (n, 3) into (throttle, curvature, wants_nitro), constant over a decision step.

    throttle = clip(action[0], -1, 1); steering = clip(action[1], -1, 1);
    curvature = -tan(steering * max_steer) / wheelbase (1/studs, > 0 = left: steering +1 = right);
    wants_nitro = action[2] > nitro_threshold and throttle > 0.
    """
    throttle = np.minimum(np.maximum(action[:, 0], -1.0), 1.0)
    steer = np.minimum(np.maximum(action[:, 1], -1.0), 1.0)
    curvature = np.tan(steer * cfg.max_steer) * (-1.0 / cfg.wheelbase)
    return throttle, curvature, (action[:, 2] > cfg.nitro_threshold) & (throttle > 0.0)


def car_physics_substep(
    speed: np.ndarray,
    heading: np.ndarray,
    pos: np.ndarray,
    fuel: np.ndarray,
    throttle: np.ndarray,
    curvature: np.ndarray,
    wants: np.ndarray,
    cfg: SimConfig,
    dt: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``car_physics_step`` with the controls already decoded by ``car_controls`` (the hot path)."""
    boost = wants & (fuel > 0.0)
    top = np.where(boost, cfg.nitro_max_speed, cfg.max_speed)
    v = speed
    coast = np.copysign(np.maximum(np.abs(v) * (1.0 - cfg.drag_linear * dt) - cfg.drag_const * dt, 0.0), v)
    gas = throttle * np.where(boost, cfg.nitro_accel * dt, cfg.accel * dt)
    forward = np.where(v < top, np.minimum(v + gas, top), np.maximum(coast, top))
    brake = v + throttle * (cfg.brake * dt)
    v_pos = np.where(v >= 0.0, forward, np.minimum(brake, 0.0))
    reverse = np.maximum(v + throttle * (cfg.accel * dt), -cfg.reverse_max_speed)
    v_neg = np.where(v > 0.0, np.maximum(brake, 0.0), reverse)
    new_v = np.where(throttle > 0.0, v_pos, np.where(throttle < 0.0, v_neg, coast))

    regen = np.where(wants, fuel, np.minimum(fuel + cfg.nitro_regen * dt, 1.0))
    new_fuel = np.where(boost, np.maximum(fuel - cfg.nitro_burn * dt, 0.0), regen)

    cap = cfg.max_lateral_accel / np.maximum(new_v * new_v, 1e-12)  # grip: |curvature| <= a / v²
    new_heading = heading + new_v * np.minimum(np.maximum(curvature, -cap), cap) * dt

    step = new_v * dt
    new_pos = np.empty_like(pos)
    new_pos[:, 0] = pos[:, 0] + step * np.cos(new_heading)
    new_pos[:, 1] = pos[:, 1] + step * np.sin(new_heading)
    return new_v, new_heading, new_pos, new_fuel


def car_physics_step(
    speed: np.ndarray,
    heading: np.ndarray,
    pos: np.ndarray,
    fuel: np.ndarray,
    action: np.ndarray,
    cfg: SimConfig,
    dt: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One physics substep of the kinematic bicycle car. Returns new (speed, heading, pos, fuel).

    action = (throttle, steering, nitro), throttle and steering clipped to [-1, 1].
    1. wants = nitro > nitro_threshold and throttle > 0; boost = wants and fuel > 0
    2. speed v (top = nitro_max_speed with boost else max_speed, a = nitro_accel / accel):
       throttle > 0, v >= 0: v < top -> min(v + throttle * a * dt, top); else coast down to top
       throttle > 0, v < 0:  brake: min(v + throttle * brake * dt, 0)
       throttle < 0, v > 0:  brake: max(v + throttle * brake * dt, 0)
       throttle < 0, v <= 0: reverse: max(v + throttle * accel * dt, -reverse_max_speed)
       throttle = 0:         coast: sign(v) * max(|v| * (1 - drag_linear * dt) - drag_const * dt, 0)
                             (drag = drag_linear * |v| + drag_const, never flipping the sign)
    3. fuel: boost -> max(fuel - nitro_burn * dt, 0); not wants -> min(fuel + nitro_regen * dt, 1);
       wants with an empty tank -> unchanged (else regen and burn would alternate: endless boost)
    4. curvature k = -tan(steering * max_steer) / wheelbase (steering +1 = right = clockwise),
       clipped to ±max_lateral_accel / v² (grip: yaw rate v k at most max_lateral_accel / |v|);
       heading += v * k * dt (with the new v)
    5. pos += v * (cos heading, sin heading) * dt (with the new v and heading)
    """
    return car_physics_substep(speed, heading, pos, fuel, *car_controls(action, cfg), cfg, dt)


def car_dynamics_substep(
    state: np.ndarray,
    params: np.ndarray,
    fuel: np.ndarray,
    action: np.ndarray,
    cfg: SimConfig,
    dt: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One physics substep of the dynamic car (``DynamicConfig``). Returns (state, fuel).

    state (n, 8): x, y, heading, v (speed along the heading), u (sideways speed, > 0 = left),
    r (yaw rate), thr, steer (the inputs as the actuators hold them).
    params (n, 4): grip (the lateral acceleration the tyres give, studs/s²), accel scale,
    actuator_lag (s), yaw_inertia (s): the car's own constants (randomised per episode).
    1. actuators: thr += (throttle - thr) * (1 - exp(-dt / lag)), same for steer (lag 0: at once)
    2. v: car_physics_step step 2 driven by thr, with accel and nitro_accel times the accel
       scale; fuel: its step 3 (wants = nitro > threshold and the commanded throttle > 0)
    3. r += (v k - r) * (1 - exp(-dt / yaw_inertia)), k = -tan(steer max_steer) / wheelbase
    4. body frame turning at r: v += r u dt, u -= r v dt; then the tyres pull u towards 0 by at
       most grip dt (no slide while |v r| <= grip: the velocity stays on the heading)
    5. heading += r dt; position += (v cos h - u sin h, v sin h + u cos h) dt
    """
    x, y, h, v, u, r, thr, steer = (state[:, k] for k in range(8))
    grip, accel_scale, lag, inertia = (params[:, k] for k in range(4))
    throttle = np.clip(action[:, 0], -1.0, 1.0)
    steer_cmd = np.clip(action[:, 1], -1.0, 1.0)
    wants = (action[:, 2] > cfg.nitro_threshold) & (throttle > 0.0)
    follow = np.where(lag > 0.0, 1.0 - np.exp(-dt / np.maximum(lag, 1e-12)), 1.0)
    thr = thr + (throttle - thr) * follow
    steer = steer + (steer_cmd - steer) * follow
    # step 2 of the kinematic car, per-car accelerations broadcast through the config
    per_car = replace(cfg, accel=cfg.accel * accel_scale, nitro_accel=cfg.nitro_accel * accel_scale)
    zeros = np.zeros_like(v)
    v, _, _, fuel = car_physics_substep(v, zeros, np.zeros((len(v), 2)), fuel, thr, zeros, wants, per_car, dt)
    k = np.tan(steer * cfg.max_steer) * (-1.0 / cfg.wheelbase)
    settle = np.where(inertia > 0.0, 1.0 - np.exp(-dt / np.maximum(inertia, 1e-12)), 1.0)
    r = r + (v * k - r) * settle
    v, u = v + r * u * dt, u - r * v * dt
    u = np.copysign(np.maximum(np.abs(u) - grip * dt, 0.0), u)
    h = h + r * dt
    x = x + (v * np.cos(h) - u * np.sin(h)) * dt
    y = y + (v * np.sin(h) + u * np.cos(h)) * dt
    return np.stack([x, y, h, v, u, r, thr, steer], axis=1), fuel


# --------------------------------------------------------------------------- centre line


def segment_table(centerline: np.ndarray, half_width: np.ndarray) -> np.ndarray:
    """Per-segment data of a closed centre line, shape (M, 9), one row per segment i -> i+1.

    Columns: ax, ay (start point), dx, dy (segment vector), 1/len², len, s0 (arc length at the
    start), w0, w1 (half widths at both ends). Segment M-1 closes the loop back to point 0.
    """
    p = np.asarray(centerline, dtype=np.float64)
    w = np.asarray(half_width, dtype=np.float64)
    d = np.roll(p, -1, axis=0) - p
    length = np.hypot(d[:, 0], d[:, 1])
    s0 = np.concatenate([[0.0], np.cumsum(length)[:-1]])
    return np.column_stack([p, d, 1.0 / np.maximum(length, 1e-12) ** 2, length, s0, w, np.roll(w, -1)])


def project_window(pos: np.ndarray, seg: np.ndarray) -> tuple[np.ndarray, ...]:
    """Project points on candidate segments and keep the nearest one.

    pos (n, 2); seg (n, S, 9) rows of ``segment_table`` (the window of candidates per point).
    For each candidate: t = clip(((p - a) · d) / |d|², 0, 1), distance |p - a - t d|.
    Returns (k, t, s, lateral, half_width) for the nearest candidate k (first one on ties):
    s = s0 + t * len (arc length), lateral = ((d × (p - a)) / len) (> 0 = left of the track
    direction), half_width = w0 + t * (w1 - w0).
    """
    rx = pos[:, 0, None] - seg[..., 0]
    ry = pos[:, 1, None] - seg[..., 1]
    dx, dy = seg[..., 2], seg[..., 3]
    t = np.clip((rx * dx + ry * dy) * seg[..., 4], 0.0, 1.0)
    ex = rx - t * dx
    ey = ry - t * dy
    k = np.argmin(ex * ex + ey * ey, axis=1)
    rows = np.arange(len(pos))
    best = seg[rows, k]
    tk = t[rows, k]
    s = best[:, 6] + tk * best[:, 5]
    lateral = (best[:, 2] * ry[rows, k] - best[:, 3] * rx[rows, k]) / best[:, 5]
    half_width = best[:, 7] + tk * (best[:, 8] - best[:, 7])
    return k, tk, s, lateral, half_width


def project(
    pos: np.ndarray, centerline: np.ndarray, half_width: np.ndarray, hint: np.ndarray, window: int
) -> tuple[np.ndarray, ...]:
    """Project points on one closed centre line, searching segments hint-window .. hint+window.

    Returns (index, s, lateral, half_width) with index the nearest segment (mod M). The window
    wraps around the loop seam, so a car near the last point still finds segment 0.
    """
    table = segment_table(centerline, half_width)
    m = len(table)
    idx = (np.asarray(hint)[:, None] + np.arange(-window, window + 1)) % m
    k, _, s, lateral, hw = project_window(np.asarray(pos, dtype=np.float64), table[idx])
    return idx[np.arange(len(idx)), k], s, lateral, hw


def progress_delta(s_old: np.ndarray, s_new: np.ndarray, length: np.ndarray | float) -> np.ndarray:
    """Signed arc length advanced, unwrapped across the loop seam: Δ - L * round(Δ / L)."""
    d = s_new - s_old
    return d - length * np.round(d / length)


def is_crash(lateral: np.ndarray, half_width: np.ndarray, cfg: SimConfig) -> np.ndarray:
    """The car's circle touches a wall: |lateral| + car_radius >= half_width.

    Using the lateral offset (not only the distance to the wall) also catches a car that went
    through a wall within one substep.
    """
    return np.abs(lateral) + cfg.car_radius >= half_width


# --------------------------------------------------------------------------- reward and endings


def laps_completed(net_progress: np.ndarray, length: np.ndarray | float) -> np.ndarray:
    """Whole track lengths of net progress since spawn/reset: max(floor(net / L), 0)."""
    return np.maximum(np.floor(net_progress / length), 0.0).astype(np.int64)


def update_counters(
    slow: np.ndarray, backwards: np.ndarray, speed: np.ndarray, reverse: np.ndarray, cfg: SimConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Count consecutive slow / wrong-way decision steps. Returns (slow, backwards, stuck, wrong_way).

    slow = slow + 1 if |speed| < stuck_speed else 0; stuck = slow >= stuck_steps.
    backwards = backwards + 1 if is_reverse else 0; wrong_way = backwards >= wrong_way_steps.
    """
    slow = np.where(np.abs(speed) < cfg.stuck_speed, slow + 1, 0)
    backwards = np.where(reverse, backwards + 1, 0)
    return slow, backwards, slow >= cfg.stuck_steps, backwards >= cfg.wrong_way_steps


def step_reward(
    progress: np.ndarray,
    laps_gained: np.ndarray,
    contact: np.ndarray,
    crashed: np.ndarray,
    stuck: np.ndarray,
    wrong_way: np.ndarray,
    cfg: SimConfig,
) -> np.ndarray:
    """Reward of one decision step (PROTOCOL §4):

    0.1 * Δs + 10 * laps_gained - 0.5 * contact - 10 * (crashed or stuck or wrong_way).
    """
    ended = crashed | stuck | wrong_way
    return (
        cfg.progress_reward * progress
        + cfg.lap_reward * laps_gained
        - cfg.contact_penalty * contact
        - cfg.end_penalty * ended
    )


def time_limit_steps(length: np.ndarray, cfg: SimConfig) -> np.ndarray:
    """Decision steps an episode lasts before the time limit on tracks of ``length`` studs:
    ``ceil(max_steps * max(1, length / time_limit_length))``, so a 20,000-stud lap fits in it as a
    2,500-stud lap fits in 1500 steps (one lap at an average of 25 studs/s)."""
    return np.ceil(cfg.max_steps * np.maximum(1.0, np.asarray(length, np.float64) / cfg.time_limit_length)).astype(
        np.int64
    )


def end_cause(crashed: np.ndarray, stuck: np.ndarray, wrong_way: np.ndarray, truncated: np.ndarray) -> np.ndarray:
    """Why each episode ended (object array of str | None). Priority: wall, stuck, wrong_way,
    time_limit (a car that terminates on its last step is not truncated)."""
    cause = np.full(len(crashed), None, dtype=object)
    cause[truncated] = "time_limit"
    cause[wrong_way] = "wrong_way"
    cause[stuck] = "stuck"
    cause[crashed] = "wall"
    return cause
