"""Diffusion-DPO (Wallace et al., 2023, "Diffusion Model Alignment Using Direct Preference
Optimization"): DPO for models whose likelihood is intractable.

DPO needs log pi(x_0 | c), which a diffusion model does not give. Wallace et al. replace it by
the ELBO, whose per-timestep term is the denoising error, and push the expectation outside the
log-sigmoid with Jensen's inequality. The loss (their Eq. 14) is

    L = - E_{(x^w, x^l), t, eps} log sigmoid( - beta T w(lambda_t) * (
            ||eps - eps_theta(x_t^w, t)||^2 - ||eps - eps_ref(x_t^w, t)||^2
          - ||eps - eps_theta(x_t^l, t)||^2 + ||eps - eps_ref(x_t^l, t)||^2 ) )

"be better than the reference at denoising the chosen image, worse at the rejected one". As in
their code, x^w and x^l share t and eps, the errors are means over pixels, and T w(lambda_t) is
folded into beta (the factor 1/2 of their code is kept: inside = -beta/2 * (...)). For a flow
model the same loss is written with the velocity error ||(x_1 - x_0) - v_theta(x_t, t)||^2.

It is offline: the pairs are sampled once from the base model and labelled by a reward
(chosen = higher reward), like a human-preference dataset; nothing is sampled while training.
At initialisation (policy = reference) the loss is exactly log 2.

Run: `pairs = make_preference_pairs(base, reward_fn, ...)`, then
`train_diffusion_dpo(policy, pairs, DiffusionDPOConfig())`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import check_config
from ..progress import DIFFUSION_POSTFIX, ProgressBar
from ..utils import MetricsLogger, check_finite
from .ddpo import frozen_copy
from .samplers import alpha_bar, sample


@dataclass
class DiffusionDPOConfig:
    """Diffusion-DPO on reward-labelled pairs; CPU-sized defaults."""

    steps: int = 200
    """Optimizer steps."""
    batch_size: int = 64
    """Pairs per step."""
    beta: float = 500.0
    """DPO's beta with T * w(lambda_t) folded in (errors are means over dimensions)."""
    lr: float = 3e-4
    """AdamW learning rate."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    seed: int = 0
    """Seed for batches, timesteps and noise."""

    def validate(self) -> None:
        """Raise ConfigError naming the flag of the first field out of range (before anything loads)."""
        check_config(self, at_least_1=("steps", "batch_size"), positive=("lr", "beta"),
                     non_negative=("max_grad_norm",))


@torch.no_grad()
def make_preference_pairs(base, reward_fn: Callable[[Tensor, Tensor], Tensor], pairs_per_label: int = 64,
                          n_steps: int = 20, noise: float = 1.0, generator: torch.Generator | None = None
                          ) -> dict[str, Tensor]:
    """Two samples per (label, pair) from `base`, ordered by reward; ties are dropped.

    Returns {"labels" (N,), "chosen" (N, D), "rejected" (N, D), "reward_chosen", "reward_rejected"}.
    """
    n_labels = base.config.n_labels
    labels = torch.arange(n_labels).repeat_interleave(pairs_per_label)  # (N,)
    a = sample(base, labels, n_steps, noise, generator=generator).samples
    b = sample(base, labels, n_steps, noise, generator=generator).samples
    ra, rb = reward_fn(labels, a).float(), reward_fn(labels, b).float()
    keep = ra != rb
    a_wins = (ra > rb)[:, None]
    return {"labels": labels[keep], "chosen": torch.where(a_wins, a, b)[keep],
            "rejected": torch.where(a_wins, b, a)[keep], "reward_chosen": torch.maximum(ra, rb)[keep],
            "reward_rejected": torch.minimum(ra, rb)[keep]}


def noised_and_target(kind: str, x0: Tensor, t: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
    """The training pair of each model kind: (x_t, regression target). x0, noise: (B, D); t: (B,)."""
    if kind == "ddpm":
        ab = alpha_bar(t)[:, None]
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise, noise  # target: eps
    tt = t[:, None]
    return (1 - tt) * x0 + tt * noise, noise - x0  # target: v = x_1 - x_0


def diffusion_dpo_loss(err_w: Tensor, err_l: Tensor, ref_err_w: Tensor, ref_err_l: Tensor, beta: float
                       ) -> tuple[Tensor, Tensor]:
    """Diffusion-DPO, Wallace et al. (2023) Eq. 14. Errors: (B,) mean squared denoising errors.

    Returns (loss, inside (B,)); inside > 0 means the policy prefers the chosen sample.
    """
    inside = -0.5 * beta * ((err_w - ref_err_w) - (err_l - ref_err_l))  # (B,)
    return -F.logsigmoid(inside).mean(), inside


def denoising_errors(net, kind: str, x0: Tensor, labels: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Mean squared error of the model's prediction per example. (B, D) -> (B,)."""
    x_t, target = noised_and_target(kind, x0, t, noise)
    return ((net(x_t, t, labels) - target) ** 2).mean(dim=1)


def train_diffusion_dpo(policy, pairs: dict[str, Tensor], cfg: DiffusionDPOConfig | None = None, ref=None,
                        eval_fn: Callable[[object, int], dict] | None = None, eval_every: int = 0,
                        logger: MetricsLogger | None = None, progress: bool = False) -> MetricsLogger:
    """Fine-tune `policy` in place on preference pairs; `ref` defaults to a frozen copy of its start."""
    cfg = cfg or DiffusionDPOConfig()
    cfg.validate()  # a bad value stops here, before any work
    for key in ("labels", "chosen", "rejected"):
        if key not in pairs:
            raise KeyError(f"pairs is missing the field {key!r}")
    n = pairs["labels"].shape[0]
    if n == 0:
        raise ValueError("no preference pairs (all rewards tied?)")
    ref = ref if ref is not None else frozen_copy(policy)
    g = torch.Generator().manual_seed(cfg.seed)
    logger = logger or MetricsLogger()
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    for step in ProgressBar(range(cfg.steps), "diffusion dpo", DIFFUSION_POSTFIX, logger, enabled=progress):
        if eval_fn is not None and eval_every and step % eval_every == 0:
            logger.log({"iteration": step, **eval_fn(policy, step)})
        # 1. A batch of pairs, one t and one noise shared by the chosen and the rejected sample.
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=g)
        labels, x_w, x_l = pairs["labels"][idx], pairs["chosen"][idx], pairs["rejected"][idx]
        t = torch.rand(idx.shape[0], generator=g).clamp(0.02, 0.98)  # (B,)
        noise = torch.randn(x_w.shape, generator=g)
        # 2. Denoising errors of the policy and of the reference.
        err_w = denoising_errors(policy, policy.kind, x_w, labels, t, noise)
        err_l = denoising_errors(policy, policy.kind, x_l, labels, t, noise)
        with torch.no_grad():
            ref_w = denoising_errors(ref, policy.kind, x_w, labels, t, noise)
            ref_l = denoising_errors(ref, policy.kind, x_l, labels, t, noise)
        # 3. Eq. 14 and one step of AdamW.
        loss, inside = diffusion_dpo_loss(err_w, err_l, ref_w, ref_l, cfg.beta)
        check_finite("loss", loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        opt.step()
        logger.log({"iteration": step, "loss": loss.item(), "rewards/accuracies": (inside > 0).float().mean().item(),
                    "rewards/margins": inside.mean().item()})
    if eval_fn is not None and eval_every:
        logger.log({"iteration": cfg.steps, **eval_fn(policy, cfg.steps)})
    return logger
