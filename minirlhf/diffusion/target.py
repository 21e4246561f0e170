"""The exact answer of KL-regularised reward fine-tuning, on a grid, and a distance to it.

Every method that maximises reward with a KL leash to the base model,

    max_p  E_{x ~ p}[ r(x) ] - beta KL(p || p_base),

has one optimum (the Gibbs variational principle; the "tilted" distribution of RLHF):

    p*(x) = p_base(x) exp(r(x) / beta) / Z,        Z = E_{p_base}[ exp(r(x) / beta) ].

For language models neither p_base nor Z can be computed. In the 2-D points world both can: p_base is
the data distribution, a known mixture of 8 Gaussians (worlds.py; label k: modes k and k + 4, weight 1/2
each, std 0.15), so p* is a softmax over the cells of a grid, per label. That turns "does this method
optimise the KL-regularised objective?" into a measurement: the distance from its samples to p*.

* `points_target(reward_fn, beta)`: p* per label on a 141 x 141 grid over [-3.5, 3.5]^2 (cell 0.05).
  The base is the data's closed form, not the shipped model: the model is itself an approximation of
  it (`smoothed_kl(model samples, base target)` says how good), and that error is the floor of every
  fine-tuned model.
* `GridTarget.sample`: exact samples of p* (pick a cell, place the point uniformly inside it).
* `smoothed_kl(x, labels, target)`: KL(p*_h || q_h) per label, both densities smoothed with the same
  Gaussian kernel of width h on the grid (q_h: a kernel density estimate of the samples). Smoothing both
  sides removes the kernel's bias: for infinitely many samples of p* it is exactly 0, and for n samples
  it is the noise floor `noise_floor(target, n)` measures. It is the forward KL, so a missing mode costs
  a lot (mode collapse shows) and a mode at the wrong weight costs its share times the log-ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from einops import rearrange
from torch import Tensor

from .worlds import MODE_STD, N_MODES, POINT_LABELS, mode_centres, nearest_mode

GRID_LIM = 3.5
"""The grid covers [-GRID_LIM, GRID_LIM]^2 (the 8 modes sit at radius 2 with std 0.15)."""
GRID_N = 141
"""Grid points per axis: cell width 7 / 140 = 0.05."""
BANDWIDTH = 0.1
"""Width h of the Gaussian kernel that smooths both densities in `smoothed_kl`."""
FLOOR_EPS = 1e-3
"""Both smoothed densities are mixed with this much uniform mass (keeps the KL finite)."""


def make_grid(lim: float = GRID_LIM, n: int = GRID_N) -> tuple[Tensor, Tensor]:
    """(axis (n,), points (n*n, 2)) of a square grid, row-major: point i*n + j = (axis[j], axis[i])."""
    axis = torch.linspace(-lim, lim, n, dtype=torch.float64)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    return axis, torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def points_log_density(x: Tensor, label: int) -> Tensor:
    """log p_base(x | label) of the points world: 1/2 N(c_k, s^2 I) + 1/2 N(c_{k+4}, s^2 I). (G, 2) -> (G,)."""
    centres = mode_centres().to(x.dtype)[[label, label + POINT_LABELS]]  # (2, 2)
    sq = ((x[:, None, :] - centres[None]) ** 2).sum(-1)  # (G, 2)
    log_comp = -sq / (2 * MODE_STD ** 2) - 2 * math.log(MODE_STD) - math.log(2 * math.pi)
    return torch.logsumexp(log_comp, dim=1) - math.log(2)


def tilt(log_base: Tensor, reward: Tensor, beta: float) -> Tensor:
    """Cell probabilities of p* proportional to p_base exp(r / beta) on a uniform grid: softmax(log p_base + r / beta).

    log_base, reward: (..., G) -> (..., G), summing to 1 over G. beta = inf gives the base itself.
    """
    return torch.softmax(log_base + reward / beta, dim=-1)


@dataclass
class GridTarget:
    """A label-conditional density on a grid: cell probabilities per label."""

    axis: Tensor
    """(n,) grid coordinates along each axis."""
    points: Tensor
    """(G, 2) cell centres, G = n * n."""
    probs: Tensor
    """(L, G) probability of each cell, per label; each row sums to 1."""
    beta: float
    """The KL strength it was tilted with (inf: the base)."""

    @property
    def cell(self) -> float:
        return float(self.axis[1] - self.axis[0])

    def density(self) -> Tensor:
        """(L, G) density values (probability / cell area): integrates to 1 with the grid's cell area."""
        return self.probs / self.cell ** 2

    def sample(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples (B, 2) of p*(. | label): a cell by its probability, then uniform inside the cell."""
        out = torch.empty(labels.shape[0], 2, dtype=torch.float32)
        for lab in labels.unique():
            rows = (labels == lab).nonzero()[:, 0]
            idx = torch.multinomial(self.probs[lab].float(), rows.numel(), replacement=True, generator=generator)
            jitter = (torch.rand(rows.numel(), 2, generator=generator) - 0.5) * self.cell
            out[rows] = self.points[idx].float() + jitter
        return out

    def expect(self, fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """E_{p*(.|label)}[fn(label, x)] for every label: (L,). fn(labels (G,), x (G, 2)) -> (G,)."""
        L = self.probs.shape[0]
        vals = torch.stack([fn(torch.full((self.points.shape[0],), k), self.points.float()).double()
                            for k in range(L)])  # (L, G)
        return (self.probs * vals).sum(1)

    def mode_shares(self) -> Tensor:
        """(L, 8) probability of each label's samples lying nearest to each of the 8 modes."""
        idx, _ = nearest_mode(self.points.float())
        onehot = torch.nn.functional.one_hot(idx, N_MODES).double()  # (G, 8)
        return self.probs @ onehot


def points_target(reward_fn: Callable[[Tensor, Tensor], Tensor] | None, beta: float = float("inf"),
                  lim: float = GRID_LIM, n: int = GRID_N) -> GridTarget:
    """p*(x | k) proportional to p_base(x | k) exp(r(x, k) / beta) of the points world, per label k, on the grid.

    reward_fn(labels (G,), x (G, 2)) -> (G,) as in rewards.py; None or beta = inf: the base itself.
    """
    axis, pts = make_grid(lim, n)
    rows = []
    for k in range(POINT_LABELS):
        log_base = points_log_density(pts, k)  # (G,)
        if reward_fn is None or math.isinf(beta):
            rows.append(torch.softmax(log_base, 0))
        else:
            with torch.no_grad():
                r = reward_fn(torch.full((pts.shape[0],), k), pts.float()).double()  # (G,)
            rows.append(tilt(log_base, r, beta))
    return GridTarget(axis, pts, torch.stack(rows), beta)


# ---------------------------------------------------------------------------------------------
# The distance from samples to the target
# ---------------------------------------------------------------------------------------------


def _smooth(hist: Tensor, cell: float, bandwidth: float) -> Tensor:
    """Convolve (L, n, n) grids with a separable Gaussian of std `bandwidth` (zero padding)."""
    half = int(math.ceil(4 * bandwidth / cell))
    offsets = torch.arange(-half, half + 1, dtype=torch.float64) * cell
    kernel = torch.exp(-offsets ** 2 / (2 * bandwidth ** 2))
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    L = hist.shape[0]
    h = torch.nn.functional.conv1d(rearrange(hist, "l i j -> (l i) 1 j"), kernel, padding=half)  # along j
    h = torch.nn.functional.conv1d(rearrange(h, "(l i) 1 j -> (l j) 1 i", l=L), kernel, padding=half)  # along i
    return rearrange(h, "(l j) 1 i -> l i j", l=L)


def histogram(x: Tensor, labels: Tensor, target: GridTarget) -> Tensor:
    """(L, G) fraction of each label's samples in each grid cell (samples off the grid count as lost mass)."""
    n, lim, cell = target.axis.numel(), float(target.axis[-1]), target.cell
    ij = torch.round((x.double() + lim) / cell).long()  # (B, 2) column j (x) and row i (y)
    inside = ((ij >= 0) & (ij < n)).all(1)
    L = target.probs.shape[0]
    hist = torch.zeros(L, n * n, dtype=torch.float64)
    flat = ij[:, 1] * n + ij[:, 0]
    hist.index_put_((labels[inside], flat[inside]), torch.ones(int(inside.sum()), dtype=torch.float64),
                    accumulate=True)
    counts = torch.bincount(labels, minlength=L).clamp(min=1).double()  # (L,)
    return hist / counts[:, None]


def smoothed_kl(x: Tensor, labels: Tensor, target: GridTarget, bandwidth: float = BANDWIDTH,
                eps: float = FLOOR_EPS) -> Tensor:
    """KL(p*_h || q_h) per label, (L,) in nats: p*_h and q_h are p* and the samples' histogram, both
    convolved with the same Gaussian of width h and mixed with eps of uniform mass. x: (B, 2); labels: (B,)."""
    n = target.axis.numel()
    uniform = 1.0 / (n * n)
    p = rearrange(_smooth(rearrange(target.probs, "l (i j) -> l i j", i=n), target.cell, bandwidth), "l i j -> l (i j)")
    q = rearrange(_smooth(rearrange(histogram(x.detach(), labels, target), "l (i j) -> l i j", i=n), target.cell,
                          bandwidth), "l i j -> l (i j)")
    p = (1 - eps) * p + eps * uniform
    q = (1 - eps) * q + eps * uniform
    return (p * (p / q).log()).sum(1)


def noise_floor(target: GridTarget, per_label: int, repeats: int = 8, bandwidth: float = BANDWIDTH,
                generator: torch.Generator | None = None) -> tuple[float, float]:
    """(mean, std) of the label-averaged `smoothed_kl` of `per_label` exact samples of the target itself:
    the smallest distance any sampler can show with this many samples."""
    labels = torch.arange(target.probs.shape[0]).repeat_interleave(per_label)
    vals = torch.tensor([smoothed_kl(target.sample(labels, generator), labels, target, bandwidth).mean().item()
                         for _ in range(repeats)])
    return vals.mean().item(), vals.std().item()


def mode_shares(x: Tensor, labels: Tensor, n_labels: int = POINT_LABELS) -> Tensor:
    """(L, 8) fraction of each label's samples nearest to each mode (compare with GridTarget.mode_shares)."""
    idx, _ = nearest_mode(x.detach().float())
    out = torch.zeros(n_labels, N_MODES, dtype=torch.float64)
    out.index_put_((labels, idx), torch.ones(labels.shape[0], dtype=torch.float64), accumulate=True)
    return out / out.sum(1, keepdim=True).clamp(min=1)


@torch.no_grad()
def distance_report(policy, reward_fn: Callable[[Tensor, Tensor], Tensor], beta: float, noise: float,
                    per_label: int = 512, n_steps: int = 20, seed: int = 1234) -> dict[str, float]:
    """Distance of a points-world model's samples (sampler noise `noise`) to p* of (reward_fn, beta), with the
    noise floor for the same number of samples and p*'s own reward, for run summaries and tables."""
    from .samplers import sample

    g = torch.Generator().manual_seed(seed)
    target = points_target(reward_fn, beta)
    labels = torch.arange(target.probs.shape[0]).repeat_interleave(per_label)
    x = sample(policy, labels, n_steps, noise, generator=g).samples
    return {"target_beta": beta, "distance_to_target": round(smoothed_kl(x, labels, target).mean().item(), 4),
            "distance_floor": round(noise_floor(target, per_label, repeats=4, generator=g)[0], 4),
            "target_reward": round(target.expect(reward_fn).mean().item(), 4)}


__all__ = ["distance_report", "GridTarget", "points_target", "tilt", "make_grid", "points_log_density", "smoothed_kl",
           "noise_floor", "histogram", "mode_shares", "BANDWIDTH", "GRID_LIM", "GRID_N"]
