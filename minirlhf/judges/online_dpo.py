"""Online and self-rewarding DPO: the policy samples, a judge ranks, DPO on best-versus-worst.

Offline DPO learns from pairs someone else sampled. Online AI feedback (OAIF; Guo et al. 2024,
"Direct Language Model Alignment from Online AI Feedback") samples the pairs from the current
policy and has a judge label them; Self-Rewarding LMs (Yuan et al. 2024) make the policy its own
judge and iterate. One iteration t (Yuan et al. 2024, Sec. 2.3; Guo et al. 2024, Alg. 1):

    1. for each prompt x, sample k responses y_1..y_k ~ pi_t(.|x)
    2. the judge scores them, s_i = J(x, y_i)      (a reward model, a generative judge, or pi_t itself)
    3. one pair per prompt: y_w = argmax_i s_i, y_l = argmin_i s_i (skipped if s_w = s_l: no preference)
    4. pi_{t+1} = DPO(pi_t, pairs) with the fixed reference pi_ref = pi_0           (`dpo.train_dpo`)

Here the judge is any function (prompts, completions) -> scores over rows grouped k by k, so a
scalar reward model (`RewardModelScorer`), a rubric (`rubric.RubricScorer`), a pairwise judge
turned into scores by a round robin (`pairwise.group_scores_from_pairs`) or the policy's own
verdicts all fit. Because the world has a gold reward, every iteration also records how often the
judge's pair agrees with gold, and the policy's gold reward and KL to the reference: a judge whose
agreement falls as the policy moves is drifting (its inputs leave its training distribution).

What a practitioner adds around the loop (notebook 10, section 5; docs/judges.md):

* guards, checked after each round: the policy's sequence KL to pi_ref on held-out prompts (gold-free:
  `max_kl`) and the judge's agreement with labels on a fixed held-out set of pairs (`held_out_fn`,
  `min_held_out_agreement`: a small labelled set, the only outside check a self-judge gets). A tripped
  guard either undoes the round (the weights before it come back) and ends the loop, or only flags it;
* retraining the judging skill each round (`judge_refresh_steps`, `judge_rows`): after the round's DPO,
  a few SFT steps on the judging examples (Yuan et al.'s EFT data), so that a self-judge keeps what it
  was taught while DPO moves its writing (Meta-Rewarding, Wu et al. 2024, trains the judge every round).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from ..dpo import DPOConfig, train_dpo
from ..errors import ConfigError, check_config
from ..evaluate import sequence_kl
from ..lm import generate
from ..sft import SFTConfig, train_sft
from ..utils import MetricsLogger, set_seed

GUARD_ACTIONS = ("stop", "flag")
JudgeFn = Callable[[list[str], list[str]], list[float]]  # (prompts, completions) -> scores, rows grouped k by k


@dataclass
class OnlineDPOConfig:
    """Online DPO (OAIF / self-rewarding). Defaults fit the reviews world on a laptop CPU."""

    iterations: int = 3
    """Sample -> judge -> DPO rounds (Yuan et al. run 3)."""
    prompts_per_iteration: int = 128
    """Prompts sampled each round (one best-vs-worst pair each, ties dropped)."""
    k: int = 4
    """Responses sampled per prompt for the judge to rank."""
    temperature: float = 1.0
    """Sampling temperature of the responses."""
    max_new_tokens: int = 64
    """Longest sampled response."""
    epochs: float = 2.0
    """Passes of DPO over each round's pairs (steps = ceil(epochs * pairs / batch_size))."""
    dpo: DPOConfig = field(default_factory=lambda: DPOConfig(steps=1, batch_size=16, lr=2e-4, warmup_steps=0,
                                                                beta=0.1, log_every=1000))
    """The DPO step (loss type, beta, lr, batch size); `steps` is set per round from `epochs`."""
    seed: int = 0
    """Seed of prompt order and sampling."""
    max_kl: float = 0.0
    """Guard (0: off): a round that leaves the policy's sequence KL to the reference (on `eval_prompts`) above
    this trips the guard. Gold-free: a runaway round (a collapsed policy) shows here first."""
    min_held_out_agreement: float = 0.0
    """Guard (0: off): a round after which the judge agrees with the labels of a fixed held-out set of pairs
    (`held_out_fn`) on fewer than this fraction trips the guard."""
    guard_action: str = "stop"
    """What a tripped guard does: "stop" (restore the weights from before the round, end the loop) or "flag"
    (log it and go on)."""
    judge_refresh_steps: int = 0
    """Retrain the judging skill each round (0: off): after the round's DPO, this many SFT steps on the
    `judge_rows` given to `online_dpo` (the judge's own training examples)."""
    judge_refresh: SFTConfig = field(default_factory=lambda: SFTConfig(lr=3e-4, batch_size=32, warmup_steps=0,
                                                                       max_length=384, log_every=1000))
    """The refresh SFT (lr, batch size); `steps` is `judge_refresh_steps`, the seed changes each round."""

    def validate(self) -> None:
        check_config(self, at_least_1=("iterations", "prompts_per_iteration", "max_new_tokens"),
                     positive=("epochs",), non_negative=("temperature", "max_kl", "judge_refresh_steps"),
                     fractions=("min_held_out_agreement",), choices={"guard_action": GUARD_ACTIONS})
        if self.k < 2:
            raise ConfigError(f"--k must be >= 2 (a best and a worst response), got {self.k}")
        self.dpo.validate()


def best_worst_pairs(prompts: list[str], completions: list[str], scores: list[float], k: int) -> list[dict]:
    """One DPO pair per group of k rows: the judge's best as chosen, its worst as rejected.

    Rows are grouped k by k (prompt i's responses are rows i*k .. i*k + k-1). A group whose best and
    worst scores tie, or whose two texts are equal, gives no pair. Each row keeps the judge's scores.
    """
    if len(completions) != len(scores) or len(completions) % k:
        raise ValueError(f"{len(completions)} completions, {len(scores)} scores: need the same number, a multiple of k={k}")
    rows = []
    for g in range(len(completions) // k):
        s = scores[g * k:(g + 1) * k]
        w = max(range(k), key=lambda i: s[i])  # first on ties, like argmax
        l_ = min(range(k), key=lambda i: s[i])
        cw, cl = completions[g * k + w], completions[g * k + l_]
        if s[w] == s[l_] or cw == cl or not cw or not cl:
            continue
        rows.append({"prompt": prompts[g * k], "chosen": cw, "rejected": cl,
                     "judge_chosen": float(s[w]), "judge_rejected": float(s[l_])})
    return rows


def guard_reasons(row: dict, cfg: OnlineDPOConfig) -> list[str]:
    """Why a round's logged row trips the guards of `cfg` (empty: it passes). A guard that is off (0) or
    whose number was not logged (no eval prompts, no held-out set) never trips."""
    reasons = []
    if cfg.max_kl > 0 and row.get("eval/kl", 0.0) > cfg.max_kl:
        reasons.append(f"KL {row['eval/kl']:.1f} > {cfg.max_kl:g}")
    agree = row.get("judge/held_out_agreement")
    if cfg.min_held_out_agreement > 0 and agree is not None and agree < cfg.min_held_out_agreement:
        reasons.append(f"held-out agreement {agree:.3f} < {cfg.min_held_out_agreement:g}")
    return reasons


def kept_rows(rows: list[dict]) -> list[dict]:
    """The rounds whose policy was kept (a round undone by a guard dropped): the last one describes the
    policy `online_dpo` returns (none kept: the starting policy)."""
    return [r for r in rows if not r.get("guard/rolled_back")]


def online_dpo(policy, ref, tokenizer, prompts: list[str], judge: JudgeFn, cfg: OnlineDPOConfig = OnlineDPOConfig(),
               gold_fn: Callable[[list[str], list[str]], list[float]] | None = None,
               eval_prompts: list[str] | None = None, logger: MetricsLogger | None = None,
               on_iteration: Callable[[int, object], None] | None = None,
               held_out_fn: Callable[[object], float] | None = None,
               judge_rows: list[dict] | None = None) -> MetricsLogger:
    """Run `cfg.iterations` rounds of sample -> judge -> DPO on `policy` (in place); returns the log.

    `ref` is the fixed DPO reference (pi_0). `judge(prompts, completions)` scores rows grouped k by
    k. With `gold_fn`, each round logs the judge's agreement with gold on its own pairs and the
    gold of the samples; with `eval_prompts`, the policy's gold reward and KL to `ref` after the
    round (`evaluate.sequence_kl`, one sample per prompt). `on_iteration(t, policy)` is called after
    each round (e.g. to update a self-judge that is a copy of the policy).

    `held_out_fn(policy) -> agreement` is called after each round and logged as
    `judge/held_out_agreement` (for a self-judge: its grades of a fixed labelled set). With
    `cfg.judge_refresh_steps`, each round ends with that many SFT steps on `judge_rows`. A round that
    trips a guard (`guard_reasons`) is logged with `guard` (the reasons) and `guard/tripped`; with
    `guard_action="stop"` its weights are undone (`guard/rolled_back`) and the loop ends there.
    """
    cfg.validate()
    if cfg.judge_refresh_steps and not judge_rows:
        raise ConfigError("judge_refresh_steps > 0 needs the judging rows to retrain on (judge_rows)")
    if cfg.min_held_out_agreement > 0 and held_out_fn is None:
        raise ConfigError("min_held_out_agreement > 0 needs a held-out check (held_out_fn)")
    if cfg.max_kl > 0 and eval_prompts is None:
        raise ConfigError("max_kl > 0 needs eval_prompts to measure the KL on")
    g = set_seed(cfg.seed)
    logger = logger or MetricsLogger()
    order = torch.randperm(len(prompts), generator=g).tolist()
    cursor = 0
    guarded = cfg.guard_action == "stop" and (cfg.max_kl > 0 or cfg.min_held_out_agreement > 0)
    for t in range(cfg.iterations):
        # 1. k responses for each of this round's prompts, from the current policy
        if cursor + cfg.prompts_per_iteration > len(order):
            order, cursor = torch.randperm(len(prompts), generator=g).tolist(), 0
        batch = [prompts[i] for i in order[cursor:cursor + cfg.prompts_per_iteration]]
        cursor += cfg.prompts_per_iteration
        repeated = [p for p in batch for _ in range(cfg.k)]
        policy.eval()
        completions, _ = generate(policy, tokenizer, repeated, cfg.max_new_tokens, cfg.temperature, generator=g)
        # 2-3. the judge ranks each group; best vs worst
        scores = judge(repeated, completions)
        pairs = best_worst_pairs(repeated, completions, scores, cfg.k)
        row = {"iteration": t + 1, "pairs": len(pairs),
               "sample_length": sum(len(c) for c in completions) / len(completions)}
        if gold_fn is not None and pairs:
            gw = gold_fn([r["prompt"] for r in pairs], [r["chosen"] for r in pairs])
            gl = gold_fn([r["prompt"] for r in pairs], [r["rejected"] for r in pairs])
            decided = [(a, b) for a, b in zip(gw, gl) if a != b]
            row["judge_gold_agreement"] = sum(a > b for a, b in decided) / max(1, len(decided))
            row["sample_gold"] = sum(gold_fn(repeated, completions)) / len(completions)
        before = copy.deepcopy(policy.state_dict()) if guarded else None
        # 4. DPO on the pairs, reference fixed at pi_0
        if pairs:
            steps = max(1, int(-(-cfg.epochs * len(pairs) // cfg.dpo.batch_size)))
            dcfg = replace(cfg.dpo, steps=steps, seed=cfg.seed + t)
            dlog = train_dpo(policy, tokenizer, pairs, dcfg, ref_model=ref)
            row.update({"dpo_steps": steps, "dpo_loss": dlog.rows[-1]["loss"],
                        "dpo_accuracy": dlog.rows[-1]["rewards/accuracies"]})
        # 4b. retrain the judging skill on its own examples (self-rewarding, Meta-Rewarding style)
        if cfg.judge_refresh_steps:
            slog = train_sft(policy, tokenizer, judge_rows,
                             replace(cfg.judge_refresh, steps=cfg.judge_refresh_steps, seed=cfg.seed + 100 + t))
            row["judge_refresh_loss"] = slog.rows[-1]["loss"]
        policy.eval()
        if eval_prompts is not None:
            ev = sequence_kl(policy, ref, tokenizer, eval_prompts, cfg.max_new_tokens, gold_fn=gold_fn)
            row.update({"eval/kl": ev["kl"], **({"eval/gold": ev["gold_reward"]} if "gold_reward" in ev else {})})
        if held_out_fn is not None:
            row["judge/held_out_agreement"] = float(held_out_fn(policy))
        reasons = guard_reasons(row, cfg)
        if reasons:
            row.update({"guard": "; ".join(reasons), "guard/tripped": 1.0})
            if before is not None:  # undo the round: the policy goes back to its weights before it
                policy.load_state_dict(before)
                row["guard/rolled_back"] = 1.0
        logger.log(row)
        if row.get("guard/rolled_back"):
            break
        if on_iteration is not None:
            on_iteration(t, policy)
    return logger


def self_judge(policy, tokenizer, question_scores: Callable) -> JudgeFn:
    """The policy as its own judge (self-rewarding): scores = question_scores(policy, tokenizer, prompts, completions).

    A frozen snapshot is taken at each call, so training never back-propagates into the judge."""
    def judge(prompts: list[str], completions: list[str]) -> list[float]:
        snap = copy.deepcopy(policy).eval()
        return [float(x) for x in question_scores(snap, tokenizer, prompts, completions)]
    return judge
