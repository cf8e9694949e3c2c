"""Headless racing simulator: the stand-in for the Roblox game, compiled loops over every car.

## Description

Cars race on closed-loop tracks (``rbxenv.tracks`` specs, PROTOCOL.md §3.4) inside independent
venvs: each venv has its own track and cars, and venvs never interact (even on the same
coordinates). A car is a kinematic bicycle with throttle/brake/reverse, steering limited by
grip, and a nitro boost that burns fuel. All constants live in ``SimConfig`` (PROTOCOL §4);
the formulas are the pure functions of ``rbxenv.sim.rules``, pinned for the Luau port by
``tests/vectors/rules.json``. ``Sim.step`` runs them compiled with numba
(``rbxenv.sim.kernels``, to the same results), since numpy calls on arrays of a few dozen cars
cost more in overhead than in arithmetic.

## Observation space: ``Box(low, high, (num_rays + 3,), float32)``, 13 floats by default (bounds below)

| index | observation | min | max |
|---|---|---|---|
| 0 .. num_rays-1 | ray distance to the first wall (or car of the same venv, collisions on) / ray_length; ray k at -90° + 180° k / (num_rays - 1) from forward, negative = left | 0 | 1 |
| num_rays | nitro fuel | 0 | 1 |
| num_rays + 1 | forward speed / nitro_max_speed (negative reversing) | -1 | 1 |
| num_rays + 2 | is_reverse: heading · centre-line tangent < 0 | 0 | 1 |

## Action space: ``Box(-1, 1, (3,), float32)`` (clipped)

| index | action | effect |
|---|---|---|
| 0 | throttle | > 0 accelerate (30, top 60 studs/s); < 0 brake (60), then reverse (top 15) |
| 1 | steering | -1 full left .. +1 full right: yaw rate v tan(0.5 steer) / 8, at most 80 / abs(v) |
| 2 | nitro | > 0.5 with throttle > 0 and fuel: accel 60, top 90, burns 0.35 fuel/s (regen 0.05/s) |

## Rewards (per decision step, 15 Hz; physics at 60 Hz)

| term | value |
|---|---|
| progress | 0.1 * signed studs advanced along the centre line |
| lap | +10 per lap (a lap = one track length of net progress since spawn/reset) |
| car contact | -0.5 per step touching another car (collisions on) |
| crash / stuck / wrong way | -10, and the episode terminates |

## Starting state

``start="grid"``: car ``car_{i}_env_*`` on grid slot i behind the start line, at rest, full
fuel. ``start="random"``: a seeded random point of the centre line, facing the track direction.

## Episode end

| ending | condition | info cause |
|---|---|---|
| terminated | the car's circle (radius 2.5) touches a wall | ``"wall"`` |
| terminated | abs(speed) < 2 studs/s for 30 steps in a row | ``"stuck"`` |
| terminated | is_reverse for 30 steps in a row | ``"wrong_way"`` |
| truncated | 1500 decision steps (100 s) on tracks up to 2,500 studs, proportionally more on longer ones (``rules.time_limit_steps``) | ``"time_limit"`` |

An ended car is parked (does not move, reward 0, ``live`` False, invisible to the others) until
reset or respawned. A car that touches a wall stops where it first touched it.

## Car contacts (``set_collisions(True)``, per venv)

Cars are circles of radius 2.5: overlapping cars are pushed apart and get an inelastic bump
(restitution 0.2) along the contact normal, keeping the part along their heading; rays see the
other cars of the venv. With collisions off, cars drive through each other and rays ignore them.

## The dynamic car (``DynamicConfig``, ``--dynamics`` in the scripts)

Closer to a Roblox physics car: throttle and steering reach the car through a first-order
actuator lag (0.1 s), the yaw rate follows the steering through a yaw inertia (0.1 s), and the
tyres hold the velocity to the heading only up to ``max_lateral_accel``: past it the car slides
sideways (drift) and scrubs speed. ``randomize=r`` draws each car's grip, accel, lag and inertia
per episode within +-r of these (domain randomisation), so that a driver trained here copes with
cars it never saw. ``rules.car_dynamics_substep`` is the specification.

## Usage

    sim = Sim(seed=0)
    sim.spawn("venv0", ["car_0_env_venv0", "car_1_env_venv0"], track=tracks.generate(7))
    res = sim.step(actions)  # (n_cars, 3) in sim.agent_ids order -> StepResult
    frame = render(sim)  # (512, 512, 3) uint8
"""

from rbxenv.sim import rules
from rbxenv.sim.reference import PurePursuitDriver, reference_lap_time
from rbxenv.sim.render import render, render_trajectories
from rbxenv.sim.rules import DynamicConfig, SimConfig, sim_config
from rbxenv.sim.world import Sim, StepResult

__all__ = [
    "DynamicConfig",
    "PurePursuitDriver",
    "Sim",
    "SimConfig",
    "StepResult",
    "reference_lap_time",
    "render",
    "render_trajectories",
    "rules",
    "sim_config",
]
