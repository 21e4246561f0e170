"""Best-of-N with and without the defences, against the same gold reward, at equal KL.

Best-of-N from one policy has the same KL for every selection rule at the same N (the analytic
bound log N - (N-1)/N, `reward_model.kl_best_of_n`), so "equal KL" is free: every defence picks
from the same pool of M samples per prompt, and we compare the gold reward of its pick.

    selection rule          reward used to pick
    single                  review-rm
    ensemble mean / worst / uwo   the three members (defences.ensemble_reward)
    WARM                    review-rm-warm (weight average of the members)
    length-debiased         review-rm minus alpha * length, alpha fitted on prefs_test (not on the pool)
    ODIN                    the quality head of review-rm-odin (odin.py: trained with a length head beside it)
    early-stopped N         review-rm, with N chosen where review-rm-heldout's score of the pick peaks
                            (`rl_bench.choose_n_by_held_out`; a reward model trained on prefs_test)

Per prompt we compute the expected gold of the pick for every N (unbiased over all subsets of
the pool: `reward_model.bon_curve`), then compare each defence with the single RM by a paired
bootstrap over prompts at the largest N and at the single RM's peak N.

    python -m minirlhf.reward_hacking.defence_bench      # about a minute on one CPU thread
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..stats import mean_se, paired_bootstrap
from .defences import ENSEMBLE_METHODS, ensemble_reward, pearson
from .ensemble_build import HELD_OUT, MEMBERS, WARM
from .odin import ODIN


@dataclass
class DefenceBenchConfig:
    """Best-of-N defences on the reviews world. Defaults: about a minute on one CPU thread."""

    members: tuple[str, ...] = MEMBERS
    """Reward models of the ensemble; the first is the single-RM baseline."""
    warm: str | None = WARM
    """Weight-averaged reward model (None: skip WARM)."""
    odin: str | None = ODIN
    """ODIN two-head reward model, used through its quality head (None: skip)."""
    held_out: str | None = HELD_OUT
    """Held-out reward model that chooses N for the first member (early stopping; None: skip)."""
    pool: int = 64
    """Samples per prompt from review-sft; best-of-N for N = 1..pool."""
    max_new_tokens: int = 64
    """Longest sampled completion."""
    uwo_lambda: float = 1.0
    """lambda of the uncertainty-weighted ensemble (mean - lambda * variance) and of mean - lambda * std."""
    seed: int = 0
    """Seed of the sampling (the pool) and of the bootstrap."""

    def validate(self) -> None:
        from ..errors import ConfigError, check_config
        if not self.members:
            raise ConfigError("--members needs at least one reward model")
        check_config(self, at_least_1=("max_new_tokens",), non_negative=("uwo_lambda",), at_least={"pool": 2})


def per_prompt_bon(select: Tensor, gold: Tensor, ns: list[int]) -> Tensor:
    """Expected gold of the best-of-N pick by `select`, per prompt and N. (P, M), (P, M) -> (P, K)."""
    from ..reward_model import bon_curve
    return torch.stack([bon_curve(select[i:i + 1], gold[i:i + 1], ns)["value"] for i in range(select.shape[0])])


def fit_length_slope(scores: Tensor, lengths: Tensor) -> float:
    """Least-squares slope of score on length: the alpha of the length-debiased reward."""
    x = lengths.double() - lengths.double().mean()
    return float((x * (scores.double() - scores.double().mean())).sum() / (x * x).sum())


def measure_bon_defences(cfg: DefenceBenchConfig = DefenceBenchConfig()) -> dict:
    from ..lm import generate
    from ..models import ScalarHeadModel, load_model, load_tokenizer
    from ..reward_model import RewardModelScorer, kl_best_of_n
    from ..worlds import reviews
    from ..zoo import load_split

    cfg.validate()
    t0 = time.time()
    tok = load_tokenizer()
    scorers = {m: RewardModelScorer(ScalarHeadModel.from_pretrained(m).eval(), tok) for m in cfg.members}
    warm = RewardModelScorer(ScalarHeadModel.from_pretrained(cfg.warm).eval(), tok) if cfg.warm else None
    odin = RewardModelScorer(ScalarHeadModel.from_pretrained(cfg.odin).eval(), tok) if cfg.odin else None
    held = RewardModelScorer(ScalarHeadModel.from_pretrained(cfg.held_out).eval(), tok) if cfg.held_out else None
    prompts = sorted({r["prompt"] for r in load_split("reviews", "prompts_test")})
    repeated = [p for p in prompts for _ in range(cfg.pool)]                  # prompt-major
    g = torch.Generator().manual_seed(cfg.seed)
    completions, _ = generate(load_model("review-sft").eval(), tok, repeated, cfg.max_new_tokens, generator=g)
    P, M = len(prompts), cfg.pool
    gold = torch.tensor(reviews.gold_rewards(repeated, completions), dtype=torch.float64).view(P, M)
    member = torch.stack([torch.tensor(s(repeated, completions), dtype=torch.float64).view(P, M)
                          for s in scorers.values()])                         # (K, P, M)
    lengths = torch.tensor([len(c) for c in completions], dtype=torch.float64).view(P, M)

    # alpha from prefs_test (both sides of every pair), not from the pool it is applied to
    test = load_split("reviews", "prefs_test")
    tp = [r["prompt"] for r in test] * 2
    tc = [r["chosen"] for r in test] + [r["rejected"] for r in test]
    alpha = fit_length_slope(torch.tensor(scorers[cfg.members[0]](tp, tc)), torch.tensor([float(len(c)) for c in tc]))
    rules = {"single": member[0]}
    if len(cfg.members) > 1:
        for m in ENSEMBLE_METHODS:
            rules[f"ensemble {m}"] = ensemble_reward(member.flatten(1), m, cfg.uwo_lambda).view(P, M)
    if warm is not None:
        rules["WARM"] = torch.tensor(warm(repeated, completions), dtype=torch.float64).view(P, M)
    rules["length-debiased"] = member[0] - alpha * lengths
    if odin is not None:
        rules["ODIN"] = torch.tensor(odin(repeated, completions), dtype=torch.float64).view(P, M)
    rules["gold (oracle)"] = gold

    ns = list(range(1, M + 1))
    curves = {name: per_prompt_bon(sel, gold, ns) for name, sel in rules.items()}   # name -> (P, K)
    single = curves["single"]
    peak_n = int(single.mean(0).argmax()) + 1
    out = {"config": asdict(cfg), "prompts": P, "length_alpha": round(alpha, 5),
           "kl_at_max_n": round(float(kl_best_of_n(torch.tensor([M]))[0]), 4), "single_peak_n": peak_n,
           "gold_n1": round(float(gold.mean()), 4), "rules": {}}
    for name, c in curves.items():
        mean = c.mean(0)                                                       # (K,)
        k_best = int(mean.argmax())
        row = {"gold_at_max_n": mean_se(c[:, -1]).as_dict(), "peak_gold": round(float(mean[k_best]), 4),
               "peak_n": k_best + 1, "drop_after_peak": round(float(mean[k_best] - mean[-1]), 4),
               "curve": [round(v, 4) for v in mean.tolist()],
               "length_corr": round(pearson(rules[name].flatten(), lengths.flatten()), 4)}
        if name != "single":
            row["vs_single_at_max_n"] = paired_bootstrap(c[:, -1], single[:, -1], seed=cfg.seed).as_dict()
            row["vs_single_at_single_peak"] = paired_bootstrap(c[:, peak_n - 1], single[:, peak_n - 1],
                                                               seed=cfg.seed).as_dict()
        out["rules"][name] = row
    out["gold_length_corr"] = round(pearson(gold.flatten(), lengths.flatten()), 4)
    if held is not None:   # early stopping on a held-out proxy: N where the held-out RM's score of the pick peaks
        from .rl_bench import choose_n_by_held_out
        h = torch.tensor(held(repeated, completions), dtype=torch.float64).view(P, M)
        n_star = choose_n_by_held_out(member[0], h, ns)
        c = single[:, n_star - 1]
        out["early_stop"] = {"n": n_star, "kl": round(float(kl_best_of_n(torch.tensor([n_star]))[0]), 4),
                             "gold": mean_se(c).as_dict(), "gold_at_max_n": mean_se(single[:, -1]).as_dict(),
                             "vs_max_n": paired_bootstrap(c, single[:, -1], seed=cfg.seed).as_dict(),
                             "vs_single_peak": round(float(c.mean() - single.mean(0).max()), 4),
                             "held_out_curve": [round(v, 4) for v in
                                                per_prompt_bon(member[0], h, ns).mean(0).tolist()]}
    out["member_corr"] = [[round(pearson(member[i].flatten(), member[j].flatten()), 4) for j in range(len(member))]
                          for i in range(len(member))]
    out["seconds"] = round(time.time() - t0, 1)
    return out


def format_table(result: dict) -> str:
    lines = [f"best-of-N from review-sft, {result['prompts']} prompts x {result['config']['pool']} samples; "
             f"KL at N={result['config']['pool']}: {result['kl_at_max_n']} nats (every rule)",
             f"{'rule':24s} {'gold@N=max':>18s} {'peak (N)':>12s} {'drop':>7s} {'vs single @max (95% CI)':>26s} {'corr(len)':>9s}"]
    for name, r in result["rules"].items():
        g = r["gold_at_max_n"]
        vs = r.get("vs_single_at_max_n")
        vs_s = f"{vs['value']:+.3f} ({vs['lo']:+.3f}..{vs['hi']:+.3f})" if vs else "-"
        lines.append(f"{name:24s} {g['value']:+.3f} +- {g['se']:.3f}    {r['peak_gold']:+.3f} ({r['peak_n']:2d}) "
                     f"{r['drop_after_peak']:7.3f} {vs_s:>26s} {r['length_corr']:9.3f}")
    if "early_stop" in result:
        e = result["early_stop"]
        lines.append(f"early stopping on {result['config']['held_out']}: N = {e['n']} (KL {e['kl']}), gold "
                     f"{e['gold']['value']:+.3f} vs {e['gold_at_max_n']['value']:+.3f} at N = {result['config']['pool']} "
                     f"(difference {e['vs_max_n']['value']:+.3f}, {e['vs_max_n']['lo']:+.3f}..{e['vs_max_n']['hi']:+.3f})")
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(1)
    res = measure_bon_defences()
    print(format_table(res))
    print(json.dumps({k: v for k, v in res.items() if k != "rules"}, indent=1))
