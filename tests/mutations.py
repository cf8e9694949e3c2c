"""The mutations tests/test_mutations.py applies, each to a scratch copy of the repository.

Each is a bug the suite must catch (an audit once found it did not): (file, exact text, its
replacement, the tests that must then fail). The text must occur exactly once, so a mutation that
no longer applies is an error, not a silent pass.
"""

from __future__ import annotations

from typing import NamedTuple


class Mutation(NamedTuple):
    file: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids, relative to the repository root
    expect: str  # what the failing tests must say (so a failure for another reason is no catch)
    trains: bool = False  # its tests train a policy (the longest runs)


MUTATIONS = {
    # rbxenv.drive drives with zeros instead of the policy's actions.
    "drive_ignores_policy": Mutation(
        "rbxenv/drive.py",
        "envs.step(policy(obs))",
        "envs.step(np.zeros_like(policy(obs)))",
        ("tests/test_metrics.py::test_drive_tally",),
        "AssertionError",
    ),
    # rbxenv.drive's tally no longer counts crashes.
    "drive_crashes_uncounted": Mutation(
        "rbxenv/drive.py",
        "            self.crashed += 1\n",
        "",
        ("tests/test_metrics.py::test_drive_tally",),
        "AssertionError",
    ),
    # The scripts' held-out evaluation (one function for both, rbxenv/training.py) no longer counts crashes.
    "training_eval_crashes_uncounted": Mutation(
        "rbxenv/training.py",
        'laps[new], crashed[new], progress[new] = ep["laps"][new], ep["crashed"][new], ep["progress"][new]',
        'laps[new], crashed[new], progress[new] = ep["laps"][new], False, ep["progress"][new]',
        ("tests/test_metrics.py::test_the_scripts_heldout_evaluation",),
        "AssertionError",
    ),
    # bench/learning.py's evaluation drives with zeros / no longer counts crashes.
    "learning_eval_ignores_policy": Mutation(
        "bench/learning.py",
        "envs.step(np.clip(policy(obs), -1, 1).astype(np.float32))",
        "envs.step(np.zeros_like(np.clip(policy(obs), -1, 1).astype(np.float32)))",
        ("tests/test_metrics.py::test_bench_learning_evaluation",),
        "AssertionError",
    ),
    "learning_eval_crashes_uncounted": Mutation(
        "bench/learning.py",
        '                crashed[done] = ep["crashed"][done]\n',
        "",
        ("tests/test_metrics.py::test_bench_learning_evaluation",),
        "AssertionError",
    ),
    # PPO's GAE ignores episode ends (it bootstraps across crashes into the next episode).
    "ppo_gae_ignores_dones": Mutation(
        "ppo_continuous.py",
        "                        nextnonterminal = 1.0 - don[t + 1]\n",
        "                        nextnonterminal = 1.0\n",
        ("tests/test_ppo.py::test_short_run_beats_the_ray_follower_on_heldout_tracks",),
        "does not beat the ray follower",
        trains=True,
    ),
    # PPO normalises each minibatch's advantages, but hands them to the wrong samples (reversed order).
    "ppo_advantage_normalisation_broken": Mutation(
        "ppo_continuous.py",
        "                        mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)\n",
        "                        mb_advantages = ((mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)).flip(0)\n",
        ("tests/test_ppo.py::test_short_run_beats_the_ray_follower_on_heldout_tracks",),
        "does not beat the ray follower",
        trains=True,
    ),
    # SAC bootstraps through terminal states: a crash no longer ends the return in the critics' target.
    "sac_bootstraps_through_terminal_states": Mutation(
        "sac_continuous.py",
        "next_q_value = b_rewards + (1 - b_dones) * args.gamma * min_qf_next_target",
        "next_q_value = b_rewards + args.gamma * min_qf_next_target",
        ("tests/test_sac.py::test_short_run_beats_the_ray_follower_on_heldout_tracks",),
        "does not beat the ray follower",
        trains=True,
    ),
    # The bridge's connection handler raises on every 40th frame (websockets would close the
    # connection and the env reconnect: healed, unless counted).
    "bridge_handler_crashes": Mutation(
        "rbxenv/server.py",
        "            async for frame in conn:\n                await self._receive(link, frame)\n",
        "            async for frame in conn:\n"
        '                if self.data.stats["frames_in"] % 40 == 39:\n'
        '                    raise RuntimeError("mutation: handler crash")\n'
        "                await self._receive(link, frame)\n",
        ("tests/test_envs.py",),
        "internal error in the bridge's connection handler",
    ),
    # The simulator's real-time tick raises every 10th time (the tick loop carries on).
    "sim_tick_raises": Mutation(
        "rbxenv/sim/client.py",
        "            frames = game.step()\n        except Exception as err:",
        "            frames = game.step()\n"
        '            if game.stats["steps"] % 10 == 0:\n'
        '                raise RuntimeError("mutation: tick failed")\n'
        "        except Exception as err:",
        ("tests/test_envs.py::test_realtime_mode_steps_and_freezes_when_idle", "tests/test_sim_client.py"),
        "failed a real-time tick",
    ),
}
