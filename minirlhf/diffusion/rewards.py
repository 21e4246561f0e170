"""Rewards and diversity metrics for the two diffusion worlds.

A reward is a callable `reward_fn(labels (B,), x (B, D)) -> (B,)`: the condition first, as the
LLM rewards take (prompts, completions). Differentiable rewards keep the graph (reward
backpropagation needs it); non-differentiable ones return a tensor with no graph.

| world  | reward                         | differentiable | role                                    |
|--------|--------------------------------|----------------|-----------------------------------------|
| points | `box_reward` 1[x in box]       | no             | the task: land in the upper box         |
| points | `box_distance_reward`          | yes            | the same task, -distance to the box     |
| digits | `classifier_logprob_reward`    | yes            | log p(class k | x), label k = "k or k+5" |
| digits | `brightness_reward`            | yes            | mean pixel value                        |
| digits | `compressibility_reward`       | no             | minus zlib size of the quantised image  |
| digits | gold `classifier_logprob_reward` | (judge only) | a second classifier, never optimised    |
"""

from __future__ import annotations

import zlib

import torch
from torch import Tensor

from .worlds import MODE_STD, N_MODES, nearest_mode

BOX = (-3.0, 3.0, 0.0, 3.0)  # (x_min, x_max, y_min, y_max): the upper half of the circle's box


def box_reward(labels: Tensor, x: Tensor, box: tuple[float, float, float, float] = BOX) -> Tensor:
    """1.0 if the point lies inside the box, else 0.0 (non-differentiable). x: (B, 2) -> (B,)."""
    x0, x1, y0, y1 = box
    inside = (x[:, 0] >= x0) & (x[:, 0] <= x1) & (x[:, 1] >= y0) & (x[:, 1] <= y1)
    return inside.float().detach()


def box_distance_reward(labels: Tensor, x: Tensor, box: tuple[float, float, float, float] = BOX) -> Tensor:
    """-(Euclidean distance from x to the box), 0 inside (differentiable). x: (B, 2) -> (B,)."""
    x0, x1, y0, y1 = box
    dx = torch.relu(x0 - x[:, 0]) + torch.relu(x[:, 0] - x1)  # (B,) at most one term is non-zero
    dy = torch.relu(y0 - x[:, 1]) + torch.relu(x[:, 1] - y1)
    return -torch.sqrt(dx ** 2 + dy ** 2 + 1e-12)


def classifier_logprob_reward(classifier, target: int | None = None):
    """r(x, label) = log p_clf(target | x), differentiable. The target class defaults to the label
    itself: label k ("digit k or k + 5") is rewarded for drawing a k."""

    def reward_fn(labels: Tensor, x: Tensor) -> Tensor:
        logp = torch.log_softmax(classifier(x), dim=-1)  # (B, 10)
        cls = labels if target is None else torch.full_like(labels, target)
        return logp.gather(1, cls[:, None])[:, 0]

    return reward_fn


def brightness_reward(labels: Tensor, x: Tensor) -> Tensor:
    """Mean pixel value in [-1, 1] (differentiable). x: (B, 64) -> (B,)."""
    return x.mean(dim=1)


def quantise_digits(x: Tensor) -> Tensor:
    """[-1, 1] floats -> integers 0..16, the format of sklearn's digits. (B, 64) -> (B, 64) uint8."""
    return ((x.detach().clamp(-1, 1) + 1) * 8).round().to(torch.uint8)


def compressed_bytes(x: Tensor) -> Tensor:
    """zlib size in bytes (level 9) of each quantised image. (B, 64) -> (B,) float."""
    q = quantise_digits(x).cpu().numpy()
    return torch.tensor([len(zlib.compress(row.tobytes(), 9)) for row in q], dtype=torch.float32)


def compressibility_reward(labels: Tensor, x: Tensor) -> Tensor:
    """-(zlib size in bytes) of the quantised image: DDPO's "compressibility" on 8x8 (non-differentiable)."""
    return -compressed_bytes(x)


# ---------------------------------------------------------------------------------------------
# Diversity and fidelity metrics
# ---------------------------------------------------------------------------------------------


def mode_coverage(x: Tensor, min_share: float = 0.025, radius: float = 4 * MODE_STD) -> dict[str, float]:
    """Points: how many of the 8 modes get at least `min_share` of the samples (within `radius`),
    and the fraction of samples on the data manifold (within `radius` of some mode)."""
    idx, dist = nearest_mode(x)
    on = dist < radius
    shares = torch.bincount(idx[on], minlength=N_MODES).float() / x.shape[0]
    return {"modes_covered": int((shares >= min_share).sum()), "on_manifold": on.float().mean().item()}


def class_entropy(classifier, x: Tensor) -> float:
    """Entropy (nats) of the predicted-class histogram of the samples (log 10 = 2.30 is uniform)."""
    with torch.no_grad():
        pred = classifier(x).argmax(1)
    p = torch.bincount(pred, minlength=10).float() / x.shape[0]
    return float(-(p[p > 0] * p[p > 0].log()).sum())


def mean_pairwise_distance(x: Tensor, labels: Tensor) -> float:
    """Mean L2 distance between two samples of the same label (diversity within a prompt)."""
    total, count = 0.0, 0
    for lab in labels.unique():
        xs = x[labels == lab].detach()
        n = xs.shape[0]
        if n < 2:
            continue
        d = torch.cdist(xs, xs)
        total += d.sum().item()
        count += n * (n - 1)
    return total / max(count, 1)


_REAL_DIGITS: list[Tensor] = []


def nearest_real_distance(x: Tensor) -> Tensor:
    """L2 distance from each digit sample to the nearest of sklearn's 1797 real digits. (B, 64) -> (B,).

    A realism check no classifier gives: over-optimised samples leave the data manifold."""
    if not _REAL_DIGITS:
        from .worlds import load_digits_tensors
        _REAL_DIGITS.append(load_digits_tensors("all")[0])
    return torch.cdist(x.detach(), _REAL_DIGITS[0]).min(dim=1).values


def label_accuracy(classifier, labels: Tensor, x: Tensor) -> float:
    """Fraction of samples the classifier assigns to class == label (the rewarded class k of label k)."""
    with torch.no_grad():
        return (classifier(x).argmax(1) == labels).float().mean().item()


__all__ = ["BOX", "box_reward", "box_distance_reward", "classifier_logprob_reward", "brightness_reward",
           "compressibility_reward", "compressed_bytes", "quantise_digits", "mode_coverage", "class_entropy",
           "mean_pairwise_distance", "label_accuracy", "nearest_real_distance"]
