"""Dense process rewards for RL: turning per-step rewards into per-token advantages.

The verifiers of `prm.py` score steps; this file uses those scores as rewards in a compact
RLOO/GRPO-style loop (built on `rl.py` and `lm.sample`):

* `process_returns`: the return of each token from the step rewards after it, in the usual
  sum form (returns-to-go) or the min form of "Stop Summation" (Cheng et al., 2025, PURE),
  where a token's credit is the worst step still ahead of it.
* `dense_advantages`: RLOO on the outcome reward plus group-normalised step returns (as in
  DeepSeekMath's process supervision, Shao et al., 2024, Sec. 4.1.3).
* `train_dense_rl`: the loop (outcome-only when `process_coef=0`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from einops import rearrange
from torch import Tensor

from .errors import check_config
from .lm import decode_completions, encode_prompts, sample, token_logprobs
from .prm import SEPARATOR, scatter_steps, step_boundary_mask
from .progress import ProgressBar
from .rl import aggregate_loss, clipped_surrogate, discounted_returns, kl_k3, masked_mean, rloo_advantages
from .utils import MetricsLogger, check_finite, set_seed

# ---------------------------------------------------------------------------------------------
# 6. Dense rewards for RL: outcome advantage + step rewards at step boundaries
# ---------------------------------------------------------------------------------------------


def process_returns(step_rewards: Tensor, step_mask: Tensor, completion_mask: Tensor, form: str) -> Tensor:
    """Credit for each token from the step rewards placed at step boundaries. (B, T) -> (B, T).

    sum: G_t = sum_{k: boundary_k >= t} r_k        (returns-to-go, gamma = 1)
    min: G_t = min_{k: boundary_k >= t} r_k        (PURE, Cheng et al., 2025, min-form value)
    """
    if form == "sum":
        return discounted_returns(step_rewards * step_mask, completion_mask.float(), gamma=1.0)
    if form == "min":
        r = step_rewards.masked_fill(~step_mask.bool(), float("inf"))
        g = torch.flip(torch.cummin(torch.flip(r, [1]), dim=1).values, [1])  # reverse cumulative min
        return torch.where(completion_mask.bool() & torch.isfinite(g), g, torch.zeros_like(g))
    raise ValueError(f"unknown credit-assignment form {form!r}; choose 'sum' or 'min'")


def dense_advantages(outcome: Tensor, step_rewards: Tensor, step_mask: Tensor, completion_mask: Tensor,
                     form: str = "min", process_coef: float = 1.0, eps: float = 1e-4) -> Tensor:
    """Per-token advantages from an outcome reward and step rewards.

    outcome: (P, G) rewards; step_rewards, step_mask, completion_mask: (P*G, T), rows grouped by
    prompt. Outcome part: RLOO (Ahmadian et al., 2024) broadcast to every token. Process part:
    step rewards normalised over all steps of the group (DeepSeekMath's process-supervised GRPO,
    Shao et al., 2024, Sec. 4.1.3), then credited in `form` ("sum" or "min", see process_returns).
    """
    P, G = outcome.shape
    comp = completion_mask.float()
    adv = rearrange(rloo_advantages(outcome), "p g -> (p g) 1") * comp  # (B, T)
    if process_coef == 0:
        return adv
    sm = rearrange(step_mask.float(), "(p g) t -> p g t", p=P)  # (P, G, T): a group's steps together
    r = rearrange(step_rewards, "(p g) t -> p g t", p=P)
    n = sm.sum((1, 2), keepdim=True).clamp(min=1)
    mean = (r * sm).sum((1, 2), keepdim=True) / n
    std = (((r - mean) ** 2 * sm).sum((1, 2), keepdim=True) / n).sqrt()
    r_norm = rearrange((r - mean) / (std + eps) * sm, "p g t -> (p g) t")  # (B, T)
    return adv + process_coef * process_returns(r_norm, step_mask, completion_mask, form)


@dataclass
class DenseRLConfig:
    """A compact RLOO / PPO-clip loop with optional dense process rewards (CPU defaults)."""

    iterations: int = 30
    """Sampling rounds."""
    prompts_per_iter: int = 16
    """Prompts per round."""
    group_size: int = 8
    """Completions per prompt (G)."""
    lr: float = 5e-4
    """AdamW learning rate."""
    epochs: int = 2
    """Passes over each round's samples (the clip matters from the second pass)."""
    clip: float = 0.2
    """PPO clip range."""
    kl_coef: float = 0.02
    """Weight of the k3 KL penalty to the reference policy."""
    form: str = "min"
    """Credit assignment for step rewards: "min" (PURE) or "sum"."""
    process_coef: float = 0.0
    """Weight of the process part of the advantage; 0 = outcome-only RLOO."""
    temperature: float = 1.0
    """Sampling temperature."""
    max_new_tokens: int = 64
    """Longest completion."""
    seed: int = 0
    """Seed for prompts and sampling."""

    def validate(self) -> None:
        """Raise ConfigError naming the flag of the first field out of range (before anything loads)."""
        check_config(self, at_least_1=("iterations", "prompts_per_iter", "epochs", "max_new_tokens"),
                     at_least={"group_size": 2}, positive=("lr", "temperature"),
                     non_negative=("clip", "kl_coef", "process_coef"), choices={"form": ("min", "sum")})


def train_dense_rl(policy, ref, tokenizer, prompts: list[str], outcome_fn: Callable,
                   step_reward_fn: Callable | None, cfg: DenseRLConfig = DenseRLConfig(),
                   eval_fn: Callable | None = None, eval_every: int = 10, progress: bool = False) -> MetricsLogger:
    """RL on `prompts`. outcome_fn(prompts, completions) -> [float]; step_reward_fn(prompts,
    completions) -> [[float per step of split_into_steps(completion)]] (needed if process_coef > 0).
    progress: a progress bar (outcome reward, KL) and, every `eval_every` iterations and at the end,
    one group's completions with their outcome reward."""
    cfg.validate()  # a bad value stops here, before any work
    g, log = set_seed(cfg.seed), MetricsLogger()
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=(0.9, 0.95))
    sep = tokenizer.convert_tokens_to_ids(SEPARATOR)
    bar = ProgressBar(range(cfg.iterations), "dense rl", {"reward/outcome": "reward", "reward/step_mean": "step_reward",
                      "objective/kl": "kl", "completion_length": "length"}, log, enabled=progress)
    for it in bar:
        # 1. sample G completions for each of a batch of prompts
        idx = torch.randint(len(prompts), (cfg.prompts_per_iter,), generator=g).tolist()
        batch_prompts = [prompts[i] for i in idx for _ in range(cfg.group_size)]
        ids, mask = encode_prompts(tokenizer, batch_prompts)
        policy.eval()
        roll = sample(policy, ids, mask, cfg.max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id,
                      cfg.temperature, generator=g)
        texts = decode_completions(tokenizer, roll)
        comp = roll.completion_mask.float()  # (B, T)
        step_mask = step_boundary_mask(roll.input_ids, roll.completion_mask, sep, tokenizer.eos_token_id)  # (B, T)
        # 2. score: outcome reward per completion, step rewards at step boundaries
        outcome = torch.tensor(outcome_fn(batch_prompts, texts), dtype=torch.float)  # (B,)
        check_finite("outcome reward", outcome)
        step_rewards = torch.zeros_like(comp)
        if cfg.process_coef:
            step_rewards = scatter_steps(step_reward_fn(batch_prompts, texts), step_mask)
            check_finite("step rewards", step_rewards)
        # 3. per-token advantages
        adv = dense_advantages(rearrange(outcome, "(p g) -> p g", g=cfg.group_size), step_rewards, step_mask,
                               roll.completion_mask, cfg.form, cfg.process_coef)  # (B, T)
        with torch.no_grad():
            old_logp = token_logprobs(policy, roll.input_ids, roll.attention_mask, cfg.temperature)
            ref_logp = token_logprobs(ref, roll.input_ids, roll.attention_mask, cfg.temperature)
        # 4. clipped policy-gradient updates with a k3 KL penalty
        policy.train()
        for _ in range(cfg.epochs):
            logp = token_logprobs(policy, roll.input_ids, roll.attention_mask, cfg.temperature)  # (B, T)
            pg, ratio = clipped_surrogate(logp, old_logp, adv, cfg.clip)
            kl = kl_k3(logp, ref_logp)  # (B, T)
            loss = aggregate_loss(pg + cfg.kl_coef * kl, comp, "token_mean")
            check_finite("RL loss", loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            opt.step()
        row = {"iter": it, "reward/outcome": outcome.mean().item(), "objective/kl": masked_mean(kl, comp).item(),
               "steps_per_completion": (step_mask.sum(-1).float().mean().item()),
               "completion_length": comp.sum(-1).mean().item()}
        if cfg.process_coef:
            row["reward/step_mean"] = masked_mean(step_rewards, step_mask.float()).item()
        evaluating = (eval_every and (it + 1) % eval_every == 0) or it == cfg.iterations - 1
        if eval_fn is not None and evaluating:
            policy.eval()
            metrics = eval_fn(policy)
            bar.show(metrics)
            row.update(metrics)
        log.log(row)
        if evaluating:
            G = cfg.group_size
            bar.samples({"prompt": batch_prompts[:G], "completion": texts[:G], "reward": outcome[:G].tolist()},
                        title=f"dense rl iteration {it}")
    policy.eval()
    return log
