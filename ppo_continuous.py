"""PPO for Roblox racing: train AI drivers on the embedded headless simulator or a live Roblox game.

    python ppo_continuous.py --num-agents 5                     # embedded simulator, nothing else needed
    python ppo_continuous.py --no-sim                           # wait for Roblox Studio on ws://127.0.0.1:8000
    python ppo_continuous.py --resume runs/<run>/checkpoint.pt  # carry on where a run stopped
    tensorboard --logdir runs

Single-file, CleanRL style (after CleanRL's ppo_continuous_action.py): read it top to bottom.
One vector slot per car (``make_vec_env``); every car of every venv feeds the same policy.

- Policy: Gaussian with a state-independent log-std; separate actor and critic MLPs (tanh).
- Observation normalisation lives INSIDE the model (running mean/var buffers), so a saved or
  exported policy takes raw game observations: norm = clip((obs - mean) / sqrt(var + eps), -clip, clip).
- Truncated episodes (time limit, track change) bootstrap from V(final_obs); crashes do not.
- Checkpoints use the shared format "rbxenv-checkpoint-v1" (see ``save_checkpoint``), which
  ``export_onnx.py`` turns into ONNX / Luau.
- Held-out evaluation: the deterministic policy (mean action) drives one car per held-out track
  (tracks never used in training) from the start grid: lap completion, crash rate, lap time.
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

PROG = "ppo_continuous.py"
ACTION_NAMES = ["throttle", "steering", "nitro"]


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
    num_venvs: int = 16
    """venvs, each with its own track; the policy sees num_agents * num_venvs cars per step"""
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
    total_timesteps: int = 5_000_000
    """total agent-steps (cars x steps) of the run"""
    learning_rate: float = 3e-4
    """the learning rate of the optimizer"""
    num_steps: int = 64
    """steps per car per rollout (the rollout holds num_steps * num_envs transitions)"""
    anneal_lr: bool = True
    """toggle learning rate annealing (linear to 0 at total_timesteps)"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 4
    """the number of mini-batches per epoch"""
    update_epochs: int = 4
    """the K epochs to update the policy"""
    norm_adv: bool = True
    """toggles advantages normalization"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """toggles whether or not to use a clipped loss for the value function, as per the paper"""
    ent_coef: float = 0.0
    """coefficient of the entropy"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    target_kl: float | None = None
    """stop the update epochs early once the approximate KL exceeds this (None: never)"""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """hidden layer widths of the actor and of the critic"""
    init_logstd: float = -0.5
    """initial log standard deviation of the Gaussian policy"""
    norm_obs: bool = True
    """normalise observations with running statistics kept inside the model"""
    norm_reward: bool = True
    """scale rewards by the running std of the discounted return (CleanRL / gymnasium style)"""

    # Checkpoints, evaluation, video
    save_model: bool = True
    """save checkpoints (every --save-every steps and at the end) to runs/{run_name}/checkpoint.pt; with --no-save-model only an interrupted run saves (so no work is lost)"""
    save_every: int = 500_000
    """agent-steps between periodic checkpoints (with --save-model)"""
    resume: str | None = None
    """continue the run of this checkpoint (same run dir; step, optimizer and normalisation carry on)"""
    eval_every: int = 500_000
    """agent-steps between held-out evaluations (0: never; one also runs at the end)"""
    eval_episodes: int = 10
    """held-out tracks per evaluation (one car, one episode each, from the start grid)"""
    capture_video: bool = False
    """at each evaluation, save a top-down GIF under runs/{run_name}/videos/ and a trajectory picture"""

    # filled in at runtime
    batch_size: int = 0
    """the batch size (computed in runtime)"""
    minibatch_size: int = 0
    """the mini-batch size (computed in runtime)"""
    num_iterations: int = 0
    """the number of iterations (computed in runtime)"""


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
    "--learning-rate": cli.above(0),
    "--num-steps": cli.at_least(1),
    "--gamma": cli.between(0, 1),
    "--gae-lambda": cli.between(0, 1),
    "--num-minibatches": cli.at_least(1),
    "--update-epochs": cli.at_least(1),
    "--clip-coef": cli.above(0),
    "--ent-coef": cli.finite,
    "--vf-coef": cli.at_least(0),
    "--max-grad-norm": cli.above(0),
    "--target-kl": cli.above(0),
    "--hidden-sizes": cli.at_least(1),
    "--init-logstd": cli.finite,
    "--save-every": cli.at_least(1),
    "--resume": cli.readable_file,
    "--eval-every": cli.at_least(0),
    "--eval-episodes": cli.between(1, cli.HELDOUT_TRACKS),
}


def check_args(args: Args) -> Args:
    """Refuse bad values in one line (exit code 2) before any work starts."""
    cli.check(PROG, args, RULES)
    batch = args.num_agents * args.num_venvs * args.num_steps
    if args.num_minibatches > batch:
        cli.refuse(PROG, f"--num-minibatches {args.num_minibatches}: allowed: 1 to {batch} (the rollout's transitions: num_agents x num_venvs x num_steps)")  # fmt: skip
    return args


def load_checkpoint(path: str) -> dict:
    """A PPO checkpoint to resume from, or one clear line saying why it cannot be used."""
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
        or checkpoint.get("algo") != "ppo"
    ):
        cli.refuse(PROG, f"cannot resume: {path} is not a PPO {CHECKPOINT_FORMAT} checkpoint")
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
import torch.optim as optim
from torch.utils.tensorboard import SummaryWriter

from rbxenv import HELDOUT_TRACK_SEEDS, BridgeClosed, make_vec_env, tracks

LOG_2PI = float(np.log(2 * np.pi))

# ====================================================================================================
# Model


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int, out_std: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [layer_init(nn.Linear(in_dim, width)), nn.Tanh()]
        in_dim = width
    layers.append(layer_init(nn.Linear(in_dim, out_dim), std=out_std))
    return nn.Sequential(*layers)


def merge_moments(mean, var, count, batch_mean, batch_var, n):
    """Running (mean, var, count) merged with a batch's (parallel variance, Chan et al.); numpy or torch."""
    delta, total = batch_mean - mean, count + n
    m2 = var * count + batch_var * n + delta**2 * count * n / total
    return mean + delta * n / total, m2 / total, total


class Agent(nn.Module):
    OBS_EPS = 1e-8
    OBS_CLIP = 10.0

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (64, 64), init_logstd: float = 0.0):
        super().__init__()
        # Running observation statistics (Welford / parallel variance), saved with the weights.
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_var", torch.ones(obs_dim))
        self.register_buffer("obs_count", torch.tensor(1e-4, dtype=torch.float64))
        self.critic = mlp(obs_dim, hidden, 1, out_std=1.0)
        self.actor_mean = mlp(obs_dim, hidden, act_dim, out_std=0.01)
        self.actor_logstd = nn.Parameter(torch.full((1, act_dim), float(init_logstd)))

    @torch.no_grad()
    def update_obs_stats(self, obs: torch.Tensor) -> None:
        batch = (obs.mean(0).double(), obs.var(0, unbiased=False).double(), obs.shape[0])
        mean, var, count = merge_moments(self.obs_mean.double(), self.obs_var.double(), self.obs_count, *batch)
        self.obs_mean.copy_(mean)
        self.obs_var.copy_(var)
        self.obs_count.fill_(count)

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        # Exactly what export_onnx.py reproduces from the checkpoint's "policy" entry.
        return ((obs - self.obs_mean) / torch.sqrt(self.obs_var + self.OBS_EPS)).clamp(-self.OBS_CLIP, self.OBS_CLIP)

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(self.normalize(obs))

    def get_action_and_value(self, obs: torch.Tensor, action: torch.Tensor | None = None, normalized: bool = False):
        """(action, its log-prob, entropy, value) of raw observations (or already ``normalized`` ones).

        The diagonal Gaussian written out (what torch.distributions.Normal computes, without its
        argument checks and broadcasting: a third of the update's Python time on minibatches)."""
        x = obs if normalized else self.normalize(obs)
        action_mean = self.actor_mean(x)
        logstd = self.actor_logstd
        if action is None:
            action = torch.normal(action_mean, logstd.exp().expand_as(action_mean))
        z = (action - action_mean) * torch.exp(-logstd)
        logprob = -0.5 * (z * z).sum(1) - (logstd.sum() + 0.5 * LOG_2PI * z.shape[1])
        entropy = (0.5 + 0.5 * LOG_2PI) * z.shape[1] + logstd.sum()  # the same for every row
        return action, logprob, entropy.expand(z.shape[0]), self.critic(x)

    @torch.no_grad()
    def rollout_policy(self):
        """``obs -> (action, log-prob, value)`` with the current weights, for one rollout (they do
        not change until the update). Actor and critic run fused as one MLP of twice the width
        (block-diagonal after the first layer) and the normalisation as one affine map: a rollout
        step costs a dozen torch ops instead of forty, which is what 80 rows cost."""
        scale = torch.rsqrt(self.obs_var + self.OBS_EPS)
        shift = -self.obs_mean * scale
        actor = [m for m in self.actor_mean if isinstance(m, nn.Linear)]
        critic = [m for m in self.critic if isinstance(m, nn.Linear)]
        layers = [(torch.cat([actor[0].bias, critic[0].bias]), torch.cat([actor[0].weight, critic[0].weight]).T)]
        for a, c in zip(actor[1:], critic[1:], strict=True):
            layers.append((torch.cat([a.bias, c.bias]), torch.block_diag(a.weight, c.weight).T))
        act_dim = actor[-1].out_features
        std = self.actor_logstd.exp()
        const = self.actor_logstd.sum() + 0.5 * LOG_2PI * act_dim

        def policy(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            x = torch.addcmul(shift, obs, scale).clamp_(-self.OBS_CLIP, self.OBS_CLIP)
            for bias, weight in layers[:-1]:
                x = torch.addmm(bias, x, weight).tanh_()
            out = torch.addmm(layers[-1][0], x, layers[-1][1])
            noise = torch.randn(out.shape[0], act_dim)
            action = torch.addcmul(out[:, :act_dim], noise, std)
            return action, -0.5 * noise.square().sum(1) - const, out[:, act_dim]

        return policy

    def act_deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        """The exported policy: the mean action, clipped to the action box."""
        return self.actor_mean(self.normalize(obs)).clamp(-1.0, 1.0)


class RewardScaler:
    """Reward scaling, CleanRL / gymnasium ``NormalizeReward`` style, vectorised over cars.

    Each car keeps its running discounted return G = gamma * G + r (reset when its episode ends);
    rewards are divided by the running std of G (no mean subtraction, so the sign of every reward
    is kept) and clipped to [-10, 10]. This puts the value targets near unit scale whatever the
    game's reward magnitude (a clean lap earns ~500 raw per 100 s here).
    """

    def __init__(self, num_envs: int, gamma: float, eps: float = 1e-8, clip: float = 10.0):
        self.gamma, self.eps, self.clip = gamma, eps, clip
        self.returns = np.zeros(num_envs)
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def __call__(self, reward: np.ndarray, done: np.ndarray) -> np.ndarray:
        self.returns = self.returns * self.gamma + reward
        batch = (self.returns.mean(), self.returns.var(), len(self.returns))
        self.mean, self.var, self.count = merge_moments(self.mean, self.var, self.count, *batch)
        self.returns[done] = 0.0
        return np.clip(reward / np.sqrt(self.var + self.eps), -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]


# ====================================================================================================
# Checkpoints


def policy_export(agent: Agent, frame_stack: int, num_rays: int) -> dict:
    """The self-describing deterministic actor of a checkpoint (plain tensors and lists only)."""
    obs_dim = agent.obs_mean.shape[0]
    linears = [m for m in agent.actor_mean if isinstance(m, nn.Linear)]
    # What this network really answers, so that export_onnx.py can check the declaration below.
    probe = torch.from_numpy(probe_observations(agent.obs_mean.cpu().numpy(), agent.obs_var.cpu().numpy()))
    with torch.no_grad():
        probe_actions = agent.act_deterministic(probe.to(agent.obs_mean.device))
    return {
        "obs_dim": obs_dim,
        "act_dim": linears[-1].out_features,
        "frame_stack": frame_stack,
        "obs_size": obs_dim // frame_stack,
        "num_rays": num_rays,  # as the game announced it (PROTOCOL.md §3.1)
        "obs_mean": agent.obs_mean.detach().float().clone(),
        "obs_var": agent.obs_var.detach().float().clone(),
        "obs_eps": Agent.OBS_EPS,
        "obs_clip": Agent.OBS_CLIP,
        "layers": [{"weight": m.weight.detach().clone(), "bias": m.bias.detach().clone()} for m in linears],
        "activation": "tanh",
        "squash": "clip",  # action = clip(mean, -1, 1)
        "action_names": ACTION_NAMES[: linears[-1].out_features],
        "probe_obs": probe,
        "probe_actions": probe_actions.cpu(),
    }


class CheckpointError(Exception):
    """A checkpoint could not be written: the run ends with one line and exit code 1."""


def save_checkpoint(path, args, global_step, run_name, agent, optimizer, extra, num_rays) -> None:
    """Shared checkpoint format (SAC and export_onnx.py use it too); written atomically."""
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "algo": "ppo",
        "args": vars(args),
        "global_step": int(global_step),
        "run_name": run_name,
        "model": agent.state_dict(),
        "optimizer": optimizer.state_dict(),
        "extra": extra,
        "policy": policy_export(agent, args.frame_stack, num_rays),
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


@torch.no_grad()
def evaluate(agent: Agent, envs, seed: int = 0, record: bool = False) -> dict:
    """Drive every car of ``envs`` (deterministic policy) until each has finished one episode.

    Returns lap completion (>= 1 lap before the episode ended), crash rate, mean time of the first
    lap (from the start: comparable with rbxenv.sim.reference; nan if no car lapped), mean progress
    in laps, and with ``record`` the per-step poses of every car (nan once its episode ended).
    """
    obs, _ = envs.reset(seed=seed)
    n = envs.num_envs
    done = np.zeros(n, dtype=bool)
    laps, crashed, progress = np.zeros(n), np.zeros(n, dtype=bool), np.zeros(n)
    first_lap = np.full(n, np.nan)
    poses: list[dict] = []
    while not done.all():
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


def save_eval_video(envs, poses: list[dict], run_dir: str, global_step: int, writer: SummaryWriter) -> None:
    """Top-down GIF of held-out track 0 under runs/{run}/videos/ and its trajectory picture in TensorBoard."""
    from PIL import Image

    from rbxenv.sim.render import render_trajectories  # lazy: only --capture-video needs the renderer

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
# Training


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


def train(args: Args) -> str:
    """Run PPO with ``args``; returns the path of the last checkpoint (or "" without --save-model)."""
    checkpoint = None
    if args.resume:
        checkpoint = load_checkpoint(args.resume)
        args.save_model = True  # a resumed run keeps its checkpoint up to date
    args.batch_size = int(args.num_agents * args.num_venvs * args.num_steps)
    args.minibatch_size = int(args.batch_size // args.num_minibatches)
    args.num_iterations = max(1, args.total_timesteps // args.batch_size)

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
    rng = np.random.default_rng(args.seed)  # minibatch shuffling
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cpu")  # small MLPs: the CPU is faster than shipping batches to a GPU

    eval_envs = None
    num_envs = envs.num_envs
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    act_dim = int(np.prod(envs.single_action_space.shape))
    num_rays = envs.game.num_rays  # what the game offers (handshake); the rest of obs_size is nitro, speed, reverse

    agent = Agent(obs_dim, act_dim, tuple(args.hidden_sizes), args.init_logstd).to(device)
    # fused: one kernel for every parameter's update instead of a dozen ops per tensor
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
    reward_scaler = RewardScaler(num_envs, args.gamma)
    if checkpoint:
        agent.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        reward_scaler.load_state_dict(checkpoint["extra"]["reward_scaler"])
        torch.set_rng_state(checkpoint["extra"]["torch_rng"])
        rng.bit_generator.state = checkpoint["extra"]["numpy_rng"]
        print(f"resumed {run_name} at step {global_step} from {args.resume}", flush=True)

    def save(path: str = checkpoint_path) -> str:
        extra = {
            "reward_scaler": reward_scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": rng.bit_generator.state,
        }
        # The step of the last update: an interrupted rollout is discarded, and resumes redo it.
        try:
            save_checkpoint(path, args, trained_step, run_name, agent, optimizer, extra, num_rays)
        except OSError as error:  # a full disk, no permission: one line, and the run says what it kept
            raise CheckpointError(
                f"the checkpoint could not be written to {path} ({error.strerror or error})"
            ) from None
        return path

    # ALGO Logic: Storage setup
    obs = torch.zeros((args.num_steps, num_envs, obs_dim))
    actions = torch.zeros((args.num_steps, num_envs, act_dim))
    logprobs = torch.zeros((args.num_steps, num_envs))
    rewards = torch.zeros((args.num_steps, num_envs))
    dones = torch.zeros((args.num_steps, num_envs))
    values = torch.zeros((args.num_steps, num_envs))

    stop = GracefulStop()
    reason = None  # why the loop ended: "finished", "interrupted", "the game was lost ..."
    saved = None  # what the last line says about the checkpoint
    start_time, start_step = time.time(), global_step
    trained_step = global_step  # agent-steps the saved model has learned from
    next_save = global_step + args.save_every
    next_eval = global_step + args.eval_every if args.eval_every else None
    try:
        next_obs, _ = envs.reset(seed=args.seed + global_step)
        next_obs = torch.as_tensor(next_obs)
        next_done = torch.zeros(num_envs)
        first_iteration = global_step // args.batch_size + 1
        for iteration in range(first_iteration, args.num_iterations + 1):
            # Annealing the rate if instructed to do so.
            if args.anneal_lr:
                frac = 1.0 - (iteration - 1.0) / args.num_iterations
                optimizer.param_groups[0]["lr"] = frac * args.learning_rate
            if args.track_difficulty:  # the curriculum: tracks drawn from now on get this difficulty
                envs.session.track_difficulty = tracks.difficulty_at(
                    args.track_difficulty, global_step / args.total_timesteps
                )

            episodes: dict[str, list[np.ndarray]] = {
                k: [] for k in ("r", "l", "laps", "progress", "lap_time", "crashed")
            }
            policy = agent.rollout_policy()
            for step in range(0, args.num_steps):
                global_step += num_envs
                obs[step] = next_obs
                dones[step] = next_done

                # ALGO LOGIC: action logic
                with torch.no_grad():
                    action, logprob, value = policy(next_obs)
                    values[step] = value
                actions[step] = action
                logprobs[step] = logprob

                # TRY NOT TO MODIFY: execute the game and log data.
                next_obs, reward, terminations, truncations, infos = envs.step(action.numpy())
                done = np.logical_or(terminations, truncations)
                if args.norm_reward:
                    reward = reward_scaler(reward, done)
                # Truncation (time limit, track change) is not failure: the episode would have gone
                # on, so bootstrap it with V(final_obs) folded into this step's reward. Terminations
                # (crash, stuck, wrong way) really end the return: no bootstrap.
                rewards[step] = torch.as_tensor(reward)
                truncated_only = truncations & ~terminations
                if truncated_only.any():
                    with torch.no_grad():
                        final_values = agent.get_value(torch.as_tensor(infos["final_obs"][truncated_only])).flatten()
                    rewards[step, torch.as_tensor(truncated_only)] += args.gamma * final_values
                next_obs, next_done = torch.as_tensor(next_obs), torch.as_tensor(done, dtype=torch.float32)

                if "_episode" in infos:
                    mask = infos["_episode"]
                    for key in episodes:
                        episodes[key].append(np.asarray(infos["episode"][key])[mask])
                if stop.requested:
                    raise KeyboardInterrupt

            # bootstrap value if not done
            with torch.no_grad():
                next_value = agent.get_value(next_obs).reshape(1, -1)
                # GAE on numpy views of the same storage: a numpy op on 80 cars costs a fifth of a torch op
                advantages = torch.zeros_like(rewards)
                adv, rew, val, don = advantages.numpy(), rewards.numpy(), values.numpy(), dones.numpy()
                lastgaelam = 0
                for t in reversed(range(args.num_steps)):
                    if t == args.num_steps - 1:
                        nextnonterminal = 1.0 - next_done.numpy()
                        nextvalues = next_value.numpy()[0]
                    else:
                        nextnonterminal = 1.0 - don[t + 1]
                        nextvalues = val[t + 1]
                    delta = rew[t] + args.gamma * nextvalues * nextnonterminal - val[t]
                    adv[t] = lastgaelam = delta + args.gamma * args.gae_lambda * nextnonterminal * lastgaelam
                returns = advantages + values

            # flatten the batch
            b_obs = obs.reshape((-1, obs_dim))
            b_values = values.reshape(-1)
            b_returns = returns.reshape(-1)
            # One table of everything a minibatch reads, gathered with one index per minibatch. The
            # observations are normalised once: the statistics only move after the update.
            with torch.no_grad():
                table = torch.cat([agent.normalize(b_obs), actions.reshape((-1, act_dim)),
                                   torch.stack([logprobs, advantages, b_returns.view_as(values), values], -1)
                                   .reshape(-1, 4)], 1)  # fmt: skip
            columns = (obs_dim, act_dim, 1, 1, 1, 1)

            # Optimizing the policy and value network
            b_inds = np.arange(args.batch_size)
            clipfracs = []
            for _epoch in range(args.update_epochs):
                rng.shuffle(b_inds)
                for start in range(0, args.batch_size, args.minibatch_size):
                    end = start + args.minibatch_size
                    mb = table[torch.from_numpy(b_inds[start:end])]
                    mb_x, mb_actions, mb_logprobs, mb_advantages, mb_returns, mb_values = (
                        c.squeeze(1) if c.shape[1] == 1 else c for c in mb.split(columns, 1)
                    )

                    _, newlogprob, entropy, newvalue = agent.get_action_and_value(mb_x, mb_actions, normalized=True)
                    logratio = newlogprob - mb_logprobs
                    ratio = logratio.exp()

                    with torch.no_grad():
                        # calculate approx_kl http://joschu.net/blog/kl-approx.html
                        old_approx_kl = (-logratio).mean()
                        approx_kl = ((ratio - 1) - logratio).mean()
                        clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean())

                    if args.norm_adv:
                        mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

                    # Policy loss
                    pg_loss1 = -mb_advantages * ratio
                    pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                    pg_loss = torch.max(pg_loss1, pg_loss2).mean()

                    # Value loss
                    newvalue = newvalue.view(-1)
                    if args.clip_vloss:
                        v_loss_unclipped = (newvalue - mb_returns) ** 2
                        v_clipped = mb_values + torch.clamp(newvalue - mb_values, -args.clip_coef, args.clip_coef)
                        v_loss_clipped = (v_clipped - mb_returns) ** 2
                        v_loss_max = torch.max(v_loss_unclipped, v_loss_clipped)
                        v_loss = 0.5 * v_loss_max.mean()
                    else:
                        v_loss = 0.5 * ((newvalue - mb_returns) ** 2).mean()

                    entropy_loss = entropy.mean()
                    loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef

                    optimizer.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm, foreach=True)
                    optimizer.step()

                if args.target_kl is not None and approx_kl > args.target_kl:
                    break

            # The observation statistics move only between updates, so that the log-probs stored
            # during the rollout stay exact for the update that uses them.
            if args.norm_obs:
                agent.update_obs_stats(b_obs)

            y_pred, y_true = b_values.numpy(), b_returns.numpy()
            var_y = np.var(y_true)
            explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y
            trained_step = global_step

            # TRY NOT TO MODIFY: record rewards for plotting purposes
            sps = int((global_step - start_step) / (time.time() - start_time))
            writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
            writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
            writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
            writer.add_scalar("losses/entropy", entropy_loss.item(), global_step)
            writer.add_scalar("losses/old_approx_kl", old_approx_kl.item(), global_step)
            writer.add_scalar("losses/approx_kl", approx_kl.item(), global_step)
            writer.add_scalar("losses/clipfrac", torch.stack(clipfracs).mean().item(), global_step)
            writer.add_scalar("losses/explained_variance", explained_var, global_step)
            writer.add_scalar("charts/SPS", sps, global_step)
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
                line += (
                    f" | return {ep['r'].mean():.1f} | laps {ep['laps'].mean():.2f} | crash {ep['crashed'].mean():.2f}"
                )
            eta = (args.num_iterations * args.batch_size - global_step) / max(sps, 1)
            print(f"{line} | ETA {format_seconds(eta)}", flush=True)

            last = iteration == args.num_iterations
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
                    result = evaluate(agent, eval_envs, seed=args.seed, record=args.capture_video)
                    for key in ("lap_completion", "crash_rate", "lap_time", "progress"):
                        writer.add_scalar(f"eval/{key}", result[key], global_step)
                    if args.capture_video:
                        save_eval_video(eval_envs, result["poses"], run_dir, global_step, writer)
                    print(
                        f"eval on {eval_envs.session.num_venvs} {'given' if eval_tracks else 'held-out'} tracks: lap completion {result['lap_completion']:.0%}"
                        f" | crash rate {result['crash_rate']:.0%} | lap time {cli.figure(result['lap_time'], '.1f', ' s')}"
                        f" | progress {result['progress']:.2f} laps ({time.time() - t0:.1f} s)",
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
    if saved is None and trained_step > 0:  # (saved is "" when saving is what failed)
        try:
            save()
            saved = f"; checkpoint: {checkpoint_path} (continue: --resume {checkpoint_path})"
        except CheckpointError as error:
            saved = f"; {error}"
    elif saved is None:
        saved = "; nothing was learned, so no checkpoint"
    if reason != "interrupted":
        cli.fail(PROG, f"{reason} at step {trained_step}{saved}")
    print(f"{reason} at step {trained_step}{saved}", flush=True)
    raise SystemExit(128 + stop.signum)


if __name__ == "__main__":
    train(ARGS)
