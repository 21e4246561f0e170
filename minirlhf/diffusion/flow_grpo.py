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

How this differs from flow_grpo: no LoRA, no CFG, no "denoising reduction" by default (train and
evaluate with the same number of steps; set `n_steps` lower to get it); step log-probs summed over
dimensions (not averaged), hence a clip range of 0.2 instead of 1e-4.

Run: `train_flow_grpo(policy, reward_fn, FlowGRPOConfig())` with a shipped flow model
(`load_diffusion_model("diffusion-points-flow")`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..errors import check_config
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

    def validate(self) -> None:
        """Raise ConfigError naming the flag of the first field out of range (before anything loads)."""
        check_config(self, at_least_1=("iterations", "labels_per_batch", "n_steps", "minibatches", "inner_epochs"),
                     at_least={"samples_per_label": 2}, positive=("lr",),
                     non_negative=("noise_level", "beta", "clip_range", "max_grad_norm"),
                     choices={"kl_estimator": ("analytic", "k3")})


def flow_grpo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, kl: Tensor, mask: Tensor,
                   clip_range: float, beta: float) -> tuple[Tensor, Tensor]:
    """-J of Flow-GRPO: clipped surrogate per step + beta * KL per step, mean over steps and samples.

    logp, old_logp, kl, mask: (B, K); advantages: (B,). Returns (loss, ratio (B, K)).
    """
    surrogate, ratio = clipped_surrogate(logp, old_logp, advantages[:, None].expand_as(logp), clip_range)
    return masked_mean(surrogate + beta * kl, mask), ratio


def train_flow_grpo(policy, reward_fn: Callable[[Tensor, Tensor], Tensor], cfg: FlowGRPOConfig | None = None,
                    ref=None, eval_fn: Callable[[object, int], dict] | None = None, eval_every: int = 0,
                    logger: MetricsLogger | None = None) -> MetricsLogger:
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
    for it in range(cfg.iterations):
        if eval_fn is not None and eval_every and it % eval_every == 0:
            logger.log({"iteration": it, **eval_fn(policy, it)})
        # 1. Sample G trajectories per label with the SDE (same marginals as the ODE).
        labels = torch.randperm(policy.config.n_labels, generator=g)[:L].repeat_interleave(G)  # (L*G,)
        with torch.no_grad():
            traj = sample(policy, labels, cfg.n_steps, cfg.noise_level, generator=g)
        # 2. Score, 3. group-relative advantages per label.
        rewards = reward_fn(labels, traj.samples).detach().float()  # (L*G,)
        check_finite("rewards", rewards)
        adv = group_advantages(rewards.view(L, G)).view(-1)  # (L*G,)
        stats = []
        for _ in range(cfg.inner_epochs):
            for idx in torch.randperm(L * G, generator=g).chunk(cfg.minibatches):
                sub = select(traj, idx)
                # 4. Re-score every step under the policy and the reference.
                mean, std = step_means(policy, sub)  # (b, K, D), (b, K)
                logp = gaussian_logprob(sub.xs[:, 1:], mean, std)  # (b, K)
                logp = torch.where(sub.mask.bool(), logp, torch.zeros_like(logp))
                with torch.no_grad():
                    mean_ref, _ = step_means(ref, sub)
                if cfg.kl_estimator == "analytic":
                    kl = gaussian_kl_same_std(mean, mean_ref, std)  # (b, K)
                else:
                    kl = kl_k3(logp, gaussian_logprob(sub.xs[:, 1:], mean_ref, std))
                # 5. Clipped surrogate + beta * KL, one step of AdamW.
                loss, ratio = flow_grpo_loss(logp, sub.logps, adv[idx], kl, sub.mask, cfg.clip_range, cfg.beta)
                check_finite("loss", loss)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                opt.step()
                with torch.no_grad():
                    a = adv[idx][:, None].expand_as(ratio)
                    stats.append({"loss": loss.item(), "policy/ratio": masked_mean(ratio, sub.mask).item(),
                                  "objective/kl": (kl * sub.mask).sum(1).mean().item(),
                                  "policy/clipfrac": clip_fractions(ratio, a, sub.mask, cfg.clip_range)["clipfrac"].item()})
        # 6. Log the round.
        row = {"iteration": it, "reward": rewards.mean().item(), "reward/std": rewards.std().item()}
        row.update({k: sum(s[k] for s in stats) / len(stats) for k in stats[0]})
        row["policy/first_ratio"] = stats[0]["policy/ratio"]
        logger.log(row)
    if eval_fn is not None and eval_every:
        logger.log({"iteration": cfg.iterations, **eval_fn(policy, cfg.iterations)})
    return logger

