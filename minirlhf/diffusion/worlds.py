"""The two tiny worlds for diffusion RL: labelled 2-D points and scikit-learn's 8x8 digits.

* points: a mixture of 8 Gaussians on a circle of radius 2 (std 0.15), mode m at angle
  22.5 + 45 m degrees. The label plays the role of the prompt: label k in {0, 1, 2, 3} owns the
  two opposite modes k and k + 4, one above the x-axis and one below, so a label-conditioned
  model is bimodal and a reward for "up" prefers one mode of each label (mode collapse is then
  visible as lost modes).
* digits: `sklearn.datasets.load_digits` (1797 images of 8x8 pixels, 0..16), bundled with
  scikit-learn, no download. Pixels are scaled to [-1, 1] and flattened to 64 numbers; the
  label is the digit class. Split in halves: one half trains the generators and the proxy
  classifier, the other half the gold classifier (so the two classifiers share no image).

Also here: the exact velocity of rectified flow for Gaussian data, in closed form, used by the
tests to check that the Flow-GRPO SDE keeps the ODE's marginals without any trained model.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

N_MODES = 8
POINT_LABELS = 4
DIGIT_LABELS = 5
RADIUS = 2.0
MODE_STD = 0.15


def mode_centres() -> Tensor:
    """(8, 2) centres of the 8 Gaussians, mode m at angle (m + 1/2) 2 pi / 8."""
    angles = (torch.arange(N_MODES) + 0.5) * 2 * math.pi / N_MODES
    return RADIUS * torch.stack([angles.cos(), angles.sin()], dim=1)


def sample_points(n: int, generator: torch.Generator | None = None,
                  labels: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """n labelled points. Returns (x (n, 2), labels (n,) in 0..3, modes (n,) in 0..7)."""
    if labels is None:
        labels = torch.randint(0, POINT_LABELS, (n,), generator=generator)
    side = torch.randint(0, 2, (n,), generator=generator)
    modes = labels + POINT_LABELS * side  # label k owns modes k and k + 4 (opposite sides)
    x = mode_centres()[modes] + MODE_STD * torch.randn(n, 2, generator=generator)
    return x, labels, modes


def nearest_mode(x: Tensor) -> tuple[Tensor, Tensor]:
    """(index of the nearest mode (B,), distance to it (B,)) for points x (B, 2)."""
    d = torch.cdist(x, mode_centres())  # (B, 8)
    dist, idx = d.min(dim=1)
    return idx, dist


def load_digits_tensors(half: str = "a") -> tuple[Tensor, Tensor]:
    """Digits as (x (N, 64) in [-1, 1], classes (N,) 0..9). half "a" (even rows), "b" (odd rows) or "all"."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 8.0 - 1.0  # 0..16 -> -1..1
    y = torch.tensor(d.target, dtype=torch.long)
    if half == "all":
        return x, y
    if half not in ("a", "b"):
        raise ValueError(f"half must be 'a', 'b' or 'all', got {half!r}")
    start = 0 if half == "a" else 1
    return x[start::2], y[start::2]


def digit_labels(classes: Tensor) -> Tensor:
    """The conditioning label of each digit class: k and k + 5 share label k. (N,) -> (N,)."""
    return classes % DIGIT_LABELS


def gaussian_flow_velocity(mean: Tensor, cov: Tensor):
    """Exact rectified-flow velocity v(x, t) = E[x1 - x0 | x_t = x] for data x0 ~ N(mean, cov).

    With x_t = (1 - t) x0 + t x1 and x1 ~ N(0, I), x_t ~ N((1 - t) m, C_t), C_t = (1 - t)^2 S + t^2 I,
    and Gaussian conditioning gives
        E[x1 | x_t] = t C_t^{-1} (x - (1 - t) m)
        E[x0 | x_t] = m + (1 - t) S C_t^{-1} (x - (1 - t) m)
    Returns a callable net(x (B, D), t (B,), labels) -> v (B, D) usable by the samplers.
    """
    mean, cov = mean.double(), cov.double()
    eye = torch.eye(mean.numel(), dtype=torch.float64)

    def net(x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        out = torch.empty(x.shape, dtype=torch.float64)
        for tv in t.unique():  # one (D, D) inverse per distinct t (the samplers use one t per step)
            rows = t == tv
            td = tv.double()
            c_inv = torch.linalg.inv((1 - td) ** 2 * cov + td ** 2 * eye)  # (D, D), symmetric
            centred = x[rows].double() - (1 - td) * mean  # (b, D)
            e_x1 = td * centred @ c_inv
            e_x0 = mean + (1 - td) * centred @ c_inv @ cov
            out[rows] = e_x1 - e_x0
        return out.to(x.dtype)

    return net
