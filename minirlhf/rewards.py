"""Rewards for verifiable tasks, as GRPO and RFT use them: the answer-format check, DAPO's soft overlong
penalty, and the weighted sum of several reward functions (checked for NaN/inf, row by row, before any update).

A reward function is `fn(prompts, completions) -> list[float]`, one number per completion; the worlds'
rewards (`worlds.arithmetic.arithmetic_reward`, `arithmetic_trace_reward`, GSM8K answers) have this shape.
"""

from __future__ import annotations

import re
from typing import Callable

import torch
from torch import Tensor

from .errors import NonFiniteError
from .worlds.arithmetic import NUMBER

RewardFn = Callable[[list[str], list[str]], list[float]]

FORMAT_RE = re.compile(r"####\s*" + NUMBER + r"\s*$")


def format_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """1.0 if the completion ends with a final-answer line "#### <number>" ("#### 7", "#### 1,234",
    "#### -3", "#### $12.50": every gold GSM8K solution passes), else 0.0."""
    return [1.0 if FORMAT_RE.search(c) else 0.0 for c in completions]


def overlong_penalty(lengths: Tensor, max_len: int, cache: int) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al., 2025, Eq. 13). lengths: (N,) -> (N,).

        R = 0                              if |y| <= L_max - L_cache
            ((L_max - L_cache) - |y|) / L_cache   if L_max - L_cache < |y| <= L_max
            -1                             if |y| > L_max
    """
    free = max_len - cache
    ramp = (free - lengths.float()) / cache
    return torch.where(lengths <= free, torch.zeros_like(ramp),
                       torch.where(lengths <= max_len, ramp, -torch.ones_like(ramp)))


def score(prompts: list[str], completions: list[str], reward_fns: list[RewardFn],
          weights: list[float] | None = None) -> tuple[Tensor, dict[str, float]]:
    """Weighted sum of reward functions -> (N,) tensor, and each function's mean for the log.

    A NaN/inf reward raises here, naming the function and the row, before any update.
    """
    weights = weights or [1.0] * len(reward_fns)
    if len(weights) != len(reward_fns):
        raise ValueError(f"{len(reward_fns)} reward functions but {len(weights)} reward_weights")
    total, means = torch.zeros(len(prompts)), {}
    for fn, w in zip(reward_fns, weights):
        name = getattr(fn, "__name__", type(fn).__name__)
        r = torch.tensor(fn(prompts, completions), dtype=torch.float32)  # (N,)
        if r.shape != (len(prompts),):
            raise ValueError(f"reward function {name!r} returned shape {tuple(r.shape)}, expected ({len(prompts)},)")
        bad = (~torch.isfinite(r)).nonzero().flatten().tolist()
        if bad:
            i = bad[0]
            raise NonFiniteError(f"reward function {name!r} returned {r[i].item()} for row {i} "
                                 f"(prompt {prompts[i]!r:.80}, completion {completions[i]!r:.80}); "
                                 "stopped before updating the weights")
        total += w * r
        means[f"rewards/{name}"] = r.mean().item()
    return total, means
