"""Evaluation on the built-in worlds, shared by every method and notebook.

* `eval_arithmetic`: final-answer accuracy, whole-trace accuracy and step accuracy of chains.
* `eval_reviews`: the gold reward (and fluency) of sampled reviews.
"""

from __future__ import annotations

import statistics

import torch

from .lm import generate
from .worlds import arithmetic, reviews


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
