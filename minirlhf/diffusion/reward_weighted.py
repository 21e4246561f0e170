"""Reward-weighted flow matching: fine-tuning on the forward process, no sampler in the loop.

The target of KL-regularised fine-tuning is p*(x) = p_base(x) exp(r(x) / beta) / Z (target.py). Samples of
p_base weighted by w = exp(r / beta) / Z *are* samples of p*, so the denoising loss on them, weighted,

    L(theta) = E_{x0 ~ p_base} [ w(x0) E_{t, x1} || v_theta((1 - t) x0 + t x1, t) - (x1 - x0) ||^2 ]

is the flow-matching loss of p* itself: its minimiser is p*'s velocity field. This is reward-weighted
regression (Peters and Schaal, 2007) on the forward process, the idea behind the "forward-process"
fine-tuning methods of recent flow-RL papers (e.g. reward-weighted flow matching in Fan et al., 2025,
"Online Reward-Weighted Fine-Tuning of Flow Matching with Wasserstein Regularization"; DiffusionNFT,
Zheng et al., 2025, also trains on the forward process). It needs neither reward gradients nor step
log-probs, and for a DDPM the same weights go on the epsilon loss.

Here: one offline round. Sample N points per label from the base model, weight them within each label
by softmax(r / beta) (the self-normalised estimate of exp(r / beta) / Z), and fine-tune the model on
the weighted loss starting from its own weights. Its limits are those of importance sampling: the
effective sample size N / (1 + Var w) falls as beta shrinks, and p* can only contain what the base
samples contain (an online version re-samples from the fine-tuned model and tilts by the remainder).

Run: `train_reward_weighted(load_diffusion_model("diffusion-points-flow"), box_distance_reward,
RewardWeightedConfig(beta=1.0))`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from einops import rearrange, repeat
from torch import Tensor

from ..errors import check_config
from ..progress import DIFFUSION_POSTFIX, ProgressBar
from ..utils import MetricsLogger, check_finite
from .samplers import alpha_bar, sample


@dataclass
class RewardWeightedConfig:
    """Reward-weighted flow matching (or DDPM regression), one offline round; CPU-sized defaults."""

    beta: float = 1.0
    """KL strength: weights exp(r / beta), target p_base exp(r / beta) / Z."""
    samples_per_label: int = 1024
    """Base-model samples per label that get weighted."""
    iterations: int = 300
    """Optimizer steps on the weighted denoising loss."""
    batch_size: int = 256
    """Weighted samples per step (drawn uniformly; the weight multiplies the loss)."""
    n_steps: int = 20
    """Sampler steps for the base samples."""
    noise: float = 0.7
    """Sampler noise for the base samples (flow a, DDIM eta); the flow SDE with 0.7 is the most faithful one here."""
    lr: float = 1e-3
    """AdamW learning rate."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    seed: int = 0
    """Seed for sampling, batches and the loss's (t, x1)."""

    def validate(self) -> None:
        """Raise ConfigError naming the flag of the first field out of range (before anything loads)."""
        check_config(self, at_least_1=("samples_per_label", "iterations", "batch_size", "n_steps"),
                     positive=("beta", "lr"), non_negative=("noise", "max_grad_norm"))


def reward_weights(rewards: Tensor, beta: float) -> Tensor:
    """Self-normalised weights exp(r / beta) / mean(exp(r / beta)) within each label. rewards: (L, N) -> (L, N), mean 1."""
    return torch.softmax(rewards / beta, dim=1) * rewards.shape[1]


def effective_sample_size(weights: Tensor) -> Tensor:
    """Kish's ESS (sum w)^2 / sum w^2 per row. (L, N) -> (L,)."""
    return weights.sum(1) ** 2 / (weights ** 2).sum(1)


def weighted_denoising_loss(net, x0: Tensor, labels: Tensor, weights: Tensor,
                            generator: torch.Generator | None = None) -> Tensor:
    """mean_b w_b ||prediction - target||^2: velocity (x1 - x0) for flow, epsilon for DDPM. x0: (B, D); w: (B,)."""
    t = torch.rand(x0.shape[0], generator=generator)  # (B,)
    x1 = torch.randn(x0.shape, generator=generator)  # noise
    if net.kind == "flow":
        x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
        target = x1 - x0
    else:
        ab = alpha_bar(t)[:, None]
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * x1
        target = x1
    per_sample = ((net(x_t, t, labels) - target) ** 2).mean(-1)  # (B,)
    return (weights * per_sample).mean()


def train_reward_weighted(policy, reward_fn: Callable[[Tensor, Tensor], Tensor],
                          cfg: RewardWeightedConfig | None = None,
                          eval_fn: Callable[[object, int], dict] | None = None, eval_every: int = 0,
                          logger: MetricsLogger | None = None, progress: bool = False) -> MetricsLogger:
    """Fine-tune `policy` in place on its own samples weighted by exp(r / beta) (any reward, no gradient)."""
    cfg = cfg or RewardWeightedConfig()
    cfg.validate()  # a bad value stops here, before any work
    g = torch.Generator().manual_seed(cfg.seed)
    logger = logger or MetricsLogger()
    L, N = policy.config.n_labels, cfg.samples_per_label
    # 1. Samples of the base model (the policy before any update), N per label.
    labels = repeat(torch.arange(L), "l -> (l n)", n=N)  # (L*N,)
    with torch.no_grad():
        x0 = sample(policy, labels, cfg.n_steps, cfg.noise, generator=g).samples
        rewards = reward_fn(labels, x0).detach().float()  # (L*N,)
    check_finite("rewards", rewards)
    # 2. Weights exp(r / beta), normalised within each label.
    w = reward_weights(rearrange(rewards, "(l n) -> l n", n=N), cfg.beta)  # (L, N)
    ess = effective_sample_size(w)
    w = rearrange(w, "l n -> (l n)")
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    for step in ProgressBar(range(cfg.iterations), "reward-weighted fm", DIFFUSION_POSTFIX, logger,
                            enabled=progress):
        if eval_fn is not None and eval_every and step % eval_every == 0:
            logger.log({"iteration": step, **eval_fn(policy, step)})
        # 3. The weighted flow-matching (or epsilon) loss on a uniform batch of the weighted samples.
        idx = torch.randint(0, L * N, (cfg.batch_size,), generator=g)
        loss = weighted_denoising_loss(policy, x0[idx], labels[idx], w[idx], g)
        check_finite("loss", loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        opt.step()
        logger.log({"iteration": step, "loss": loss.item(), "reward": rewards.mean().item(),
                    "weights/ess_fraction": (ess / N).mean().item()})
    if eval_fn is not None and eval_every:
        logger.log({"iteration": cfg.iterations, **eval_fn(policy, cfg.iterations)})
    return logger
