"""Rubric rewards: the reward is a weighted sum of named criteria, each scored by its own judge.

Rubric-based rewards (Gunjal et al. 2025, "Rubrics as Rewards"; the checklists of Viswanathan et
al. 2025) replace one holistic score by a list of things a good answer should do, each judged on
its own, and combine them:

    R(x, y) = sum_i w_i c_i(x, y)                                  c_i: criterion i's judge

The reviews world's gold reward (`worlds/reviews.py`) *is* such a sum, so it gives the gold rubric:

    criterion     judge c_i(y)                         gold weight
    positive      2 tanh(sentiment / 2)                 1
    no_repeats    -0.5 * (repeated adjectives)          1
    concise       -0.25 * max(0, words - 14)            1
    fluent        -2 * [not in the grammar]             1

and with the gold weights `rubric_reward(GOLD_RUBRIC)` equals `gold_reward` exactly (a test pins it).

A rubric written by someone who does *not* know the gold formula asks yes/no questions instead
(`CHECKLIST`): is it positive, strongly positive, free of repetition, at most 14 words, grammatical?
Each is a rule-based judge in {0, 1}; its weights are fitted to gold by least squares on samples
(`fit_weights`), as one would calibrate a rubric against a few human scores. Unlike a learned
reward model, no criterion can be pushed past its cap: piling on sentiment words stops paying once
"strongly positive" is ticked, and every repetition or extra word costs.

`rubric_learned.py` asks the same questions of a judge *model* (`review-rubric`) instead of rules, with
weights fitted the same way (`fit_linear`), so rule-based and learned judges compare on one formula.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import torch

from ..worlds import reviews


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def repeated_adjectives(text: str) -> int:
    adjs = [w for w in _words(text) if w in reviews.ADJECTIVES]
    return len(adjs) - len(set(adjs))


@dataclass(frozen=True)
class Criterion:
    """One line of a rubric: a name, the question it asks, and the judge that scores it."""

    name: str
    question: str
    judge: Callable[[str], float]   # whole review text -> score
    weight: float = 1.0


GOLD_RUBRIC: tuple[Criterion, ...] = (
    Criterion("positive", "How positive is it (saturating)?", lambda t: 2.0 * math.tanh(reviews.sentiment(t) / 2.0)),
    Criterion("no_repeats", "Does it repeat an adjective?", lambda t: -0.5 * repeated_adjectives(t)),
    Criterion("concise", "Does it ramble past 14 words?",
              lambda t: -0.25 * max(0, len(_words(t)) - reviews.MAX_FLUENT_WORDS)),
    Criterion("fluent", "Is it a sentence of the grammar?", lambda t: 0.0 if reviews.is_fluent(t) else -2.0),
)

CHECKLIST: tuple[Criterion, ...] = (  # yes/no questions, weights to be fitted (`fit_weights`)
    Criterion("positive", "Is the overall sentiment positive?", lambda t: float(reviews.sentiment(t) > 0)),
    Criterion("very_positive", "Is it strongly positive (sentiment >= 2)?", lambda t: float(reviews.sentiment(t) >= 2)),
    Criterion("no_repeats", "Is every adjective used once?", lambda t: float(repeated_adjectives(t) == 0)),
    Criterion("concise", "Is it at most 14 words?", lambda t: float(len(_words(t)) <= reviews.MAX_FLUENT_WORDS)),
    Criterion("fluent", "Is it grammatical?", lambda t: float(reviews.is_fluent(t))),
)


def criteria_scores(rubric: tuple[Criterion, ...], texts: list[str]) -> torch.Tensor:
    """Every criterion's judge on every text -> (N, C)."""
    return torch.tensor([[c.judge(t) for c in rubric] for t in texts], dtype=torch.float64)


def weighted_sum(scores: torch.Tensor, weights: torch.Tensor, bias: float = 0.0) -> torch.Tensor:
    """R = bias + sum_i w_i c_i. scores (N, C), weights (C,) -> (N,)."""
    return bias + scores @ weights.to(scores.dtype)


def rubric_reward(rubric: tuple[Criterion, ...], texts: list[str], bias: float = 0.0) -> list[float]:
    """The rubric's reward of whole texts: bias + sum_i weight_i * judge_i(text)."""
    w = torch.tensor([c.weight for c in rubric], dtype=torch.float64)
    return weighted_sum(criteria_scores(rubric, texts), w, bias).tolist()


def fit_weights(rubric: tuple[Criterion, ...], texts: list[str], targets: list[float],
                ridge: float = 1e-3) -> tuple[tuple[Criterion, ...], float]:
    """Least-squares weights (and a bias) of the criteria against target scores (e.g. gold on a few
    samples): min ||bias + C w - t||^2 + ridge ||w||^2. -> (the rubric with these weights, bias)."""
    w, bias = fit_linear(criteria_scores(rubric, texts), targets, ridge)
    return tuple(Criterion(c.name, c.question, c.judge, float(wi)) for c, wi in zip(rubric, w.tolist())), bias


def fit_linear(scores: torch.Tensor, targets: list[float], ridge: float = 1e-3) -> tuple[torch.Tensor, float]:
    """min_{w, b} ||b + S w - t||^2 + ridge ||w||^2 (the bias is not penalised). scores (N, C) -> (w (C,), b).
    Shared by the rule-based checklist (`fit_weights`) and the learned one (`rubric_learned.py`)."""
    S = torch.as_tensor(scores, dtype=torch.float64)
    if S.ndim != 2 or S.shape[0] != len(targets):
        raise ValueError(f"scores {tuple(S.shape)} need one row per target ({len(targets)} targets)")
    X = torch.cat([torch.ones(S.shape[0], 1, dtype=torch.float64), S], 1)  # (N, C + 1)
    reg = ridge * torch.eye(X.shape[1], dtype=torch.float64)
    reg[0, 0] = 0.0  # no penalty on the bias
    sol = torch.linalg.solve(X.T @ X + reg, X.T @ torch.tensor(targets, dtype=torch.float64))
    return sol[1:], float(sol[0])


class RubricScorer:
    """A rubric as a reward function: scorer(prompts, completions) -> list[float] (as `RewardModelScorer`)."""

    def __init__(self, rubric: tuple[Criterion, ...] = GOLD_RUBRIC, bias: float = 0.0):
        self.rubric, self.bias = rubric, bias

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        return rubric_reward(self.rubric, [p + c for p, c in zip(prompts, completions)], self.bias)


def fitted_checklist(n: int = 2000) -> RubricScorer:
    """The checklist with weights fitted to gold on the first `n` SFT reviews of the built-in world, plus
    every fourth of them with its final " ." cut (the grammar's samples are all fluent, so without broken
    ones the "grammatical?" weight could not be fitted: notebook 10 fits on a policy's own samples instead)."""
    from ..zoo import load_split

    texts = [r["prompt"] + r["completion"] for r in load_split("reviews", "sft")[:n]]
    texts += [t[:-2] for t in texts[::4]]
    rub, bias = fit_weights(CHECKLIST, texts, [reviews.gold_reward(t) for t in texts])
    return RubricScorer(rub, bias)


def value_at_kl(kls: list[float], values: list[float], target: float) -> float:
    """A run's eval curve read at KL = `target`: linear interpolation on the *last* segment of the
    curve (in training order) whose KL brackets `target`, i.e. the most trained policy seen at that KL
    (KL is not monotone in training: an early overshoot is passed by); nan if the run never reaches it.
    kls[i], values[i]: the i-th evaluation (KL to the reference, a reward)."""
    if len(kls) != len(values):
        raise ValueError(f"{len(kls)} KL values but {len(values)} rewards: one of each per evaluation")
    for i in reversed(range(len(kls) - 1)):
        k0, k1 = kls[i], kls[i + 1]
        if min(k0, k1) <= target <= max(k0, k1):
            if k1 == k0:
                return float(values[i])
            w = (target - k0) / (k1 - k0)
            return float(values[i] + w * (values[i + 1] - values[i]))
    if len(kls) == 1 and kls[0] == target:
        return float(values[0])
    return float("nan")


def gap_at_kl(kls: list[float], proxy: list[float], gold: list[float], target: float,
              proxy_sd: float, gold_sd: float) -> float:
    """Over-optimisation gap of an RL run at equal KL, in standard deviations of the starting samples:

        gap(KL) = (proxy(KL) - proxy(0)) / sd_proxy - (gold(KL) - gold(0)) / sd_gold

    what the proxy believes was gained minus what gold confirms; evaluation 0 is the start. Read at
    `target` by `value_at_kl`, so two runs against different proxies compare at the same KL."""
    return ((value_at_kl(kls, proxy, target) - proxy[0]) / proxy_sd
            - (value_at_kl(kls, gold, target) - gold[0]) / gold_sd)
