"""The laws of reward-model over-optimisation (Gao, Schulman and Hilton, 2023), fitted and measured.

Optimise a policy against a *proxy* reward model and score it with the *gold* reward: the gold
reward first rises, then falls. Gao et al. (2023, Eq. 1-2) found the gold reward gain R as a
function of d = sqrt(KL(pi || pi_init)) follows

    best-of-N:  R_bon(d) = d (alpha_bon - beta_bon d)                        (Gao et al., 2023, Eq. 1)
    RL:         R_RL(d)  = d (alpha_RL  - beta_RL log d)                     (Gao et al., 2023, Eq. 2)

Both are linear in (alpha, beta), so least squares has a closed form: regress R on the columns
[d, -d^2] (best-of-N) or [d, -d log d] (RL), with no intercept (R(0) = 0: the gain is measured
from the initial policy). The peak of each curve:

    best-of-N:  d* = alpha / (2 beta),        R* = alpha^2 / (4 beta)
    RL:         d* = exp(alpha / beta - 1),   R* = beta d*

A better proxy (more data, more parameters) has a larger alpha and a smaller beta in the paper:
it peaks later (larger d*) and higher (larger R*).

`measure_bon_overoptimisation` reproduces the best-of-N half on the reviews world: proxies
trained on 1/16, 1/4 and all of `prefs_train` from `review-sft` (150 steps each), one pool of samples per held-out
prompt, the gold reward of each proxy's pick for N = 1..M (`reward_model.bon_curve`, unbiased
over all subsets of the pool), and a fit per proxy.

How this differs from the paper: proxies differ in training-set size, not parameter count; the
gold reward is the world's known function, not a 6B reward model; one seed.

Run:
    python -m minirlhf.reward_hacking.overopt          # ~35 min single-threaded under load; prints JSON
    (numbers in docs/reward_hacking.md)
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor


# ---------------------------------------------------------------------------------------------
# Pure functions: the two laws and their least-squares fits
# ---------------------------------------------------------------------------------------------


def bon_law(d: Tensor, alpha: float, beta: float) -> Tensor:
    """R_bon(d) = d (alpha - beta d)   (Gao et al., 2023, Eq. 1). d: (K,) -> (K,)."""
    return d * (alpha - beta * d)


def rl_law(d: Tensor, alpha: float, beta: float) -> Tensor:
    """R_RL(d) = d (alpha - beta log d)   (Gao et al., 2023, Eq. 2); R_RL(0) = 0. d: (K,) -> (K,)."""
    d = torch.as_tensor(d, dtype=torch.float64)
    dlogd = torch.where(d > 0, d * torch.log(d.clamp(min=1e-300)), torch.zeros_like(d))  # d log d -> 0 at 0
    return alpha * d - beta * dlogd


def _fit_linear(features: Tensor, r: Tensor) -> tuple[float, float, float]:
    """Least squares r ~ features @ (alpha, beta), no intercept. features: (K, 2), r: (K,).
    Returns (alpha, beta, R^2) with R^2 = 1 - SS_res / SS_tot (SS_tot about the mean of r)."""
    coef = torch.linalg.lstsq(features, r[:, None]).solution.squeeze(1)  # (2,)
    resid = r - features @ coef
    ss_tot = ((r - r.mean()) ** 2).sum()
    r2 = 1.0 - (resid ** 2).sum() / ss_tot if ss_tot > 0 else torch.tensor(float("nan"))
    return coef[0].item(), coef[1].item(), float(r2)


def fit_bon_law(d: Tensor, r: Tensor) -> dict:
    """Fit R_bon(d) = d (alpha - beta d) by least squares. d, r: (K,), d = sqrt(KL), r = gold gain.

    Returns {"alpha", "beta", "r2", "d_peak", "r_peak"}; the peak d* = alpha / (2 beta) and
    R* = alpha^2 / (4 beta) are inf when beta <= 0 (no turn: the curve has not peaked)."""
    d, r = torch.as_tensor(d, dtype=torch.float64), torch.as_tensor(r, dtype=torch.float64)
    alpha, beta, r2 = _fit_linear(torch.stack([d, -d ** 2], 1), r)  # R = alpha d - beta d^2
    peak = beta > 0 and alpha > 0
    return {"alpha": alpha, "beta": beta, "r2": r2, "d_peak": alpha / (2 * beta) if peak else math.inf,
            "r_peak": alpha ** 2 / (4 * beta) if peak else math.inf}


def fit_rl_law(d: Tensor, r: Tensor) -> dict:
    """Fit R_RL(d) = d (alpha - beta log d) by least squares. d, r: (K,) as in `fit_bon_law`.

    dR/dd = alpha - beta (log d + 1) = 0 gives d* = exp(alpha / beta - 1) and R* = beta d*
    (inf when beta <= 0)."""
    d, r = torch.as_tensor(d, dtype=torch.float64), torch.as_tensor(r, dtype=torch.float64)
    dlogd = torch.where(d > 0, d * torch.log(d.clamp(min=1e-300)), torch.zeros_like(d))
    alpha, beta, r2 = _fit_linear(torch.stack([d, -dlogd], 1), r)  # R = alpha d - beta d log d
    if beta > 0:
        d_peak = math.exp(min(alpha / beta - 1, 700.0))
        return {"alpha": alpha, "beta": beta, "r2": r2, "d_peak": d_peak, "r_peak": beta * d_peak}
    return {"alpha": alpha, "beta": beta, "r2": r2, "d_peak": math.inf, "r_peak": math.inf}


# ---------------------------------------------------------------------------------------------
# Measuring it: best-of-N against proxies trained on more or less data
# ---------------------------------------------------------------------------------------------


@dataclass
class OveroptConfig:
    """Best-of-N over-optimisation on the reviews world. Defaults: ~35 minutes single-threaded on a loaded 2-core CPU."""

    fractions: tuple[float, ...] = (0.0625, 0.25, 1.0)
    """Fractions of prefs_train each proxy is trained on (the first rows: nested subsets): 625, 2,500
    and 10,000 pairs. At 150 steps x 32 pairs a proxy sees 4,800 pairs, so 1/2 and all would differ
    only in whether pairs repeat; 1/16 vs 1/4 vs all spans overfitting to fresh data."""
    rm_steps: int = 150
    """Optimizer steps of each proxy (RewardConfig's other defaults)."""
    n_prompts: int = 32
    """Held-out prompts (prompts_test) in the best-of-N sweep."""
    pool: int = 64
    """Samples per prompt from review-sft; best-of-N is computed for N = 1..pool."""
    max_new_tokens: int = 64
    """Longest sampled completion."""
    n_bootstrap: int = 200
    """Bootstrap resamples of the prompts for the standard error of the fitted numbers."""
    seed: int = 0
    """Seed of the sampling and of the proxies' data order."""


def _bootstrap_fits(proxy: Tensor, gold: Tensor, ns: list[int], n_boot: int, seed: int) -> dict:
    """Standard errors of the best-of-N fit over prompts resampled with replacement."""
    from ..reward_model import bon_curve

    g = torch.Generator().manual_seed(seed)
    fits = []
    for _ in range(n_boot):
        idx = torch.randint(0, proxy.shape[0], (proxy.shape[0],), generator=g)
        c = bon_curve(proxy[idx], gold[idx], ns)
        fits.append(fit_bon_law(c["kl"].sqrt(), c["value"] - c["value"][0]))
    out = {}
    for k in ("alpha", "beta", "d_peak", "r_peak"):
        v = torch.tensor([f[k] for f in fits], dtype=torch.float64)
        v = v[torch.isfinite(v)]
        out[f"{k}_se"] = v.std().item() if len(v) > 1 else float("nan")
    out["peaked_fraction"] = sum(math.isfinite(f["d_peak"]) for f in fits) / n_boot
    return out


def measure_bon_overoptimisation(cfg: OveroptConfig = OveroptConfig(), progress: bool = True) -> dict:
    """Train one proxy per fraction of prefs_train, run best-of-N from review-sft, fit Eq. 1 per proxy."""
    from ..lm import generate
    from ..models import ScalarHeadModel, load_model, load_tokenizer
    from ..reward_model import RewardConfig, RewardModelScorer, bon_curve, evaluate_reward_model, train_reward_model
    from ..worlds import reviews
    from ..zoo import load_split

    tok = load_tokenizer()
    train, test = load_split("reviews", "prefs_train"), load_split("reviews", "prefs_test")
    prompts = [r["prompt"] for r in load_split("reviews", "prompts_test")][:cfg.n_prompts]
    # 1. one pool of `pool` samples per prompt from the SFT policy (prompt-major), scored by gold
    t0 = time.time()
    policy = load_model("review-sft").eval()
    repeated = [p for p in prompts for _ in range(cfg.pool)]
    g = torch.Generator().manual_seed(cfg.seed)
    completions, _ = generate(policy, tok, repeated, cfg.max_new_tokens, generator=g)  # P * M texts
    gold = torch.tensor(reviews.gold_rewards(repeated, completions), dtype=torch.float64).view(len(prompts), cfg.pool)
    out = {"config": asdict(cfg), "sample_seconds": round(time.time() - t0, 1), "proxies": {}}
    ns = list(range(1, cfg.pool + 1))
    oracle = bon_curve(gold, gold, ns)
    out["gold_picked_by_gold"] = {n: round(v, 4) for n, v in zip(ns, oracle["value"].tolist())
                                  if n in (1, 4, 16, cfg.pool)}
    for frac in cfg.fractions:
        # 2. a proxy trained on the first `frac` of prefs_train
        rows = train[: int(len(train) * frac)]
        torch.manual_seed(cfg.seed)
        rm = ScalarHeadModel.from_causal_lm("review-sft")
        t1 = time.time()
        train_reward_model(rm, tok, rows, RewardConfig(steps=cfg.rm_steps, seed=cfg.seed), progress=progress)
        train_s = time.time() - t1
        ev = evaluate_reward_model(rm, tok, test)
        # 3. the proxy scores the pool; the gold reward of its pick for every N; the fit of Eq. 1
        proxy = torch.tensor(RewardModelScorer(rm, tok)(repeated, completions), dtype=torch.float64).view_as(gold)
        curve = bon_curve(proxy, gold, ns)
        proxy_curve = bon_curve(proxy, proxy, ns)
        d, gain = curve["kl"].sqrt(), curve["value"] - curve["value"][0]
        fit = fit_bon_law(d, gain)
        best = int(gain.argmax())
        out["proxies"][f"{frac:g}"] = {
            "pairs": len(rows), "train_seconds": round(train_s, 1),
            "accuracy": round(ev["accuracy"], 4), "gold_accuracy": round(ev["gold_accuracy"], 4),
            **{k: round(v, 4) for k, v in fit.items()},
            **{k: round(v, 4) for k, v in _bootstrap_fits(proxy, gold, ns, cfg.n_bootstrap, cfg.seed).items()},
            "empirical_peak_n": ns[best], "empirical_peak_d": round(d[best].item(), 4),
            "empirical_peak_gain": round(gain[best].item(), 4), "gain_at_max_n": round(gain[-1].item(), 4),
            "gold_at_n1": round(curve["value"][0].item(), 4),
            "curve": {"n": ns, "d": [round(x, 4) for x in d.tolist()],
                      "gold": [round(x, 4) for x in curve["value"].tolist()],
                      "proxy": [round(x, 4) for x in proxy_curve["value"].tolist()]},
        }
    out["seconds"] = round(time.time() - t0, 1)
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    result = measure_bon_overoptimisation()
    print(json.dumps({k: v for k, v in result.items()}, indent=1))
