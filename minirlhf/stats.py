"""Uncertainty for the claims a notebook makes: standard errors and paired bootstrap intervals.

A notebook that says "A beats B" asserts it with one of these, over prompts (and over seeds where a
run is cheap), so the claim is one the noise can support:

    d = paired_bootstrap(gold_a, gold_b)          # same prompts, two methods
    assert d.lo > 0, d                            # the 95% interval of mean(a - b) is above 0

Pure functions of 1-D sequences; nothing here touches a model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = ["Estimate", "mean_se", "paired_bootstrap", "bootstrap_mean"]


@dataclass(frozen=True)
class Estimate:
    """A mean with its uncertainty: `value`, standard error `se`, and a (`lo`, `hi`) interval."""

    value: float
    se: float
    lo: float
    hi: float
    n: int

    def __str__(self) -> str:
        return f"{self.value:+.3f} (95% CI {self.lo:+.3f}..{self.hi:+.3f}, se {self.se:.3f}, n={self.n})"

    def as_dict(self, digits: int = 4) -> dict:
        return {k: round(getattr(self, k), digits) if k != "n" else self.n
                for k in ("value", "se", "lo", "hi", "n")}


def _as_tensor(x: Sequence[float] | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64).flatten()
    if t.numel() == 0:
        raise ValueError(f"{name} is empty")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} has {int((~torch.isfinite(t)).sum())} non-finite values")
    return t


def mean_se(x: Sequence[float] | torch.Tensor, z: float = 1.96) -> Estimate:
    """Mean, standard error s / sqrt(n) (s with Bessel's correction), and mean +- z * se."""
    t = _as_tensor(x, "x")
    n = t.numel()
    m = float(t.mean())
    se = float(t.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("inf")
    return Estimate(m, se, m - z * se, m + z * se, n)


def bootstrap_mean(x: Sequence[float] | torch.Tensor, n_boot: int = 2000, seed: int = 0,
                   level: float = 0.95) -> Estimate:
    """Percentile bootstrap of the mean: resample the n values with replacement `n_boot` times."""
    t = _as_tensor(x, "x")
    n = t.numel()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=g)           # (n_boot, n)
    means = t[idx].mean(dim=1)                                     # (n_boot,)
    a = (1.0 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([a, 1.0 - a], dtype=torch.float64)).tolist()
    return Estimate(float(t.mean()), float(means.std(unbiased=True)), lo, hi, n)


def paired_bootstrap(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor,
                     n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Estimate:
    """Bootstrap of mean(a - b) where a[i], b[i] are two methods' scores on the same item i.

    Pairing removes the item-to-item spread both methods share (an easy prompt is easy for both),
    so the interval is much tighter than two independent intervals. `lo > 0` means "a beats b" at
    the chosen level.
    """
    ta, tb = _as_tensor(a, "a"), _as_tensor(b, "b")
    if ta.numel() != tb.numel():
        raise ValueError(f"paired samples need equal lengths, got {ta.numel()} and {tb.numel()}")
    return bootstrap_mean(ta - tb, n_boot=n_boot, seed=seed, level=level)
