"""Evaluation on the built-in worlds, shared by every method and notebook.

* `eval_arithmetic`: final-answer accuracy, whole-trace accuracy and step accuracy of chains.
* `eval_reviews`: the gold reward (and fluency) of sampled reviews.
* `eval_answers`, `reward_accuracy`, `win_rate`: any model on a user's data (`minirlhf eval`): greedy
  accuracy and unbiased pass@k on verifiable answers, reward-model accuracy and win rate on
  preferences, each with a standard error and a 95% interval over prompts.
* `sequence_kl`: KL(pi || ref) of one sampled completion per prompt (and its gold reward), as
  every reviews-world command and `minirlhf baselines` report it.
"""

from __future__ import annotations

import math
import statistics

import torch

from .lm import decode_completions, encode_prompts, generate, sample, token_logprobs
from .worlds import arithmetic, reviews

REVIEW_EVAL_PROMPTS = 128   # held-out review prompts for gold reward and KL
ARITH_EVAL_ROWS = 200       # held-out chains for accuracy


@torch.no_grad()
def eval_arithmetic(model, tokenizer, rows: list[dict], temperature: float = 0.0,
                    max_new_tokens: int = 64, seed: int = 0, modulus: int = 10,
                    return_samples: bool = False) -> dict:
    """Greedy (temperature 0) by default. rows have "prompt" (and "answer" is not needed)."""
    was_training = model.training
    model.eval()
    prompts = [r["prompt"] for r in rows]
    completions, _ = generate(model, tokenizer, prompts, max_new_tokens, temperature,
                              generator=torch.Generator().manual_seed(seed))
    results = [arithmetic.check_chain(p, c, modulus) for p, c in zip(prompts, completions)]
    n_steps = sum(len(r.step_valid) for r in results)
    out = {
        "accuracy": sum(r.answer_correct for r in results) / len(results),
        "trace_accuracy": sum(r.trace_correct for r in results) / len(results),
        "step_accuracy": sum(sum(r.step_valid) for r in results) / max(1, n_steps),
        "mean_completion_chars": statistics.mean(len(c) for c in completions),
    }
    if return_samples:
        out["samples"] = list(zip(prompts, completions, results))
    model.train(was_training)
    return out


@torch.no_grad()
def eval_reviews(model, tokenizer, prompts: list[str], temperature: float = 1.0,
                 max_new_tokens: int = 96, seed: int = 0, return_samples: bool = False) -> dict:
    """Gold reward of one sampled completion per prompt."""
    was_training = model.training
    model.eval()
    completions, _ = generate(model, tokenizer, prompts, max_new_tokens, temperature,
                              generator=torch.Generator().manual_seed(seed))
    texts = [p + c for p, c in zip(prompts, completions)]
    gold = [reviews.gold_reward(t) for t in texts]
    out = {
        "gold_reward": statistics.mean(gold),
        "gold_reward_std": statistics.pstdev(gold),
        "fluent": sum(reviews.is_fluent(t) for t in texts) / len(texts),
        "sentiment": statistics.mean(reviews.sentiment(t) for t in texts),
        "mean_completion_chars": statistics.mean(len(c) for c in completions),
    }
    if return_samples:
        out["samples"] = list(zip(prompts, completions, gold))
    model.train(was_training)
    return out


@torch.no_grad()
def sequence_kl(policy, ref, tok, prompts: list[str], max_new_tokens: int = 64, gold_fn=None,
                temperature: float = 1.0, seed: int = 1234) -> dict:
    """Sequence KL(pi || ref) and, with `gold_fn(prompts, completions)`, the mean gold reward.

        KL = mean over prompts of sum_t [log pi(y_t | y_<t) - log ref(y_t | y_<t)],  y ~ pi

    (k1 summed over one sample per prompt, at `temperature` in sampling and in both log-probs;
    the same numbers as `ppo.evaluate_policy`, which PPO logs as eval/kl while it trains.)
    Returns {"kl"} or {"kl", "gold_reward"}, rounded to 4 decimals.
    """
    was_training = policy.training
    policy.eval()
    ids, mask = encode_prompts(tok, prompts)
    device = next(policy.parameters()).device
    ro = sample(policy, ids.to(device), mask.to(device), max_new_tokens, tok.eos_token_id, tok.pad_token_id,
                temperature=temperature, generator=torch.Generator().manual_seed(seed))
    logp = token_logprobs(policy, ro.input_ids, ro.attention_mask, temperature, score_mask=ro.completion_mask)
    ref_logp = token_logprobs(ref, ro.input_ids, ro.attention_mask, temperature, score_mask=ro.completion_mask)
    out = {"kl": round(((logp - ref_logp) * ro.completion_mask).sum(-1).mean().item(), 4)}
    if gold_fn is not None:
        out["gold_reward"] = round(sum(gold_fn(prompts, decode_completions(tok, ro))) / len(prompts), 4)
    policy.train(was_training)
    return out



# ---------------------------------------------------------------------------------------------
# Any model on a user's data (`minirlhf eval`): verifiable answers and preferences
# ---------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021, Eq. 1).

        pass@k = 1 - C(n - c, k) / C(n, k)
    """
    if k > n:
        raise ValueError(f"pass@{k} needs at least k samples, got n={n}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_at_k_estimates(n_correct: list[int], n: int, k: int) -> list[float]:
    """Unbiased pass@k of each prompt from n samples of which c_i are correct (Chen et al., 2021, Eq. 1):

        pass@k_i = 1 - C(n - c_i, k) / C(n, k)

    The mean over prompts estimates pass@k without the bias of "any of the first k samples is right"
    computed once (which has a higher variance for the same samples) or of 1 - (1 - c/n)^k (biased low).
    """
    return [pass_at_k(n, c, k) for c in n_correct]


@torch.no_grad()
def eval_answers(model, tokenizer, rows: list[dict], n_samples: int = 0, ks: tuple[int, ...] = (1,),
                 temperature: float = 1.0, max_new_tokens: int = 512, batch_size: int = 64, seed: int = 0,
                 greedy: bool = True, keep_samples: int = 3) -> dict:
    """Accuracy on rows with a "prompt" and an exact "gold" answer (`data.load_prompts_with_answers`),
    graded by `worlds.arithmetic.extract_numeric_answer` (GSM8K's "#### N" first).

    greedy: one completion per prompt at temperature 0 -> "greedy_accuracy".
    n_samples > 0: n completions per prompt at `temperature` -> "pass@k" for each k in `ks` (k <= n).
    Every number is an `stats.Estimate` over prompts as a dict (value, se, 95% interval lo..hi, n):
    mean_se, the normal interval, since each prompt's score is bounded and there are many prompts.
    Generation runs `batch_size` sequences at a time. `keep_samples` (prompt, completion, correct)
    triples from the greedy run are returned for a look.
    """
    from .stats import mean_se
    from .worlds.arithmetic import extract_numeric_answer

    if n_samples and max(ks) > n_samples:
        raise ValueError(f"pass@{max(ks)} needs at least {max(ks)} samples per prompt, got n_samples={n_samples}")
    was_training = model.training
    model.eval()
    prompts = [r["prompt"] for r in rows]
    gold = [r["gold"] for r in rows]

    def correct(completions: list[str], golds) -> list[bool]:
        return [(a := extract_numeric_answer(c)) is not None and a == g for c, g in zip(completions, golds)]

    out: dict = {"n_prompts": len(rows)}
    if greedy:
        completions, _ = generate(model, tokenizer, prompts, max_new_tokens, temperature=0.0, batch_size=batch_size)
        ok = correct(completions, gold)
        out["greedy_accuracy"] = mean_se([float(x) for x in ok]).as_dict()
        out["greedy_has_answer"] = sum(extract_numeric_answer(c) is not None for c in completions) / len(rows)
        out["samples"] = [{"prompt": p, "completion": c, "correct": x}
                          for p, c, x in list(zip(prompts, completions, ok))[:keep_samples]]
    if n_samples:
        repeated = [p for p in prompts for _ in range(n_samples)]  # (N * n,): a prompt's samples are adjacent
        completions, _ = generate(model, tokenizer, repeated, max_new_tokens, temperature=temperature,
                                  generator=torch.Generator().manual_seed(seed), batch_size=batch_size)
        ok = correct(completions, [g for g in gold for _ in range(n_samples)])
        n_correct = [sum(ok[i * n_samples:(i + 1) * n_samples]) for i in range(len(rows))]
        out["n_samples"], out["temperature"] = n_samples, temperature
        for k in ks:
            out[f"pass@{k}"] = mean_se(pass_at_k_estimates(n_correct, n_samples, k)).as_dict()
    model.train(was_training)
    return out


def reward_accuracy(reward_fn, rows: list[dict]) -> dict:
    """How often a reward model prefers the chosen response: r(prompt, chosen) > r(prompt, rejected).

    reward_fn(prompts, completions) -> list[float] (`rm_bench.load_reward_scorer`); a tie counts 1/2.
    Returns {"accuracy": Estimate dict over pairs, "margin": mean r(chosen) - r(rejected)}.
    """
    from .stats import mean_se

    prompts = [r["prompt"] for r in rows]
    r_c = reward_fn(prompts, [r["chosen"] for r in rows])
    r_r = reward_fn(prompts, [r["rejected"] for r in rows])
    wins = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(r_c, r_r)]
    return {"accuracy": mean_se(wins).as_dict(),
            "margin": round(sum(c - r for c, r in zip(r_c, r_r)) / len(rows), 4), "n_pairs": len(rows)}


@torch.no_grad()
def win_rate(policy, reference, tokenizer, reward_fn, prompts: list[str], max_new_tokens: int = 256,
             temperature: float = 1.0, batch_size: int = 64, seed: int = 0, ref_tokenizer=None) -> dict:
    """The policy's win rate against a reference, judged by a reward model: one completion per prompt
    from each (same `temperature`, same seed), win = r(policy) > r(reference), a tie counts 1/2.

    Returns {"win_rate": Estimate dict over prompts, "reward/policy", "reward/reference"}; 0.5 means
    the judge cannot tell them apart.
    """
    from .stats import mean_se

    outs = []
    for model, tok in ((policy, tokenizer), (reference, ref_tokenizer or tokenizer)):
        was_training = model.training
        model.eval()
        texts, _ = generate(model, tok, prompts, max_new_tokens, temperature=temperature,
                            generator=torch.Generator().manual_seed(seed), batch_size=batch_size)
        model.train(was_training)
        outs.append(reward_fn(prompts, texts))
    r_pol, r_ref = outs
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(r_pol, r_ref)]
    return {"win_rate": mean_se(wins).as_dict(), "reward/policy": round(sum(r_pol) / len(prompts), 4),
            "reward/reference": round(sum(r_ref) / len(prompts), 4), "n_prompts": len(prompts)}
