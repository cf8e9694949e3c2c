"""The envs' documentation tells the truth: the numbers in the Gymnasium-style class docstrings of
``RacingVectorEnv`` and ``RacingParallelEnv`` (and the simulator's observation table) against
``SimConfig`` and the spaces the envs really have, and their examples run (doctest)."""

from __future__ import annotations

import doctest
import re

import numpy as np
import pytest

import rbxenv.sim
from rbxenv import envs, make_vec_env
from rbxenv.sim.rules import SimConfig

CFG = SimConfig()


def words(text: str) -> str:
    return " ".join(text.split())


def observation_rows(doc: str) -> dict[str, tuple[float, float]]:
    """The observation table of a docstring: {index column: (min, max)}."""
    rows = re.findall(r"^\s*\| *([^|]*?) *\|[^|\n]*\| *(-?[\d.]+) *\| *(-?[\d.]+) *\|\s*$", doc, re.M)
    return {num: (float(low), float(high)) for num, low, high in rows}


def indices(num: str, num_rays: int) -> list[int]:
    """The indices of one frame that an index column names ("0..rays-1", "rays + 1", "num_rays")."""
    num = num.replace("num_rays", "rays").replace(" ", "")
    if ".." in num:
        first, last = num.split("..")
        return list(range(eval(first, {"rays": num_rays}), eval(last, {"rays": num_rays}) + 1))  # noqa: S307
    return [eval(num, {"rays": num_rays})]  # noqa: S307


@pytest.fixture(scope="module")
def space():
    vec = make_vec_env(num_agents=1, num_venvs=1, frame_stack=2, sim_seed=0)
    yield vec.single_observation_space, vec.single_action_space
    vec.close()


@pytest.mark.parametrize("doc", [envs.RacingVectorEnv.__doc__, rbxenv.sim.__doc__], ids=["vector env", "simulator"])
def test_the_observation_tables_give_the_real_bounds(doc, space):
    obs_space, _ = space
    rows = observation_rows(doc)
    covered = sorted(i for num in rows for i in indices(num, CFG.num_rays))
    assert covered == list(range(CFG.obs_size)), rows  # every entry of a frame, once
    for frame in range(2):  # the same bounds in every stacked frame
        for num, (low, high) in rows.items():
            for i in indices(num, CFG.num_rays):
                k = frame * CFG.obs_size + i
                assert (obs_space.low[k], obs_space.high[k]) == (low, high), f"row {num!r}"


def test_the_documented_spaces_and_numbers_are_the_real_ones(space):
    obs_space, act_space = space
    assert obs_space.shape == (2 * CFG.obs_size,) and obs_space.dtype == np.float32
    assert (act_space.low.tolist(), act_space.high.tolist(), act_space.dtype) == ([-1.0] * 3, [1.0] * 3, np.float32)
    vector, parallel = words(envs.RacingVectorEnv.__doc__), words(envs.RacingParallelEnv.__doc__)
    assert f"Box(-1.0, 1.0, ({act_space.shape[0]},), float32)" in vector and "Box(-1.0, 1.0, (3,), float32)" in parallel
    assert f"{CFG.obs_size} by default" in vector and f"{CFG.obs_size} floats by default" in parallel
    for fact in [
        f"accelerates to {CFG.max_speed:g} studs/s",
        f"reverses (to {CFG.reverse_max_speed:g} studs/s)",
        f"max_steer {CFG.max_steer:g} rad",
        f"on above {CFG.nitro_threshold:g}",
        f"top speed {CFG.nitro_max_speed:g} studs/s",
        f"ray_length ({CFG.ray_length:g} studs)",
        f"nitro_max_speed ({CFG.nitro_max_speed:g})",
        f"per decision step ({CFG.tick_hz} Hz): {CFG.progress_reward:g} per stud of progress",
        f"+{CFG.lap_reward:g} per lap, -{CFG.contact_penalty:g} per step touching another car",
        f"-{CFG.end_penalty:g} when the car crashes",
        f"stuck (under {CFG.stuck_speed:g} studs/s) for {CFG.stuck_steps} steps",
        f"the wrong way for {CFG.wrong_way_steps} steps",
        f"{CFG.max_steps} decision steps ({CFG.max_steps / CFG.tick_hz:g} s) on tracks up to {CFG.time_limit_length:g} studs",
    ]:  # fmt: skip
        assert fact in vector, fact


def test_the_examples_run():
    result = doctest.testmod(envs, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 10 and result.failed == 0, result
