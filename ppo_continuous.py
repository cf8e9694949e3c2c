"""PPO for Roblox racing: train AI drivers on the embedded headless simulator or a live Roblox game.

    python ppo_continuous.py --num-agents 5                     # embedded simulator, nothing else needed
    python ppo_continuous.py --no-sim                           # wait for Roblox Studio on ws://127.0.0.1:8000
    python ppo_continuous.py --resume runs/<run>/checkpoint.pt  # carry on where a run stopped
    tensorboard --logdir runs

Single-file, CleanRL style (after CleanRL's ppo_continuous_action.py): read it top to bottom. This
file is the algorithm; the plumbing every run shares (env from the flags, run directory, progress
line, held-out evaluation, checkpoints, Ctrl-C) is ``rbxenv/training.py``. A fork that changes the
algorithm edits this file only. One vector slot per car (``make_vec_env``); every car of every
venv feeds the same policy.

- Policy: Gaussian with a state-independent log-std; separate actor and critic MLPs (tanh).
- Observation normalisation lives INSIDE the model (running mean/var buffers), so a saved or
  exported policy takes raw game observations (``training.ObsNormalization``).
- Rewards are scaled by the running std of the discounted return; truncated episodes (time limit,
  track change) bootstrap from V(final_obs); crashes do not.
- Checkpoints ("rbxenv-checkpoint-v1", ``export_onnx.py`` turns them into ONNX / Luau) declare the
  deterministic actor, clip(mean, -1, 1), in ``policy_export``; held-out evaluation drives it.
- Ctrl-C / SIGTERM / a lost game: the run saves a checkpoint, closes the env and says where it is
  (exit code 130 / 143 / 1; bad flags exit 2 before torch loads: see ``rbxenv/cli.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from rbxenv import cli, training

PROG = "ppo_continuous.py"


@dataclass
class Args(training.RunArgs):
    """PPO's flags: those of every run (rbxenv/training.py), four of them with PPO's defaults
    (80 cars, 5M agent-steps, an evaluation and a checkpoint every 500k), then the algorithm's."""

    num_venvs: int = 16
    total_timesteps: int = 5_000_000
    save_every: int = 500_000
    eval_every: int = 500_000

    # Algorithm
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

    # filled in at runtime
    batch_size: int = 0
    """the batch size (computed in runtime)"""
    minibatch_size: int = 0
    """the mini-batch size (computed in runtime)"""
    num_iterations: int = 0
    """the number of iterations (computed in runtime)"""


RULES = {
    **training.RUN_RULES,
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
}


def check_args(args: Args) -> Args:
    """Refuse bad values in one line (exit code 2) before any work starts."""
    cli.check(PROG, args, RULES)
    batch = args.num_agents * args.num_venvs * args.num_steps
    if args.num_minibatches > batch:
        cli.refuse(PROG, f"--num-minibatches {args.num_minibatches}: allowed: 1 to {batch} (the rollout's transitions: num_agents x num_venvs x num_steps)")  # fmt: skip
    return args


if __name__ == "__main__":
    ARGS = training.parse_args(Args, PROG, "ppo", check_args)  # bad flags end here, before torch loads

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim

from rbxenv import tracks

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


class Agent(nn.Module, training.ObsNormalization):
    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (64, 64), init_logstd: float = 0.0):
        super().__init__()
        self.init_obs_stats(obs_dim)  # running mean / var buffers, saved with the weights
        self.critic = mlp(obs_dim, hidden, 1, out_std=1.0)
        self.actor_mean = mlp(obs_dim, hidden, act_dim, out_std=0.01)
        self.actor_logstd = nn.Parameter(torch.full((1, act_dim), float(init_logstd)))

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


def policy_export(agent: Agent, frame_stack: int, num_rays: int) -> dict:
    """The checkpoint's "policy" section: ``act_deterministic`` declared as export_onnx.py reads it
    (a fork that changes the actor changes this declaration with it)."""
    linears = [m for m in agent.actor_mean if isinstance(m, nn.Linear)]
    return training.policy_section(agent, linears, "tanh", "clip", frame_stack, num_rays)


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
        self.mean, self.var, self.count = training.merge_moments(self.mean, self.var, self.count, *batch)
        self.returns[done] = 0.0
        return np.clip(reward / np.sqrt(self.var + self.eps), -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]


# ====================================================================================================
# Training


def train(args: Args) -> str:
    """Run PPO with ``args``; returns the path of the last checkpoint (or "" without --save-model)."""
    args.batch_size = int(args.num_agents * args.num_venvs * args.num_steps)
    args.minibatch_size = int(args.batch_size // args.num_minibatches)
    args.num_iterations = max(1, args.total_timesteps // args.batch_size)
    # TRY NOT TO MODIFY: the env, run directory, TensorBoard, seeding (rbxenv/training.py)
    run = training.Run(args, PROG, "ppo", end_step=args.num_iterations * args.batch_size)
    envs, num_envs, obs_dim, act_dim, rng = run.envs, run.num_envs, run.obs_dim, run.act_dim, run.rng

    agent = Agent(obs_dim, act_dim, tuple(args.hidden_sizes), args.init_logstd)
    # fused: one kernel for every parameter's update instead of a dozen ops per tensor
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
    reward_scaler = RewardScaler(num_envs, args.gamma)
    if run.checkpoint:
        agent.load_state_dict(run.checkpoint["model"])
        optimizer.load_state_dict(run.checkpoint["optimizer"])
        reward_scaler.load_state_dict(run.resumed()["reward_scaler"])

    def checkpoint() -> dict:
        """What a checkpoint keeps of PPO (the run adds the step, the arguments and the RNG states)."""
        return {"model": agent.state_dict(), "optimizer": optimizer.state_dict(),
                "extra": {"reward_scaler": reward_scaler.state_dict()},
                "policy": policy_export(agent, args.frame_stack, run.num_rays)}  # fmt: skip

    # ALGO Logic: Storage setup
    obs = torch.zeros((args.num_steps, num_envs, obs_dim))
    actions = torch.zeros((args.num_steps, num_envs, act_dim))
    logprobs = torch.zeros((args.num_steps, num_envs))
    rewards = torch.zeros((args.num_steps, num_envs))
    dones = torch.zeros((args.num_steps, num_envs))
    values = torch.zeros((args.num_steps, num_envs))

    # trained_step: the agent-steps the model has learned from (an interrupted rollout is discarded)
    global_step = trained_step = run.start_step
    with run.stopping():
        next_obs, _ = envs.reset(seed=args.seed + global_step)
        next_obs = torch.as_tensor(next_obs)
        next_done = torch.zeros(num_envs)
        for iteration in range(global_step // args.batch_size + 1, args.num_iterations + 1):
            # Annealing the rate if instructed to do so.
            if args.anneal_lr:
                frac = 1.0 - (iteration - 1.0) / args.num_iterations
                optimizer.param_groups[0]["lr"] = frac * args.learning_rate
            if args.track_difficulty:  # the curriculum: tracks drawn from now on get this difficulty
                envs.session.track_difficulty = tracks.difficulty_at(
                    args.track_difficulty, global_step / args.total_timesteps
                )

            # ---------------------------------------------------------------------------- rollout
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
                run.record_episodes(infos)

                # ALGO LOGIC: reward scaling and the truncation bootstrap
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
                if run.stop.requested:
                    raise KeyboardInterrupt

            # ---------------------------------------------------------------------------- GAE
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

            # ---------------------------------------------------------------------------- update
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
            trained_step = global_step

            y_pred, y_true = b_values.numpy(), b_returns.numpy()
            var_y = np.var(y_true)
            explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

            # TRY NOT TO MODIFY: record rewards for plotting purposes; evaluate and save when due
            run.progress(global_step, {
                "charts/learning_rate": optimizer.param_groups[0]["lr"],
                "losses/value_loss": v_loss.item(),
                "losses/policy_loss": pg_loss.item(),
                "losses/entropy": entropy_loss.item(),
                "losses/old_approx_kl": old_approx_kl.item(),
                "losses/approx_kl": approx_kl.item(),
                "losses/clipfrac": torch.stack(clipfracs).mean().item(),
                "losses/explained_variance": explained_var,
            })  # fmt: skip
            run.periodic(global_step, iteration == args.num_iterations, agent, checkpoint)
    return run.finish(trained_step, checkpoint)


if __name__ == "__main__":
    train(ARGS)
