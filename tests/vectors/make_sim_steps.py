"""Write tests/vectors/sim_steps.npz: golden single decision steps of the simulator.

    python tests/vectors/make_sim_steps.py

Each record is one ``Sim.step`` of 25 cars in 5 venvs: the full car state before it, the actions,
the ``StepResult`` and the state after it (plus ``Sim.observe()`` of the state before). The file
was recorded from the pure-numpy simulator; tests/test_sim.py loads every record's state into a
fresh Sim, steps it once and compares, so any faster implementation of ``Sim.step`` is checked
against the numpy one step by step (one step: no chaotic divergence of long runs).

Regenerate it only after a deliberate change of the rules, as it is the numpy simulator's record.
The compiled simulator reproduces every recorded step bit for bit, but rerunning the scenarios
with it gives positions ~1e-12 apart after hundreds of steps (``tan`` rounds an ulp differently
for a few inputs), with the same events and observations.

The scenarios drive on generated tracks of every method (stored as specs, so the file does not
depend on the track generator) with random and reference-driver actions, collisions on and off,
and set some counters so that every ending, car contact (coincident cars too), lap and parked car
shows up within a few hundred steps; the recorded steps are the ones with such events plus a
few ordinary ones of each scenario.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere without installing

from rbxenv import tracks  # noqa: E402
from rbxenv.sim import PurePursuitDriver, Sim  # noqa: E402

PATH = Path(__file__).with_name("sim_steps.npz")
TRACKS = [("polar", 0), ("hull", 0), ("grid", 0), ("polar", 1), ("hull", 1), ("grid", 1)]
STATE = ("pos", "heading", "speed", "fuel", "hint", "s", "net", "laps", "lap_start", "lap_time", "steps", "slow",
         "back", "live", "collided", "cause")  # fmt: skip
RESULT = ("obs", "reward", "terminated", "truncated", "live", "progress", "lap", "lap_time", "speed", "collided",
          "cause")  # fmt: skip
CAUSES = (None, "wall", "stuck", "wrong_way", "time_limit")  # stored as their index (int8)
EVENTS = ("wall", "stuck", "wrong_way", "time_limit", "lap", "contact", "parked")


@dataclass(frozen=True)
class Scenario:
    """One run: venv sizes, starts, which actions, collisions, and what to set up at the start."""

    seed: int
    cars: tuple[int, ...] = (5, 5, 5, 5, 5)  # cars per venv (25 in all)
    start: str = "random"
    collisions: bool = False
    policy: str = "random"  # "random", "reference" or "mixed" (per car: reference, random, idle, reverse)
    steps: int = 200
    setup: bool = False  # preset counters, net progress and poses so that every ending comes soon
    freeze_at: int = -1  # freeze the sim for the steps from here on
    ordinary: int = 6  # steps recorded besides the event ones
    per_event: int = 4  # steps recorded per kind of event


SCENARIOS = (
    Scenario(seed=0, start="random", collisions=False, policy="random"),
    Scenario(seed=1, start="grid", collisions=True, policy="random", steps=120),
    Scenario(seed=2, start="grid", collisions=True, policy="reference", steps=650),
    Scenario(seed=3, start="random", collisions=False, policy="reference", steps=650),
    Scenario(seed=4, start="random", collisions=True, policy="mixed", steps=250, setup=True),
    Scenario(seed=5, cars=(1, 3, 5, 7, 9), start="grid", collisions=True, policy="mixed", steps=250, setup=True),
    Scenario(seed=6, start="grid", collisions=True, policy="random", steps=12, freeze_at=10, ordinary=2),
)


def track_specs() -> list[dict]:
    return [tracks.generate(seed, method) for method, seed in TRACKS]


def build_sim(specs: list[dict], cars: tuple[int, ...], start: str = "grid") -> Sim:
    """Venv v{k} on track specs[k % len(specs)] with cars car_0 .. car_{cars[k]-1}."""
    sim = Sim(seed=0)
    for k, count in enumerate(cars):
        envid = f"v{k}"
        spec = specs[k % len(specs)]
        sim.spawn(envid, [f"car_{i}_env_{envid}" for i in range(count)], track=spec, start=start, seed=k)
    return sim


def state_of(sim: Sim) -> dict[str, np.ndarray]:
    """Copies of the per-car arrays ``Sim.step`` reads or writes (the cause as a CAUSES index)."""
    out = {name: getattr(sim, name).copy() for name in STATE if name != "cause"}
    out["cause"] = np.array([CAUSES.index(c) for c in sim.cause], np.int8)
    return out


def load_state(sim: Sim, state: dict[str, np.ndarray]) -> None:
    """Put a ``state_of`` snapshot back into a Sim built by ``build_sim`` with the same venvs."""
    for name in STATE:
        value = np.array(state[name])
        if name == "cause":
            value = np.array([CAUSES[c] for c in value], dtype=object)
        setattr(sim, name, value.astype(getattr(sim, name).dtype))


def result_of(res) -> dict[str, np.ndarray]:
    out = {name: np.asarray(getattr(res, name)).copy() for name in RESULT if name != "cause"}
    out["cause"] = np.array([CAUSES.index(c) for c in res.cause], np.int8)
    return out


def _prepare(sim: Sim, rng: np.random.Generator) -> None:
    """Counters and poses that make every ending and a coincident car contact happen early."""
    n = len(sim.agent_ids)
    sim.steps[:] = rng.choice([0, 1400], n) + rng.integers(0, 100, n)  # some cars near the time limit
    sim.slow[:] = rng.integers(0, 30, n)
    sim.back[:] = rng.integers(0, 30, n)
    near_lap = rng.random(n) < 0.3
    sim.net[near_lap] = sim.length[near_lap] - rng.uniform(0, 60, near_lap.sum())
    for i in np.flatnonzero(rng.random(n) < 0.2):  # turned around: wrong way
        sim.heading[i] = np.mod(sim.heading[i] + np.pi + np.pi, 2 * np.pi) - np.pi
    first = [np.flatnonzero(sim.venv == v) for v in np.unique(sim.venv)]
    for cars in first:
        if len(cars) >= 2:  # two cars on the very same spot
            sim.pos[cars[1]] = sim.pos[cars[0]]
            sim.heading[cars[1]] = sim.heading[cars[0]]
            sim.hint[cars[1]] = sim.hint[cars[0]]
            sim.s[cars[1]] = sim.s[cars[0]]


def _actions(sc: Scenario, sim: Sim, driver: PurePursuitDriver, kinds: np.ndarray, rng) -> np.ndarray:
    n = len(sim.agent_ids)
    random = rng.uniform(-1.3, 1.3, (n, 3)) + np.array([0.5, 0.0, 0.0])
    if sc.policy == "random":
        act = random
    else:
        act = driver.act() + rng.normal(0.0, 0.05, (n, 3))
        if sc.policy == "mixed":
            act = np.where(kinds[:, None] == 1, random, act)
            act[kinds == 2] = 0.0  # idle: stuck
            act[kinds == 3] = [-0.8, 0.0, 0.0]  # reversing
    act[rng.random((n, 3)) < 0.01] = np.nan  # a NaN input means no input
    return act.astype(np.float32).astype(np.float64)  # stored as float32, so replayed exactly


def _events(before: dict, res) -> set[str]:
    kinds = {CAUSES[c] for c in result_of(res)["cause"] if c}
    if (res.lap > before["laps"]).any():
        kinds.add("lap")
    if res.collided.any():
        kinds.add("contact")
    if not before["live"].all():
        kinds.add("parked")
    return kinds


def run(sc: Scenario, specs: list[dict]) -> list[dict]:
    """Run a scenario; returns the records chosen for the file."""
    rng = np.random.default_rng(sc.seed)
    sim = build_sim(specs[sc.seed % len(specs) :] + specs[: sc.seed % len(specs)], sc.cars, sc.start)
    sim.set_collisions(sc.collisions)
    if sc.setup:
        _prepare(sim, rng)
    driver = PurePursuitDriver(sim)
    kinds = rng.integers(0, 4, len(sim.agent_ids))
    records, by_event = [], {e: [] for e in EVENTS}
    for t in range(sc.steps):
        sim.freeze(t >= sc.freeze_at >= 0)
        act = _actions(sc, sim, driver, kinds, rng)
        before, obs_before = state_of(sim), sim.observe()
        res = sim.step(act)
        records.append({"before": before, "observe": obs_before, "actions": act, "result": result_of(res),
                        "after": state_of(sim), "collisions": sim.collisions, "frozen": sim.frozen})  # fmt: skip
        for e in _events(before, res):
            by_event[e].append(t)
        ended = np.flatnonzero(res.terminated | res.truncated)
        sim.reset_indices(ended[rng.random(len(ended)) < 0.3])  # the others stay parked a while
    keep = {0, sc.steps - 1}
    for steps in by_event.values():
        keep.update(rng.permutation(steps)[: sc.per_event].tolist())
    keep.update(rng.choice(sc.steps, min(sc.ordinary, sc.steps), replace=False).tolist())
    return [records[t] | {"scenario": sc} for t in sorted(keep)]


def record() -> dict[str, np.ndarray]:
    """Every scenario's chosen records as flat arrays (leading axis = record) for ``np.savez``."""
    specs = track_specs()
    rows = [r for sc in SCENARIOS for r in run(sc, specs)]
    out: dict[str, np.ndarray] = {
        "tracks_json": np.frombuffer(json.dumps(specs).encode(), np.uint8),
        "scenario": np.array([SCENARIOS.index(r["scenario"]) for r in rows], np.int16),
        "scenario_seed": np.array([sc.seed for sc in SCENARIOS], np.int16),
        "scenario_cars": np.array([sc.cars for sc in SCENARIOS], np.int16),
        "collisions": np.array([r["collisions"] for r in rows]),
        "frozen": np.array([r["frozen"] for r in rows]),
        "actions": np.array([r["actions"] for r in rows], np.float32),
        "observe": np.array([r["observe"] for r in rows], np.float32),
    }
    for part in ("before", "after", "result"):
        for name in rows[0][part]:
            out[f"{part}_{name}"] = np.array([r[part][name] for r in rows])
    return out


def load(path: Path = PATH) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return dict(f)


def sim_for(data: dict[str, np.ndarray], scenario: int) -> Sim:
    """A Sim with the venvs, tracks and cars of a recorded scenario (its state set per record)."""
    specs = json.loads(bytes(data["tracks_json"]).decode())
    k = int(data["scenario_seed"][scenario]) % len(specs)
    return build_sim(specs[k:] + specs[:k], tuple(int(c) for c in data["scenario_cars"][scenario]))


def main() -> None:
    data = record()
    np.savez_compressed(PATH, **data)
    counts = np.bincount(data["scenario"], minlength=len(SCENARIOS)).tolist()
    print(f"wrote {PATH} ({PATH.stat().st_size / 1e3:.0f} kB): {len(data['scenario'])} steps, per scenario {counts}")


if __name__ == "__main__":
    main()
