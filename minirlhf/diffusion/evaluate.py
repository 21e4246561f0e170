"""One evaluation for every method: reward, KL to the base model, diversity, on a fixed batch.

The KL is always measured the same way, whatever the method trained with: fresh samples of the
policy from the stochastic sampler (DDPM: eta = 1; flow: the Flow-GRPO SDE with a = 0.7) and the
closed-form path KL to the base model summed over steps (samplers.path_kl). That puts DDPO,
DRaFT, Diffusion-DPO and Flow-GRPO on one reward-vs-KL plot.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .rewards import class_entropy, label_accuracy, mean_pairwise_distance, mode_coverage, nearest_real_distance
from .samplers import sample_kl

EVAL_NOISE = {"ddpm": 1.0, "flow": 0.7}


@torch.no_grad()
def evaluate_policy(policy, ref, reward_fns: dict[str, Callable[[Tensor, Tensor], Tensor]],
                    per_label: int = 64, n_steps: int = 20, seed: int = 1234,
                    gold_classifier=None) -> dict[str, float]:
    """Metrics of `policy` on per_label samples of every label (same noise every call).

    reward_fns: {"name": reward_fn}; each gives the key "reward/<name>". Adds "kl" (path KL to
    `ref`), and diversity: points -> modes_covered, on_manifold; digits -> class_entropy,
    pairwise_distance, nearest_real (distance to the closest real digit), and class_entropy and
    gold_accuracy (if a gold classifier is given).
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(policy.config.n_labels).repeat_interleave(per_label)
    x, kl = sample_kl(policy, ref, labels, n_steps, EVAL_NOISE[policy.kind], generator=g)
    out = {f"reward/{name}": fn(labels, x).float().mean().item() for name, fn in reward_fns.items()}
    out["kl"] = kl.mean().item()
    if policy.config.world == "points":
        out.update(mode_coverage(x))
    else:
        out["pairwise_distance"] = mean_pairwise_distance(x, labels)
        out["nearest_real"] = nearest_real_distance(x).mean().item()
        if gold_classifier is not None:
            out["class_entropy"] = class_entropy(gold_classifier, x)
            out["gold_accuracy"] = label_accuracy(gold_classifier, labels, x)
    return out


@torch.no_grad()
def samples_of(policy, per_label: int = 8, n_steps: int = 20, seed: int = 1234, noise: float | None = None
               ) -> tuple[Tensor, Tensor]:
    """(labels, samples) for plotting: per_label samples of each label from a fixed seed."""
    from .samplers import sample

    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(policy.config.n_labels).repeat_interleave(per_label)
    noise = EVAL_NOISE[policy.kind] if noise is None else noise
    return labels, sample(policy, labels, n_steps, noise, generator=g).samples
