"""Several games serve one session: they join and leave mid-run, and strangers cost nothing.

Real ``python -m rbxenv.sim`` games over loopback sockets; every step's batch is checked for
corruption: a car that did not start a new episode moved at most as far as a car can in one step.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from netutil import free_port
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

import rbxenv
from rbxenv import protocol
from rbxenv.sim import client
from rbxenv.sim.client import game_spec
from rbxenv.sim.rules import sim_config
from rbxenv.sim.world import Sim

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.timeout(180), pytest.mark.allow_reconnects]

# the farthest a car gets in one decision step (nitro top speed), with room for float error
_CAR = sim_config("kinematic")
STEP_REACH = _CAR.nitro_max_speed / _CAR.tick_hz * 1.5


@pytest.fixture
def start_game():
    """Starts ``python -m rbxenv.sim`` games; after the test (its trainer closed) each must have exited."""
    started: list[subprocess.Popen] = []

    def start(url: str, *extra: str) -> subprocess.Popen:
        game = subprocess.Popen([sys.executable, "-m", "rbxenv.sim", "--url", url, *extra], stdin=subprocess.DEVNULL)
        started.append(game)
        return game

    yield start
    for game in started:
        try:
            game.wait(timeout=10)
        finally:
            if game.poll() is None:
                game.kill()


def wait_for_games(env, n: int, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while len(env.session.bridge.games) != n:
        assert time.monotonic() < deadline, f"{len(env.session.bridge.games)} games attached, expected {n}"
        time.sleep(0.05)


class Driver:
    """Steps a vector env and checks every batch it returns."""

    def __init__(self, env):
        self.env = env
        self.last_xy: np.ndarray | None = None
        self.steps = self.episodes_lost = self.moved_episodes = 0

    def step(self, n: int = 1) -> None:
        env = self.env
        for _ in range(n):
            actions = np.tile([0.6, 0.0, 0.0], (env.num_envs, 1)).astype(np.float32)
            obs, reward, term, trunc, infos = env.step(actions)
            self.steps += 1
            assert obs.shape == (env.num_envs, env.single_observation_space.shape[0])
            assert np.isfinite(obs).all() and np.isfinite(reward).all()
            assert ((obs >= env.single_observation_space.low) & (obs <= env.single_observation_space.high)).all()
            lost = infos.get("lost_step", np.zeros(env.num_envs, bool))
            assert not (term & lost).any(), "a lost car's episode is truncated, never terminated"
            assert (trunc[lost]).all() and (reward[lost] == 0).all()
            self.episodes_lost += int(lost.sum())
            xy = np.stack([infos["x"], infos["y"]], axis=1)
            if self.last_xy is not None:
                # A car whose episode went on answered for itself: it moved at most one step's reach.
                # (A batch with rows of another car, another venv or an old packet would jump.)
                went_on = ~lost & np.isfinite(xy).all(axis=1) & np.isfinite(self.last_xy).all(axis=1)
                jump = np.linalg.norm(xy - self.last_xy, axis=1)
                assert (jump[went_on] <= STEP_REACH).all(), f"a car jumped {jump[went_on].max():.1f} studs in one step"
            # the next step starts from here, or from a new episode's first position
            done = term | trunc
            self.last_xy = np.where(done[:, None], np.nan, xy)


class ScriptRun:
    """A training script running in the background, its output read line by line as it comes."""

    def __init__(self, script: str, flags: list[str], cwd: Path):
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / script), *flags],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    def wait_for(self, text: str, limit: float = 90.0) -> None:
        """Until a line holds ``text`` (the run must still be going)."""
        deadline = time.monotonic() + limit
        while not any(text in line for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"no line with {text!r}:\n" + "".join(self.lines)[-3000:])
            time.sleep(0.05)

    def finish(self, timeout: float) -> str:
        """The whole output of the run, which must end with exit code 0."""
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(timeout=10)
        out = "".join(self.lines)
        assert code == 0, out[-3000:]
        return out


def after_the_trainer_listens(start) -> threading.Timer:
    """Run ``start`` in half a second, once the trainer created next listens: a game that dials a
    port nobody listens on yet can, retrying in a loop, connect to itself (a TCP self-connect),
    which the emulated v0 place does not survive."""
    timer = threading.Timer(0.5, start)
    timer.start()
    return timer


def hosted_counts(env) -> list[int]:
    return sorted(len(venvs) for venvs in env.session.hosted().values())


def test_three_games_join_at_different_times_one_is_killed_and_restarted(start_game):
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    games = [start_game(url)]
    env = rbxenv.make_vec_env(
        num_agents=2, num_venvs=6, sim=None, port=port, track_change_steps=None, reconnect_timeout=30, wait_timeout=60
    )
    drive = Driver(env)
    try:
        env.reset(seed=0)
        drive.step(10)
        assert hosted_counts(env) == [6], "the first game hosts every venv"
        games.append(start_game(url))
        wait_for_games(env, 2)
        drive.step(10)
        assert hosted_counts(env) == [3, 3], "venvs spread to the game that joined"
        games.append(start_game(url))
        wait_for_games(env, 3)
        drive.step(10)
        assert hosted_counts(env) == [2, 2, 2]
        moved_before = env.session.reconnects

        games[1].send_signal(signal.SIGKILL)  # a Studio window closed mid-run
        games[1].wait()
        drive.step(10)
        assert drive.episodes_lost == 4, "the lost game's 2 venvs x 2 cars ended their episodes, no other car"
        assert env.session.reconnects == moved_before + 1
        assert hosted_counts(env) == [3, 3], "its venvs moved to the other two games"

        games[1] = start_game(url)  # ... and opened again
        wait_for_games(env, 3)
        drive.step(20)
        assert hosted_counts(env) == [2, 2, 2]
        assert env.session.bridge.stats["internal_errors"] == 0 and env.session.bridge.stats["bad_frames"] == 0
        assert env.session.bridge.stats["unknown_agent"] == 0
    finally:
        env.close()


def test_venvs_wait_for_a_game_with_room_and_the_run_says_so(capfd, start_game):
    """A game that hosts one venv at most: the second venv waits, with a line, until another game comes."""
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    start_game(url, "--max-venvs", "1")
    env = None
    try:
        later = threading.Timer(1.0, lambda: start_game(url, "--max-venvs", "1"))
        later.start()
        env = rbxenv.make_vec_env(num_agents=1, num_venvs=2, sim=None, port=port, wait_timeout=60)
        later.join()
        assert hosted_counts(env) == [1, 1]
        assert "venvs v1 wait for a game to host them" in capfd.readouterr().out
        env.reset(seed=0)
        Driver(env).step(5)
    finally:
        if env is not None:
            env.close()


def test_lockstep_and_realtime_games_serve_one_session(start_game):
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    start_game(url)
    start_game(url, "--realtime", "--tick-hz", "30")
    env = rbxenv.make_vec_env(num_agents=2, num_venvs=2, sim=None, port=port, track_change_steps=None)
    try:
        wait_for_games(env, 2)
        env.reset(seed=0)
        drive = Driver(env)
        drive.step(30)
        assert hosted_counts(env) == [1, 1]
        assert {link.spec.mode for link in env.session.bridge.games} == {"lockstep", "realtime"}
        assert env.session.freezer is not None, "a real-time game among them: frozen while the learner updates"
    finally:
        env.close()


def test_two_runs_on_two_model_ids_share_one_port(start_game):
    port = free_port()
    for run in ("run_a", "run_b"):
        start_game(f"ws://127.0.0.1:{port}/ws/{run}")
    envs = {}
    try:
        opened = {}

        def open_run(run: str) -> None:
            opened[run] = rbxenv.make_vec_env(
                num_agents=2, num_venvs=1, sim=None, port=port, serves=run, track_change_steps=None
            )

        threads = [threading.Thread(target=open_run, args=(run,)) for run in ("run_a", "run_b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        envs = opened
        assert set(envs) == {"run_a", "run_b"}
        assert envs["run_a"].session.bridge.port == envs["run_b"].session.bridge.port == port
        for run, env in envs.items():
            env.reset(seed=0)
            Driver(env).step(10)
            assert env.session.model_id == run and len(env.session.bridge.games) == 1
        # a game for a run nobody serves is refused with the reason
        with connect(f"ws://127.0.0.1:{port}/ws/run_c") as stranger:
            with pytest.raises(ConnectionClosed):
                stranger.recv(timeout=5)
            assert stranger.close_code == 1008 and "/ws/run_a or /ws/run_b" in stranger.close_reason
        envs.pop("run_a").close()  # one run ends: the other goes on on the port
        Driver(envs["run_b"]).step(10)
    finally:
        for env in envs.values():
            env.close()


def test_hostile_peers_before_and_during_a_several_game_run_cost_it_nothing(start_game):
    """Strangers (junk, silence, a bad packet, bare TCP, half-open sockets) keep coming while the
    trainer waits for its games and while two games step: the run never notices."""
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    stop, rounds, half_open = threading.Event(), [0], []

    def hostile() -> None:
        while not stop.is_set():
            try:
                if not half_open:  # never send their HTTP upgrade
                    half_open.extend(socket.create_connection(("127.0.0.1", port), timeout=1) for _ in range(20))
                for _ in range(50):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:  # not listening yet
                time.sleep(0.05)
                continue
            for first in ("junk", None, '{"type": "obs"}'):
                try:
                    with connect(url, open_timeout=2) as ws:
                        if first is not None:
                            ws.send(first)
                        ws.recv(timeout=3)
                except Exception:  # noqa: BLE001 - dropped, as it should be
                    pass
            rounds[0] += 1

    peer = threading.Thread(target=hostile)
    peer.start()
    later = threading.Timer(1.5, lambda: [start_game(url) for _ in range(2)])
    later.start()  # the strangers come first
    env = None
    try:
        env = rbxenv.make_vec_env(num_agents=2, num_venvs=2, sim=None, port=port, track_change_steps=None)
        later.join()
        wait_for_games(env, 2)
        env.reset(seed=0)
        drive, seen = Driver(env), rounds[0]
        while rounds[0] < seen + 2 or drive.steps < 60:  # steps while the strangers go on
            drive.step()
            assert drive.steps < 100_000
        assert len(env.session.bridge.games) == 2 and env.session.reconnects == 0
        stats = env.session.bridge.stats
        assert stats["strangers_dropped"] >= 6 and stats["bad_frames"] == 0 and stats["internal_errors"] == 0
    finally:
        stop.set()
        peer.join(timeout=30)
        for s in half_open:
            s.close()
        if env is not None:
            env.close()


@pytest.mark.timeout(240)
def test_a_training_run_takes_games_joining_and_leaving_and_finishes(tmp_path, start_game):
    """ppo_continuous.py --no-sim with three real-time simulator games (60 Hz: the run cannot end
    before they all had their turn): one there from the start, two joining later, one of them
    killed mid-run and started again. The run finishes and says what happened."""
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    flags = ["--no-sim", "--port", str(port), "--num-agents", "2", "--num-venvs", "6", "--num-steps", "32"]
    flags += ["--total-timesteps", "13824", "--eval-every", "0", "--wait-timeout", "60", "--no-save-model"]

    def start(url: str) -> subprocess.Popen:
        return start_game(url, "--realtime", "--tick-hz", "60")

    games = [start(url)]
    run = ScriptRun("ppo_continuous.py", flags, tmp_path)
    run.wait_for("step ")  # training has begun on the first game
    games.append(start(url))
    run.wait_for("joined; venvs")
    games.append(start(url))
    run.wait_for("game #3")
    games[1].send_signal(signal.SIGKILL)
    run.wait_for("the game disconnected: game #2")
    games[1] = start(url)
    run.wait_for("game #4")
    out = run.finish(timeout=150)
    assert "step 13824/13824" in out, out[-2000:]
    assert "Traceback" not in out


def test_pettingzoo_agents_of_a_lost_game_end_truncated_and_reset_places_them_again(start_game):
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    games = [start_game(url), start_game(url)]
    env = rbxenv.make_parallel_env(num_agents=2, num_venvs=2, sim=None, port=port)
    try:
        wait_for_games(env, 2)
        env.reset(seed=0)
        assert hosted_counts(env) == [1, 1]
        links = dict(env.session.bridge.hosts)
        games[1].send_signal(signal.SIGKILL)
        games[1].wait()
        gone: set[str] = set()
        for _ in range(20):
            _, rewards, terms, truncs, infos = env.step({a: np.float32([0.3, 0.0, 0.0]) for a in env.agents})
            ended = {a for a in truncs if truncs[a] and infos[a].get("cause") == "disconnected"}
            assert not any(terms[a] for a in ended) and all(rewards[a] == 0 for a in ended)
            gone |= ended
        (lost_venv,) = (venv for venv, link in links.items() if link.lost is not None)
        assert gone == {f"car_0_env_{lost_venv}", f"car_1_env_{lost_venv}"}, "exactly the lost game's cars ended"
        obs, _ = env.reset(seed=1)
        assert sorted(obs) == sorted(env.possible_agents) and hosted_counts(env) == [2]
        env.step({a: np.float32([0.3, 0.0, 0.0]) for a in env.agents})
    finally:
        env.close()


def test_two_v0_places_serve_one_run():
    """The original project's place, twice (two Studio windows), dialing one trainer: each hosts a venv."""
    from test_v0_compat import GameInThread
    from v0_emulation import V0Game

    port = free_port()
    places: list[GameInThread] = []
    later = after_the_trainer_listens(
        lambda: places.extend(GameInThread(V0Game(f"ws://localhost:{port}/ws/seedcar", seed=s)) for s in (1, 2))
    )
    env = rbxenv.make_vec_env(num_agents=3, num_venvs=2, sim=None, port=port, wait_timeout=60)
    later.join()
    try:
        wait_for_games(env, 2)
        env.reset(seed=0)
        Driver(env).step(30)
        assert hosted_counts(env) == [1, 1]
    finally:
        env.close()
    for place in places:
        place.join(10)
        assert place.game.warnings == [], place.game.warnings[:3]
        assert place.game.commands["ACTION"] >= 30, "each place drove its own venv"


# ------------------------------------------------------------------ awkward moments (review of issue 17)


def test_a_game_that_joins_gets_the_sessions_collision_setting():
    """The simulators run in threads here, so their Sim objects can be asked."""
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    sims: list[Sim] = []

    def game() -> None:
        sims.append(Sim(sim_config("kinematic"), seed=len(sims)))
        asyncio.run(client.run(url, sim=sims[-1]))

    threads = [threading.Thread(target=game, daemon=True) for _ in range(2)]
    threads[0].start()
    env = rbxenv.make_vec_env(num_agents=2, num_venvs=2, sim=None, port=port, collisions=True, track_change_steps=None)
    try:
        env.reset(seed=0)
        Driver(env).step(3)
        threads[1].start()
        wait_for_games(env, 2)
        Driver(env).step(3)
        assert hosted_counts(env) == [1, 1]
        assert [sim.collisions for sim in sims] == [True, True], "the simulator's default is off"
    finally:
        env.close()
    for t in threads:
        t.join(timeout=10)


class LeavesOnSpawn:
    """A game that says hello, then leaves at its first SPAWN_AGENTS (a window closed at a bad moment)."""

    def __init__(self, url: str):
        self.url = url
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        spec = game_spec(Sim(sim_config("kinematic")), False, 15.0)
        with connect(self.url, open_timeout=10) as ws:
            ws.send(protocol.encode_hello(spec).decode())
            while "SPAWN_AGENTS" not in ws.recv(timeout=30):
                pass


@pytest.mark.parametrize("when", ["reset", "step"])
def test_a_game_lost_while_its_cars_spawn_ends_only_its_venvs_episodes(start_game, when):
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    start_game(url)
    env = rbxenv.make_vec_env(num_agents=2, num_venvs=2, sim=None, port=port, track_change_steps=None)
    try:
        if when == "step":
            env.reset(seed=0)
            Driver(env).step(3)
        flaky = LeavesOnSpawn(url)
        wait_for_games(env, 2)
        if when == "reset":
            obs, _ = env.reset(seed=0)  # v1 goes to the new game, which leaves: v1 restarts on the first
            assert np.isfinite(obs).all()
        else:
            _, _, term, trunc, infos = env.step(np.zeros((4, 3), np.float32))
            assert trunc.tolist() == [False, False, True, True] and not term.any(), "only v1, which moved, ended"
        flaky.thread.join(timeout=10)
        Driver(env).step(5)
        assert hosted_counts(env) == [2]
    finally:
        env.close()


def test_a_v0_place_with_another_car_is_refused_and_the_run_goes_on():
    from test_v0_compat import GameInThread
    from v0_emulation import V0Game

    port = free_port()
    places: list[GameInThread] = []
    later = after_the_trainer_listens(
        lambda: places.append(GameInThread(V0Game(f"ws://localhost:{port}/ws/m", seed=1)))  # 16 rays: 19 floats
    )
    env = rbxenv.make_vec_env(num_agents=2, num_venvs=2, sim=None, port=port, wait_timeout=60)
    later.join()
    try:
        env.reset(seed=0)
        other = GameInThread(V0Game(f"ws://localhost:{port}/ws/m", num_rays=10, seed=2))  # 13 floats
        drive = Driver(env)
        deadline = time.monotonic() + 30
        while env.session.bridge.stats["rejected_width"] == 0:
            assert time.monotonic() < deadline, "the other place was never refused"
            drive.step()
        drive.step(10)
        assert len(env.session.bridge.games) == 1 and env.session.bridge.data.fatal is None
    finally:
        env.close()
    places[0].join(10)
    other.thread.join(10)


def test_a_game_that_stops_answering_among_several_is_closed_and_its_venvs_move(start_game):
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    games = [start_game(url), start_game(url)]
    env = rbxenv.make_vec_env(num_agents=2, num_venvs=2, sim=None, port=port, obs_timeout=2, track_change_steps=None)
    try:
        wait_for_games(env, 2)
        env.reset(seed=0)
        drive = Driver(env)
        drive.step(3)
        games[1].send_signal(signal.SIGSTOP)  # hung (a debugger, a frozen window)
        drive.step(5)
        assert drive.episodes_lost == 2 and hosted_counts(env) == [2]
    finally:
        games[1].send_signal(signal.SIGCONT)
        env.close()


def test_a_simulator_process_that_dies_is_relaunched_while_the_others_play_on():
    env = rbxenv.make_vec_env(num_agents=2, num_venvs=2, sim="subprocess", sim_games=2, track_change_steps=None)
    try:
        env.reset(seed=0)
        drive = Driver(env)
        drive.step(3)
        killed = env.session.processes[1]
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        deadline = time.monotonic() + 60
        while env.session.processes[1] is killed or hosted_counts(env) != [1, 1]:
            assert time.monotonic() < deadline, "the simulator was not relaunched"
            drive.step()
        assert all(p.poll() is None for p in env.session.processes)
        assert drive.episodes_lost == 2, "its venv's 2 cars ended, truncated, once"
    finally:
        env.close()


@pytest.mark.timeout(240)
def test_sac_goes_on_when_its_game_is_lost(tmp_path):
    """A lost step's rows are not stored, and the step still counts for the observation statistics."""
    flags = [
        "--sim",
        "subprocess",
        "--num-agents",
        "2",
        "--num-venvs",
        "2",
        "--total-timesteps",
        "2000",
        "--log-every",
        "200",
    ]
    flags += ["--learning-starts", "200", "--eval-every", "0", "--no-save-model", "--buffer-size", "4000"]
    run = ScriptRun("sac_continuous.py", flags, tmp_path)
    run.wait_for("step ")
    (child,) = simulators_started_by(run.proc.pid)
    os.kill(child, signal.SIGKILL)
    out = run.finish(timeout=180)
    assert "step 2000/2000" in out and "the game disconnected" in out, out[-2000:]
    assert "nan" not in out.lower() and "Traceback" not in out


def simulators_started_by(pid: int) -> list[int]:
    """The ``python -m rbxenv.sim`` children of a process (Linux: read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid and b"rbxenv.sim" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found
