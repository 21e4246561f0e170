"""Defences against reward hacking: ensembles, weight averaging (WARM), length control, a monitor.

Each defence is a pure function on scores or weights, so it can be tested by hand and used with
any scalar reward model (the shipped `review-rm`, its seed siblings, or a Hugging Face classifier):

* `ensemble_reward`: K reward models' scores (K, B) -> one reward (B,).
      mean   R = 1/K sum_k r_k                                (Coste et al., 2024, "mean")
      worst  R = min_k r_k                                    (Coste et al., 2024, WCO, Eq. 3)
      uwo    R = 1/K sum_k r_k - lam * Var_k(r_k)             (Coste et al., 2024, UWO, Eq. 4)
      mean_minus_std  R = mean - lam * std                    (Eisenstein et al., 2023)
* `warm_average`: WARM (Rame et al., 2024, Eq. 2): theta = sum_m w_m theta_m over reward models
  fine-tuned from one initialisation (here: the same SFT backbone and head init, different data
  orders). One model at the cost of one, unlike an ensemble.
* `length_penalised`: r(x, y) - alpha * (|y| - mu) (the simplest length control; Singhal et al.,
  2023 and Park et al., 2024 discuss why length is the first thing a policy hacks), and
  `pearson` to report an RM's correlation with length before and after.
* `hacking_flags`: the monitor. At evaluation i it fires when, over the last `window` evaluations,
  the proxy reward rose by more than `min_rise` while an independent signal (a held-out reward
  model, or, in this world, gold) fell by more than `min_fall`, or (direction="rises") a warning
  sign such as an ensemble's spread rose by more than `min_fall`.

Measured on the reviews world in `docs/reward_hacking.md`.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

RewardFn = Callable[[list[str], list[str]], list[float]]

ENSEMBLE_METHODS = ("mean", "worst", "uwo", "mean_minus_std")


def ensemble_reward(scores: Tensor, method: str = "mean", lam: float = 1.0) -> Tensor:
    """Combine K reward models' scores (K, B) into one reward (B,). `lam` weighs the penalty of
    "uwo" (on the variance, unbiased=False as in the paper) and "mean_minus_std"."""
    if scores.dim() != 2 or scores.shape[0] < 1:
        raise ValueError(f"scores must be (K, B) with K >= 1, got shape {tuple(scores.shape)}")
    if method not in ENSEMBLE_METHODS:
        raise ValueError(f"method must be one of {ENSEMBLE_METHODS}, got {method!r}")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    mean = scores.mean(0)                                      # (B,)
    if method == "mean":
        return mean
    if method == "worst":
        return scores.min(0).values                            # (B,)
    if method == "uwo":
        return mean - lam * scores.var(0, unbiased=False)      # Coste et al. Eq. 4
    return mean - lam * scores.std(0, unbiased=False)


class EnsembleReward:
    """K reward functions as one: `EnsembleReward([rm1, rm2, rm3], "uwo", lam=1.0)(prompts, completions)`."""

    def __init__(self, reward_fns: Sequence[RewardFn], method: str = "mean", lam: float = 1.0):
        if len(reward_fns) < 1:
            raise ValueError("an ensemble needs at least one reward function")
        ensemble_reward(torch.zeros(1, 1), method, lam)        # validates method and lam now
        self.reward_fns, self.method, self.lam = list(reward_fns), method, lam

    def member_scores(self, prompts: list[str], completions: list[str]) -> Tensor:
        return torch.tensor([fn(prompts, completions) for fn in self.reward_fns], dtype=torch.float64)  # (K, B)

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        return ensemble_reward(self.member_scores(prompts, completions), self.method, self.lam).tolist()

    def spread(self, prompts: list[str], completions: list[str]) -> list[float]:
        """The members' disagreement on each sample: std_k r_k (unbiased=False), (B,) as a list."""
        return self.member_scores(prompts, completions).std(0, unbiased=False).tolist()


def warm_average(state_dicts: Sequence[Mapping[str, Tensor]], weights: Sequence[float] | None = None) -> dict[str, Tensor]:
    """Weight-averaged reward model (WARM): sum_m w_m theta_m, weights uniform by default.

    All state dicts must have the same keys and shapes (fine-tuned from one initialisation);
    integer buffers (e.g. position ids) must agree and are copied from the first model.
    """
    if len(state_dicts) < 1:
        raise ValueError("warm_average needs at least one state dict")
    m = len(state_dicts)
    w = torch.full((m,), 1.0 / m, dtype=torch.float64) if weights is None else torch.tensor(weights, dtype=torch.float64)
    if w.shape != (m,) or (w < 0).any() or abs(float(w.sum()) - 1.0) > 1e-6:
        raise ValueError(f"weights must be {m} non-negative numbers summing to 1, got {list(map(float, w))}")
    keys = list(state_dicts[0])
    out: dict[str, Tensor] = {}
    for i, sd in enumerate(state_dicts[1:], start=1):
        if list(sd) != keys:
            missing = set(keys) ^ set(sd)
            raise ValueError(f"state dict {i} has different keys from state dict 0: {sorted(missing)[:5]}")
    for k in keys:
        ts = [sd[k] for sd in state_dicts]
        if any(t.shape != ts[0].shape for t in ts):
            raise ValueError(f"parameter {k!r} has different shapes: {[tuple(t.shape) for t in ts]}")
        if not ts[0].is_floating_point():
            if any(not torch.equal(t, ts[0]) for t in ts):
                raise ValueError(f"integer buffer {k!r} differs between models: not one initialisation")
            out[k] = ts[0].clone()
            continue
        acc = sum(wi * t.double() for wi, t in zip(w.tolist(), ts))
        out[k] = acc.to(ts[0].dtype)
    return out


def length_penalised(reward_fn: RewardFn, alpha: float, center: float = 0.0,
                     length_fn: Callable[[str], float] = len) -> RewardFn:
    """r'(x, y) = r(x, y) - alpha * (length(y) - center); length in characters by default."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")

    def reward(prompts: list[str], completions: list[str]) -> list[float]:
        r = reward_fn(prompts, completions)
        return [ri - alpha * (length_fn(c) - center) for ri, c in zip(r, completions)]

    return reward


def pearson(x: Sequence[float] | Tensor, y: Sequence[float] | Tensor) -> float:
    """Pearson correlation of two equal-length samples (0.0 when either is constant)."""
    a, b = torch.as_tensor(x, dtype=torch.float64).flatten(), torch.as_tensor(y, dtype=torch.float64).flatten()
    if a.numel() != b.numel() or a.numel() < 2:
        raise ValueError(f"pearson needs two samples of equal length >= 2, got {a.numel()} and {b.numel()}")
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else 0.0


def hacking_flags(proxy: Sequence[float], independent: Sequence[float], window: int = 2,
                  min_rise: float = 0.0, min_fall: float = 0.0, direction: str = "falls") -> list[bool]:
    """flags[i] is True when proxy[i] - proxy[i - window] > min_rise and
    independent[i] - independent[i - window] < -min_fall: the proxy keeps climbing while what it
    was meant to measure falls. With direction="rises" the independent signal is a warning sign
    that should stay low (an ensemble's spread, a repetition rate): it must *rise* by more than
    `min_fall` instead. The first `window` evaluations are never flagged."""
    if len(proxy) != len(independent):
        raise ValueError(f"proxy and independent need equal lengths, got {len(proxy)} and {len(independent)}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if direction not in ("falls", "rises"):
        raise ValueError(f"direction must be 'falls' or 'rises', got {direction!r}")
    sign = 1.0 if direction == "falls" else -1.0      # flip a rising warning sign into a falling one
    return [i >= window and proxy[i] - proxy[i - window] > min_rise
            and sign * (independent[i] - independent[i - window]) < -min_fall for i in range(len(proxy))]


def first_flag(flags: Sequence[bool]) -> int | None:
    """Index of the first flagged evaluation, or None."""
    return next((i for i, f in enumerate(flags) if f), None)


class HackingMonitor:
    """A metrics logger that watches for reward hacking as the run goes (any trainer taking `logger=`).

    Wraps a `utils.MetricsLogger`: every row that has both `proxy_key` and `independent_key` (by
    default PPO's evaluation rows: `eval/scores` from the reward model being optimised and
    `eval/gold`, which a user without a gold reward fills with a held-out reward model passed as
    `gold_fn`, e.g. an ensemble sibling) is added to two series; `flag_key` (default `hacking/flag`, 0 or 1) is written
    into that row from `hacking_flags`, and the first firing prints one warning line.

        monitor = HackingMonitor(MetricsLogger("run/metrics.jsonl"), window=2, min_rise=0.02, min_fall=0.05)
        train_ppo(policy, tok, prompts, rm, cfg, gold_fn=held_out_rm, eval_prompts=ev, logger=monitor)
        monitor.first_flag_step          # the step where the proxy rose while the independent signal fell
    """

    def __init__(self, inner=None, proxy_key: str = "eval/scores", independent_key: str = "eval/gold",
                 window: int = 2, min_rise: float = 0.0, min_fall: float = 0.0, warn: bool = True,
                 flag_key: str = "hacking/flag", direction: str = "falls"):
        from ..utils import MetricsLogger
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        hacking_flags([], [], window, direction=direction)            # validates direction now
        self.direction = direction     # "rises": the independent signal is a warning sign (ensemble spread)
        self.inner = inner if inner is not None else MetricsLogger()
        self.proxy_key, self.independent_key = proxy_key, independent_key
        self.window, self.min_rise, self.min_fall, self.warn = window, min_rise, min_fall, warn
        self.flag_key = flag_key       # two monitors on two signals can wrap each other under different keys
        self.proxy: list[float] = []
        self.independent: list[float] = []
        self.steps: list = []
        self.first_flag_step = None

    def log(self, row: dict) -> dict:
        if self.proxy_key in row and self.independent_key in row:
            self.proxy.append(float(row[self.proxy_key]))
            self.independent.append(float(row[self.independent_key]))
            self.steps.append(row.get("step"))
            flag = hacking_flags(self.proxy, self.independent, self.window, self.min_rise, self.min_fall,
                                 self.direction)[-1]
            row = {**row, self.flag_key: int(flag)}
            if flag and self.first_flag_step is None:
                self.first_flag_step = row.get("step")
                if self.warn:
                    i = len(self.proxy) - 1
                    print(f"warning: possible reward hacking at step {row.get('step')}: {self.proxy_key} "
                          f"{self.proxy[i - self.window]:+.3f} -> {self.proxy[i]:+.3f} while {self.independent_key} "
                          f"{self.independent[i - self.window]:+.3f} -> {self.independent[i]:+.3f} "
                          f"over the last {self.window} evaluations", flush=True)
        return self.inner.log(row)

    def __getattr__(self, name):          # rows, series, path, drop_from_step, ... of the wrapped logger
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
