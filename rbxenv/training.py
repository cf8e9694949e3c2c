"""The plumbing both training scripts share, so that each script holds its algorithm and nothing else.

``ppo_continuous.py`` and ``sac_continuous.py`` keep what a fork changes (networks, rollout,
targets, losses, update); what a run needs around that lives here once: the flags every run has
(``RunArgs``) and their checks, the env built from them, the run directory, TensorBoard and
W&B, the progress line, the held-out evaluation and its GIF, graceful stop, and the checkpoint
format (written here, read by ``export_onnx.py``).

Checkpoint format "rbxenv-checkpoint-v1" (``torch.save`` of a dict): ``format``, ``algo``,
``args``, ``global_step``, ``run_name``, the algorithm's own ``model``, ``optimizer`` and
``extra`` (RNG states included), and the ``policy`` section ``export_onnx.py`` documents: the
deterministic actor in a declared form, with probe observations and the trainer's own actions
for them, so that a fork whose network no longer matches its declaration fails the export.

torch loads inside the functions that use it, never at import: a script refuses a bad flag
(``parse_args``) in a second, before torch loads.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np

from rbxenv import cli

CHECKPOINT_FORMAT = "rbxenv-checkpoint-v1"
PROBE_SIZE = 256
ACTION_NAMES = ["throttle", "steering", "nitro"]
EPISODE_KEYS = ("r", "l", "laps", "progress", "lap_time", "crashed")


@dataclass
class RunArgs:
    """The flags every training script has; a script's ``Args`` adds its algorithm's."""

    exp_name: str = ""
    """the name of this experiment (first part of the run name; default: the script's name)"""
    seed: int = 1
    """seed of torch, numpy, the track draws and the simulator"""
    torch_threads: int = 1
    """torch CPU threads (1 is fastest on small machines: the simulator needs a core too)"""
    wandb: bool = False
    """also log to Weights & Biases (needs `pip install wandb`)"""
    track: bool = False
    """deprecated: the old name of --wandb"""
    wandb_project_name: str = "rbxenv"
    """the wandb project name"""
    wandb_entity: str | None = None
    """the entity (team) of the wandb project"""

    # Game / environment
    num_agents: int = 5
    """cars per venv (they race each other; venvs never interact)"""
    num_venvs: int = 5
    """venvs, each with its own track: num_agents x num_venvs cars drive at once, one policy for all"""
    frame_stack: int = 4
    """observations stacked per car (oldest first)"""
    track_change_steps: int = 1500
    """every this many steps each venv moves to a new training track (0: keep tracks)"""
    track_seeds: list[int] | None = None
    """train on these track seeds only (default: random draws from the training seeds)"""
    track_method: str | None = None
    """restrict tracks to one generation method ("polar", "hull", "grid"; "circuit" with --track-difficulty)"""
    track_file: list[str] | None = None
    """train on your own tracks too: spec files or folders of *.json (python -m rbxenv.tracks --from-file checks one)"""
    track_mix: float = 0.5
    """with --track-file: the share of track draws that take one of your tracks (the rest generated; 1: yours only)"""
    track_difficulty: str | None = None
    """varied generated tracks (hairpins, chicanes, width changes): a difficulty 0..1, or a curriculum START:END ramped over the run (e.g. 0.2:1)"""
    eval_track_file: list[str] | None = None
    """evaluate on these track files (one car each, from the grid) instead of held-out generated tracks"""
    start: Literal["random", "grid"] = "random"
    """where cars (re)spawn in training: "random" point of the track or the start "grid\""""
    collisions: bool = True
    """car-car collisions inside a venv"""
    dynamics: str = "kinematic"
    """the simulator's car: "kinematic", "dynamic" (actuator lag, yaw inertia, sliding tyres) or "randomized"
    (dynamic, constants drawn per episode: for drivers meant for Roblox physics cars); SimConfig overrides may
    follow, e.g. "dynamic,max_lateral_accel=56" (see rbxenv.sim.rules.sim_config)"""
    sim: Literal["inprocess", "subprocess"] = "inprocess"
    """simulator backend: "inprocess" (Sim called in this process: fastest) or "subprocess" (`python -m rbxenv.sim` over a loopback WebSocket: the protocol path a Roblox game takes)"""
    sim_games: int = 1
    """with --sim subprocess: simulator processes, each hosting an even share of the venvs (in real time, that many times the agent-steps/s)"""
    no_sim: bool = False
    """do not start the embedded simulator: wait for games (Roblox Studio, `python -m rbxenv.sim`) on --host/--port; any number may connect, join and leave, each hosting an even share of the venvs"""
    model_id: str | None = None
    """the run's model id: games must dial ws://host:port/ws/<model-id> (other paths are refused, so runs with different ids can share a port); default: any path"""
    host: str = "127.0.0.1"
    """address the trainer listens on (the game connects to it)"""
    port: int | None = None
    """port the trainer listens on (default: 8000 with --no-sim, where the original project's places dial, any free port with --sim subprocess)"""
    mode: Literal["lockstep", "realtime"] = "lockstep"
    """embedded simulator stepping: "lockstep" (one decision per step) or "realtime" (15 Hz on its own)"""
    wait_timeout: float = 300.0
    """with --no-sim: seconds to wait for the game to connect"""
    reconnect_timeout: float = 60.0
    """when a game leaves mid-run and no other game has room for its venvs: seconds to wait for one (0: the run stops at once)"""

    total_timesteps: int = 200_000
    """total agent-steps (cars x steps) of the run"""

    # Checkpoints, evaluation, video
    save_model: bool = True
    """save checkpoints (every --save-every steps and at the end) to runs/{run_name}/checkpoint.pt; with --no-save-model only an interrupted run saves (so no work is lost)"""
    save_every: int = 50_000
    """agent-steps between periodic checkpoints (with --save-model)"""
    resume: str | None = None
    """continue the run of this checkpoint (same run dir; the step, networks, optimisers and statistics carry on)"""
    eval_every: int = 25_000
    """agent-steps between held-out evaluations (0: never; one also runs at the end)"""
    eval_episodes: int = 10
    """held-out tracks per evaluation (one car, one episode each, from the start grid)"""
    capture_video: bool = False
    """at each evaluation, save a top-down GIF under runs/{run_name}/videos/ and a trajectory picture"""


RUN_RULES = {
    "--torch-threads": cli.at_least(1),
    "--num-agents": cli.at_least(1),
    "--num-venvs": cli.at_least(1),
    "--sim-games": cli.at_least(1),
    "--frame-stack": cli.at_least(1),
    "--track-change-steps": cli.at_least(0),
    "--track-seeds": cli.at_least(0),
    "--port": cli.between(0, 65535),
    "--wait-timeout": cli.above(0),
    "--reconnect-timeout": cli.at_least(0),
    "--total-timesteps": cli.at_least(1),
    "--save-every": cli.at_least(1),
    "--resume": cli.readable_file,
    "--eval-every": cli.at_least(0),
    "--eval-episodes": cli.between(1, cli.HELDOUT_TRACKS),
}


def parse_args(args_class: type, prog: str, algo: str, check: Callable) -> RunArgs:
    """tyro CLI, every value checked by ``check`` (exit 2 on a bad one); with --resume the checkpoint's
    arguments are the defaults and the flags given override them."""
    args = check(cli.tyro_cli(args_class, prog))
    if args.resume:
        saved = read_checkpoint(args.resume, prog, algo).get("args", {})
        known = {key: value for key, value in saved.items() if key in args_class.__dataclass_fields__}
        known["resume"] = args.resume
        args = check(cli.tyro_cli(args_class, prog, default=args_class(**known)))
    if args.track:
        print(f"{prog}: warning: --track is deprecated, use --wandb", file=sys.stderr, flush=True)
        args.wandb, args.track = True, False
    return args


def read_checkpoint(path: str, prog: str, algo: str) -> dict:
    """A checkpoint of ``algo`` to resume from, or one clear line (exit 2) saying why it cannot be used."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        cli.refuse(prog, f"cannot resume: {path} does not exist")
    except Exception as error:  # truncated or corrupt file, not a torch file at all
        cli.refuse(prog, f"cannot resume: {path} is not a readable checkpoint ({type(error).__name__})")
    if (
        not isinstance(checkpoint, dict)
        or checkpoint.get("format") != CHECKPOINT_FORMAT
        or checkpoint.get("algo") != algo
    ):
        cli.refuse(prog, f"cannot resume: {path} is not a {algo.upper()} {CHECKPOINT_FORMAT} checkpoint")
    return checkpoint


# ====================================================================================================
# The model's side of the checkpoint format


class ObsNormalization:
    """Mixin for an ``nn.Module``: running observation statistics kept as buffers (saved with the
    weights) and the normalisation the checkpoint format declares, which ``export_onnx.py`` bakes
    into the exported policy: clip((obs - mean) / sqrt(var + eps), -clip, clip)."""

    OBS_EPS = 1e-8
    OBS_CLIP = 10.0

    def init_obs_stats(self, obs_dim: int) -> None:
        import torch

        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_var", torch.ones(obs_dim))
        self.register_buffer("obs_count", torch.tensor(1e-4, dtype=torch.float64))

    def update_obs_stats(self, obs) -> None:
        """Merge a batch of raw observations into the statistics (parallel variance, in float64)."""
        import torch

        with torch.no_grad():
            batch = (obs.mean(0).double(), obs.var(0, unbiased=False).double(), obs.shape[0])
            mean, var, count = merge_moments(self.obs_mean.double(), self.obs_var.double(), self.obs_count, *batch)
            self.obs_mean.copy_(mean)
            self.obs_var.copy_(var)
            self.obs_count.fill_(count)

    def normalize(self, obs):
        return ((obs - self.obs_mean) / (self.obs_var + self.OBS_EPS).sqrt()).clamp(-self.OBS_CLIP, self.OBS_CLIP)


def merge_moments(mean, var, count, batch_mean, batch_var, n):
    """Running (mean, var, count) merged with a batch's (parallel variance, Chan et al.); numpy or torch."""
    delta, total = batch_mean - mean, count + n
    m2 = var * count + batch_var * n + delta**2 * count * n / total
    return mean + delta * n / total, m2 / total, total


def probe_observations(obs_mean: np.ndarray, obs_var: np.ndarray, size: int = PROBE_SIZE, seed: int = 0) -> np.ndarray:
    """``size`` float32 observations the policy is checked on: half drawn around the running
    observation statistics (the inputs a driver sees, out to where normalisation clips), half
    uniform in [-1, 1] (every feature's raw range). Fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    mean, std = np.asarray(obs_mean, np.float64), np.sqrt(np.asarray(obs_var, np.float64))
    near = rng.normal(mean, 2.0 * std + 0.1, (size - size // 2, mean.shape[0]))
    wide = rng.uniform(-1.0, 1.0, (size // 2, mean.shape[0]))
    return np.concatenate([near, wide]).astype(np.float32)


def policy_section(model, linears: list, activation: str, squash: str, frame_stack: int, num_rays: int) -> dict:
    """The checkpoint's self-describing deterministic actor (``export_onnx.py`` documents the format):
    ``model`` (an ``ObsNormalization`` with ``act_deterministic``) declared as the MLP of ``linears``."""
    import torch

    obs_dim, act_dim = model.obs_mean.shape[0], linears[-1].out_features
    # What this network really answers, so that export_onnx.py can check the declaration below.
    probe = torch.from_numpy(probe_observations(model.obs_mean.numpy(), model.obs_var.numpy()))
    with torch.no_grad():
        probe_actions = model.act_deterministic(probe)
    return {
        "obs_dim": obs_dim,
        "act_dim": act_dim,
        "frame_stack": frame_stack,
        "obs_size": obs_dim // frame_stack,
        "num_rays": num_rays,  # as the game announced it (PROTOCOL.md §3.1)
        "obs_mean": model.obs_mean.detach().float().clone(),
        "obs_var": model.obs_var.detach().float().clone(),
        "obs_eps": model.OBS_EPS,
        "obs_clip": model.OBS_CLIP,
        "layers": [{"weight": m.weight.detach().clone(), "bias": m.bias.detach().clone()} for m in linears],
        "activation": activation,
        "squash": squash,
        "action_names": ACTION_NAMES[:act_dim],
        "probe_obs": probe,
        "probe_actions": probe_actions,
    }


class CheckpointError(Exception):
    """A checkpoint could not be written: the run ends with one line and exit code 1."""


def write_checkpoint(path: str, checkpoint: dict) -> None:
    """``torch.save`` atomically: a crash or a full disk mid-write never leaves a half file behind."""
    import torch

    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(error, OSError):  # a full disk, no permission: one line, and the run says what it kept
            raise CheckpointError(
                f"the checkpoint could not be written to {path} ({error.strerror or error})"
            ) from None
        raise


# ====================================================================================================
# Held-out evaluation


def evaluate(agent, envs, seed: int = 0, record: bool = False) -> dict:
    """Drive every car of ``envs`` with ``agent.act_deterministic`` until each has finished one episode.

    Returns lap completion (>= 1 lap before the episode ended), crash rate, mean time of the first
    lap (from the start: comparable with rbxenv.sim.reference; nan if no car lapped), mean progress
    in laps, and with ``record`` the per-step poses of every car (nan once its episode ended).
    """
    import torch

    obs, _ = envs.reset(seed=seed)
    n = envs.num_envs
    done = np.zeros(n, dtype=bool)
    laps, crashed, progress = np.zeros(n), np.zeros(n, dtype=bool), np.zeros(n)
    first_lap = np.full(n, np.nan)
    poses: list[dict] = []
    while not done.all():
        with torch.no_grad():
            action = agent.act_deterministic(torch.as_tensor(obs)).numpy()
        obs, _, _, _, infos = envs.step(action)
        if record:
            poses.append({key: np.where(done, np.nan, infos[key]) for key in ("x", "y", "heading", "speed")})
        lapped = ~done & np.isnan(first_lap) & (np.nan_to_num(infos["lap"]) >= 1)
        first_lap[lapped] = infos["lap_time"][lapped]
        if "_episode" in infos:
            new = infos["_episode"] & ~done
            ep = infos["episode"]
            laps[new], crashed[new], progress[new] = ep["laps"][new], ep["crashed"][new], ep["progress"][new]
            done |= new
    timed = first_lap[np.isfinite(first_lap)]
    return {
        "lap_completion": float((laps >= 1).mean()),
        "crash_rate": float(crashed.mean()),
        "lap_time": float(timed.mean()) if len(timed) else float("nan"),
        "progress": float(progress.mean()),
        "first_lap_times": first_lap,
        "poses": poses,
    }


def save_eval_video(envs, poses: list[dict], run_dir: str, global_step: int, writer) -> None:
    """Top-down GIF of held-out track 0 under runs/{run}/videos/ and its trajectory picture in TensorBoard."""
    from PIL import Image

    from rbxenv.sim.render import render_trajectories  # only --capture-video needs the renderer

    spec = envs.session.tracks[envs.session.venv_ids[0]]
    xs = np.array([[p["x"][0], p["y"][0]] for p in poses]).reshape(-1, 2)
    speeds = np.array([p["speed"][0] for p in poses])
    keep = np.isfinite(xs).all(1)  # car 0 until its episode ended
    xs, speeds = xs[keep], speeds[keep]
    if spec is None or len(xs) < 2:
        return
    writer.add_image("eval/trajectory", render_trajectories(spec, xs, speeds, size=512), global_step,
                     dataformats="HWC")  # fmt: skip
    stride = 15  # one frame per second of game time, played at 10x
    ends = [*range(stride, len(xs), stride), len(xs)]
    frames = [Image.fromarray(render_trajectories(spec, xs[:k], speeds[:k], size=256)) for k in ends]
    os.makedirs(f"{run_dir}/videos", exist_ok=True)
    frames[0].save(f"{run_dir}/videos/eval_{global_step}.gif", save_all=True, append_images=frames[1:],
                   duration=100, loop=0)  # fmt: skip


# ====================================================================================================
# One training run


class GracefulStop:
    """The first Ctrl-C / SIGTERM asks the loop to stop at the next step (checkpoint, close, exit)."""

    def __init__(self):
        self.requested = False
        self.signum = signal.SIGINT  # the exit code of an interrupted run is 128 + this (Ctrl-C: 130)
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C: stop right now
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step (Ctrl-C again to abort) ...", flush=True)


def format_seconds(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def make_envs(args: RunArgs, prog: str, start_step: int):
    """The training vector env, the evaluation tracks and the trainer's port (0: any free one) of ``args``;
    a failure is one line (exit 1 or 2)."""
    from rbxenv import BridgeClosed, make_vec_env, tracks
    from rbxenv.protocol import DEFAULT_PORT

    port = args.port if args.port is not None else (DEFAULT_PORT if args.no_sim else 0)
    try:
        envs = make_vec_env(
            num_agents=args.num_agents,
            num_venvs=args.num_venvs,
            frame_stack=args.frame_stack,
            track_change_steps=args.track_change_steps or None,
            sim=None if args.no_sim else args.sim,
            host=args.host,
            port=port,
            mode=args.mode,
            start=args.start,
            collisions=args.collisions,
            track_seeds=args.track_seeds,
            track_method=args.track_method,
            tracks=args.track_file,
            track_mix=args.track_mix if args.track_file else 1.0,
            track_difficulty=tracks.difficulty_at(args.track_difficulty, start_step / args.total_timesteps),
            sim_seed=args.seed,
            wait_timeout=args.wait_timeout,
            dynamics=args.dynamics,
            sim_games=args.sim_games,
            serves=args.model_id,
            reconnect_timeout=args.reconnect_timeout,
        )
        eval_tracks = tracks.load_tracks(args.eval_track_file) if args.eval_track_file else None
    except BridgeClosed as error:
        cli.fail(prog, f"no game to train with: {error}")
    except OSError as error:  # the port is taken
        cli.fail(prog, str(error))
    except ValueError as error:  # e.g. --host beyond loopback without a token
        cli.refuse(prog, str(error))
    except KeyboardInterrupt:  # Ctrl-C while waiting for the game: nothing to save yet
        print("interrupted before training started", flush=True)
        raise SystemExit(cli.EXIT_INTERRUPTED) from None
    return envs, eval_tracks, port


class Run:
    """Everything around one run's training loop: the env, the run directory and its TensorBoard
    log, seeding, the progress line, periodic evaluation and checkpoints, and how the run ends.

    A script builds one, trains inside ``with run.stopping():`` and ends with ``run.finish``.
    """

    def __init__(self, args: RunArgs, prog: str, algo: str, end_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.args, self.prog, self.algo = args, prog, algo
        args.exp_name = args.exp_name or prog.removesuffix(".py")
        self.end_step = end_step or args.total_timesteps  # the step the loop ends at (ETA)
        self.checkpoint = read_checkpoint(args.resume, prog, algo) if args.resume else None
        if self.checkpoint:
            args.save_model = True  # a resumed run keeps its checkpoint up to date
        self.start_step = self.checkpoint["global_step"] if self.checkpoint else 0
        # env setup first: the URL a v0 game dials, ws://host:8000/ws/<modelId>, names the run
        self.envs, self.eval_tracks, self.port = make_envs(args, prog, self.start_step)
        self.eval_envs = None
        if self.checkpoint:
            self.run_name = self.checkpoint["run_name"]
        else:
            model_id = self.envs.session.model_id
            self.run_name = f"{model_id + '__' if model_id else ''}{args.exp_name}__{args.seed}__{int(time.time())}"
        self.run_dir = f"runs/{self.run_name}"
        self.checkpoint_path = args.resume or f"{self.run_dir}/checkpoint.pt"
        if args.wandb:
            try:
                import wandb
            except ImportError:
                cli.fail(prog, "--wandb logs to Weights & Biases: pip install wandb")
            wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                       config=vars(args), name=self.run_name, save_code=True, resume="allow")  # fmt: skip
        try:
            self.writer = SummaryWriter(self.run_dir, purge_step=self.start_step if self.checkpoint else None)
        except OSError as error:
            cli.fail(prog, f"cannot write the run directory {self.run_dir} ({error.strerror or error})")
        table = "\n".join([f"|{key}|{value}|" for key, value in vars(args).items()])
        self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table, self.start_step)
        self.rng = self._seed()
        self.num_envs = self.envs.num_envs
        self.obs_dim = int(np.prod(self.envs.single_observation_space.shape))
        self.act_dim = int(np.prod(self.envs.single_action_space.shape))
        self.num_rays = self.envs.game.num_rays  # the game's (handshake); the rest of a frame: nitro, speed, reverse
        self.episodes: dict[str, list[np.ndarray]] = {key: [] for key in EPISODE_KEYS}
        self.next_save = self.start_step + args.save_every
        self.next_eval = self.start_step + args.eval_every if args.eval_every else None
        self.stop: GracefulStop | None = None  # Ctrl-C and SIGTERM are the run's inside stopping()
        self.reason = None  # why the loop ended: "finished", "interrupted", "the game was lost ..."
        self.saved = None  # what the last line says about the checkpoint
        self.introduce()

    def _seed(self) -> np.random.Generator:
        """Seed Python, numpy and torch; the numpy generator is the algorithm's (shuffling, sampling)."""
        import torch

        random.seed(self.args.seed)
        rng = np.random.default_rng(self.args.seed)
        torch.manual_seed(self.args.seed)
        torch.set_num_threads(self.args.torch_threads)
        return rng

    def introduce(self) -> None:
        """Say what runs where, and where to look."""
        args, game = self.args, self.envs.game
        games = len(self.envs.session.bridge.games) if self.envs.session.bridge is not None else 1
        if args.no_sim:
            where = f"{game.game} (protocol v{game.protocol}, {game.mode}) from ws://{args.host}:{self.port}"
            if games > 1:
                where += f" ({games} games so far)"
        else:
            how = "in this process" if args.sim == "inprocess" else "over a loopback WebSocket"
            where = (
                f"the simulator {how} ({args.dynamics} car, {args.mode}{f', {games} processes' if games > 1 else ''})"
            )
        if game.track is not None:  # the game owns its track (capability game_tracks)
            what = f"the game's own track {game.track['name']} ({game.track['length']:.0f} studs)"
        else:
            what = f"track seeds {args.track_seeds}" if args.track_seeds else "generated training tracks"
            if args.track_file:
                what += f" and yours ({args.track_mix:.0%} of draws: {' '.join(args.track_file)})"
            if args.track_change_steps:
                what += f", new every {args.track_change_steps} steps"
        print(f"{self.prog}: {self.algo.upper()} on {where} | {args.num_agents} cars x {args.num_venvs} venvs"
              f" | {what} | {args.total_timesteps:,} agent-steps", flush=True)  # fmt: skip
        print(f"run directory {self.run_dir} (watch: tensorboard --logdir runs)", flush=True)

    def resumed(self, note: str = "") -> dict:
        """Restore the RNG states of the checkpoint resumed from; its ``extra`` for the algorithm's state."""
        import torch

        extra = self.checkpoint["extra"]
        torch.set_rng_state(extra["torch_rng"])
        self.rng.bit_generator.state = extra["numpy_rng"]
        print(f"resumed {self.run_name} at step {self.start_step} from {self.args.resume}{note}", flush=True)
        return extra

    def record_episodes(self, infos: dict) -> None:
        if "_episode" in infos:
            mask = infos["_episode"]
            for key in self.episodes:
                self.episodes[key].append(np.asarray(infos["episode"][key])[mask])

    def progress(self, global_step: int, scalars: dict[str, float], note: str = "") -> None:
        """The progress line and its TensorBoard points: SPS, the algorithm's ``scalars``, finished episodes."""
        sps = int((global_step - self.start_step) / (time.time() - self.start_time))
        for key, value in {"charts/SPS": sps, **scalars}.items():
            self.writer.add_scalar(key, value, global_step)
        line = f"step {global_step}/{self.args.total_timesteps} | {sps} SPS"
        if self.episodes["r"]:
            ep = {key: np.concatenate(value) for key, value in self.episodes.items()}
            for key, tag in (("r", "episodic_return"), ("l", "episodic_length"), ("laps", "laps"),
                             ("progress", "progress"), ("crashed", "crash_rate")):  # fmt: skip
                self.writer.add_scalar(f"charts/{tag}", ep[key].mean(), global_step)
            lap_times = ep["lap_time"][np.isfinite(ep["lap_time"])]
            if len(lap_times):
                self.writer.add_scalar("charts/lap_time", lap_times.mean(), global_step)
            line += f" | return {ep['r'].mean():.1f} | laps {ep['laps'].mean():.2f} | crash {ep['crashed'].mean():.2f}"
            self.episodes = {key: [] for key in EPISODE_KEYS}
        eta = (self.end_step - global_step) / max(sps, 1)
        print(f"{line}{note} | ETA {format_seconds(eta)}", flush=True)
        if not self.introduced_duration and global_step > self.start_step:
            self.introduced_duration = True
            print(f"expected duration {format_seconds((self.end_step - self.start_step) / max(sps, 1))} at {sps:,}"
                  " agent-steps/s (evaluations add to it)", flush=True)  # fmt: skip

    def periodic(self, global_step: int, last: bool, agent, checkpoint: Callable[[], dict]) -> None:
        """The held-out evaluation and the checkpoint, each when due (and both at the ``last`` step)."""
        if self.next_eval is not None and (global_step >= self.next_eval or last):
            self.next_eval = global_step + self.args.eval_every
            self.evaluate(global_step, agent)
        if self.args.save_model and (global_step >= self.next_save or last):
            self.next_save = global_step + self.args.save_every
            self.save(global_step, checkpoint)

    def evaluate(self, global_step: int, agent) -> None:
        from rbxenv import HELDOUT_TRACK_SEEDS, make_vec_env

        args = self.args
        if self.eval_envs is None:
            # The held-out evaluation always runs on the embedded simulator in lockstep:
            # deterministic, and it needs no second game even when training on Roblox.
            self.eval_envs = make_vec_env(
                num_agents=1,
                num_venvs=len(self.eval_tracks) if self.eval_tracks else args.eval_episodes,
                frame_stack=args.frame_stack,
                track_change_steps=None,
                start="grid",
                track_seeds=list(HELDOUT_TRACK_SEEDS)[: args.eval_episodes],
                tracks=self.eval_tracks,
                sim_seed=args.seed,
                dynamics=args.dynamics,  # the car it trains on
            )
        if self.eval_envs.single_observation_space.shape != self.envs.single_observation_space.shape:
            print("eval: skipped (the game's observation differs from the simulator's)", flush=True)
            self.next_eval = None
            return
        t0 = time.time()
        result = evaluate(agent, self.eval_envs, seed=args.seed, record=args.capture_video)
        for key in ("lap_completion", "crash_rate", "lap_time", "progress"):
            self.writer.add_scalar(f"eval/{key}", result[key], global_step)
        if args.capture_video:
            save_eval_video(self.eval_envs, result["poses"], self.run_dir, global_step, self.writer)
        print(
            f"eval on {self.eval_envs.session.num_venvs} {'given' if self.eval_tracks else 'held-out'} tracks:"
            f" lap completion {result['lap_completion']:.0%} | crash rate {result['crash_rate']:.0%}"
            f" | lap time {cli.figure(result['lap_time'], '.1f', ' s')} | progress {result['progress']:.2f} laps"
            f" | {format_seconds(t0 - self.run_start)} into the run (eval took {time.time() - t0:.1f} s)",
            flush=True,
        )
        self.start_time += time.time() - t0  # SPS counts training time only

    def save(self, step: int, checkpoint: Callable[[], dict]) -> None:
        """Write the algorithm's ``checkpoint()`` (model, optimizer, extra, policy) as the model of ``step``."""
        import torch

        state = checkpoint()
        state["extra"].update(torch_rng=torch.get_rng_state(), numpy_rng=self.rng.bit_generator.state)
        write_checkpoint(self.checkpoint_path, {
            "format": CHECKPOINT_FORMAT, "algo": self.algo, "args": vars(self.args), "global_step": int(step),
            "run_name": self.run_name, **state,
        })  # fmt: skip

    @contextmanager
    def stopping(self):
        """The training loop's frame: Ctrl-C, SIGTERM, a lost or silent game or a failed checkpoint end
        it (the reason is kept for ``finish``); the envs and the log are closed whatever happens."""
        from rbxenv import BridgeClosed

        self.start_time = self.run_start = time.time()
        self.introduced_duration = False
        self.stop = GracefulStop()
        try:
            yield self
            self.reason = "finished"
        except KeyboardInterrupt:
            self.reason = "interrupted"
        except BridgeClosed as error:
            # Ctrl-C in a terminal also stops the embedded simulator (same process group).
            self.reason = "interrupted" if self.stop.requested else f"the game was lost ({error})"
        except TimeoutError as error:  # the game is connected but stopped answering (paused, hung)
            self.reason = f"the game stopped answering ({error})"
        except CheckpointError as error:  # a periodic checkpoint (full disk, permissions)
            self.reason, self.saved = str(error), ""
        finally:
            self.stop.restore()
            self.envs.close()
            if self.eval_envs is not None:
                self.eval_envs.close()
            self.writer.close()

    def finish(self, step: int, checkpoint: Callable[[], dict]) -> str:
        """The run's last line. Finished: the checkpoint's path ("" with --no-save-model). Interrupted or
        failed: save what was learned (the model of ``step``), say where, exit 128 + signal (Ctrl-C: 130) or 1."""
        if self.reason == "finished":
            if self.args.save_model:
                print(f"finished at step {step}; checkpoint: {self.checkpoint_path}", flush=True)
                return self.checkpoint_path
            print(f"finished at step {step} (--no-save-model: nothing was kept)", flush=True)
            return ""
        if self.saved is None and step > 0:  # (saved is "" when saving is what failed)
            try:
                self.save(step, checkpoint)
                self.saved = f"; checkpoint: {self.checkpoint_path} (continue: --resume {self.checkpoint_path})"
            except CheckpointError as error:
                self.saved = f"; {error}"
        elif self.saved is None:
            self.saved = "; nothing was learned, so no checkpoint"
        if self.reason != "interrupted":
            cli.fail(self.prog, f"{self.reason} at step {step}{self.saved}")
        print(f"{self.reason} at step {step}{self.saved}", flush=True)
        raise SystemExit(128 + self.stop.signum)
