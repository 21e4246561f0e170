"""Reward-based initial-noise optimisation: change the starting noise, not the weights (ReNO, Eyring et
al., 2024, "ReNO: Enhancing One-step Text-to-Image Models through Reward-based Noise Optimization").

A deterministic sampler (flow ODE, DDIM eta = 0) is a map x = G(z) from noise z ~ N(0, I) to samples. At
test time, for each sample separately, ascend the reward through G with respect to z, with a prior term
that keeps z looking like Gaussian noise:

    J(z) = r(G(z)) + beta log N(z; 0, I) = r(G(z)) - beta ||z||^2 / 2       (ReNO: reward + norm regulariser)

Gradient ascent on J finds a mode of each z's basin: every sample climbs to a local reward maximum,
and the distribution collapses (what ReNO wants: one best image per prompt). The same J read as a
log-density tells the other story. Langevin dynamics on z,

    z <- z + eta grad J(z) / beta + sqrt(2 eta) xi,     xi ~ N(0, I)          (`langevin=True`)

samples z from N(z) exp(r(G(z)) / beta) / Z, and since G pushes N(0, I) to the model's p_base, G pushes
this tilted noise to p_base(x) exp(r(x) / beta) / Z: exactly the target of KL-regularised fine-tuning
(target.py), with no training at all, for the price of backpropagating through the sampler at every
Langevin step (unadjusted Langevin: a bias of order eta, and slow crossing between the basins of
separated modes).

How this differs from ReNO: no one-step model (G is 20 Euler steps of the flow ODE), a Gaussian prior
in place of ReNO's norm regulariser (the same thing in spirit), gradients clipped per sample.

Run: `optimise_noise(load_diffusion_model("diffusion-points-flow"), labels, box_distance_reward, NoiseOptConfig())`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..errors import check_config
from ..progress import ProgressBar
from ..utils import MetricsLogger, check_finite
from .samplers import sample


@dataclass
class NoiseOptConfig:
    """Per-sample optimisation (or Langevin sampling) of the starting noise; CPU-sized defaults."""

    steps: int = 100
    """Gradient (or Langevin) steps on the noise."""
    lr: float = 0.05
    """Step size eta on z."""
    beta: float = 1.0
    """Weight of the Gaussian prior -||z||^2 / 2 (and the temperature of the Langevin target)."""
    langevin: bool = False
    """False: ReNO-style ascent (collapses to modes). True: Langevin, samples of p_base exp(r / beta)."""
    n_steps: int = 20
    """Steps of the deterministic sampler G."""
    max_grad_norm: float = 10.0
    """Each sample's gradient is clipped to this norm (the map G is steep between modes)."""
    seed: int = 0
    """Seed of the starting noise and the Langevin noise."""

    def validate(self) -> None:
        """Raise ConfigError naming the flag of the first field out of range (before anything loads)."""
        check_config(self, at_least_1=("steps", "n_steps"), positive=("lr", "beta", "max_grad_norm"))


def noise_objective(reward: Tensor, z: Tensor, beta: float) -> Tensor:
    """J(z) = r(G(z)) - beta ||z||^2 / 2 per sample. reward: (B,); z: (B, D) -> (B,)."""
    return reward - beta * 0.5 * (z ** 2).sum(-1)


def generate(net, z: Tensor, labels: Tensor, n_steps: int) -> Tensor:
    """G(z): the deterministic sampler (flow ODE / DDIM eta = 0) from z, differentiable. (B, D) -> (B, D)."""
    return sample(net, labels, n_steps, noise=0.0, x_init=z, grad_last_k=n_steps).samples


def optimise_noise(net, labels: Tensor, reward_fn: Callable[[Tensor, Tensor], Tensor],
                   cfg: NoiseOptConfig | None = None, z_init: Tensor | None = None,
                   logger: MetricsLogger | None = None, progress: bool = False) -> tuple[Tensor, Tensor, MetricsLogger]:
    """Optimise (or Langevin-sample) the starting noise of each of B = len(labels) samples; the model is frozen.

    Returns (z (B, D), samples G(z) (B, D), logger). reward_fn must be differentiable.
    """
    cfg = cfg or NoiseOptConfig()
    cfg.validate()  # a bad value stops here, before any work
    g = torch.Generator().manual_seed(cfg.seed)
    logger = logger or MetricsLogger()
    for p in net.parameters():
        p.requires_grad_(False)
    z = torch.randn(labels.shape[0], net.config.dim, generator=g) if z_init is None else z_init.clone()
    for step in ProgressBar(range(cfg.steps), "noise optimisation", {"reward": "reward", "z_norm": "|z|"}, logger,
                            enabled=progress):
        # 1. Generate through the whole sampler with the graph, 2. J(z) and its gradient with respect to z.
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            x = generate(net, z, labels, cfg.n_steps)
            r = reward_fn(labels, x)  # (B,)
            check_finite("rewards", r)
            (grad,) = torch.autograd.grad(noise_objective(r, z, cfg.beta).sum(), z)  # (B, D)
        # 3. Clip each sample's gradient, then ascend (or take a Langevin step on J / beta).
        norm = grad.norm(dim=-1, keepdim=True)
        grad = grad * (cfg.max_grad_norm / norm.clamp(min=cfg.max_grad_norm))
        with torch.no_grad():
            if cfg.langevin:
                z = z + cfg.lr * grad / cfg.beta + (2 * cfg.lr) ** 0.5 * torch.randn(z.shape, generator=g)
            else:
                z = z + cfg.lr * grad
        logger.log({"step": step, "reward": r.mean().item(), "z_norm": z.norm(dim=-1).mean().item()})
    with torch.no_grad():
        x = generate(net, z, labels, cfg.n_steps)
    return z.detach(), x.detach(), logger
