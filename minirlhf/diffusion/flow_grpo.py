"""Flow-GRPO: GRPO for flow-matching models (Liu et al., 2025, "Flow-GRPO: Training Flow Matching
Models via Online RL").

A rectified-flow model samples with a deterministic ODE, so it has no step log-probs to do
policy gradient with. Flow-GRPO's two ideas:

1. ODE -> SDE with the same marginals (samplers.flow_sde_mean_std): at every t the SDE
       dx = [v + sigma_t^2 / (2t) (x + (1 - t) v)] dt + sigma_t dw,   sigma_t = a sqrt(t / (1 - t))
   has the ODE's distribution of x_t, so exploring with it does not change what the model
   generates, and each Euler-Maruyama step is a Gaussian with a log-prob.
2. GRPO over the denoising steps: G samples per prompt, group-relative advantages, a clipped
   ratio per step and a KL penalty to the base model:
       J = E[ 1/G sum_i 1/K sum_t ( min(r_t A_i, clip(r_t, 1 - eps, 1 + eps) A_i) - beta KL(pi_theta || pi_ref)_t ) ]
   with A_i = (R_i - mean(R_group)) / std(R_group) (`rl.group_advantages`). Both policies' steps
   are Gaussians with the same std, so the per-step KL is exact:
       KL_t = ||mu_theta(x_t) - mu_ref(x_t)||^2 / (2 std_t^2)
   (`kl_estimator="k3"` swaps in GRPO's sample-based k3 from `rl.kl_k3` on the same step log-probs.)

3. (MixGRPO, Li et al., 2025, "MixGRPO: Unlocking Flow-based GRPO Efficiency with Mixed ODE-SDE";
   DanceGRPO, Xue et al., 2025, also trains on a subset of the steps) Flow-GRPO pays for all K steps twice:
   noise at every step, and a policy forward + backward and a reference forward on every step in the update.
   A mixed ODE-SDE sampler puts noise only on W consecutive steps, the *window* (`sde_window`,
   `window_start`); the other steps are the deterministic ODE, have no log-prob (mask 0), and are never
   re-scored: the update costs W/K of Flow-GRPO's. Both samplers have the same marginals (the SDE and
   the ODE do at every t), so the window only changes where exploration happens. MixGRPO slides the
   window from the noisy start towards the data as training goes (`window_shift_every`,
   `window_stride`); `sde_window=0` (or K) is plain Flow-GRPO, exactly. Not done here: MixGRPO's
   higher-order ODE solver outside the window (MixGRPO-Flash), which also shortens sampling.

How this differs from flow_grpo: no LoRA, no CFG, no "denoising reduction" by default (train and
evaluate with the same number of steps; set `n_steps` lower to get it); step log-probs summed over
dimensions (not averaged), hence a clip range of 0.2 instead of 1e-4.

Run: `train_flow_grpo(policy, reward_fn, FlowGRPOConfig())` with a shipped flow model
(`load_diffusion_model("diffusion-points-flow")`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import time

import torch
from einops import rearrange, repeat
from torch import Tensor

from ..errors import ConfigError, check_config
from ..progress import DIFFUSION_POSTFIX, ProgressBar
from ..rl import clip_fractions, clipped_surrogate, group_advantages, kl_k3, masked_mean
from ..utils import MetricsLogger, check_finite
from .ddpo import frozen_copy, select
from .samplers import gaussian_kl_same_std, gaussian_logprob, sample, step_means


@dataclass
class FlowGRPOConfig:
    """Flow-GRPO on a tiny rectified-flow model; CPU-sized defaults."""

    iterations: int = 40
    """Sampling rounds."""
    labels_per_batch: int = 4
    """Distinct labels ("prompts") per round."""
    samples_per_label: int = 16
    """G: group size per label."""
    n_steps: int = 20
    """Denoising steps K of the SDE sampler."""
    noise_level: float = 0.7
    """a in sigma_t = a sqrt(t / (1 - t)) (Flow-GRPO uses 0.7)."""
    beta: float = 0.01
    """Weight of the KL to the base model."""
    kl_estimator: str = "analytic"
    """"analytic" (closed-form Gaussian KL, as Flow-GRPO) or "k3" (rl.kl_k3 on the step log-probs)."""
    clip_range: float = 0.2
    """PPO clip epsilon on the per-step ratio."""
    minibatches: int = 2
    """Updates per round (each on whole trajectories)."""
    inner_epochs: int = 1
    """Passes over each round's trajectories."""
    lr: float = 1e-3
    """AdamW learning rate."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    seed: int = 0
    """Seed for labels and noise."""
    sde_window: int = 0
    """W: consecutive steps with SDE noise and the loss (MixGRPO); the rest are ODE steps, never
    re-scored. 0: every step (plain Flow-GRPO)."""
    window_start: int = 0
    """First step of the window at iteration 0 (step 0 is the noisiest, t = 1)."""
    window_shift_every: int = 0
    """Slide the window by `window_stride` steps every this many iterations (MixGRPO's sliding
    window; it stops at the last position K - W). 0: a fixed window."""
    window_stride: int = 1
    """Steps the window moves per slide."""

    def validate(self) -> None:
        """Raise ConfigError naming the flag of the first field out of range (before anything loads)."""
        check_config(self, at_least_1=("iterations", "labels_per_batch", "n_steps", "minibatches", "inner_epochs"),
                     at_least={"samples_per_label": 2}, positive=("lr",),
                     non_negative=("noise_level", "beta", "clip_range", "max_grad_norm", "sde_window",
                                   "window_start", "window_shift_every"),
                     choices={"kl_estimator": ("analytic", "k3")})
        check_config(self, at_least_1=("window_stride",))
        if self.sde_window > self.n_steps:
            raise ConfigError(f"--sde-window ({self.sde_window}) must be <= --n-steps ({self.n_steps}); 0 = every step")
        if self.sde_window and self.window_start + self.sde_window > self.n_steps:
            raise ConfigError(f"--window-start ({self.window_start}) + --sde-window ({self.sde_window}) must be "
                              f"<= --n-steps ({self.n_steps})")


def sde_window(n_steps: int, size: int, start: int) -> Tensor:
    """(K,) bool: True on the W = size steps start..start+W-1 that get SDE noise; size 0: every step."""
    steps = torch.arange(n_steps)
    if size == 0:
        return torch.ones(n_steps, dtype=torch.bool)
    return (steps >= start) & (steps < start + size)


def window_start_at(cfg: FlowGRPOConfig, iteration: int) -> int:
    """MixGRPO's sliding window: start + stride * (iteration // shift_every), stopped at K - W."""
    if not cfg.sde_window or not cfg.window_shift_every:
        return cfg.window_start
    return min(cfg.window_start + cfg.window_stride * (iteration // cfg.window_shift_every), cfg.n_steps - cfg.sde_window)


def flow_grpo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, kl: Tensor, mask: Tensor,
                   clip_range: float, beta: float) -> tuple[Tensor, Tensor]:
    """-J of Flow-GRPO: clipped surrogate per step + beta * KL per step, mean over steps and samples.

    logp, old_logp, kl, mask: (B, K); advantages: (B,). Returns (loss, ratio (B, K)).
    """
    surrogate, ratio = clipped_surrogate(logp, old_logp, advantages[:, None].expand_as(logp), clip_range)
    return masked_mean(surrogate + beta * kl, mask), ratio


def train_flow_grpo(policy, reward_fn: Callable[[Tensor, Tensor], Tensor], cfg: FlowGRPOConfig | None = None,
                    ref=None, eval_fn: Callable[[object, int], dict] | None = None, eval_every: int = 0,
                    logger: MetricsLogger | None = None, progress: bool = False) -> MetricsLogger:
    """Train a flow `policy` (updated in place); `ref` defaults to a frozen copy of its start."""
    cfg = cfg or FlowGRPOConfig()
    cfg.validate()  # a bad value stops here, before any work
    if policy.kind != "flow":
        raise ValueError(f"Flow-GRPO trains a rectified-flow model, got kind={policy.kind!r}")
    ref = ref if ref is not None else frozen_copy(policy)
    g = torch.Generator().manual_seed(cfg.seed)
    logger = logger or MetricsLogger()
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    L, G = cfg.labels_per_batch, cfg.samples_per_label
    for it in ProgressBar(range(cfg.iterations), "flow grpo", DIFFUSION_POSTFIX, logger, enabled=progress):
        if eval_fn is not None and eval_every and it % eval_every == 0:
            logger.log({"iteration": it, **eval_fn(policy, it)})
        # 1. Sample G trajectories per label with the SDE (same marginals as the ODE); with a window,
        #    SDE steps inside it and ODE steps outside (MixGRPO).
        t0 = time.perf_counter()
        start = window_start_at(cfg, it)
        window = sde_window(cfg.n_steps, cfg.sde_window, start) if cfg.sde_window else None  # (K,) or None
        steps = window.nonzero()[:, 0] if window is not None else None  # (W,) the steps re-scored below
        labels = repeat(torch.randperm(policy.config.n_labels, generator=g)[:L], "l -> (l g)", g=G)  # (L*G,)
        with torch.no_grad():
            traj = sample(policy, labels, cfg.n_steps, cfg.noise_level, generator=g, sde_steps=window)
        t_sample = time.perf_counter() - t0
        # 2. Score, 3. group-relative advantages per label.
        rewards = reward_fn(labels, traj.samples).detach().float()  # (L*G,)
        check_finite("rewards", rewards)
        adv = rearrange(group_advantages(rearrange(rewards, "(l g) -> l g", g=G)), "l g -> (l g)")  # (L*G,)
        stats = []
        t0 = time.perf_counter()
        for _ in range(cfg.inner_epochs):
            for idx in torch.randperm(L * G, generator=g).chunk(cfg.minibatches):
                sub = select(traj, idx)
                # 4. Re-score every step (or only the window's W) under the policy and the reference.
                if steps is None:
                    x_s, old_logp, mask = sub.xs[:, 1:], sub.logps, sub.mask  # (b, K, D), (b, K), (b, K)
                else:
                    x_s, old_logp, mask = sub.xs[:, steps + 1], sub.logps[:, steps], sub.mask[:, steps]  # W, not K
                mean, std = step_means(policy, sub, steps)  # (b, W, D), (b, W)
                logp = gaussian_logprob(x_s, mean, std)  # (b, W)
                logp = torch.where(mask.bool(), logp, torch.zeros_like(logp))
                with torch.no_grad():
                    mean_ref, _ = step_means(ref, sub, steps)
                if cfg.kl_estimator == "analytic":
                    kl = gaussian_kl_same_std(mean, mean_ref, std)  # (b, W)
                else:
                    kl = kl_k3(logp, gaussian_logprob(x_s, mean_ref, std))
                # 5. Clipped surrogate + beta * KL, one step of AdamW.
                loss, ratio = flow_grpo_loss(logp, old_logp, adv[idx], kl, mask, cfg.clip_range, cfg.beta)
                check_finite("loss", loss)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                opt.step()
                with torch.no_grad():
                    a = adv[idx][:, None].expand_as(ratio)
                    stats.append({"loss": loss.item(), "policy/ratio": masked_mean(ratio, mask).item(),
                                  "objective/kl": (kl * mask).sum(1).mean().item(),
                                  "policy/clipfrac": clip_fractions(ratio, a, mask, cfg.clip_range)["clipfrac"].item()})
        # 6. Log the round. objective/kl sums the window's steps only; time/* are this round's seconds.
        row = {"iteration": it, "reward": rewards.mean().item(), "reward/std": rewards.std().item(),
               "window/start": start, "window/size": cfg.sde_window or cfg.n_steps,
               "time/sample_s": t_sample, "time/update_s": time.perf_counter() - t0}
        row.update({k: sum(s[k] for s in stats) / len(stats) for k in stats[0]})
        row["policy/first_ratio"] = stats[0]["policy/ratio"]
        logger.log(row)
    if eval_fn is not None and eval_every:
        logger.log({"iteration": cfg.iterations, **eval_fn(policy, cfg.iterations)})
    return logger

