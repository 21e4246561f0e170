"""Diagnostics behind notebook 07's pictures and claims: mode shares, 2-D histogram distances, and
the negative control for "the Flow-GRPO SDE keeps the ODE's marginals".

* `mode_shares` / `modes_covered`: which of the 8 modes of the points world the samples land
  nearest to. A mode is *covered* when at least `min_share` of the samples lie nearest to it; with
  8 equally weighted modes each holds 1/8 = 12.5% of the base model's samples.
* `histogram_2d` / `histogram_tv`: a smoothed 2-D histogram and the total-variation distance
      TV(p, q) = 1/2 sum_bins |p_b - q_b|
  between two sample sets. It is never 0 for finite samples: compare it with the distance between
  two independent sample sets of the *same* sampler (the two-sample noise floor).
* `sample_flow_uncorrected`: the flow ODE with the SDE's noise added but *without* the score
  correction sigma_t^2 / (2 t) (x + (1 - t) v) in the drift. Its marginals drift away from the
  ODE's: that is what the correction in `samplers.flow_sde_mean_std` buys.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from .samplers import flow_sde_mean_std
from .worlds import N_MODES, nearest_mode


def mode_shares(x: Tensor) -> Tensor:
    """Fraction of the samples nearest to each of the 8 modes. x: (B, 2) -> (8,), sums to 1."""
    idx, _ = nearest_mode(x.detach())
    return torch.bincount(idx, minlength=N_MODES).float() / x.shape[0]


def modes_covered(x: Tensor, min_share: float = 0.05) -> int:
    """Number of modes holding at least `min_share` of the samples (nearest-mode assignment). x: (B, 2)."""
    return int((mode_shares(x) >= min_share).sum())


def histogram_2d(x: Tensor, bins: int = 32, lim: float = 3.2, smooth: float = 1.0) -> Tensor:
    """Normalised 2-D histogram of x (B, 2) on [-lim, lim]^2, blurred by a Gaussian of `smooth` bins.

    Points outside the square are dropped before normalising. Returns (bins, bins) summing to 1
    (rows: x-coordinate, columns: y-coordinate).
    """
    x = x.detach().double()
    ij = ((x + lim) / (2 * lim) * bins).floor().long()  # (B, 2) bin indices
    inside = ((ij >= 0) & (ij < bins)).all(dim=1)
    ij = ij[inside]
    h = torch.zeros(bins * bins, dtype=torch.float64)
    h.index_add_(0, ij[:, 0] * bins + ij[:, 1], torch.ones(ij.shape[0], dtype=torch.float64))
    h = rearrange(h, "(i j) -> i j", i=bins)  # (bins, bins): row i = x bin, column j = y bin
    if smooth > 0:
        r = int(3 * smooth + 0.5)
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / smooth) ** 2)
        k = k / k.sum()  # (2r + 1,) separable Gaussian kernel
        h = torch.nn.functional.conv2d(h[None, None], k.view(1, 1, -1, 1), padding=(r, 0))
        h = torch.nn.functional.conv2d(h, k.view(1, 1, 1, -1), padding=(0, r))[0, 0]
    return (h / h.sum().clamp(min=1e-300)).float()


def histogram_tv(x: Tensor, y: Tensor, bins: int = 32, lim: float = 3.2, smooth: float = 1.0) -> float:
    """Total-variation distance 1/2 sum |p - q| between the smoothed 2-D histograms of x and y (each (B, 2))."""
    p, q = histogram_2d(x, bins, lim, smooth), histogram_2d(y, bins, lim, smooth)
    return 0.5 * float((p - q).abs().sum())


@torch.no_grad()
def sample_flow_uncorrected(net, labels: Tensor, n_steps: int = 20, noise: float = 0.7,
                            generator: torch.Generator | None = None) -> Tensor:
    """Samples (B, D) of the flow ODE plus the SDE's noise, *without* the score correction (a negative control).

    Each step: x_s = x_t + v dt + sigma_t sqrt(|dt|) z, i.e. the ODE's mean with the SDE's std
    (both from `flow_sde_mean_std`, with noise 0 for the mean and `noise` for the std).
    """
    B, D = labels.shape[0], net.config.dim
    ts = torch.linspace(1.0, 0.0, n_steps + 1)
    t_cap = ts[1].item()
    x = torch.randn(B, D, generator=generator)
    for k in range(n_steps):
        t, s = ts[k].expand(B), ts[k + 1].expand(B)
        v = net(x, t, labels)  # (B, D)
        mean, _ = flow_sde_mean_std(v, x, t, s, 0.0, t_cap)  # the ODE's Euler step
        _, std = flow_sde_mean_std(v, x, t, s, noise, t_cap)  # the SDE's noise
        x = mean + std[:, None] * torch.randn(mean.shape, generator=generator)
    return x


__all__ = ["mode_shares", "modes_covered", "histogram_2d", "histogram_tv", "sample_flow_uncorrected"]
