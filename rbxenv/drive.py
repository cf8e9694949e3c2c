"""Drive a game with an exported policy: the "use" mode. onnxruntime only, no torch.

    python -m rbxenv.drive policy.onnx                              # embedded simulator, 5 cars, until Ctrl-C
    python -m rbxenv.drive policy.onnx --heldout --episodes 10      # held-out tracks, 10 episodes (2 per car)
    python -m rbxenv.drive policy.onnx --no-sim                     # drive the cars of a Roblox place

The policy (written by ``export_onnx.py``) drives every car of ``--num-venvs`` venvs of
``--num-agents`` cars through the same bridge and vector env the trainers use (``make_vec_env``:
per-car frame stacks, each car respawning on its own), with its deterministic action. Each finished
episode prints one line (laps, lap times, how it ended); Ctrl-C or the end prints a summary. The
ONNX metadata (frame size, ray count, frame stack, actions) is checked against what the game
announces, and a mismatch is reported in one line (exit code 2) instead of driving blind. No game,
a port in use, or a game lost or silent mid-drive: the summary, then one line on stderr, exit code 1.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rbxenv import cli

EXIT_BAD_INPUT = cli.EXIT_BAD_INPUT


class DriveError(Exception):
    """A problem the user can fix (file, metadata, game mismatch): one line, exit code 2."""


@dataclass
class OnnxPolicy:
    """An exported policy: obs [N, obs_dim] float32 -> action [N, act_dim], with its metadata."""

    path: Path
    session: object
    input_name: str
    obs_dim: int
    act_dim: int
    frame_stack: int
    obs_size: int
    num_rays: int | None
    meta: dict[str, str] = field(default_factory=dict)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.asarray(obs, dtype=np.float32)})[0]

    @property
    def description(self) -> str:
        m = self.meta
        origin = (
            f"{m.get('algo', '?')} run {m.get('source_run', '?')} step {m.get('global_step', '?')}"
            if m
            else "no rbxenv metadata"
        )
        return f"{self.path} ({origin}; {self.frame_stack} x {self.obs_size} obs -> {self.act_dim} actions)"


def load_policy(path: str | Path, frame_stack: int | None = None) -> OnnxPolicy:
    """Open an ONNX policy with onnxruntime and read its rbxenv metadata (DriveError if unusable)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.exists():
        raise DriveError(f"{path}: no such file")
    if path.is_dir():
        raise DriveError(f"{path}: is a directory, not an ONNX file")
    problem = cli.readable_file(path)
    if problem:
        raise DriveError(f"{path}: {problem}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # a small MLP: one thread is fastest, and leaves the game a core
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # our own message below says what is wrong
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise DriveError(f"{path}: not a readable ONNX model ({first})") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1 or len(inputs[0].shape) != 2 or len(outputs[0].shape) != 2:
        raise DriveError(
            f"{path}: not a driving policy (expected one input [batch, obs] and one output [batch, actions])"
        )
    meta = dict(session.get_modelmeta().custom_metadata_map)
    obs_dim, act_dim = inputs[0].shape[1], outputs[0].shape[1]
    if not isinstance(obs_dim, int) or not isinstance(act_dim, int):
        raise DriveError(f"{path}: the policy's observation and action sizes must be fixed numbers")
    try:
        stack = frame_stack or int(meta.get("frame_stack", 0)) or 4
        obs_size = int(meta.get("obs_size", 0)) or obs_dim // stack
        num_rays = int(meta["num_rays"]) if "num_rays" in meta else None
        meta_obs_dim = int(meta.get("obs_dim", obs_dim))
    except ValueError:
        raise DriveError(f"{path}: unreadable rbxenv metadata {meta}") from None
    if stack * obs_size != obs_dim or meta_obs_dim != obs_dim:
        raise DriveError(
            f"{path}: the model takes {obs_dim} inputs, which is not frame_stack {stack} x obs_size {obs_size}"
            + ("" if meta else " (no rbxenv metadata: pass --frame-stack)")
        )
    return OnnxPolicy(path, session, inputs[0].name, obs_dim, act_dim, stack, obs_size, num_rays, meta)


def check_game(policy: OnnxPolicy, game) -> None:
    """The game's announced spaces must be the policy's (DriveError naming both sides otherwise)."""
    problems = []
    if game.obs_size != policy.obs_size:
        problems.append(f"frames of {game.obs_size} floats (policy: {policy.obs_size})")
    if policy.num_rays is not None and game.num_rays != policy.num_rays:
        problems.append(f"{game.num_rays} rays (policy: {policy.num_rays})")
    if game.action_size != policy.act_dim:
        problems.append(f"{game.action_size} actions (policy: {policy.act_dim})")
    if problems:
        raise DriveError(
            f"the game ({game.game}) does not match {policy.path}: it sends {', '.join(problems)}; "
            "drive a game configured like the one the policy was trained on (e.g. Config.NumRays), or retrain"
        )


def _fmt_time(seconds: float) -> str:
    return f"{seconds:.2f} s" if math.isfinite(seconds) else "-"


@dataclass
class Tally:
    episodes: int = 0
    laps: int = 0
    completed: int = 0  # episodes with at least one lap
    crashed: int = 0
    lap_times: list[float] = field(default_factory=list)
    steps: int = 0

    def record(self, ep: dict, k: int, terminated: bool, lap_times: list[float]) -> str:
        """Count car ``k``'s finished episode (``infos["episode"]``); its line: laps, lap times, how it ended."""
        self.episodes += 1
        laps = int(ep["laps"][k])
        if ep["crashed"][k]:
            how = "crashed into a wall"
            self.crashed += 1
        elif terminated:
            how = "stopped (stuck or wrong way)"
        else:
            how = "time limit"
        self.laps += laps
        self.completed += laps >= 1
        self.lap_times += lap_times
        times = ", ".join(f"{t:.2f}" for t in lap_times) or "-"
        return (
            f"laps {laps} | lap times (s) {times} | progress {ep['progress'][k]:.2f} laps | "
            f"{how} after {int(ep['l'][k])} steps | return {ep['r'][k]:.1f}"
        )

    def summary(self, elapsed: float) -> str:
        n = self.episodes or math.nan  # no episode finished: no rates ("-")
        best = min(self.lap_times) if self.lap_times else math.nan
        mean = float(np.mean(self.lap_times)) if self.lap_times else math.nan
        return (
            f"summary: {self.episodes} episodes | {self.laps} laps | lap completion {cli.figure(self.completed / n, '.0%')} | "
            f"crash rate {cli.figure(self.crashed / n, '.0%')} | lap time mean {_fmt_time(mean)}, best {_fmt_time(best)} | "
            f"{self.steps} decisions in {elapsed:.1f} s"
        )


def drive(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy, args.frame_stack)
    from rbxenv import HELDOUT_TRACK_SEEDS, BridgeClosed, make_vec_env
    from rbxenv.protocol import DEFAULT_PORT

    track_seeds = (
        list(HELDOUT_TRACK_SEEDS)[args.track_offset : args.track_offset + args.num_venvs] if args.heldout else None
    )
    port = args.port if args.port is not None else (DEFAULT_PORT if args.no_sim else 0)
    print(f"driving with {policy.description}", flush=True)
    try:
        envs = make_vec_env(
            num_agents=args.num_agents,
            num_venvs=args.num_venvs,
            frame_stack=policy.frame_stack,
            track_change_steps=None,
            host=args.host,
            port=port,
            token=args.token,
            sim=None if args.no_sim else "embedded",
            mode="realtime" if args.realtime else "lockstep",
            start=args.start,
            track_seeds=track_seeds,
            tracks=args.track_file,
            wait_timeout=args.wait_timeout,
            sim_seed=args.seed,
        )
    except ValueError as exc:  # e.g. --host beyond loopback without a token
        raise DriveError(str(exc).splitlines()[0]) from None
    except (BridgeClosed, OSError) as exc:  # no game came, or the port is taken
        cli.fail("rbxenv.drive", str(exc).splitlines()[0])
    except KeyboardInterrupt:  # Ctrl-C while waiting for the game
        raise SystemExit(cli.EXIT_INTERRUPTED) from None
    tally, start = Tally(), time.monotonic()
    reason, code = "finished", 0
    try:
        check_game(policy, envs.game)
        obs, infos = envs.reset(seed=args.seed)
        session = envs.session
        names = {}
        for venv, envid in enumerate(session.venv_ids):
            spec = session.tracks.get(envid)  # None: the game's own track (v0 games, Roblox default)
            names[venv] = f"track {spec.get('name', envid)}" if isinstance(spec, dict) else f"venv {envid}"
        n = envs.num_envs
        # --episodes N is spread evenly over the cars (car k counts its first quota[k] episodes), so a
        # car that crashes every few seconds cannot fill the count before a good lap is finished.
        if args.episodes:
            quota = args.episodes // n + (np.arange(n) < args.episodes % n)
        else:
            quota = np.full(n, np.iinfo(np.int64).max)
        counted = np.zeros(n, dtype=np.int64)
        prev_lap = np.zeros(n)
        lap_times: list[list[float]] = [[] for _ in range(n)]
        while not args.episodes or tally.episodes < args.episodes:
            if args.max_steps and tally.steps >= args.max_steps:
                reason = f"stopped after --max-steps {args.max_steps}"
                break
            obs, _, terminated, truncated, infos = envs.step(policy(obs))
            tally.steps += 1
            lap = np.nan_to_num(infos["lap"], nan=0.0)
            for k in np.flatnonzero(lap > prev_lap):  # a lap was completed this step
                if math.isfinite(infos["lap_time"][k]):
                    lap_times[k].append(float(infos["lap_time"][k]))
            prev_lap = lap
            if "_episode" not in infos:
                continue
            for k in np.flatnonzero(infos["_episode"]):
                if counted[k] < quota[k]:  # past its share a car keeps racing, uncounted
                    counted[k] += 1
                    result = tally.record(infos["episode"], k, bool(terminated[k]), lap_times[k])
                    where = f"{session.agent_ids[k]} on {names[int(session.venv_of[k])]}"
                    print(f"episode {tally.episodes:3d} | {where} | {result}", flush=True)
                lap_times[k] = []
                prev_lap[k] = 0.0
    except KeyboardInterrupt:
        reason, code = "interrupted", cli.EXIT_INTERRUPTED
    except BridgeClosed as exc:
        reason, code = f"the game was lost ({str(exc).splitlines()[0]})", cli.EXIT_FAILURE
    except TimeoutError as exc:  # connected but silent (paused, hung)
        reason, code = f"the game stopped answering ({str(exc).splitlines()[0]})", cli.EXIT_FAILURE
    finally:
        envs.close()
    if reason != "finished" and code != cli.EXIT_FAILURE:  # interrupted, --max-steps
        print(reason, flush=True)
    print(tally.summary(time.monotonic() - start), flush=True)
    if code == cli.EXIT_FAILURE:
        cli.fail("rbxenv.drive", f"{reason} after {tally.steps} decisions")
    return code


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(
        prog="python -m rbxenv.drive",
        description="Drive the cars of a game (embedded simulator or Roblox) with an exported ONNX policy.",
    )
    parser.add_argument("policy", help="policy.onnx written by export_onnx.py")
    parser.add_argument("--no-sim", action="store_true", help="do not start the embedded simulator: wait for a game (Roblox Studio)")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (the game connects to it)")
    parser.add_argument("--port", type=int, default=None, help="port to listen on (default: 8000 with --no-sim, where the original project's places dial; any free port otherwise)")  # fmt: skip
    parser.add_argument("--token", default=None, help="shared secret (required beyond loopback; or RBXENV_TOKEN)")
    parser.add_argument("--wait-timeout", type=float, default=300.0, help="with --no-sim: seconds to wait for the game")
    parser.add_argument("--num-agents", type=int, default=5, help="cars per venv")
    parser.add_argument("--num-venvs", type=int, default=1, help="venvs (tracks)")
    parser.add_argument(
        "--episodes",
        type=int,
        default=0,
        help="stop after this many finished episodes, spread evenly over the cars (0: until Ctrl-C)",
    )
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many decisions (0: no limit)")
    parser.add_argument("--heldout", action="store_true", help="drive on held-out tracks (never used in training), one per venv")  # fmt: skip
    parser.add_argument("--track-offset", type=int, default=0, help="with --heldout: skip this many held-out tracks")
    parser.add_argument("--track-file", action="append", metavar="PATH", help="drive on this track spec file, or the *.json of this folder (repeatable; venvs take them in turn)")  # fmt: skip
    parser.add_argument("--start", choices=["grid", "random"], default="grid", help="where cars (re)spawn")
    parser.add_argument("--realtime", action="store_true", help="run the embedded simulator on its own 15 Hz clock, like Roblox")  # fmt: skip
    parser.add_argument("--frame-stack", type=int, default=None, help="override the policy's frame stack (ONNX files without rbxenv metadata)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the track draws and the simulator")
    args = parser.parse_args(argv)
    heldout = cli.HELDOUT_TRACKS
    cli.check("rbxenv.drive", args, {
        "--port": cli.between(0, 65535),
        "--wait-timeout": cli.above(0),
        "--num-agents": cli.at_least(1),
        "--num-venvs": cli.between(1, heldout) if args.heldout else cli.at_least(1),
        "--episodes": cli.at_least(0),
        "--max-steps": cli.at_least(0),
        "--track-offset": cli.between(0, heldout - args.num_venvs) if args.heldout else cli.at_least(0),
        "--frame-stack": cli.at_least(1),
    })  # fmt: skip
    if args.track_file and args.heldout:
        cli.refuse("rbxenv.drive", "--track-file and --heldout both choose the tracks: give one")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return drive(args)
    except DriveError as exc:
        print(f"rbxenv.drive: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
