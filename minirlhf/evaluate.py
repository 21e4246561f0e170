"""Evaluation on the built-in worlds, shared by every method and notebook.

* `eval_arithmetic`: final-answer accuracy, whole-trace accuracy and step accuracy of chains.
* `eval_reviews`: the gold reward (and fluency) of sampled reviews.
* `sequence_kl`: KL(pi || ref) of one sampled completion per prompt (and its gold reward), as
  every reviews-world command and `minirlhf baselines` report it.
"""

from __future__ import annotations

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
    logp = token_logprobs(policy, ro.input_ids, ro.attention_mask, temperature=temperature)  # (B, T)
    ref_logp = token_logprobs(ref, ro.input_ids, ro.attention_mask, temperature=temperature)  # (B, T)
    out = {"kl": round(((logp - ref_logp) * ro.completion_mask).sum(-1).mean().item(), 4)}
    if gold_fn is not None:
        out["gold_reward"] = round(sum(gold_fn(prompts, decode_completions(tok, ro))) / len(prompts), 4)
    policy.train(was_training)
    return out

