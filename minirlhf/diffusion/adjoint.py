"""Adjoint matching (Domingo-Enrich, Drozdzal, Karrer and Chen, 2024, "Adjoint Matching: Fine-tuning
Flow and Diffusion Generative Models with Memoryless Stochastic Optimal Control").

Reward fine-tuning as stochastic optimal control. Write the sampler as a base process plus a control u:

    dX = [b(X, t) + sigma(t) u(X, t)] dt + sigma(t) dW,      KL(path_u || path_base) = E int ||u||^2 / 2 dt

and minimise  E[ int ||u||^2 / 2 dt - r(X_data) / beta ].  Its optimum tilts the *path* distribution,
p*(path) = p_base(path) exp(r(x_data) / beta) / Z. The data marginal of that is the target
p_base(x) exp(r(x) / beta) / Z (target.py) only if the noise X_noise and the sample X_data are independent
under the base process: otherwise the tilt also reaches back to the starting noise, which the model
cannot change ("value function bias", Sec. 3). Three ingredients:

1. The memoryless noise schedule (Sec. 4). For rectified flow, x_t = (1 - t) x_data + t x_noise (t = 1 is
   noise, as everywhere in this package), it is sigma(t)^2 = 2 t / (1 - t): the Flow-GRPO SDE of
   samplers.py with a = sqrt(2), whose drift becomes 2 v + x / (1 - t). For DDPM it is the ancestral
   sampler (DDIM eta = 1). Flow-GRPO's a = 0.7 is *not* memoryless: its KL-regularised optimum is not p*.
2. The lean adjoint (Sec. 5, Eq. 37-38): a(1) = -grad r(X_data) / beta, carried back along the sampled
   trajectory with the *base* drift only, da/dt = -a^T grad_x b_base(X_t, t). In discrete time each
   sampler step is x_{k+1} = m_k(x_k) + s_k z (m_k the base step's mean, s_k its std), and the lean
   adjoint is a vector-Jacobian product per step:
       a_K = -grad r(x_K) / beta,        a_k = J_{m_k}(x_k)^T a_{k+1}         (`lean_adjoint`)
   (the terms with grad u of the full adjoint are dropped: they vanish at the optimum).
3. The regression (Eq. 39): || u_theta(X_t, t) + sigma(t)^T a(t) ||^2, with trajectories sampled from the
   current model and detached. In discrete time the control of step k is the shift of its mean in units
   of its std, u_k = (mu_theta - m_k) / s_k (so that KL_k = ||u_k||^2 / 2), and the loss is
       sum_k || (mu_theta(x_k) - m_k(x_k)) / s_k + s_k a_{k+1} ||^2      (`adjoint_matching_loss`)
   i.e. the fine-tuned step mean regresses onto the base step mean moved by s_k^2 * (-a_{k+1}), the
   reward gradient carried back to x_{k+1}. At the optimum that is exact (Tweedie / Stein for a
   Gaussian tilted by exp(V)): the optimal step's mean is m_k + s_k^2 E[grad V_{k+1}(x_{k+1}) | x_k].

How this differs from the paper: discrete-time steps of the package's samplers instead of an SDE
solver; no reward-gradient clipping or time subsampling; a tiny MLP trained in full.

Run: `train_adjoint_matching(load_diffusion_model("diffusion-points-flow"), box_distance_reward,
AdjointMatchingConfig(beta=1.0))`; its samples should approach target.points_target(reward, 1.0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..errors import check_config
from ..progress import DIFFUSION_POSTFIX, ProgressBar
from ..utils import MetricsLogger, check_finite
from .ddpo import frozen_copy
from .samplers import Trajectory, sample, step_mean_std, step_means

MEMORYLESS = {"flow": math.sqrt(2.0), "ddpm": 1.0}
"""The memoryless noise of each sampler: a = sqrt(2) for the flow SDE, eta = 1 (ancestral) for DDIM."""


def memoryless_sigma(t: Tensor) -> Tensor:
    """sigma(t) = sqrt(2 t / (1 - t)) for rectified flow, t = 1 noise, t = 0 data (Adjoint Matching Eq. 16,
    with alpha_t = 1 - t, beta_t = t in the paper's time: sigma(t)^2 = 2 beta_t (alpha_dot_t / alpha_t beta_t - beta_dot_t))."""
    return (2 * t / (1 - t)).sqrt()


@dataclass
class AdjointMatchingConfig:
    """Adjoint matching on a tiny flow or DDPM model; CPU-sized defaults."""

    iterations: int = 150
    """Optimizer steps, each on a fresh batch of trajectories from the current model."""
    batch_size: int = 128
    """Trajectories per step (labels drawn uniformly)."""
    n_steps: int = 20
    """Sampler steps K."""
    beta: float = 1.0
    """KL strength: the target is p*(x) proportional to p_base(x) exp(r(x) / beta)."""
    noise: float | None = None
    """Sampler noise (flow a, DDIM eta). None: the memoryless one (sqrt(2), 1). Others aim elsewhere."""
    lr: float = 1e-3
    """AdamW learning rate."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    seed: int = 0
    """Seed for labels and sampling noise."""

    def validate(self) -> None:
        """Raise ConfigError naming the flag of the first field out of range (before anything loads)."""
        check_config(self, at_least_1=("iterations", "batch_size", "n_steps"), positive=("beta", "lr", "noise"),
                     non_negative=("max_grad_norm",))


def reward_grad(reward_fn: Callable[[Tensor, Tensor], Tensor], labels: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """(r (B,), grad_x r (B, D)) of a differentiable reward at x (B, D)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        r = reward_fn(labels, x)
        (g,) = torch.autograd.grad(r.sum(), x)
    return r.detach(), g


def lean_adjoint(base, traj: Trajectory, grad_r: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """The lean adjoint along a stored trajectory, and the base step means on it.

    a_K = -grad r(x_K) / beta;  a_k = J_{m_k}(x_k)^T a_{k+1}, m_k the base model's step mean (one
    vector-Jacobian product per step, backwards from the sample to the noise).
    Returns (a (B, K+1, D), base means m_k(x_k) (B, K, D)). grad_r: (B, D).
    """
    B, K1, D = traj.xs.shape
    K = K1 - 1
    t_cap = traj.ts[1].item()
    a = -grad_r / beta  # (B, D)
    adj, means = [a], [None] * K
    for k in reversed(range(K)):
        x = traj.xs[:, k].detach().requires_grad_(True)
        t, s = traj.ts[k].expand(B), traj.ts[k + 1].expand(B)
        with torch.enable_grad():
            m, _ = step_mean_std(base, traj.kind, x, t, s, traj.labels, traj.noise, t_cap, traj.clip_x0)
            (a,) = torch.autograd.grad(m, x, grad_outputs=a)  # a_k = J^T a_{k+1}
        means[k] = m.detach()
        adj.append(a)
    return torch.stack(adj[::-1], dim=1), torch.stack(means, dim=1)


def adjoint_matching_loss(mean: Tensor, base_mean: Tensor, std: Tensor, adj_next: Tensor, mask: Tensor) -> Tensor:
    """sum_k || (mu_theta - m_k) / s_k + s_k a_{k+1} ||^2, averaged over the batch (Adjoint Matching Eq. 39).

    mean, base_mean, adj_next: (B, K, D); std, mask: (B, K). A deterministic step (mask 0, s_k = 0) cannot
    move without infinite KL: its target is the base mean, weighted by the smallest stochastic std.
    """
    s = std[..., None]  # (B, K, 1)
    s_min = std[mask.bool()].min() if mask.any() else torch.tensor(1.0)
    target = torch.where(mask.bool()[..., None], base_mean - s ** 2 * adj_next, base_mean)  # (B, K, D)
    scale = torch.where(mask.bool()[..., None], s, s_min)
    return (((mean - target) / scale) ** 2).sum(-1).sum(-1).mean()


def train_adjoint_matching(policy, reward_fn: Callable[[Tensor, Tensor], Tensor],
                           cfg: AdjointMatchingConfig | None = None, ref=None,
                           eval_fn: Callable[[object, int], dict] | None = None, eval_every: int = 0,
                           logger: MetricsLogger | None = None, progress: bool = False) -> MetricsLogger:
    """Fine-tune `policy` in place towards p_base exp(r / beta); `ref` (the base) defaults to a frozen copy.
    reward_fn must be differentiable."""
    cfg = cfg or AdjointMatchingConfig()
    cfg.validate()  # a bad value stops here, before any work
    ref = ref if ref is not None else frozen_copy(policy)
    noise = MEMORYLESS[policy.kind] if cfg.noise is None else cfg.noise
    g = torch.Generator().manual_seed(cfg.seed)
    logger = logger or MetricsLogger()
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    for it in ProgressBar(range(cfg.iterations), "adjoint matching", DIFFUSION_POSTFIX, logger,
                          enabled=progress):
        if eval_fn is not None and eval_every and it % eval_every == 0:
            logger.log({"iteration": it, **eval_fn(policy, it)})
        # 1. Trajectories of the current model with the memoryless sampler (no graph).
        labels = torch.randint(0, policy.config.n_labels, (cfg.batch_size,), generator=g)
        with torch.no_grad():
            traj = sample(policy, labels, cfg.n_steps, noise, generator=g)
        # 2. Reward gradient at the samples, 3. the lean adjoint backwards along the base model.
        rewards, grad_r = reward_grad(reward_fn, labels, traj.samples)
        check_finite("rewards", rewards)
        adj, base_mean = lean_adjoint(ref, traj, grad_r, cfg.beta)  # (B, K+1, D), (B, K, D)
        # 4. Regress the control of every step onto -s_k a_{k+1}.
        mean, std = step_means(policy, traj)  # (B, K, D), (B, K)
        loss = adjoint_matching_loss(mean, base_mean, std, adj[:, 1:], traj.mask)
        check_finite("loss", loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        opt.step()
        with torch.no_grad():  # the path KL of this batch: sum_k ||u_k||^2 / 2
            u = (mean - base_mean) / std.clamp(min=1e-12)[..., None]
            kl = (0.5 * (u ** 2).sum(-1) * traj.mask).sum(1).mean()
        logger.log({"iteration": it, "reward": rewards.mean().item(), "loss": loss.item(),
                    "objective/kl": kl.item(), "grad_norm": grad_norm.item()})
    if eval_fn is not None and eval_every:
        logger.log({"iteration": cfg.iterations, **eval_fn(policy, cfg.iterations)})
    return logger
