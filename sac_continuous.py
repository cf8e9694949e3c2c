"""SAC for Roblox racing: off-policy training of AI drivers, on the embedded simulator or a Roblox game.

    python sac_continuous.py                                    # the embedded simulator: nothing else to start
    python sac_continuous.py --utd 0.1 --num-venvs 10           # fewer gradient steps per car-step, more cars
    python sac_continuous.py --no-sim                           # a Roblox Studio place dials ws://127.0.0.1:8000
    python sac_continuous.py --resume runs/<run>/checkpoint.pt  # go on from a saved run (TensorBoard: runs/)

The algorithm in one file, after CleanRL's sac_continuous_action.py, to be read top to bottom.
Whatever a run needs around it (env from the flags, run directory, TensorBoard, progress line,
held-out evaluation, checkpoints, Ctrl-C) comes from ``rbxenv/training.py``, shared with
ppo_continuous.py: fork this file to change SAC. Every car of every venv is a slot of the vector
env (``make_vec_env``) and feeds one replay buffer.

- Soft Actor-Critic: twin Q networks with Polyak-averaged targets, a tanh-squashed Gaussian actor
  (log-prob corrected for the tanh), automatic entropy tuning (target entropy -act_dim).
- Update-to-data ratio: ``--utd`` is gradient steps per *agent-step* (one car, one decision), so it
  means the same whatever the number of cars. Fractions accumulate: with 25 cars, ``--utd 0.04``
  is one gradient step per vector step, the default 0.25 is 6.25. Each gradient step samples
  ``--batch-size`` transitions. On this simulator gradient steps, not the game, bound the speed
  (BENCHMARKS.md, "SAC"). In real time (Roblox: 15 decisions/s) the game does not wait for the
  updates: lower ``--utd`` if the cars drive on stale actions.
- Bootstrapping: a crash / stuck / wrong-way termination ends the return (done = terminated); a
  truncation (time limit, track change) does not, and its transition stores the episode's real last
  observation (``infos["final_obs"]``), not the first observation of the next episode.
- Observation normalisation lives INSIDE the actor (``training.ObsNormalization``) and is applied to
  the critics' inputs too. The buffer keeps RAW observations and normalises each sampled batch with
  the current statistics, so a batch is always self-consistent. The statistics follow every new
  transition for the first ``--norm-obs-steps`` agent-steps and then FREEZE: they see the policy's
  own driving (not only the random warm-up), yet afterwards the input scaling no longer moves
  under the critics, whose targets would otherwise drift as the meaning of every stored sample changed.
- Checkpoints ("rbxenv-checkpoint-v1", ``export_onnx.py`` turns them into ONNX / Luau) declare the
  deterministic actor, tanh(mean), in ``policy_export``. The replay buffer is NOT saved (up to
  ~400 MB): a resumed run refills it for ``--learning-starts`` agent-steps with its current policy
  (no random actions) before updating again; everything else is saved.
- Ctrl-C / SIGTERM / a lost game: the run saves a checkpoint, closes the env and says where it is
  (exit code 130 / 143 / 1; bad flags exit 2 before torch loads: see ``rbxenv/cli.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from rbxenv import cli, training

PROG = "sac_continuous.py"
LOG_STD_MAX = 2.0
LOG_STD_MIN = -5.0


@dataclass
class Args(training.RunArgs):
    """SAC: the flags of every run (rbxenv/training.py: their defaults are SAC's), then SAC's own."""

    # Algorithm
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
    log_every: int = 5_000
    """agent-steps between progress lines and TensorBoard points"""


RULES = {
    **training.RUN_RULES,
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
    "--log-every": cli.at_least(1),
}


def check_args(args: Args) -> Args:
    """Refuse bad values in one line (exit code 2) before any work starts."""
    cli.check(PROG, args, RULES)
    return args


if __name__ == "__main__":
    ARGS = training.parse_args(Args, PROG, "sac", check_args)  # bad flags end here, before torch loads

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim

from rbxenv import tracks

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


class Actor(nn.Module, training.ObsNormalization):
    """Tanh-squashed Gaussian policy. ``trunk`` + ``fc_mean`` is the exported deterministic MLP."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.init_obs_stats(obs_dim)  # running mean / var buffers, saved with the weights
        self.trunk = mlp(obs_dim, hidden)
        width = hidden[-1] if hidden else obs_dim
        self.fc_mean = nn.Linear(width, act_dim)
        self.fc_logstd = nn.Linear(width, act_dim)

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
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Raw observations -> sampled actions in [-1, 1] (the rollout)."""
        return self.get_action(self.normalize(obs))[0]

    @torch.no_grad()
    def act_deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        """The exported policy: tanh(mean) of raw observations (draws no random numbers)."""
        return torch.tanh(self(self.normalize(obs))[0])


def policy_export(actor: Actor, frame_stack: int, num_rays: int) -> dict:
    """The checkpoint's "policy" section: ``act_deterministic`` declared as export_onnx.py reads it
    (a fork that changes the actor changes this declaration with it)."""
    linears = [m for m in actor.trunk if isinstance(m, nn.Linear)] + [actor.fc_mean]
    return training.policy_section(actor, linears, "relu", "tanh", frame_stack, num_rays)


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
# Training


def train(args: Args) -> str:
    """Run SAC with ``args``; returns the path of the last checkpoint (or "" without --save-model)."""
    # TRY NOT TO MODIFY: the env, run directory, TensorBoard, seeding (rbxenv/training.py)
    run = training.Run(args, PROG, "sac")
    envs, num_envs, obs_dim, act_dim, rng = run.envs, run.num_envs, run.obs_dim, run.act_dim, run.rng
    hidden = tuple(args.hidden_sizes)

    actor = Actor(obs_dim, act_dim, hidden)
    qf1 = SoftQNetwork(obs_dim, act_dim, hidden)
    qf2 = SoftQNetwork(obs_dim, act_dim, hidden)
    qf1_target = SoftQNetwork(obs_dim, act_dim, hidden)
    qf2_target = SoftQNetwork(obs_dim, act_dim, hidden)
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    # fused: one kernel for every parameter's update instead of a dozen ops per tensor
    q_optimizer = optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.q_lr, fused=True)
    actor_optimizer = optim.Adam(actor.parameters(), lr=args.policy_lr, fused=True)
    q_params = list(qf1.parameters()) + list(qf2.parameters())
    q_target_params = list(qf1_target.parameters()) + list(qf2_target.parameters())

    # Automatic entropy tuning
    target_entropy = -float(act_dim)
    log_alpha = torch.tensor([float(np.log(args.alpha))], requires_grad=True)
    a_optimizer = optim.Adam([log_alpha], lr=args.q_lr)
    alpha = log_alpha.exp().item()

    model = {"actor": actor, "qf1": qf1, "qf2": qf2, "qf1_target": qf1_target, "qf2_target": qf2_target}
    optimizers = {"q": q_optimizer, "actor": actor_optimizer, "alpha": a_optimizer}
    grad_steps, update_credit = 0, 0.0
    if run.checkpoint:
        for name, module in model.items():
            module.load_state_dict(run.checkpoint["model"][name])
        for name, opt in optimizers.items():
            opt.load_state_dict(run.checkpoint["optimizer"][name])
        extra = run.resumed(" (replay buffer refills first)")
        with torch.no_grad():
            log_alpha.copy_(extra["log_alpha"])
        alpha = log_alpha.exp().item()
        grad_steps, update_credit = extra["grad_steps"], extra["update_credit"]

    def checkpoint() -> dict:
        """What a checkpoint keeps of SAC (the run adds the step, the arguments and the RNG states)."""
        return {"model": {name: module.state_dict() for name, module in model.items()},
                "optimizer": {name: opt.state_dict() for name, opt in optimizers.items()},
                "extra": {"log_alpha": log_alpha.detach().clone(), "grad_steps": grad_steps,
                          "update_credit": update_credit},
                "policy": policy_export(actor, args.frame_stack, run.num_rays)}  # fmt: skip

    rb = ReplayBuffer(args.buffer_size, obs_dim, act_dim, rng)
    # Updates begin once the buffer holds learning_starts transitions. A fresh run fills it with
    # uniformly random actions; a resumed run (the buffer is not saved) refills it with its policy.
    random_until = 0 if run.checkpoint else args.learning_starts
    global_step = run.start_step
    learn_from = global_step + args.learning_starts
    next_log = global_step + args.log_every
    losses: dict[str, float] = {}
    with run.stopping():
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
            run.record_episodes(infos)
            if args.track_difficulty:  # the curriculum: tracks drawn from now on get this difficulty
                envs.session.track_difficulty = tracks.difficulty_at(
                    args.track_difficulty, global_step / args.total_timesteps
                )

            # ALGO LOGIC: save data to replay buffer; handle `final_obs`
            # Same-step autoreset: next_obs of a finished car is already the next episode's first
            # observation; the transition must end in the episode's real last observation. Only a
            # termination stops the bootstrap; a truncated episode would have gone on.
            real_next_obs = next_obs  # no copy: rb.add copies into the buffer
            if "_final_obs" in infos:
                real_next_obs = np.where(infos["_final_obs"][:, None], infos["final_obs"], next_obs)
            # cars whose lost game never answered hold no real transition (their obs was real: it is counted)
            kept = ~infos["lost_step"] if "lost_step" in infos else slice(None)
            rb.add(obs[kept], real_next_obs[kept], actions[kept], rewards[kept], terminations[kept].astype(np.float32))
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
            if run.stop.requested:
                raise KeyboardInterrupt

            # TRY NOT TO MODIFY: record rewards for plotting purposes; evaluate and save when due
            last = global_step >= args.total_timesteps
            if global_step >= next_log or last:
                next_log = global_step + args.log_every
                scalars = {"charts/grad_steps": grad_steps, "losses/alpha": alpha}
                scalars.update({f"losses/{key}": value for key, value in losses.items()})
                note = f" | q {losses['qf1_values']:.1f} | alpha {alpha:.3f}" if "qf_loss" in losses else ""
                run.progress(global_step, scalars, note)
            run.periodic(global_step, last, actor, checkpoint)
    return run.finish(global_step, checkpoint)


if __name__ == "__main__":
    train(ARGS)
