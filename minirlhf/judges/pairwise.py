"""LLM-as-judge: pairwise ("which is better, A or B?") and pointwise ("is this one good?") judges,
their biases, and the standard fix (judge both orders, average).

A pairwise judge reads  prompt, response A, response B, a question  and answers 'A' or 'B'. Its
probability that the first response wins, read like a verdict token (`verdict.py`, restricted to
the two answers),

    p(A > B) = sigmoid(z_A - z_B)                         at the token after `PAIR_QUESTION`

depends on the order the two are shown in when the judge has a **position bias** (Zheng et al. 2023,
"Judging LLM-as-a-judge", Sec. 3.3; Wang et al. 2023, "Large Language Models are not Fair
Evaluators"). With p_ab = p(first wins | order a, b) and p_ba = p(first wins | order b, a):

    consistent judge:  p_ba = 1 - p_ab
    both-orders fix:   p(a > b) = (p_ab + (1 - p_ba)) / 2                     (Zheng et al. 2023, "swap")
    position bias:     mean |p_ab - (1 - p_ba)|                  0 for a consistent judge
    order flips:       fraction of pairs whose verdict (p > 1/2) changes when the order is swapped
    first-slot rate:   mean (p_ab + p_ba) / 2                    1/2 if neither slot is favoured
    length bias:       corr(p(a > b), len(a) - len(b))           compare with gold's own correlation

The reviews world's gold reward charges for rambling (> 14 words), so gold's own correlation with
length is negative; a judge that prefers the longer review shows a higher one.
"""

from __future__ import annotations

import random
from typing import Callable

import torch
from torch import Tensor

from ..lm import encode_prompts, position_ids_from_mask
from .verdict import verdict_ids, verdict_prob, verdict_scores

PAIR_QUESTION = "\nBetter? "   # the next token is 'A' or 'B'
FIRST, SECOND = "A", "B"
POINT_QUESTION = "\nGood? "    # pointwise: the next token is 'Y' or 'N'

PairProbFn = Callable[[list[str], list[str], list[str]], Tensor]  # (prompts, first, second) -> p(first wins) (B,)


def pair_prompt(prompt: str, first: str, second: str) -> str:
    """The text a pairwise judge reads (the two whole reviews, then the question)."""
    return f"A: {prompt}{first}\nB: {prompt}{second}{PAIR_QUESTION}"


def both_orders(p_ab: Tensor, p_ba: Tensor) -> Tensor:
    """The both-orders estimate p(a > b) = (p_ab + 1 - p_ba) / 2. (B,), (B,) -> (B,)."""
    return 0.5 * (p_ab + (1.0 - p_ba))


def position_bias(p_ab: Tensor, p_ba: Tensor) -> dict[str, float]:
    """How much the verdict depends on the order. (B,), (B,) -> {"position_bias", "order_flips", "first_slot"}."""
    return {"position_bias": (p_ab - (1.0 - p_ba)).abs().mean().item(),
            "order_flips": ((p_ab > 0.5) != ((1.0 - p_ba) > 0.5)).float().mean().item(),
            "first_slot": (0.5 * (p_ab + p_ba)).mean().item()}


def pearson(x: Tensor, y: Tensor) -> float:
    """Pearson correlation of two (B,) tensors (0 when either is constant)."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    den = (x.pow(2).sum() * y.pow(2).sum()).sqrt()
    return (x * y).sum().div(den).item() if den > 0 else 0.0


def length_bias(p_a_wins: Tensor, len_a: Tensor, len_b: Tensor) -> float:
    """corr(p(a > b), len(a) - len(b)): > 0 when the judge favours the longer response. (B,) each."""
    return pearson(p_a_wins, (len_a - len_b).double())


@torch.no_grad()
def pairwise_probs(model, tokenizer, prompts: list[str], first: list[str], second: list[str],
                   batch_size: int = 512) -> Tensor:
    """p(first response wins) of a generative pairwise judge, restricted to {'A', 'B'}. -> (B,)."""
    a_id, b_id = verdict_ids(tokenizer, FIRST, SECOND)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    texts = [pair_prompt(p, x, y) for p, x, y in zip(prompts, first, second)]
    out = []
    for i in range(0, len(texts), batch_size):
        ids, mask = encode_prompts(tokenizer, texts[i:i + batch_size])  # left-padded: the question ends the row
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits[:, -1]
        out.append(verdict_prob(logits, a_id, b_id, restrict=True).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def pointwise_probs(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 512) -> Tensor:
    """p('Y' | prompt + completion + "Good? ") of a pointwise grader, restricted to {'Y', 'N'}. -> (B,).
    A judge in `online_dpo`'s sense once wrapped: `online_dpo.self_judge(policy, tok, pointwise_probs)`."""
    return verdict_scores(model, tokenizer, prompts, completions, restrict=True, batch_size=batch_size,
                          question=POINT_QUESTION)


def judge_both_orders(prob_fn: PairProbFn, prompts: list[str], a: list[str], b: list[str]) -> dict[str, Tensor]:
    """Ask the judge in both orders -> {"p_ab", "p_ba", "p": the both-orders estimate of p(a > b)}."""
    p_ab = torch.as_tensor(prob_fn(prompts, a, b), dtype=torch.float64)
    p_ba = torch.as_tensor(prob_fn(prompts, b, a), dtype=torch.float64)
    return {"p_ab": p_ab, "p_ba": p_ba, "p": both_orders(p_ab, p_ba)}


def gold_agreement(p_a_wins: Tensor, gold_a: Tensor, gold_b: Tensor) -> float:
    """Fraction of pairs (gold ties dropped) where the judge's verdict p > 1/2 agrees with gold."""
    keep = gold_a != gold_b
    if not keep.any():
        return float("nan")
    return ((p_a_wins[keep] > 0.5) == (gold_a[keep] > gold_b[keep])).double().mean().item()


def pointwise_agreement_fn(tokenizer, pairs: list[dict], gold_fn: Callable[[str], float]) -> Callable:
    """`fn(model) -> float`: how often the model's pointwise grades, compared, order the fixed `pairs`
    (prompt/chosen/rejected) as gold does: p(a > b) = 1/2 + (p_Y(a) - p_Y(b)) / 2 (the online loop's
    held-out check on a self-judge). Gold is scored once, here."""
    ps, a, b = [r["prompt"] for r in pairs], [r["chosen"] for r in pairs], [r["rejected"] for r in pairs]
    gold_a = torch.tensor([gold_fn(p + x) for p, x in zip(ps, a)])
    gold_b = torch.tensor([gold_fn(p + x) for p, x in zip(ps, b)])

    def agreement(model) -> float:
        pa, pb = pointwise_probs(model, tokenizer, ps, a), pointwise_probs(model, tokenizer, ps, b)
        return gold_agreement(0.5 + 0.5 * (pa - pb), gold_a, gold_b)
    return agreement


def pairwise_rows(pairs: list[dict], gold_fn: Callable[[str], float], seed: int = 0) -> list[dict]:
    """SFT rows for a pairwise judge from prompt/chosen/rejected pairs, labelled by gold (not by the
    pair's noisy label); the order of the two is drawn at random, so 'A' and 'B' are equally often right.
    Gold ties are dropped. -> {"prompt": pair_prompt(...), "completion": 'A' or 'B'}."""
    rng = random.Random(seed)
    rows = []
    for r in pairs:
        x, y = r["chosen"], r["rejected"]
        gx, gy = gold_fn(r["prompt"] + x), gold_fn(r["prompt"] + y)
        if gx == gy:
            continue
        if rng.random() < 0.5:
            x, y, gx, gy = y, x, gy, gx
        rows.append({"prompt": pair_prompt(r["prompt"], x, y), "completion": FIRST if gx > gy else SECOND})
    return rows


def pointwise_rows(rows: list[dict], gold_fn: Callable[[str], float], threshold: float = 0.0) -> list[dict]:
    """SFT rows for a pointwise grader: prompt + completion + "Good? " -> 'Y' iff gold > threshold."""
    return [{"prompt": r["prompt"] + r["completion"] + POINT_QUESTION,
             "completion": "Y" if gold_fn(r["prompt"] + r["completion"]) > threshold else "N"} for r in rows]


def group_scores_from_pairs(prob_fn: PairProbFn, prompts: list[str], completions: list[str], k: int) -> list[float]:
    """Score each of k responses per prompt by its mean both-orders win probability against the
    other k - 1 (a round robin: k (k - 1) judge calls per prompt). Rows are grouped: prompt i's
    responses are rows i*k .. i*k + k-1. -> list of len(completions) scores in [0, 1]."""
    if k < 2 or len(completions) % k:
        raise ValueError(f"need groups of k >= 2 responses, got k={k} for {len(completions)} rows")
    pp, aa, bb, where = [], [], [], []
    for g in range(len(completions) // k):
        for i in range(k):
            for j in range(i + 1, k):
                pp.append(prompts[g * k])
                aa.append(completions[g * k + i])
                bb.append(completions[g * k + j])
                where.append((g * k + i, g * k + j))
    p = judge_both_orders(prob_fn, pp, aa, bb)["p"]
    wins = torch.zeros(len(completions), dtype=torch.float64)
    for (i, j), pij in zip(where, p.tolist()):
        wins[i] += pij
        wins[j] += 1.0 - pij
    return (wins / (k - 1)).tolist()


def review_judging_rows(n_pairs: int = 4000, n_points: int = 1000, seed: int = 0) -> list[dict]:
    """The judging rows `review-judge` and `review-self` were trained on (`judges/build.py`): pairwise rows from
    the first `n_pairs` prefs_train pairs and pointwise rows from the first `n_points` SFT reviews, gold-labelled,
    shuffled. What a self-rewarding loop retrains on each round (`online_dpo.OnlineDPOConfig.judge_refresh_steps`)."""
    from ..worlds import reviews
    from ..zoo import load_split

    rows = pairwise_rows(load_split("reviews", "prefs_train")[:n_pairs], reviews.gold_reward, seed)
    rows += pointwise_rows(load_split("reviews", "sft")[:n_points], reviews.gold_reward)
    random.Random(seed).shuffle(rows)
    return rows
