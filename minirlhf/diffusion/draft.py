"""Reward backpropagation through the sampler: DRaFT-K (Clark et al., 2024, "Directly Fine-Tuning
Diffusion Models on Differentiable Rewards") and AlignProp (Prabhudesai et al., 2023).

When the reward is differentiable, skip the policy gradient: sample x_0 with a deterministic
sampler, keep the computation graph, and ascend the reward directly (DRaFT, Algorithm 1):

    loss = - 1/B sum_b r(x_0^b, c_b),    x_0 = sampler_theta(x_1, c)
    DRaFT-K: gradients flow through the last K denoising steps only; x_t before them is
             detached (stop-gradient). K = 1 is cheap and, in the paper, works about as well.
    AlignProp: K drawn at random each iteration (`random_k=True`), a randomised truncation.

This is the most sample-efficient method here and the most prone to over-optimisation: the
gradient of a learned reward points at whatever moves the reward, on-manifold or not (adversarial
images for a classifier reward). The notebook shows it against the gold classifier.

How this differs from the papers: no LoRA and no gradient checkpointing (the model is tiny); a
KL term is not part of DRaFT, so the KL is only measured, not penalised.

Run: `train_draft(policy, differentiable_reward_fn, DRaFTConfig(k=1))`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..errors import ConfigError, check_config
from ..progress import DIFFUSION_POSTFIX, ProgressBar
from ..utils import MetricsLogger, check_finite
from .samplers import sample


@dataclass
class DRaFTConfig:
    """DRaFT-K / AlignProp on a tiny DDPM or flow model; CPU-sized defaults."""

    iterations: int = 60
    """Optimizer steps (one fresh batch each)."""
    batch_size: int = 64
    """Samples per step (labels drawn uniformly)."""
    n_steps: int = 20
    """Denoising steps of the sampler."""
    noise: float = 0.0
    """Sampler noise while training: DDIM eta or flow a; 0 = deterministic, as in DRaFT."""
    k: int = 1
    """Backpropagate through the last k denoising steps (DRaFT-K)."""
    random_k: bool = False
    """AlignProp-style: draw k uniformly from 1..k each iteration."""
    lr: float = 3e-4
    """AdamW learning rate."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    seed: int = 0
    """Seed for labels and noise."""

    def validate(self) -> None:
        """Raise ConfigError naming the flag of the first field out of range (before anything loads)."""
        check_config(self, at_least_1=("iterations", "batch_size", "n_steps", "k"), positive=("lr",),
                     non_negative=("noise", "max_grad_norm"))
        if self.k > self.n_steps:
            raise ConfigError(f"--k ({self.k}) must be <= --n-steps ({self.n_steps})")


def draft_loss(rewards: Tensor) -> Tensor:
    """DRaFT's objective to minimise: -mean reward of samples that keep their graph. rewards: (B,)."""
    return -rewards.mean()


def train_draft(policy, reward_fn: Callable[[Tensor, Tensor], Tensor], cfg: DRaFTConfig | None = None,
                eval_fn: Callable[[object, int], dict] | None = None, eval_every: int = 0,
                logger: MetricsLogger | None = None, progress: bool = False) -> MetricsLogger:
    """Fine-tune `policy` in place by backpropagating a differentiable reward through sampling."""
    cfg = cfg or DRaFTConfig()
    cfg.validate()  # a bad value stops here, before any work
    g = torch.Generator().manual_seed(cfg.seed)
    logger = logger or MetricsLogger()
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    for it in ProgressBar(range(cfg.iterations), "draft", DIFFUSION_POSTFIX, logger, enabled=progress):
        if eval_fn is not None and eval_every and it % eval_every == 0:
            logger.log({"iteration": it, **eval_fn(policy, it)})
        # 1. Sample with the graph kept for the last k steps only.
        k = int(torch.randint(1, cfg.k + 1, (1,), generator=g)) if cfg.random_k else cfg.k
        labels = torch.randint(0, policy.config.n_labels, (cfg.batch_size,), generator=g)
        traj = sample(policy, labels, cfg.n_steps, cfg.noise, generator=g, grad_last_k=k)
        # 2. Differentiable reward of x_0; 3. ascend it.
        rewards = reward_fn(labels, traj.samples)  # (B,) with graph
        check_finite("rewards", rewards)
        loss = draft_loss(rewards)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        opt.step()
        logger.log({"iteration": it, "reward": rewards.mean().item(), "loss": loss.item(), "k": k,
                    "grad_norm": grad_norm.item()})
    if eval_fn is not None and eval_every:
        logger.log({"iteration": cfg.iterations, **eval_fn(policy, cfg.iterations)})
    return logger
