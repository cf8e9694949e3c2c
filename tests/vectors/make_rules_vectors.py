"""Write tests/vectors/rules.json: inputs and outputs of ``rbxenv.sim.rules`` for other ports.

    python tests/vectors/make_rules_vectors.py

The Luau game rules must reproduce these outputs (within 1e-6); tests/test_sim.py checks that
the Python functions still do, so the file cannot drift from the code. Arrays are lists over
cars; ``config`` holds the SimConfig the cases use; "nothing hit" ray distances are > ray_length.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere without installing

from rbxenv.sim import rules  # noqa: E402

CFG = rules.SimConfig()
PATH = Path(__file__).with_name("rules.json")


def _octagon() -> tuple[list, list]:
    """A small counter-clockwise loop with uneven half widths (segment lengths ~30.6)."""
    th = np.arange(8) * np.pi / 4
    return np.round(np.column_stack([40 * np.cos(th), 40 * np.sin(th)]), 6).tolist(), [8, 9, 10, 11, 12, 11, 10, 9]


def cases() -> dict:
    centerline, half_width = _octagon()
    return {
        "ray_angles": [{"input": {"num_rays": 10}}, {"input": {"num_rays": 5}}],
        "project": [
            {
                "note": "points near segments 0, 2 and 5, left and right of the line",
                "input": {
                    "centerline": centerline,
                    "half_width": half_width,
                    "pos": [[38.0, 10.0], [-10.0, 30.0], [-20.0, -40.0]],
                    "hint": [0, 2, 5],
                    "window": 2,
                },
            },
            {
                "note": "wrap-around: hint 0 finds the last segment (7 -> 0) and hint 7 finds segment 0",
                "input": {
                    "centerline": centerline,
                    "half_width": half_width,
                    "pos": [[36.0, -8.0], [39.0, 6.0]],
                    "hint": [0, 7],
                    "window": 1,
                },
            },
        ],
        "progress_delta": [
            {
                "note": "forward, backward, and both directions across the seam of a 244.9-stud loop",
                "input": {"s_old": [10.0, 50.0, 240.0, 3.0], "s_new": [14.5, 45.0, 2.0, 242.0], "length": 244.9},
            },
        ],
        "laps_completed": [
            {"input": {"net_progress": [-5.0, 0.0, 244.8, 244.9, 500.0], "length": 244.9}},
        ],
        "time_limit_steps": [
            {
                "note": "1500 steps up to 2,500 studs, proportionally more beyond",
                "input": {"length": [300.0, 2500.0, 2500.1, 5000.0, 19173.951, 20000.0]},
            },
        ],
        "is_reverse": [
            {
                "input": {
                    "heading": [0.0, 3.0, 1.5, -1.6, 2.0],
                    "tangent": [[1, 0], [1, 0], [0, 1], [0, 1], [-0.6, -0.8]],
                }
            },
        ],
        "update_counters": [
            {
                "note": "slow counts |speed| < 2, backwards counts is_reverse; both reset otherwise",
                "input": {
                    "slow": [0, 5, 29, 29, 3],
                    "backwards": [0, 29, 0, 10, 29],
                    "speed": [0.0, 1.9, -1.0, 2.0, 30.0],
                    "reverse": [False, True, False, False, False],
                },
            },
        ],
        "step_reward": [
            {
                "note": "progress, lap, contact, crash, stuck, wrong way, crash while in contact",
                "input": {
                    "progress": [3.5, 4.0, 2.0, 1.0, 0.0, -1.2, 0.5],
                    "laps_gained": [0, 1, 0, 0, 0, 0, 0],
                    "contact": [False, False, True, False, False, False, True],
                    "crashed": [False, False, False, True, False, False, True],
                    "stuck": [False, False, False, False, True, False, False],
                    "wrong_way": [False, False, False, False, False, True, False],
                },
            },
        ],
        "end_cause": [
            {
                "input": {
                    "crashed": [True, False, False, False, True, False],
                    "stuck": [False, True, False, False, True, False],
                    "wrong_way": [False, False, True, False, False, False],
                    "truncated": [False, False, False, True, False, False],
                }
            },
        ],
        "car_physics_step": [
            {
                "note": "one substep (dt = 1/60): accelerate, boost, boost without fuel, brake, reverse, "
                "brake while reversing, coast, coast near 0, steer right slow, steer left at speed "
                "(grip cap), coast down from nitro speed, partial throttle",
                "input": {
                    "speed": [10.0, 10.0, 10.0, 30.0, 0.0, -10.0, 30.0, 0.05, 5.0, 60.0, 80.0, 20.0],
                    "heading": [0.0, 0.5, 1.0, 2.0, -1.0, 0.0, 3.0, 0.0, 0.0, -2.5, 0.0, 0.2],
                    "pos": [
                        [0, 0],
                        [1, 2],
                        [3, 4],
                        [-5, 6],
                        [7, -8],
                        [0, 0],
                        [10, 10],
                        [0, 0],
                        [0, 0],
                        [100, -50],
                        [0, 0],
                        [1, 1],
                    ],
                    "fuel": [1.0, 0.5, 0.0, 1.0, 1.0, 1.0, 0.2, 1.0, 1.0, 1.0, 0.3, 0.999],
                    "action": [
                        [1, 0, 0],
                        [1, 0, 1],
                        [1, 0, 1],
                        [-1, 0, 0],
                        [-1, 0, 0],
                        [1, 0, 0],
                        [0, 0, 0],
                        [0, 0, 0],
                        [0.5, 1, 0],
                        [1, -1, 0],
                        [1, 0, 0],
                        [0.4, -0.3, 0.9],
                    ],
                    "dt": CFG.dt,
                },
            },
        ],
        "observation": [
            {
                "input": {
                    "ray_dist": [[5.0, 50.0, 100.0, 150.0, 0.0, 25.0, 75.0, 99.0, 1e9, 2.5], [100.0] * 10],
                    "fuel": [0.75, 0.0],
                    "speed": [45.0, -120.0],
                    "reverse": [False, True],
                }
            },
        ],
    }


def compute(data: dict) -> dict:
    """Run the rules on every case's input; returns {function: [{"expected": ...}, ...]}."""
    out: dict = {}
    for name, group in data.items():
        if name == "config":
            continue
        out[name] = []
        for case in group:
            x = {k: np.asarray(v) if isinstance(v, list) else v for k, v in case["input"].items()}
            if name == "ray_angles":
                got = {"angles": rules.ray_angles(x["num_rays"])}
            elif name == "project":
                k, s, lat, hw = rules.project(x["pos"], x["centerline"], x["half_width"], x["hint"], x["window"])
                got = {"index": k, "s": s, "lateral": lat, "half_width": hw}
            elif name == "progress_delta":
                got = {"delta": rules.progress_delta(x["s_old"], x["s_new"], x["length"])}
            elif name == "laps_completed":
                got = {"laps": rules.laps_completed(x["net_progress"], x["length"])}
            elif name == "time_limit_steps":
                got = {"steps": rules.time_limit_steps(x["length"], CFG)}
            elif name == "is_reverse":
                got = {"is_reverse": rules.is_reverse(x["heading"], x["tangent"].astype(float))}
            elif name == "update_counters":
                slow, back, stuck, wrong = rules.update_counters(
                    x["slow"], x["backwards"], x["speed"], x["reverse"], CFG
                )
                got = {"slow": slow, "backwards": back, "stuck": stuck, "wrong_way": wrong}
            elif name == "step_reward":
                got = {"reward": rules.step_reward(**x, cfg=CFG)}
            elif name == "end_cause":
                got = {"cause": rules.end_cause(**x)}
            elif name == "car_physics_step":
                v, h, p, f = rules.car_physics_step(
                    x["speed"], x["heading"], x["pos"].astype(float), x["fuel"], x["action"].astype(float), CFG, x["dt"]
                )
                got = {"speed": v, "heading": h, "pos": p, "fuel": f}
            elif name == "observation":
                got = {"obs": rules.observation(x["ray_dist"], x["fuel"], x["speed"], x["reverse"], CFG)}
            else:
                raise KeyError(name)
            out[name].append({"expected": {k: _plain(v) for k, v in got.items()}})
    return out


def _plain(v):
    a = np.asarray(v)
    if a.dtype == object or a.dtype == bool:
        return a.tolist()
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(int).tolist()
    return np.round(a.astype(np.float64), 9).tolist()


def main() -> None:
    data = {"config": dataclasses.asdict(CFG) | {"dt": CFG.dt}, **cases()}
    for name, results in compute(data).items():
        for case, result in zip(data[name], results, strict=True):
            case.update(result)
    PATH.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {PATH}")


if __name__ == "__main__":
    main()
