"""SAC for Roblox racing: train AI drivers on the embedded headless simulator or a live Roblox game.

    python sac_continuous.py                                  # embedded simulator, nothing else needed
    python sac_continuous.py --no-sim                         # wait for Roblox Studio on ws://127.0.0.1:8000
    python sac_continuous.py --resume runs/<run>/checkpoint.pt  # carry on where a run stopped
    tensorboard --logdir runs

Single-file, CleanRL style (after CleanRL's sac_continuous_action.py): read it top to bottom. It
shares no code with ppo_continuous.py on purpose, so either file can be copied and changed alone.
One vector slot per car (``make_vec_env``); every car of every venv feeds one replay buffer.

- Soft Actor-Critic: twin Q networks with Polyak-averaged targets, a tanh-squashed Gaussian actor
  (log-prob corrected for the tanh), automatic entropy tuning (target entropy -act_dim).
- Update-to-data ratio: ``--utd`` is gradient steps per *agent-step* (one car, one decision), so it
  means the same whatever the number of cars. Fractions accumulate: with 25 cars, ``--utd 0.04``
  is one gradient step per vector step, the default 0.25 is 6.25. Each gradient step samples
  ``--batch-size`` transitions. On this simulator gradient steps, not the game, bound the speed; the
  default reached 90% held-out lap completion after 25k agent-steps (under a minute) where 0.04
  needed 200k (BENCHMARKS.md, "SAC"). In real time (Roblox: 15 decisions/s) the
  game does not wait for the updates: lower ``--utd`` if the cars drive on stale actions.
- Bootstrapping: a crash / stuck / wrong-way termination ends the return (done = terminated); a
  truncation (time limit, track change) does not, and its transition stores the episode's real last
  observation (``infos["final_obs"]``), not the first observation of the next episode.
- Observation normalisation lives INSIDE the actor (buffers ``obs_mean`` / ``obs_var``) and is applied
  to the critics' inputs too: norm = clip((obs - mean) / sqrt(var + eps), -clip, clip). The buffer
  keeps RAW observations and normalises each sampled batch with the current statistics, so a batch is
  always self-consistent. The statistics are updated from every new transition during the first
  ``--norm-obs-steps`` agent-steps and then FROZEN: they see the policy's own driving (not only the
  random warm-up, where the car barely moves and the velocity variance is tiny), yet afterwards the
  input scaling no longer moves under the critics, whose targets would otherwise drift as the meaning
  of every stored sample changed. They are saved with the checkpoint and exported as they are.
- Checkpoints use the shared format "rbxenv-checkpoint-v1" (see ``save_checkpoint``), which
  ``export_onnx.py`` turns into ONNX / Luau; the exported policy is tanh(mean). The replay buffer is
  NOT saved (up to ~400 MB): a resumed run refills it for ``--learning-starts`` agent-steps with its
  current policy (no random actions) before updating again. Everything else (networks, targets,
  optimisers, entropy coefficient, observation statistics, RNG states, step counters) is saved.
- Held-out evaluation: the deterministic policy tanh(mean) drives one car per held-out track (tracks
  never used in training) from the start grid: lap completion, crash rate, lap time.
- Ctrl-C / SIGTERM / a lost game: the run saves a checkpoint, closes the env and says where it is
  (exit code 130 / 143 / 1; bad flags exit 2 before torch loads: see ``rbxenv/cli.py``).
"""

from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass
from typing import Literal

from rbxenv import cli
from rbxenv.checkpoint import CHECKPOINT_FORMAT, probe_observations
from rbxenv.protocol import DEFAULT_PORT

PROG = "sac_continuous.py"
ACTION_NAMES = ["throttle", "steering", "nitro"]
LOG_STD_MAX = 2.0
LOG_STD_MIN = -5.0


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (first part of the run name)"""
    seed: int = 1
    """seed of torch, numpy, the track draws and the simulator"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    torch_threads: int = 1
    """torch CPU threads (1 is fastest on small machines: the simulator needs a core too)"""
    track: bool = False
    """if toggled, also log to Weights & Biases (needs `pip install wandb`)"""
    wandb_project_name: str = "rbxenv"
    """the wandb project name"""
    wandb_entity: str | None = None
    """the entity (team) of the wandb project"""

    # Game / environment
    num_agents: int = 5
    """cars per venv (they race each other; venvs never interact)"""
    num_venvs: int = 5
    """venvs, each with its own track; every step adds num_agents * num_venvs transitions"""
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
    no_sim: bool = False
    """do not start the embedded simulator: wait for a game (Roblox Studio) on --host/--port"""
    host: str = "127.0.0.1"
    """address the trainer listens on (the game connects to it)"""
    port: int | None = None
    """port the trainer listens on (default: 8000 with --no-sim, where the seed's places dial, any free port with --sim subprocess)"""
    mode: Literal["lockstep", "realtime"] = "lockstep"
    """embedded simulator stepping: "lockstep" (one decision per step) or "realtime" (15 Hz on its own)"""
    wait_timeout: float = 300.0
    """with --no-sim: seconds to wait for the game to connect"""

    # Algorithm
    total_timesteps: int = 200_000
    """total agent-steps (cars x steps) of the run"""
    buffer_size: int = 1_000_000
    """replay memory size in transitions (agent-steps)"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """target smoothing coefficient (Polyak averaging)"""
    batch_size: int = 256
    """transitions sampled from the replay memory per gradient step"""
    learning_starts: int = 5_000
    """agent-steps of uniformly random actions before learning starts"""
    utd: float = 0.25
    """update-to-data ratio: gradient steps per agent-step (fractions accumulate; 25 cars x 0.25 = 6.25 per vector step)"""
    policy_lr: float = 3e-4
    """the learning rate of the policy network optimizer"""
    q_lr: float = 1e-3
    """the learning rate of the Q network optimizer"""
    policy_frequency: int = 2
    """actor (and alpha) updates happen every this many gradient steps, that many at once (delayed, TD3 style)"""
    target_network_frequency: int = 1
    """the frequency (in gradient steps) of the target network updates"""
    alpha: float = 0.2
    """entropy regularization coefficient (the initial value with --autotune)"""
    autotune: bool = True
    """automatic tuning of the entropy coefficient (target entropy -act_dim)"""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """hidden layer widths of the actor and of each Q network"""
    norm_obs: bool = True
    """normalise observations with running statistics kept inside the model"""
    norm_obs_steps: int = 50_000
    """agent-steps during which the observation statistics are updated; then they freeze (-1: never)"""

    # Checkpoints, evaluation, video, logging
    save_model: bool = True
    """save checkpoints (every --save-every steps and at the end) to runs/{run_name}/checkpoint.pt; with --no-save-model only an interrupted run saves (so no work is lost)"""
    save_every: int = 50_000
    """agent-steps between periodic checkpoints (with --save-model)"""
    resume: str | None = None
    """continue the run of this checkpoint (same run dir; step, networks, optimizers, alpha carry on; the buffer refills)"""
    eval_every: int = 25_000
    """agent-steps between held-out evaluations (0: never; one also runs at the end)"""
    eval_episodes: int = 10
    """held-out tracks per evaluation (one car, one episode each, from the start grid)"""
    capture_video: bool = False
    """at each evaluation, save a top-down GIF under runs/{run_name}/videos/ and a trajectory picture"""
    log_every: int = 5_000
    """agent-steps between progress lines and TensorBoard points"""


RULES = {
    "--torch-threads": cli.at_least(1),
    "--num-agents": cli.at_least(1),
    "--num-venvs": cli.at_least(1),
    "--frame-stack": cli.at_least(1),
    "--track-change-steps": cli.at_least(0),
    "--track-seeds": cli.at_least(0),
    "--port": cli.between(0, 65535),
    "--wait-timeout": cli.above(0),
    "--total-timesteps": cli.at_least(1),
    "--buffer-size": cli.at_least(1),
    "--gamma": cli.between(0, 1),
    "--tau": cli.between(0, 1),
    "--batch-size": cli.at_least(1),
    "--learning-starts": cli.at_least(0),
    "--utd": cli.above(0),
    "--policy-lr": cli.above(0),
    "--q-lr": cli.above(0),
    "--policy-frequency": cli.at_least(1),
    "--target-network-frequency": cli.at_least(1),
    "--alpha": cli.at_least(0),
    "--hidden-sizes": cli.at_least(1),
    "--norm-obs-steps": cli.at_least(-1),
    "--save-every": cli.at_least(1),
    "--resume": cli.readable_file,
    "--eval-every": cli.at_least(0),
    "--eval-episodes": cli.between(1, cli.HELDOUT_TRACKS),
    "--log-every": cli.at_least(1),
}


def check_args(args: Args) -> Args:
    """Refuse bad values in one line (exit code 2) before any work starts."""
    cli.check(PROG, args, RULES)
    return args


def load_checkpoint(path: str) -> dict:
    """A SAC checkpoint to resume from, or one clear line saying why it cannot be used."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        cli.refuse(PROG, f"cannot resume: {path} does not exist")
    except Exception as error:  # truncated or corrupt file, not a torch file at all
        cli.refuse(PROG, f"cannot resume: {path} is not a readable checkpoint ({type(error).__name__})")
    if (
        not isinstance(checkpoint, dict)
        or checkpoint.get("format") != CHECKPOINT_FORMAT
        or checkpoint.get("algo") != "sac"
    ):
        cli.refuse(PROG, f"cannot resume: {path} is not a SAC {CHECKPOINT_FORMAT} checkpoint")
    return checkpoint


def parse_args() -> Args:
    """tyro CLI; with --resume the checkpoint's arguments are the defaults, flags given override them."""
    args = check_args(cli.tyro_cli(Args, PROG))
    if args.resume:
        saved = load_checkpoint(args.resume).get("args", {})
        known = {key: value for key, value in saved.items() if key in Args.__dataclass_fields__}
        known["resume"] = args.resume
        args = check_args(cli.tyro_cli(Args, PROG, default=Args(**known)))
    return args


if __name__ == "__main__":
    ARGS = parse_args()  # bad flags are refused here, in a second: before torch and the simulator load

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.utils.tensorboard import SummaryWriter

from rbxenv import HELDOUT_TRACK_SEEDS, BridgeClosed, make_vec_env, tracks

# ====================================================================================================
# Model


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int | None = None) -> nn.Sequential:
    """Linear + ReLU per hidden width, then a last Linear to ``out_dim`` (None: no last layer)."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    if out_dim is not None:
        layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class SoftQNetwork(nn.Module):
    """Q(s, a) on NORMALISED observations (the actor owns the normaliser)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, hidden, 1)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, a], 1))


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy. ``trunk`` + ``fc_mean`` is the exported deterministic MLP."""

    OBS_EPS = 1e-8
    OBS_CLIP = 10.0

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        # Running observation statistics (parallel variance), saved with the weights.
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_var", torch.ones(obs_dim))
        self.register_buffer("obs_count", torch.tensor(1e-4, dtype=torch.float64))
        self.trunk = mlp(obs_dim, hidden)
        width = hidden[-1] if hidden else obs_dim
        self.fc_mean = nn.Linear(width, act_dim)
        self.fc_logstd = nn.Linear(width, act_dim)

    @torch.no_grad()
    def update_obs_stats(self, obs: torch.Tensor) -> None:
        batch_mean, batch_var, n = obs.mean(0).double(), obs.var(0, unbiased=False).double(), obs.shape[0]
        delta, total = batch_mean - self.obs_mean.double(), self.obs_count + n
        m2 = self.obs_var.double() * self.obs_count + batch_var * n + delta**2 * self.obs_count * n / total
        self.obs_mean.copy_(self.obs_mean.double() + delta * n / total)
        self.obs_var.copy_(m2 / total)
        self.obs_count.fill_(total)

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        # Exactly what export_onnx.py reproduces from the checkpoint's "policy" entry.
        return ((obs - self.obs_mean) / torch.sqrt(self.obs_var + self.OBS_EPS)).clamp(-self.OBS_CLIP, self.OBS_CLIP)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised observations -> (mean, log_std) of the pre-tanh Gaussian."""
        h = self.trunk(x)
        log_std = torch.tanh(self.fc_logstd(h))
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)  # from CleanRL / SpinUp
        return self.fc_mean(h), log_std

    def get_action(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised observations -> (sampled action, its log-prob, deterministic action)."""
        mean, log_std = self(x)
        std = log_std.exp()
        u = mean + std * torch.randn_like(mean)  # reparameterisation trick
        action = torch.tanh(u)
        # log N(u; mean, std) minus log|d tanh(u)/du| = log(1 - tanh(u)^2), in its stable form.
        log_prob = -0.5 * ((u - mean) / std) ** 2 - log_std - 0.5 * np.log(2 * np.pi)
        log_prob = log_prob - 2.0 * (np.log(2.0) - u - F.softplus(-2.0 * u))
        return action, log_prob.sum(1, keepdim=True), torch.tanh(mean)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Raw observations -> actions in [-1, 1] (deterministic: tanh(mean), the exported policy)."""
        action, _, mean_action = self.get_action(self.normalize(obs))
        return mean_action if deterministic else action


class ReplayBuffer:
    """Ring buffer of raw transitions in numpy (obs, next_obs, action, reward, terminated)."""

    def __init__(self, size: int, obs_dim: int, act_dim: int, rng: np.random.Generator):
        self.size, self.rng = size, rng
        self.obs = np.zeros((size, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((size, obs_dim), dtype=np.float32)
        self.actions = np.zeros((size, act_dim), dtype=np.float32)
        self.rewards = np.zeros(size, dtype=np.float32)
        self.dones = np.zeros(size, dtype=np.float32)
        self.pos, self.full = 0, False

    def __len__(self) -> int:
        return self.size if self.full else self.pos

    def add(self, obs, next_obs, actions, rewards, dones) -> None:
        idx = (self.pos + np.arange(len(obs))) % self.size
        self.obs[idx], self.next_obs[idx], self.actions[idx] = obs, next_obs, actions
        self.rewards[idx], self.dones[idx] = rewards, dones
        self.full = self.full or self.pos + len(obs) >= self.size
        self.pos = (self.pos + len(obs)) % self.size

    def sample(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        idx = self.rng.integers(0, len(self), batch_size)
        return tuple(
            torch.from_numpy(a[idx])
            for a in (self.obs, self.next_obs, self.actions, self.rewards[:, None], self.dones[:, None])
        )


# ====================================================================================================
# Checkpoints


def policy_export(actor: Actor, frame_stack: int, num_rays: int) -> dict:
    """The self-describing deterministic actor of a checkpoint (plain tensors and lists only)."""
    obs_dim = actor.obs_mean.shape[0]
    linears = [m for m in actor.trunk if isinstance(m, nn.Linear)] + [actor.fc_mean]
    # What this network really answers, so that export_onnx.py can check the declaration below.
    probe = torch.from_numpy(probe_observations(actor.obs_mean.cpu().numpy(), actor.obs_var.cpu().numpy()))
    probe_actions = actor.act(probe.to(actor.obs_mean.device), deterministic=True)
    return {
        "obs_dim": obs_dim,
        "act_dim": actor.fc_mean.out_features,
        "frame_stack": frame_stack,
        "obs_size": obs_dim // frame_stack,
        "num_rays": num_rays,  # as the game announced it (PROTOCOL.md §3.1)
        "obs_mean": actor.obs_mean.detach().float().clone(),
        "obs_var": actor.obs_var.detach().float().clone(),
        "obs_eps": Actor.OBS_EPS,
        "obs_clip": Actor.OBS_CLIP,
        "layers": [{"weight": m.weight.detach().clone(), "bias": m.bias.detach().clone()} for m in linears],
        "activation": "relu",
        "squash": "tanh",  # action = tanh(mean); the env's action box is [-1, 1], no scale or bias
        "action_names": ACTION_NAMES[: actor.fc_mean.out_features],
        "probe_obs": probe,
        "probe_actions": probe_actions.cpu(),
    }


class CheckpointError(Exception):
    """A checkpoint could not be written: the run ends with one line and exit code 1."""


def save_checkpoint(
    path: str, args: Args, global_step: int, run_name: str, model: dict, optimizer: dict, extra: dict, num_rays: int
) -> None:
    """Shared checkpoint format (PPO and export_onnx.py use it too); written atomically."""
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "algo": "sac",
        "args": vars(args),
        "global_step": int(global_step),
        "run_name": run_name,
        "model": {name: module.state_dict() for name, module in model.items()},
        "optimizer": {name: opt.state_dict() for name, opt in optimizer.items()},
        "extra": extra,
        "policy": policy_export(model["actor"], args.frame_stack, num_rays),
    }
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)  # a crash mid-write never leaves a half checkpoint behind
    except BaseException:
        if os.path.exists(tmp):  # a full disk leaves no partial file behind either
            os.remove(tmp)
        raise


# ====================================================================================================
# Evaluation on held-out tracks


def evaluate(actor: Actor, envs, seed: int = 0, record: bool = False) -> dict:
    """Drive every car of ``envs`` with tanh(mean) until each car has finished one episode.

    Returns lap completion (>= 1 lap in the episode), crash rate, mean time of the first lap (from
    the start grid: comparable with rbxenv.sim.reference; nan if no car lapped), mean progress in
    laps, and with ``record`` the per-step poses of every car (nan once its episode ended).
    """
    obs, _ = envs.reset(seed=seed)
    n = envs.num_envs
    finished = np.zeros(n, dtype=bool)
    laps, crashed, progress, first_lap = np.zeros(n), np.zeros(n, dtype=bool), np.zeros(n), np.full(n, np.nan)
    poses: list[dict] = []
    while not finished.all():
        obs, _, _, _, infos = envs.step(actor.act(torch.as_tensor(obs), deterministic=True).numpy())
        if record:
            poses.append({key: np.where(finished, np.nan, infos[key]) for key in ("x", "y", "speed")})
        lapped = ~finished & np.isnan(first_lap) & (np.nan_to_num(infos["lap"]) >= 1)
        first_lap[lapped] = infos["lap_time"][lapped]
        if "_episode" in infos:
            new, ep = infos["_episode"] & ~finished, infos["episode"]
            laps[new], crashed[new], progress[new] = ep["laps"][new], ep["crashed"][new], ep["progress"][new]
            finished |= new
    timed = first_lap[np.isfinite(first_lap)]
    return {
        "lap_completion": float((laps >= 1).mean()),
        "crash_rate": float(crashed.mean()),
        "lap_time": float(timed.mean()) if len(timed) else float("nan"),
        "progress": float(progress.mean()),
        "first_lap_times": first_lap,
        "poses": poses,
    }


def save_eval_video(envs, poses: list[dict], run_dir: str, global_step: int, writer: SummaryWriter) -> None:
    """GIF of the car on held-out track 0 under runs/{run}/videos/ and its trajectory in TensorBoard."""
    from PIL import Image

    from rbxenv.sim.render import render_trajectories  # lazy: only --capture-video needs the renderer

    spec = envs.session.tracks[envs.session.venv_ids[0]]
    xy = np.array([[p["x"][0], p["y"][0]] for p in poses], dtype=np.float64).reshape(-1, 2)
    speed = np.array([p["speed"][0] for p in poses], dtype=np.float64)
    alive = np.isfinite(xy).all(1)  # poses of car 0 until its episode ended
    xy, speed = xy[alive], speed[alive]
    if spec is None or len(xy) < 2:
        return
    picture = render_trajectories(spec, xy, speed, size=512)
    writer.add_image("eval/trajectory", picture, global_step, dataformats="HWC")
    every = 15  # one frame per second of game time; 100 ms per frame plays it at 10x
    frames = [
        Image.fromarray(render_trajectories(spec, xy[:k], speed[:k], size=256)) for k in range(2, len(xy) + 1, every)
    ]
    frames.append(Image.fromarray(render_trajectories(spec, xy, speed, size=256)))
    os.makedirs(f"{run_dir}/videos", exist_ok=True)
    frames[0].save(
        f"{run_dir}/videos/eval_{global_step}.gif", save_all=True, append_images=frames[1:], duration=100, loop=0
    )


# ====================================================================================================
# Training


class GracefulStop:
    """The first Ctrl-C / SIGTERM asks the loop to stop after this step (checkpoint, close, exit)."""

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


def train(args: Args) -> str:
    """Run SAC with ``args``; returns the path of the last checkpoint (or "" without --save-model)."""
    checkpoint = None
    if args.resume:
        checkpoint = load_checkpoint(args.resume)
        args.save_model = True  # a resumed run keeps its checkpoint up to date

    # env setup (first: the URL a seed game dials, ws://host:8000/ws/<modelId>, names the run)
    try:
        envs = make_vec_env(
            num_agents=args.num_agents,
            num_venvs=args.num_venvs,
            frame_stack=args.frame_stack,
            track_change_steps=args.track_change_steps or None,
            sim=None if args.no_sim else args.sim,
            host=args.host,
            port=args.port if args.port is not None else (DEFAULT_PORT if args.no_sim else 0),
            mode=args.mode,
            start=args.start,
            collisions=args.collisions,
            track_seeds=args.track_seeds,
            track_method=args.track_method,
            tracks=args.track_file,
            track_mix=args.track_mix if args.track_file else 1.0,
            track_difficulty=tracks.difficulty_at(
                args.track_difficulty, (checkpoint["global_step"] if checkpoint else 0) / args.total_timesteps
            ),
            sim_seed=args.seed,
            wait_timeout=args.wait_timeout,
            dynamics=args.dynamics,
        )
        eval_tracks = tracks.load_tracks(args.eval_track_file) if args.eval_track_file else None
        if envs.game.track is not None:  # the game owns its track (capability game_tracks)
            print(f"training on the game's own track {envs.game.track['name']} ({envs.game.track['length']:.0f} studs)")
    except BridgeClosed as error:
        cli.fail(PROG, f"no game to train with: {error}")
    except OSError as error:  # the port is taken
        cli.fail(PROG, str(error))
    except ValueError as error:  # e.g. --host beyond loopback without a token
        cli.refuse(PROG, str(error))
    except KeyboardInterrupt:  # Ctrl-C while waiting for the game: nothing to save yet
        print("interrupted before training started", flush=True)
        raise SystemExit(cli.EXIT_INTERRUPTED) from None
    if checkpoint:
        run_name = checkpoint["run_name"]
    else:
        model_id = envs.session.model_id
        run_name = f"{model_id + '__' if model_id else ''}{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = f"runs/{run_name}"
    checkpoint_path = args.resume or f"{run_dir}/checkpoint.pt"

    if args.track:
        try:
            import wandb
        except ImportError:
            cli.fail(PROG, "--track logs to Weights & Biases: pip install wandb")

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=vars(args), name=run_name, save_code=True, resume="allow")  # fmt: skip
    global_step = checkpoint["global_step"] if checkpoint else 0
    try:
        writer = SummaryWriter(run_dir, purge_step=global_step if checkpoint else None)
    except OSError as error:
        cli.fail(PROG, f"cannot write the run directory {run_dir} ({error.strerror or error})")
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n" + "\n".join([f"|{key}|{value}|" for key, value in vars(args).items()]),
        global_step,
    )

    # seeding
    random.seed(args.seed)
    rng = np.random.default_rng(args.seed)  # replay sampling and warm-up actions
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cpu")  # small MLPs: the CPU is faster than shipping batches to a GPU

    eval_envs = None
    num_envs = envs.num_envs
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    act_dim = int(np.prod(envs.single_action_space.shape))
    num_rays = envs.game.num_rays  # what the game offers (handshake); the rest of obs_size is nitro, speed, reverse
    hidden = tuple(args.hidden_sizes)

    actor = Actor(obs_dim, act_dim, hidden).to(device)
    qf1 = SoftQNetwork(obs_dim, act_dim, hidden).to(device)
    qf2 = SoftQNetwork(obs_dim, act_dim, hidden).to(device)
    qf1_target = SoftQNetwork(obs_dim, act_dim, hidden).to(device)
    qf2_target = SoftQNetwork(obs_dim, act_dim, hidden).to(device)
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    # fused: one kernel for every parameter's update instead of a dozen ops per tensor
    q_optimizer = optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.q_lr, fused=True)
    actor_optimizer = optim.Adam(actor.parameters(), lr=args.policy_lr, fused=True)
    q_params = list(qf1.parameters()) + list(qf2.parameters())
    q_target_params = list(qf1_target.parameters()) + list(qf2_target.parameters())

    # Automatic entropy tuning
    target_entropy = -float(act_dim)
    log_alpha = torch.tensor([float(np.log(args.alpha))], requires_grad=True, device=device)
    a_optimizer = optim.Adam([log_alpha], lr=args.q_lr)
    alpha = log_alpha.exp().item()

    model = {"actor": actor, "qf1": qf1, "qf2": qf2, "qf1_target": qf1_target, "qf2_target": qf2_target}
    optimizers = {"q": q_optimizer, "actor": actor_optimizer, "alpha": a_optimizer}
    grad_steps, update_credit = 0, 0.0
    if checkpoint:
        for name, module in model.items():
            module.load_state_dict(checkpoint["model"][name])
        for name, opt in optimizers.items():
            opt.load_state_dict(checkpoint["optimizer"][name])
        extra = checkpoint["extra"]
        with torch.no_grad():
            log_alpha.copy_(extra["log_alpha"])
        alpha = log_alpha.exp().item()
        grad_steps, update_credit = extra["grad_steps"], extra["update_credit"]
        torch.set_rng_state(extra["torch_rng"])
        rng.bit_generator.state = extra["numpy_rng"]
        print(f"resumed {run_name} at step {global_step} from {args.resume} (replay buffer refills first)", flush=True)

    def save(path: str = checkpoint_path) -> str:
        extra = {
            "log_alpha": log_alpha.detach().clone(),
            "grad_steps": grad_steps,
            "update_credit": update_credit,
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": rng.bit_generator.state,
        }
        try:
            save_checkpoint(path, args, global_step, run_name, model, optimizers, extra, num_rays)
        except OSError as error:  # a full disk, no permission: one line, and the run says what it kept
            raise CheckpointError(
                f"the checkpoint could not be written to {path} ({error.strerror or error})"
            ) from None
        return path

    rb = ReplayBuffer(args.buffer_size, obs_dim, act_dim, rng)
    # Updates begin once the buffer holds learning_starts transitions. A fresh run fills it with
    # uniformly random actions; a resumed run (the buffer is not saved) refills it with its policy.
    random_until = 0 if checkpoint else args.learning_starts
    learn_from = global_step + args.learning_starts

    stop = GracefulStop()
    reason = None  # why the loop ended: "finished", "interrupted", "the game was lost ..."
    saved = None  # what the last line says about the checkpoint
    start_time, start_step = time.time(), global_step
    run_start = start_time  # wall clock of this process, evaluations included
    next_log = global_step + args.log_every
    next_save = global_step + args.save_every
    next_eval = global_step + args.eval_every if args.eval_every else None
    episodes: dict[str, list[np.ndarray]] = {k: [] for k in ("r", "l", "laps", "progress", "lap_time", "crashed")}
    losses: dict[str, float] = {}
    try:
        obs, _ = envs.reset(seed=args.seed + global_step)
        while global_step < args.total_timesteps:
            # ALGO LOGIC: put action logic here
            if global_step < random_until:
                actions = rng.uniform(-1.0, 1.0, (num_envs, act_dim)).astype(np.float32)
            else:
                actions = actor.act(torch.as_tensor(obs)).numpy()

            # TRY NOT TO MODIFY: execute the game and log data.
            next_obs, rewards, terminations, truncations, infos = envs.step(actions)
            global_step += num_envs
            if args.track_difficulty:  # the curriculum: tracks drawn from now on get this difficulty
                envs.session.track_difficulty = tracks.difficulty_at(
                    args.track_difficulty, global_step / args.total_timesteps
                )
            if "_episode" in infos:
                mask = infos["_episode"]
                for key in episodes:
                    episodes[key].append(np.asarray(infos["episode"][key])[mask])

            # TRY NOT TO MODIFY: save data to replay buffer; handle `final_obs`
            # Same-step autoreset: next_obs of a finished car is already the next episode's first
            # observation; the transition must end in the episode's real last observation. Only a
            # termination stops the bootstrap; a truncated episode would have gone on.
            real_next_obs = next_obs  # no copy: rb.add copies into the buffer
            if "_final_obs" in infos:
                real_next_obs = np.where(infos["_final_obs"][:, None], infos["final_obs"], next_obs)
            if not infos.get("lost_step"):  # a step the lost game never answered holds no real transition
                rb.add(obs, real_next_obs, actions, rewards, terminations.astype(np.float32))
            if args.norm_obs and (args.norm_obs_steps < 0 or global_step <= args.norm_obs_steps):
                actor.update_obs_stats(torch.as_tensor(obs))
            obs = next_obs

            # ALGO LOGIC: training.
            if global_step >= learn_from:
                update_credit += args.utd * num_envs
                while update_credit >= 1.0:
                    update_credit -= 1.0
                    grad_steps += 1
                    b_obs, b_next_obs, b_actions, b_rewards, b_dones = rb.sample(args.batch_size)
                    with torch.no_grad():
                        x, next_x = actor.normalize(b_obs), actor.normalize(b_next_obs)
                        next_actions, next_log_pi, _ = actor.get_action(next_x)
                        qf1_next_target = qf1_target(next_x, next_actions)
                        qf2_next_target = qf2_target(next_x, next_actions)
                        min_qf_next_target = torch.min(qf1_next_target, qf2_next_target) - alpha * next_log_pi
                        next_q_value = b_rewards + (1 - b_dones) * args.gamma * min_qf_next_target

                    qf1_a_values = qf1(x, b_actions)
                    qf2_a_values = qf2(x, b_actions)
                    qf1_loss = F.mse_loss(qf1_a_values, next_q_value)
                    qf2_loss = F.mse_loss(qf2_a_values, next_q_value)
                    qf_loss = qf1_loss + qf2_loss

                    # optimize the model
                    q_optimizer.zero_grad()
                    qf_loss.backward()
                    q_optimizer.step()
                    if update_credit < 1.0:  # the last gradient step of this env step: keep for logging
                        losses.update(qf1_values=qf1_a_values.mean().item(), qf2_values=qf2_a_values.mean().item(),
                                      qf1_loss=qf1_loss.item(), qf2_loss=qf2_loss.item(), qf_loss=qf_loss.item() / 2.0)  # fmt: skip

                    if grad_steps % args.policy_frequency == 0:  # TD 3 Delayed update support
                        for p in q_params:  # the actor's loss needs no gradient of the critics' weights
                            p.requires_grad_(False)
                        for _ in range(args.policy_frequency):  # compensate for the delay
                            pi, log_pi, _ = actor.get_action(x)
                            min_qf_pi = torch.min(qf1(x, pi), qf2(x, pi))
                            actor_loss = ((alpha * log_pi) - min_qf_pi).mean()

                            actor_optimizer.zero_grad()
                            actor_loss.backward()
                            actor_optimizer.step()

                            if args.autotune:
                                # the log-probs of the actions just taken (CleanRL samples new ones after
                                # the step: one more actor pass for the same expectation)
                                alpha_loss = (-log_alpha.exp() * (log_pi.detach() + target_entropy)).mean()

                                a_optimizer.zero_grad()
                                alpha_loss.backward()
                                a_optimizer.step()
                                alpha = log_alpha.exp().item()
                                losses["alpha_loss"] = alpha_loss.item()
                        losses["actor_loss"] = actor_loss.item()
                        for p in q_params:
                            p.requires_grad_(True)

                    # update the target networks
                    if grad_steps % args.target_network_frequency == 0:
                        with torch.no_grad():  # target += tau * (param - target), every tensor in one op
                            torch._foreach_lerp_(q_target_params, q_params, args.tau)
            if stop.requested:
                raise KeyboardInterrupt

            last = global_step >= args.total_timesteps
            if global_step >= next_log or last:
                next_log = global_step + args.log_every
                sps = int((global_step - start_step) / (time.time() - start_time))
                writer.add_scalar("charts/SPS", sps, global_step)
                writer.add_scalar("charts/grad_steps", grad_steps, global_step)
                writer.add_scalar("losses/alpha", alpha, global_step)
                for key, value in losses.items():
                    writer.add_scalar(f"losses/{key}", value, global_step)
                line = f"step {global_step}/{args.total_timesteps} | {sps} SPS"
                if episodes["r"]:
                    ep = {key: np.concatenate(value) for key, value in episodes.items()}
                    lap_times = ep["lap_time"][np.isfinite(ep["lap_time"])]
                    writer.add_scalar("charts/episodic_return", ep["r"].mean(), global_step)
                    writer.add_scalar("charts/episodic_length", ep["l"].mean(), global_step)
                    writer.add_scalar("charts/laps", ep["laps"].mean(), global_step)
                    writer.add_scalar("charts/progress", ep["progress"].mean(), global_step)
                    writer.add_scalar("charts/crash_rate", ep["crashed"].mean(), global_step)
                    if len(lap_times):
                        writer.add_scalar("charts/lap_time", lap_times.mean(), global_step)
                    line += f" | return {ep['r'].mean():.1f} | laps {ep['laps'].mean():.2f}"
                    line += f" | crash {ep['crashed'].mean():.2f}"
                    episodes = {key: [] for key in episodes}
                if "qf_loss" in losses:
                    line += f" | q {losses['qf1_values']:.1f} | alpha {alpha:.3f}"
                eta = (args.total_timesteps - global_step) / max(sps, 1)
                print(f"{line} | ETA {format_seconds(eta)}", flush=True)

            if next_eval is not None and (global_step >= next_eval or last):
                next_eval = global_step + args.eval_every
                if eval_envs is None:
                    # The held-out evaluation always runs on the embedded simulator in lockstep:
                    # deterministic, and it needs no second game even when training on Roblox.
                    eval_envs = make_vec_env(
                        num_agents=1,
                        num_venvs=len(eval_tracks) if eval_tracks else args.eval_episodes,
                        frame_stack=args.frame_stack,
                        track_change_steps=None,
                        start="grid",
                        track_seeds=list(HELDOUT_TRACK_SEEDS)[: args.eval_episodes],
                        tracks=eval_tracks,
                        sim_seed=args.seed,
                        dynamics=args.dynamics,  # the car it trains on
                    )
                if eval_envs.single_observation_space.shape != envs.single_observation_space.shape:
                    print("eval: skipped (the game's observation differs from the simulator's)", flush=True)
                    next_eval = None
                else:
                    t0 = time.time()
                    result = evaluate(actor, eval_envs, seed=args.seed, record=args.capture_video)
                    for key in ("lap_completion", "crash_rate", "lap_time", "progress"):
                        writer.add_scalar(f"eval/{key}", result[key], global_step)
                    if args.capture_video:
                        save_eval_video(eval_envs, result["poses"], run_dir, global_step, writer)
                    print(
                        f"eval on {eval_envs.session.num_venvs} {'given' if eval_tracks else 'held-out'} tracks: lap completion {result['lap_completion']:.0%}"
                        f" | crash rate {result['crash_rate']:.0%} | lap time {cli.figure(result['lap_time'], '.1f', ' s')}"
                        f" | progress {result['progress']:.2f} laps | {format_seconds(t0 - run_start)} into the run"
                        f" (eval took {time.time() - t0:.1f} s)",
                        flush=True,
                    )
                    start_time += time.time() - t0  # SPS counts training time only
            if args.save_model and (global_step >= next_save or last):
                next_save = global_step + args.save_every
                save()
        reason = "finished"
    except KeyboardInterrupt:
        reason = "interrupted"
    except BridgeClosed as error:
        # Ctrl-C in a terminal also stops the embedded simulator (same process group).
        reason = "interrupted" if stop.requested else f"the game was lost ({error})"
    except TimeoutError as error:  # the game is connected but stopped answering (paused, hung)
        reason = f"the game stopped answering ({error})"
    except CheckpointError as error:  # a periodic checkpoint (full disk, permissions)
        reason, saved = str(error), ""
    finally:
        stop.restore()
        envs.close()
        if eval_envs is not None:
            eval_envs.close()
        writer.close()
    if reason == "finished":
        if args.save_model:
            print(f"finished at step {global_step}; checkpoint: {checkpoint_path}", flush=True)
            return checkpoint_path
        print(f"finished at step {global_step} (--no-save-model: nothing was kept)", flush=True)
        return ""
    # Interrupted or failed: keep what was learned, say where, exit 128 + signal (Ctrl-C: 130) or 1.
    if saved is None and global_step > 0:  # (saved is "" when saving is what failed)
        try:
            save()
            saved = f"; checkpoint: {checkpoint_path} (continue: --resume {checkpoint_path})"
        except CheckpointError as error:
            saved = f"; {error}"
    elif saved is None:
        saved = "; nothing was learned, so no checkpoint"
    if reason != "interrupted":
        cli.fail(PROG, f"{reason} at step {global_step}{saved}")
    print(f"{reason} at step {global_step}{saved}", flush=True)
    raise SystemExit(128 + stop.signum)


if __name__ == "__main__":
    train(ARGS)
