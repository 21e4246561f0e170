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
from ..utils import MetricsLogger, set_seed

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

    def validate(self) -> None:
        check_config(self, at_least_1=("iterations", "prompts_per_iteration", "max_new_tokens"),
                     positive=("epochs",), non_negative=("temperature",))
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


def online_dpo(policy, ref, tokenizer, prompts: list[str], judge: JudgeFn, cfg: OnlineDPOConfig = OnlineDPOConfig(),
               gold_fn: Callable[[list[str], list[str]], list[float]] | None = None,
               eval_prompts: list[str] | None = None, logger: MetricsLogger | None = None,
               on_iteration: Callable[[int, object], None] | None = None) -> MetricsLogger:
    """Run `cfg.iterations` rounds of sample -> judge -> DPO on `policy` (in place); returns the log.

    `ref` is the fixed DPO reference (pi_0). `judge(prompts, completions)` scores rows grouped k by
    k. With `gold_fn`, each round logs the judge's agreement with gold on its own pairs and the
    gold of the samples; with `eval_prompts`, the policy's gold reward and KL to `ref` after the
    round (`evaluate.sequence_kl`, one sample per prompt). `on_iteration(t, policy)` is called after
    each round (e.g. to update a self-judge that is a copy of the policy).
    """
    cfg.validate()
    g = set_seed(cfg.seed)
    logger = logger or MetricsLogger()
    order = torch.randperm(len(prompts), generator=g).tolist()
    cursor = 0
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
        row = {"iteration": t + 1, "pairs": len(pairs)}
        if gold_fn is not None and pairs:
            gw = gold_fn([r["prompt"] for r in pairs], [r["chosen"] for r in pairs])
            gl = gold_fn([r["prompt"] for r in pairs], [r["rejected"] for r in pairs])
            decided = [(a, b) for a, b in zip(gw, gl) if a != b]
            row["judge_gold_agreement"] = sum(a > b for a, b in decided) / max(1, len(decided))
            row["sample_gold"] = sum(gold_fn(repeated, completions)) / len(completions)
        # 4. DPO on the pairs, reference fixed at pi_0
        if pairs:
            steps = max(1, int(-(-cfg.epochs * len(pairs) // cfg.dpo.batch_size)))
            dcfg = replace(cfg.dpo, steps=steps, seed=cfg.seed + t)
            dlog = train_dpo(policy, tokenizer, pairs, dcfg, ref_model=ref)
            row.update({"dpo_steps": steps, "dpo_loss": dlog.rows[-1]["loss"],
                        "dpo_accuracy": dlog.rows[-1]["rewards/accuracies"]})
        policy.eval()
        if eval_prompts is not None:
            ev = sequence_kl(policy, ref, tokenizer, eval_prompts, cfg.max_new_tokens, gold_fn=gold_fn)
            row.update({"eval/kl": ev["kl"], **({"eval/gold": ev["gold_reward"]} if "gold_reward" in ev else {})})
        logger.log(row)
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
