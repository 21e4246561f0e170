"""DDPO: denoising diffusion policy optimisation (Black et al., 2023, "Training Diffusion Models
with Reinforcement Learning").

Denoising is a K-step MDP whose policy is the Gaussian of each sampler step (see samplers.py);
the reward r(x_0, c) arrives at the end. The policy gradient is then a sum over denoising steps:

    DDPO_SF (score function / REINFORCE, Sec. 4.3):
        grad J = E[ sum_t grad log p_theta(x_{t-1} | x_t, c) * r(x_0, c) ]
    DDPO_IS (importance sampling with PPO's clip, Sec. 4.3):
        grad J = E[ sum_t  p_theta(x_{t-1}|x_t,c) / p_old(x_{t-1}|x_t,c) * grad log p_theta(...) * r(x_0, c) ]
        loss   = max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)), averaged over steps and samples

r is replaced by a per-prompt normalised advantage A = (r - mean_c) / std_c, the mean and std
taken over the samples of the same label c (DDPO's per-prompt stat tracking), which is exactly
GRPO's group advantage: `rl.group_advantages`. The clipped objective is `rl.clipped_surrogate`,
the same function PPO and GRPO use for tokens; here the "tokens" are denoising steps.

How this differs from ddpo-pytorch: the step log-prob is the true Gaussian log-density (summed
over dimensions, not averaged over pixels), so the clip range is 0.2-ish rather than 1e-4; the
model is a tiny MLP trained in full (no LoRA); one label set per batch with G samples per label.

DPOK (Fan et al., 2023, "DPOK: Reinforcement Learning for Fine-tuning Text-to-Image Diffusion Models",
Eq. 7-8) is DDPO plus a KL term: `kl_coef = beta > 0` adds beta * sum_t KL(p_theta(.|x_t) || p_base(.|x_t))
(closed form, both steps Gaussians with the same std) to the loss, and `normalize_advantages=False` keeps
the reward's scale, so the objective is E[r] - beta KL(path || base path), whose optimum with a memoryless
sampler (adjoint.py) is p_base exp(r / beta) / Z (target.py).

Run: `train_ddpo(policy, reward_fn, DDPOConfig())` with a shipped DDPM
(`load_diffusion_model("diffusion-points-ddpm")`) and a reward from rewards.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from einops import rearrange, repeat
from torch import Tensor

from ..errors import check_config
from ..progress import DIFFUSION_POSTFIX, ProgressBar
from ..rl import clip_fractions, clipped_surrogate, group_advantages, masked_mean
from ..utils import MetricsLogger, check_finite
from .samplers import Trajectory, gaussian_kl_same_std, gaussian_logprob, sample, step_means


@dataclass
class DDPOConfig:
    """DDPO on a tiny DDPM. Defaults run in well under a minute on a laptop CPU."""

    iterations: int = 40
    """Sampling rounds (each followed by inner_epochs passes of updates)."""
    labels_per_batch: int = 4
    """Distinct labels ("prompts") per round, drawn at random from the model's labels."""
    samples_per_label: int = 16
    """G: samples per label; advantages are normalised within each label's group."""
    n_steps: int = 20
    """Denoising steps K of the sampler."""
    eta: float = 1.0
    """DDIM eta of the sampling policy (1 = DDPM ancestral; must be > 0 for log-probs)."""
    importance_sampling: bool = True
    """True: DDPO_IS (clipped ratio, several updates per round). False: DDPO_SF (REINFORCE, one update)."""
    inner_epochs: int = 1
    """Passes over each round's trajectories (DDPO_IS only)."""
    minibatches: int = 2
    """Updates per pass; each minibatch holds whole trajectories, every step of them (DDPO_IS only)."""
    clip_range: float = 0.2
    """PPO clip epsilon on the per-step ratio."""
    adv_clip_max: float = 5.0
    """Advantages are clipped to [-adv_clip_max, adv_clip_max] (as in ddpo-pytorch)."""
    lr: float = 1e-3
    """AdamW learning rate."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    seed: int = 0
    """Seed for labels and sampling noise."""
    kl_coef: float = 0.0
    """DPOK (Fan et al., 2023): beta of the per-step KL to the base model added to the loss, so the
    objective is E[r] - beta KL(path || base path). 0: plain DDPO, which only climbs the reward."""
    normalize_advantages: bool = True
    """Divide each group's advantages by its std (DDPO). False keeps the reward's scale, A = r - mean_group,
    which DPOK needs for its optimum to be p_base exp(r / kl_coef) (target.py)."""

    def validate(self) -> None:
        """Raise ConfigError naming the flag of the first field out of range (before anything loads)."""
        check_config(self, at_least_1=("iterations", "labels_per_batch", "samples_per_label", "n_steps",
                                       "inner_epochs", "minibatches"),
                     positive=("lr",), non_negative=("eta", "clip_range", "adv_clip_max", "max_grad_norm", "kl_coef"))


def ddpo_sf_loss(logp: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """REINFORCE over denoising steps (DDPO_SF): -mean_{b,t} A_b log p_theta(x_{t-1}|x_t). logp, mask: (B, K); A: (B,)."""
    return masked_mean(-advantages[:, None] * logp, mask)


def ddpo_is_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_range: float
                 ) -> tuple[Tensor, Tensor]:
    """Clipped importance-sampling loss over denoising steps (DDPO_IS). Returns (loss, ratio (B, K))."""
    loss, ratio = clipped_surrogate(logp, old_logp, advantages[:, None].expand_as(logp), clip_range)  # (B, K)
    return masked_mean(loss, mask), ratio


def select(traj: Trajectory, idx: Tensor) -> Trajectory:
    """The sub-batch of trajectories idx."""
    return Trajectory(traj.xs[idx], traj.ts, traj.labels[idx], traj.logps[idx], traj.mask[idx], traj.kind,
                      traj.noise, traj.clip_x0)


def train_ddpo(policy, reward_fn: Callable[[Tensor, Tensor], Tensor], cfg: DDPOConfig | None = None,
               eval_fn: Callable[[object, int], dict] | None = None, eval_every: int = 0,
               logger: MetricsLogger | None = None, ref=None, progress: bool = False) -> MetricsLogger:
    """Train `policy` (a DDPM Denoiser, or a flow model with eta as its SDE noise a; updated in place) to
    maximise reward_fn(labels, x0), minus kl_coef * path KL to `ref` (default: a frozen copy of the start)."""
    cfg = cfg or DDPOConfig()
    cfg.validate()  # a bad value stops here, before any work
    if cfg.eta <= 0:
        raise ValueError("DDPO needs a stochastic sampler: eta must be > 0")
    if cfg.kl_coef > 0 and ref is None:
        ref = frozen_copy(policy)
    g = torch.Generator().manual_seed(cfg.seed)
    logger = logger or MetricsLogger()
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    n_labels = policy.config.n_labels
    L, G = cfg.labels_per_batch, cfg.samples_per_label
    for it in ProgressBar(range(cfg.iterations), "ddpo", DIFFUSION_POSTFIX, logger, enabled=progress):
        if eval_fn is not None and eval_every and it % eval_every == 0:
            logger.log({"iteration": it, **eval_fn(policy, it)})
        # 1. Sample L labels x G samples with the current policy, recording each step's log-prob.
        labels = repeat(torch.randperm(n_labels, generator=g)[:L], "l -> (l g)", g=G)  # (L*G,): G per label
        with torch.no_grad():
            traj = sample(policy, labels, cfg.n_steps, cfg.eta, generator=g)
        # 2. Score the final samples.
        rewards = reward_fn(labels, traj.samples).detach().float()  # (L*G,)
        check_finite("rewards", rewards)
        # 3. Per-label advantages (DDPO's per-prompt stat tracking = GRPO's group advantage).
        adv = group_advantages(rearrange(rewards, "(l g) -> l g", g=G), scale_by_std=cfg.normalize_advantages)
        adv = rearrange(adv, "l g -> (l g)")
        adv = adv.clamp(-cfg.adv_clip_max, cfg.adv_clip_max)  # (L*G,)
        # 4. Update on every denoising step of the batch's trajectories.
        epochs, n_mb = (cfg.inner_epochs, cfg.minibatches) if cfg.importance_sampling else (1, 1)
        stats = []
        for _ in range(epochs):
            perm = torch.randperm(L * G, generator=g)
            for idx in perm.chunk(n_mb):
                sub = select(traj, idx)
                mean, std = step_means(policy, sub)  # (b, K, D), (b, K)
                logp = torch.where(sub.mask.bool(), gaussian_logprob(sub.xs[:, 1:], mean, std), 0.0)  # (b, K)
                if cfg.importance_sampling:
                    loss, ratio = ddpo_is_loss(logp, sub.logps, adv[idx], sub.mask, cfg.clip_range)
                else:
                    loss, ratio = ddpo_sf_loss(logp, adv[idx], sub.mask), torch.exp(logp - sub.logps)
                if cfg.kl_coef > 0:  # DPOK: + beta * KL per step (closed form, same std), mean over steps like the loss
                    with torch.no_grad():
                        mean_ref, _ = step_means(ref, sub)
                    loss = loss + cfg.kl_coef * masked_mean(gaussian_kl_same_std(mean, mean_ref, std), sub.mask)
                check_finite("loss", loss)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                opt.step()
                with torch.no_grad():
                    a = adv[idx][:, None].expand_as(ratio)
                    stats.append({"loss": loss.item(), "policy/ratio": masked_mean(ratio, sub.mask).item(),
                                  "policy/approx_kl": masked_mean(0.5 * (logp - sub.logps) ** 2, sub.mask).item(),
                                  "policy/clipfrac": clip_fractions(ratio, a, sub.mask, cfg.clip_range)["clipfrac"].item()})
        # 5. Log: mean reward of this round's samples and the update statistics.
        row = {"iteration": it, "reward": rewards.mean().item(), "reward/std": rewards.std().item()}
        row.update({k: sum(s[k] for s in stats) / len(stats) for k in stats[0]})
        row["policy/first_ratio"] = stats[0]["policy/ratio"]
        logger.log(row)
    if eval_fn is not None and eval_every:
        logger.log({"iteration": cfg.iterations, **eval_fn(policy, cfg.iterations)})
    return logger


def frozen_copy(net):
    """A frozen copy of the base model (the reference for KL)."""
    ref = copy.deepcopy(net).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
