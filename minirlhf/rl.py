"""What every RL method needs, model-agnostic: masks, KL estimators, advantages, surrogates.

Everything here is a pure function: tensors in, tensors out, no hidden state. The same
functions serve language models (a "step" is a token) and diffusion models (a "step" is a
denoising step). Conventions:

* `mask` is 1.0 where a step counts (a completion token, a denoising step) and 0.0 elsewhere
  (prompt, padding). Masked-out positions never leak into a sum, a mean or a recursion.
* Tensors are (B, T): batch of sequences by steps, unless a docstring says otherwise.
* Log-probs are natural logs of the probability of the step that was actually taken.

References are given next to each formula. The PPO details follow "The N Implementation
Details of RLHF with PPO" (Huang et al., 2024) and Ziegler et al. (2019).
"""

from __future__ import annotations

import torch
from torch import Tensor

# ----------------------------------------------------------------------------------------
# Masked reductions
# ----------------------------------------------------------------------------------------


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of x where mask is 1. x, mask: same shape."""
    x = torch.where(mask.bool(), x, torch.zeros_like(x))  # where, not *, so NaN/inf in padding cannot leak
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x over the positions where mask is 1 (0 where a row has no such position)."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of x over all positions where mask is 1 (a scalar)."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_sum((x - mean) ** 2, mask) / n.clamp(min=1)
    if unbiased:
        var = var * n / (n - 1).clamp(min=1)  # Bessel's correction
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over the masked positions; masked-out positions are returned as 0.

    `shift_mean=False` keeps the mean (only rescales), as reward whitening in the
    lm-human-preferences code does; advantages are whitened with `shift_mean=True`.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


# ----------------------------------------------------------------------------------------
# KL estimators (Schulman, "Approximating KL divergence", 2020). Samples come from pi, the
# policy; each estimator is per sample and its mean estimates KL(pi || pi_ref).
# ----------------------------------------------------------------------------------------


def kl_k1(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """k1 = log pi(x) - log pi_ref(x). Unbiased, high variance, can be negative per sample."""
    return logp - logp_ref


def kl_k2(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """k2 = 1/2 (log pi(x) - log pi_ref(x))^2. Biased, low variance, always >= 0."""
    return 0.5 * (logp - logp_ref) ** 2


def kl_k3(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """k3 = r - 1 - log r with r = pi_ref(x)/pi(x). Unbiased, low variance, always >= 0.

    This is the estimator GRPO puts in its loss (Shao et al., 2024, Eq. 4).
    """
    log_r = logp_ref - logp
    return torch.exp(log_r) - 1 - log_r


# ----------------------------------------------------------------------------------------
# Advantages
# ----------------------------------------------------------------------------------------


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """G_t = r_t + gamma * G_{t+1}, written as the reverse recursion. rewards, mask: (B, T)."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])  # (B,) G_{t+1}
    for t in reversed(range(rewards.shape[1])):
        alive = mask[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(mask[:, t])
        running = rewards[:, t] + gamma * alive * running
        returns[:, t] = running
    return returns * mask


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
        ) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016, Eq. 16), as a reverse recursion.

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}

    The episode ends at the last masked position: there V_{t+1} = 0 and A_{t+1} = 0.
    rewards, values, mask: (B, T). Returns (advantages, returns = advantages + values), both
    zero outside the mask. With lam = 1, advantages = discounted_returns - values.
    """
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    last_adv = torch.zeros_like(rewards[:, 0])  # (B,)
    for t in reversed(range(T)):
        if t + 1 < T:
            alive = mask[:, t + 1]  # 1 if the episode continues after step t
            next_value = values[:, t + 1] * alive
        else:
            alive = torch.zeros_like(mask[:, t])
            next_value = torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        last_adv = delta + gamma * lam * alive * last_adv
        advantages[:, t] = last_adv
    advantages = advantages * mask
    returns = (advantages + values) * mask
    return advantages, returns


def group_advantages(rewards: Tensor, scale_by_std: bool = True, eps: float = 1e-4) -> Tensor:
    """GRPO's group-relative advantage (Shao et al., 2024, Sec. 4.1.2).

        A_i = (r_i - mean(r_group)) / (std(r_group) + eps)

    rewards: (B, G), G completions per prompt. `scale_by_std=False` is Dr. GRPO (Liu et al.,
    2025), which drops the division because it up-weights too-easy and too-hard prompts.
    A group whose rewards are all equal gets advantage exactly 0 (never NaN).
    """
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # (B, G)
    if not scale_by_std:
        return centred
    std = rewards.std(dim=1, keepdim=True, unbiased=True) if rewards.shape[1] > 1 \
        else torch.zeros_like(rewards[:, :1])
    return centred / (std + eps)


def rloo_advantages(rewards: Tensor) -> Tensor:
    """REINFORCE leave-one-out baseline (Kool et al., 2019; Ahmadian et al., 2024, Eq. 6).

        A_i = r_i - 1/(G-1) * sum_{j != i} r_j  =  G/(G-1) * (r_i - mean(r))

    rewards: (B, G) with G >= 2.
    """
    G = rewards.shape[1]
    if G < 2:
        raise ValueError(f"RLOO needs at least 2 samples per prompt, got G={G}")
    baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (G - 1)  # (B, G)
    return rewards - baseline


# ----------------------------------------------------------------------------------------
# Surrogate objectives and loss aggregation
# ----------------------------------------------------------------------------------------


def clipped_surrogate(logp: Tensor, old_logp: Tensor, advantages: Tensor,
                      clip_low: float = 0.2, clip_high: float | None = None
                      ) -> tuple[Tensor, Tensor]:
    """PPO's clipped surrogate, as a per-step loss to minimise (Schulman et al., 2017, Eq. 7).

        ratio = pi(a|s) / pi_old(a|s)
        loss  = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))

    `clip_high` defaults to `clip_low`; DAPO's "clip-higher" sets it larger (Yu et al., 2025).
    logp, old_logp, advantages: broadcastable, e.g. (B, T). Returns (loss, ratio).
    """
    clip_high = clip_low if clip_high is None else clip_high
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(unclipped, clipped), ratio


def clip_fractions(ratio: Tensor, advantages: Tensor, mask: Tensor, clip_low: float,
                   clip_high: float | None = None) -> dict[str, Tensor]:
    """Fraction of steps where the clip is active (low side: A < 0, high side: A > 0)."""
    clip_high = clip_low if clip_high is None else clip_high
    low = (ratio < 1.0 - clip_low) & (advantages < 0)
    high = (ratio > 1.0 + clip_high) & (advantages > 0)
    return {"clip_ratio/low": masked_mean(low.float(), mask),
            "clip_ratio/high": masked_mean(high.float(), mask),
            "clipfrac": masked_mean((low | high).float(), mask)}


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
                       clip: float = 0.2) -> tuple[Tensor, Tensor]:
    """PPO's clipped value loss (as in OpenAI baselines / lm-human-preferences).

        V_clip = V_old + clip(V - V_old, -clip, clip)
        loss   = 1/2 * max((V - R)^2, (V_clip - R)^2)

    Returns (scalar loss over masked steps, fraction of steps where the clipped term won).
    """
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    clipfrac = masked_mean((loss_clipped > loss_unclipped).float(), mask)
    return loss, clipfrac


AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm")


def aggregate_loss(loss: Tensor, mask: Tensor, mode: str = "token_mean",
                   max_len: int | None = None) -> Tensor:
    """Reduce a per-token loss (B, T) to a scalar. This is where length bias hides.

    * "token_mean": sum over every token of the batch / number of tokens (DAPO, Eq. 10).
      Each token weighs the same, so long sequences weigh more.
    * "seq_mean_token_mean": mean over each sequence's tokens, then over sequences (GRPO,
      Eq. 3). Each sequence weighs the same, so each token of a long wrong answer is
      penalised less: the length bias Dr. GRPO points out.
    * "seq_mean_token_sum": sum over each sequence's tokens, then mean over sequences.
    * "seq_mean_token_sum_norm": sum over tokens / a constant `max_len`, mean over sequences
      (Dr. GRPO, Liu et al., 2025): unbiased, the scale does not depend on lengths.
    """
    if mode == "token_mean":
        return masked_mean(loss, mask)
    if mode == "seq_mean_token_mean":
        per_seq = masked_sum(loss, mask, dim=-1) / mask.sum(-1).clamp(min=1)  # (B,)
        return per_seq.mean()
    if mode == "seq_mean_token_sum":
        return masked_sum(loss, mask, dim=-1).mean()
    if mode == "seq_mean_token_sum_norm":
        norm = max_len if max_len is not None else loss.shape[-1]
        return (masked_sum(loss, mask, dim=-1) / norm).mean()
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {AGGREGATIONS}")


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var[returns - values] / Var[returns] over masked steps (1 is perfect, 0 is a constant)."""
    var_returns = masked_var(returns, mask)
    return 1.0 - masked_var(returns - values, mask) / var_returns.clamp(min=1e-8)
