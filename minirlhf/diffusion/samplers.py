"""Samplers written out step by step, each stochastic step a Gaussian with a known log-prob.

RL on a diffusion model treats denoising as a K-step decision process (Black et al., 2023,
Sec. 4.2): the state is (x_t, t, label), the action is x_s (s < t), the policy is the Gaussian
    pi_theta(x_s | x_t, label) = N(x_s; mu_theta(x_t, t, s), sigma_{t,s}^2 I)
and the reward comes only at the end, r(x_0, label). The log-prob of a step is the Gaussian
density, summed over dimensions (ddpo-pytorch and flow_grpo average it over pixels instead,
which divides every log-ratio by D; we keep the true log-density):
    log pi = -||x_s - mu||^2 / (2 sigma^2) - D log sigma - D/2 log(2 pi)

Two models, two samplers:

* DDPM (epsilon prediction, x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps, cosine schedule ab_t)
  sampled with DDIM (Song et al., 2021, Eq. 12), eta in [0, 1]:
      x0_hat = (x_t - sqrt(1 - ab_t) eps_theta) / sqrt(ab_t)
      sigma  = eta * sqrt((1 - ab_s) / (1 - ab_t)) * sqrt(1 - ab_t / ab_s)          (Eq. 16)
      mu     = sqrt(ab_s) x0_hat + sqrt(1 - ab_s - sigma^2) eps_theta
  eta = 1 is DDPM's ancestral sampler, eta = 0 the deterministic DDIM. The last step lands on
  ab_0 = 1, where sigma = 0: it is deterministic (mask 0), as the final step is in DDPO's runs.
* Rectified flow (velocity prediction, x_t = (1 - t) x_0 + t x_1, v = x_1 - x_0). The ODE
  dx = v dt is sampled by Euler from t = 1 to 0. Flow-GRPO (Liu et al., 2025, Sec. 4.1) turns it
  into an SDE with the same marginals at every t by adding noise and a score correction, the
  score being -(x_t + (1 - t) v) / t for this interpolation:
      dx = [v + sigma_t^2 / (2 t) (x_t + (1 - t) v)] dt + sigma_t dw,   sigma_t = a sqrt(t / (1 - t))
  and its Euler-Maruyama step (dt < 0) is the Gaussian
      mu = x_t + [v + sigma_t^2 / (2 t) (x_t + (1 - t) v)] dt,   std = sigma_t sqrt(|dt|).
  At t = 1, sigma_t is infinite; like flow_grpo we evaluate it with the next grid time in the
  denominator (1 - t_1). a = 0 gives back the ODE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange, repeat
from torch import Tensor

from ..rl import masked_sum

COSINE_S = 0.008
MIN_ALPHA_BAR = 1e-4


def alpha_bar(t: Tensor) -> Tensor:
    """Cosine schedule (Nichol & Dhariwal, 2021, Eq. 17): ab(0) = 1, ab(1) ~ 0 (clamped at 1e-4)."""
    f = torch.cos((t + COSINE_S) / (1 + COSINE_S) * math.pi / 2) ** 2
    f0 = math.cos(COSINE_S / (1 + COSINE_S) * math.pi / 2) ** 2
    return (f / f0).clamp(MIN_ALPHA_BAR, 1.0)


def gaussian_logprob(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(x; mean, std^2 I) summed over the last dim. x, mean: (..., D); std: (...) -> (...)."""
    D = x.shape[-1]
    std = std.clamp(min=1e-12)
    sq = ((x - mean) ** 2).sum(-1)  # (...)
    return -sq / (2 * std ** 2) - D * torch.log(std) - 0.5 * D * math.log(2 * math.pi)


def ddim_mean_std(eps: Tensor, x: Tensor, t: Tensor, s: Tensor, eta: float,
                  clip_x0: float | None = None) -> tuple[Tensor, Tensor]:
    """Mean (B, D) and std (B,) of the DDIM step x_t -> x_s given eps_theta (B, D); t, s: (B,)."""
    ab_t, ab_s = alpha_bar(t)[:, None], alpha_bar(s)[:, None]  # (B, 1)
    ab_s = torch.where(s[:, None] <= 0, torch.ones_like(ab_s), ab_s)  # land exactly on data at s = 0
    x0_hat = (x - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()  # (B, D)
    if clip_x0 is not None:
        x0_hat = x0_hat.clamp(-clip_x0, clip_x0)
        eps = (x - ab_t.sqrt() * x0_hat) / (1 - ab_t).sqrt()  # re-derive eps, as diffusers does
    var = eta ** 2 * (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)  # (B, 1) Eq. 16 of DDIM
    mean = ab_s.sqrt() * x0_hat + (1 - ab_s - var).clamp(min=0).sqrt() * eps
    return mean, var.sqrt()[:, 0]


def flow_sde_mean_std(v: Tensor, x: Tensor, t: Tensor, s: Tensor, noise_level: float,
                      t_cap: float) -> tuple[Tensor, Tensor]:
    """Mean (B, D) and std (B,) of the Flow-GRPO SDE step x_t -> x_s given v_theta (B, D); t, s: (B,)."""
    dt = (s - t)[:, None]  # (B, 1), negative
    tt = t[:, None]
    sigma = noise_level * (tt / (1 - tt.clamp(max=t_cap))).sqrt()  # sigma_t = a sqrt(t / (1 - t))
    drift = v + sigma ** 2 / (2 * tt) * (x + (1 - tt) * v)  # v - sigma^2/2 * score
    mean = x + drift * dt
    return mean, (sigma * (-dt).sqrt())[:, 0]


@dataclass
class Trajectory:
    """K denoising steps of B samples, with what a policy-gradient update needs."""

    xs: Tensor
    """(B, K+1, D) states x_{t_0} (noise) ... x_{t_K} (the sample)."""
    ts: Tensor
    """(K+1,) time grid from 1 to 0."""
    labels: Tensor
    """(B,) the condition (the "prompt")."""
    logps: Tensor
    """(B, K) log pi(x_{t_k+1} | x_{t_k}) under the sampling policy (0 where mask is 0)."""
    mask: Tensor
    """(B, K) 1 where the step is stochastic (std > 0), 0 for deterministic steps."""
    kind: str
    """"ddpm" or "flow"."""
    noise: float
    """eta (DDIM) or a (Flow-GRPO SDE)."""
    clip_x0: float | None = None
    """DDIM's clip of the predicted x0 (None: no clip)."""

    @property
    def samples(self) -> Tensor:
        return self.xs[:, -1]  # (B, D)


def model_kind(net) -> str:
    kind = getattr(net, "kind", None)
    if kind not in ("ddpm", "flow"):
        raise ValueError("net needs a .kind of 'ddpm' or 'flow' (or pass kind= explicitly)")
    return kind


def step_mean_std(net, kind: str, x: Tensor, t: Tensor, s: Tensor, labels: Tensor, noise: float,
                  t_cap: float, clip_x0: float | None = None) -> tuple[Tensor, Tensor]:
    """One step's Gaussian: mean (N, D), std (N,). x: (N, D); t, s, labels: (N,)."""
    out = net(x, t, labels)  # (N, D) eps (DDPM) or v (flow)
    if kind == "ddpm":
        return ddim_mean_std(out, x, t, s, noise, clip_x0)
    return flow_sde_mean_std(out, x, t, s, noise, t_cap)


def sample(net, labels: Tensor, n_steps: int = 20, noise: float = 1.0, kind: str | None = None,
           generator: torch.Generator | None = None, grad_last_k: int = 0, x_init: Tensor | None = None,
           dim: int | None = None, clip_x0: float | None = None, sde_steps: Tensor | None = None) -> Trajectory:
    """Sample B = len(labels) trajectories of n_steps from t = 1 to 0, recording step log-probs.

    noise: eta for DDPM (1 = ancestral), a for flow (0 = ODE). grad_last_k > 0 keeps the graph of
    the last k steps only (DRaFT-K); the states before them are detached. Otherwise no graph.
    sde_steps: (n_steps,) bool, the steps that get `noise` (MixGRPO's window); the others are ODE
    steps (noise 0: deterministic, mask 0, log-prob 0). None: every step. The noise z is drawn at
    every step either way, so a window covering all steps reproduces the plain sampler exactly.
    """
    kind = kind or model_kind(net)
    dim = dim or getattr(getattr(net, "config", None), "dim", None) or (x_init.shape[1] if x_init is not None else None)
    if clip_x0 is None:
        clip_x0 = getattr(getattr(net, "config", None), "clip_x0", None)
    B = labels.shape[0]
    ts = torch.linspace(1.0, 0.0, n_steps + 1)
    t_cap = ts[1].item()
    x = torch.randn(B, dim, generator=generator) if x_init is None else x_init
    xs, logps, masks = [x.detach()], [], []
    for k in range(n_steps):
        with torch.set_grad_enabled(k >= n_steps - grad_last_k):
            t, s = ts[k].expand(B), ts[k + 1].expand(B)
            noise_k = noise if sde_steps is None or bool(sde_steps[k]) else 0.0
            mean, std = step_mean_std(net, kind, x, t, s, labels, noise_k, t_cap, clip_x0)
            stochastic = std > 0  # (B,)
            z = torch.randn(mean.shape, generator=generator)
            x = mean + std[:, None] * z
            logp = gaussian_logprob(x.detach(), mean.detach(), std)
            logps.append(torch.where(stochastic, logp, torch.zeros_like(logp)))
            masks.append(stochastic.float())
        xs.append(x if k == n_steps - 1 else x.detach())
    xs_t = torch.stack([xx.detach() for xx in xs[:-1]] + [xs[-1]], dim=1)  # (B, K+1, D), last keeps graph
    return Trajectory(xs_t, ts, labels, torch.stack(logps, 1), torch.stack(masks, 1), kind, noise, clip_x0)


def _flat_steps(traj: Trajectory, steps: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Steps (default: all K) of B trajectories as one batch of N = B*W: x_t, x_s (N, D), t, s, labels (N,)."""
    B, K1, D = traj.xs.shape
    if steps is None:
        x_t, x_s, t, s = traj.xs[:, :-1], traj.xs[:, 1:], traj.ts[:-1], traj.ts[1:]
    else:  # (W,) step indices: only these are evaluated (MixGRPO's window)
        x_t, x_s, t, s = traj.xs[:, steps], traj.xs[:, steps + 1], traj.ts[steps], traj.ts[steps + 1]
    W = t.shape[0]
    # (B*W, D) and (B*W,): trajectory-major, each trajectory's W steps together
    return (rearrange(x_t.detach(), "b w d -> (b w) d"), rearrange(x_s.detach(), "b w d -> (b w) d"),
            repeat(t, "w -> (b w)", b=B), repeat(s, "w -> (b w)", b=B), repeat(traj.labels, "b -> (b w)", w=W))


def step_means(net, traj: Trajectory, steps: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Re-evaluate stored steps under `net` (all K, or the (W,) indices `steps`): means (B, W, D), stds (B, W)."""
    B, _, D = traj.xs.shape
    x_t, _, t, s, labels = _flat_steps(traj, steps)
    mean, std = step_mean_std(net, traj.kind, x_t, t, s, labels, traj.noise, traj.ts[1].item(), traj.clip_x0)
    return rearrange(mean, "(b w) d -> b w d", b=B), rearrange(std, "(b w) -> b w", b=B)


def trajectory_logprobs(net, traj: Trajectory) -> Tensor:
    """log pi_net(x_{t_k+1} | x_{t_k}) for every stored step, with grad: (B, K), 0 where mask is 0.

    The diffusion counterpart of `lm.token_logprobs`: the actions are fixed, the policy is re-scored.
    """
    mean, std = step_means(net, traj)
    logp = gaussian_logprob(traj.xs[:, 1:].detach(), mean, std)  # (B, K)
    return torch.where(traj.mask.bool(), logp, torch.zeros_like(logp))


def gaussian_kl_same_std(mean_p: Tensor, mean_q: Tensor, std: Tensor) -> Tensor:
    """KL(N(mean_p, std^2 I) || N(mean_q, std^2 I)) = ||mean_p - mean_q||^2 / (2 std^2). (..., D) -> (...)."""
    return ((mean_p - mean_q) ** 2).sum(-1) / (2 * std.clamp(min=1e-12) ** 2)


def path_kl(net, ref, traj: Trajectory) -> Tensor:
    """Per-step KL(pi_net || pi_ref) in closed form, (B, K) (0 on deterministic steps).

    Summed over steps it is the KL between the two processes' path distributions (chain rule),
    an upper bound on the KL between the final samples' distributions.
    """
    mean, std = step_means(net, traj)
    with torch.no_grad():
        mean_ref, _ = step_means(ref, traj)
    kl = gaussian_kl_same_std(mean, mean_ref, std)
    return torch.where(traj.mask.bool(), kl, torch.zeros_like(kl))


@torch.no_grad()
def sample_kl(net, ref, labels: Tensor, n_steps: int = 20, noise: float = 1.0,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Fresh samples of `net` (B, D) and their path KL to `ref` (B,), the "KL" axis of reward-vs-KL plots."""
    traj = sample(net, labels, n_steps, noise, generator=generator)
    return traj.samples, masked_sum(path_kl(net, ref, traj), traj.mask, dim=1)
