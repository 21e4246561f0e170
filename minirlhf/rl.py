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

import math

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


# ----------------------------------------------------------------------------------------
# Where the KL goes: k1 / k2 / k3, in the reward or in the loss (issue 18)
# ----------------------------------------------------------------------------------------

KL_ESTIMATORS = ("k1", "k2", "k3")
KL_PLACEMENTS = ("loss", "reward")


def kl_estimate(logp: Tensor, logp_ref: Tensor, estimator: str = "k3") -> Tensor:
    """Per-sample KL(pi || pi_ref) estimate by name: "k1", "k2" or "k3" (Schulman, 2020). (...) -> (...)."""
    if estimator == "k1":
        return kl_k1(logp, logp_ref)
    if estimator == "k2":
        return kl_k2(logp, logp_ref)
    if estimator == "k3":
        return kl_k3(logp, logp_ref)
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {KL_ESTIMATORS}")


def kl_surrogate(logp: Tensor, logp_ref: Tensor, estimator: str = "k3", placement: str = "loss") -> Tensor:
    """The per-sample term (to minimise) whose gradient a trainer follows for its KL penalty. (...) -> (...).

        placement "loss":    k(logp, logp_ref)               differentiated through logp (GRPO Eq. 3, 4 with k3)
        placement "reward":  sg[k(logp, logp_ref)] * logp    the KL as a negative reward: REINFORCE's
                                                             score-function term (PPO-RLHF, REINFORCE++)

    A trainer adds beta times this (summed over the later tokens, for "reward") to its loss.
    Which of the six gives the gradient of KL(pi || pi_ref) is what `expected_kl_gradient` computes.
    """
    k = kl_estimate(logp, logp_ref, estimator)
    if placement == "loss":
        return k
    if placement == "reward":
        return k.detach() * logp
    raise ValueError(f"unknown KL placement {placement!r}; choose one of {KL_PLACEMENTS}")


def expected_kl_gradient(logits: Tensor, ref_logits: Tensor, estimator: str, placement: str,
                         behaviour_logits: Tensor | None = None, importance: str = "none") -> Tensor:
    """The exact expected gradient (w.r.t. the logits) of a KL penalty on a one-step categorical policy.

    pi = softmax(logits), pi_ref = softmax(ref_logits), actions a ~ b = softmax(behaviour_logits)
    (b = pi when behaviour_logits is None: on-policy). Enumerating the V actions instead of sampling:

        g = sum_a b(a) * w(a) * grad kl_surrogate(log pi(a), log pi_ref(a))          logits: (V,) -> g: (V,)

    importance: "none" (w = 1: how GRPO's loss treats the samples of pi_old), "detached"
    (w = sg[pi/b]: the usual importance-sampling correction), or "differentiable" (w = pi / sg[b], whose
    gradient flows: the ratio multiplies the KL term as it multiplies the advantage in PPO).

    What it shows (tests/test_rl_toolbox.py pins each line; compare `reverse_kl_gradient`, `forward_kl_gradient`):
      on-policy, or off-policy with importance "detached":
        k1 in the reward and k2 in the loss  -> grad KL(pi || pi_ref)   (the reverse KL we want)
        k3 in the loss                       -> grad KL(pi_ref || pi)   (the forward KL: E_pi[(1 - r) grad log pi])
        k1 in the loss                       -> 0                       (E_pi[grad log pi] = 0)
        k2, k3 in the reward                 -> neither (the score function misses E_pi[grad k] != 0)
      importance "differentiable": k1 and k3 in the loss -> grad KL(pi || pi_ref) (E_b[pi/b k] = KL exactly)
      off-policy with importance "none": none of them is the gradient of either KL.
    """
    logits = logits.detach().clone().requires_grad_(True)
    logp = torch.log_softmax(logits, -1)  # (V,)
    logp_ref = torch.log_softmax(ref_logits, -1).detach()
    logb = logp.detach() if behaviour_logits is None else torch.log_softmax(behaviour_logits, -1).detach()
    if importance == "none":
        w = torch.ones_like(logp)
    elif importance == "detached":
        w = torch.exp(logp.detach() - logb)
    elif importance == "differentiable":
        w = torch.exp(logp - logb)
    else:
        raise ValueError(f"unknown importance {importance!r}; choose 'none', 'detached' or 'differentiable'")
    surrogate = (logb.exp() * w * kl_surrogate(logp, logp_ref, estimator, placement)).sum()
    (grad,) = torch.autograd.grad(surrogate, logits)
    return grad


def reverse_kl_gradient(logits: Tensor, ref_logits: Tensor) -> Tensor:
    """grad_logits KL(pi || pi_ref) = grad sum_a pi(a) log(pi(a) / pi_ref(a)), by autograd. (V,) -> (V,)."""
    logits = logits.detach().clone().requires_grad_(True)
    logp, logp_ref = torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1).detach()
    (grad,) = torch.autograd.grad((logp.exp() * (logp - logp_ref)).sum(), logits)
    return grad


def forward_kl_gradient(logits: Tensor, ref_logits: Tensor) -> Tensor:
    """grad_logits KL(pi_ref || pi) = -grad sum_a pi_ref(a) log pi(a), by autograd. (V,) -> (V,)."""
    logits = logits.detach().clone().requires_grad_(True)
    logp, logp_ref = torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1).detach()
    (grad,) = torch.autograd.grad((logp_ref.exp() * (logp_ref - logp)).sum(), logits)
    return grad


def kl_reward_advantages(advantages: Tensor, kl: Tensor, mask: Tensor, beta: float) -> Tensor:
    """Per-token advantages with the KL as a per-token reward (Ziegler et al., 2019; REINFORCE++ Eq. 2).

        r_t = -beta * KL_t (every token)  (+ R at the last token, already inside A_i)
        A_t = A_i + sum_{s >= t} r_s = A_i - beta * sum_{s >= t} KL_t          (gamma = 1, return-to-go)

    advantages: (N,) sequence advantages (or raw rewards R_i); kl: (N, T) per-token estimate, detached
    (it is a reward); mask: (N, T). Returns (N, T), zero outside the mask.
    """
    kl_to_go = discounted_returns(-beta * kl.detach() * mask, mask, gamma=1.0)  # (N, T) sum_{s>=t} r_s
    return (advantages.reshape(-1, 1) + kl_to_go) * mask


def reinforce_pp_advantages(rewards: Tensor, kl: Tensor, mask: Tensor, beta: float, eps: float = 1e-8) -> Tensor:
    """REINFORCE++ (Hu, 2025, Eq. 2 and Sec. 3): KL in the reward, then global batch normalisation.

        A_t = R - beta * sum_{s >= t} KL_s;   A_t <- (A_t - mean_batch(A)) / std_batch(A)

    The mean and std run over every completion token of the batch (not per group, as GRPO does).
    rewards: (N,) raw rewards; kl: (N, T); mask: (N, T) -> (N, T), zero outside the mask.
    """
    return masked_whiten(kl_reward_advantages(rewards, kl, mask, beta), mask, eps=eps)


def batch_advantages(rewards: Tensor, eps: float = 1e-4) -> Tensor:
    """Global batch normalisation of sequence rewards (REINFORCE++ without a KL term).

        A_i = (R_i - mean_batch(R)) / (std_batch(R) + eps)          rewards: (B, G) (or any shape) -> same

    Unlike `group_advantages`, a prompt whose G completions all got the same reward still gets
    non-zero advantages (its reward against the batch mean): easy prompts are pushed up, hard ones down.
    """
    return (rewards - rewards.mean()) / (rewards.std() + eps)


# ----------------------------------------------------------------------------------------
# Pass@k training (Chen et al., 2025, "Pass@k Training for Adaptively Balancing Exploration and
# Exploitation of Large Reasoning Models", Sec. 3.3, the analytical advantage)
# ----------------------------------------------------------------------------------------


def pass_at_k_advantages(correct: Tensor, k: int, eps: float = 1e-4) -> Tensor:
    """Group advantages whose mean is the unbiased pass@k of the group (Chen et al., 2025, Sec. 3.3).

    With G samples of which c are correct, the group's pass@k is R = 1 - C(G-c, k) / C(G, k)
    (Chen et al., 2021). Each sample's value is the expected pass@k of a random k-subset holding it:

        correct:   v = 1
        incorrect: v = 1 - C(G-c-1, k-1) / C(G-1, k-1)      (fails only if the other k-1 all fail)
        A_i = (v_i - R) / (sqrt(R (1 - R)) + eps)            (mean of v over the group is exactly R)

    correct: (B, G) 0/1 -> (B, G). k = 1 gives (c_i - p) / sqrt(p (1 - p)): GRPO's advantage with the
    population std. A wrong sample in a group that already has a right one is pushed down less
    (not at all once c > G - k): pass@k training spares exploration.
    """
    B, G = correct.shape
    if not 1 <= k <= G:
        raise ValueError(f"pass@k advantages need 1 <= k <= G, got k={k}, G={G}")
    c = correct.float().sum(dim=1, keepdim=True)  # (B, 1)
    fail_all = torch.tensor([math.comb(G - int(ci), k) / math.comb(G, k) for ci in c.flatten()])
    fail_others = torch.tensor([math.comb(G - int(ci) - 1, k - 1) / math.comb(G - 1, k - 1) if ci < G else 0.0
                                for ci in c.flatten()])
    R = (1 - fail_all).reshape(B, 1).to(correct.device)  # (B, 1) pass@k of the group
    value = torch.where(correct.bool(), torch.ones_like(correct, dtype=torch.float),
                        (1 - fail_others).reshape(B, 1).to(correct.device).expand(B, G))  # (B, G)
    std = torch.sqrt(R * (1 - R))  # (B, 1), 0 when every sample is right or every one wrong
    return torch.where(std > 0, (value - R) / (std + eps), torch.zeros_like(value))


# ----------------------------------------------------------------------------------------
# Positive-only policy gradient: RAFT++ (Xiong et al., 2025, "A Minimalist Approach to LLM
# Reasoning: from Rejection Sampling to Reinforce", Sec. 2)
# ----------------------------------------------------------------------------------------


def first_copies(completions: Tensor) -> Tensor:
    """completions: (B, G, T) token ids of G completions per prompt -> (B, G) bool, True for the first
    copy of each distinct completion in its group (a completion equal to an earlier one of its group is False)."""
    B, G, _ = completions.shape
    same = (completions[:, :, None, :] == completions[:, None, :, :]).all(-1)  # (B, G, G): i equals j
    earlier = torch.ones(G, G, dtype=torch.bool, device=completions.device).tril(-1)  # j < i
    return ~(same & earlier).any(-1)


def positive_advantages(correct: Tensor, first: Tensor | None = None) -> Tensor:
    """RAFT++'s advantage: REINFORCE on the accepted (correct) samples only, with no baseline.

        A_i = 1[o_i correct]                       (first is None)
        A_i = 1[o_i correct] * 1[o_i first copy]   (each distinct correct completion of a prompt once: RFT's dedup)

    correct, first: (B, G) bool -> (B, G) float in {0, 1}. With A = 1 on the kept samples the clipped
    surrogate's gradient at ratio 1 is the SFT gradient on them: rejection-sampling fine-tuning (RAFT / RFT)
    written as a policy gradient, with PPO's importance ratio and clip for the later updates on the same batch.
    Wrong samples get 0: nothing pushes them down (GRPO's negative advantages are what this drops).
    """
    keep = correct.bool() if first is None else correct.bool() & first.bool()
    return keep.float()


# ----------------------------------------------------------------------------------------
# Off-policy corrections: the sampler is not the trainer (stale weights, another temperature)
# ----------------------------------------------------------------------------------------


def truncated_is_weight(logp_trainer: Tensor, logp_sampler: Tensor, cap: float = 2.0) -> Tensor:
    """Truncated importance sampling (TIS; Yao et al., 2025, "Your efficient RL framework secretly
    brings you off-policy RL training"; Ionides, 2008):

        w_t = min(pi_trainer(y_t) / pi_sampler(y_t), C)          detached; (N, T) -> (N, T)

    multiplies each token's policy-gradient loss; truncation at C bounds the variance (and adds a bias).
    """
    return torch.exp(logp_trainer.detach() - logp_sampler.detach()).clamp(max=cap)


def masked_is_weight(logp_trainer: Tensor, logp_sampler: Tensor, low: float = 0.5, high: float = 2.0) -> Tensor:
    """Masked importance sampling (MIS; as in the TIS follow-ups and "IcePop"): keep the weight
    pi_trainer / pi_sampler where it lies in [low, high], drop the token (weight 0) elsewhere.

        w_t = rho_t * 1[low <= rho_t <= high],   rho_t = pi_trainer(y_t) / pi_sampler(y_t)     (N, T) -> (N, T)
    """
    rho = torch.exp(logp_trainer.detach() - logp_sampler.detach())
    return torch.where((rho >= low) & (rho <= high), rho, torch.zeros_like(rho))


def cispo_surrogate(logp: Tensor, old_logp: Tensor, advantages: Tensor, clip_low: float = 1.0,
                    clip_high: float = 0.28) -> tuple[Tensor, Tensor]:
    """CISPO (MiniMax-M1, 2025, Eq. 4): clip the importance weight, not the update, and stop its gradient.

        loss_t = -sg[clip(r_t, 1 - eps_low, 1 + eps_high)] * A_t * log pi(y_t),   r_t = pi / pi_old

    Every token keeps a gradient (-clip(r) A d log pi), where PPO's clip zeroes the gradient of the tokens
    outside the trust region. logp, old_logp, advantages: broadcastable (N, T). Returns (loss, ratio).
    """
    ratio = torch.exp(logp - old_logp)
    weight = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high).detach()
    return -weight * advantages * logp, ratio


# ----------------------------------------------------------------------------------------
# Entropy tools (Cui et al., 2025, "The Entropy Mechanism of RL for Reasoning LMs";
# Wang et al., 2025, "Beyond the 80/20 Rule: High-Entropy Minority Tokens")
# ----------------------------------------------------------------------------------------


def token_covariance(logp: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """Per-token centred covariance between log-prob and advantage (Cui et al., 2025, Eq. 11):

        Cov_t = (log pi(y_t) - mean(log pi)) * (A_t - mean(A))      means over the batch's tokens

    The entropy change of a policy-gradient step is about -Cov (their Theorem 1): tokens with high
    covariance (likely and rewarded) are what drives entropy down. (N, T) -> (N, T), 0 outside mask.
    """
    logp = logp.detach()
    A = advantages.detach().expand_as(logp)
    cov = (logp - masked_mean(logp, mask)) * (A - masked_mean(A, mask))
    return torch.where(mask.bool(), cov, torch.zeros_like(cov))


def clip_cov_mask(cov: Tensor, mask: Tensor, ratio: float, low: float = 1.0, high: float = 5.0,
                  generator: torch.Generator | None = None) -> Tensor:
    """Clip-Cov (Cui et al., 2025, Sec. 4): pick at random max(1, int(ratio * #tokens)) of the tokens whose
    covariance lies in (low, high) and stop their gradient. Returns a (N, T) mask: 0 on the picked tokens.
    """
    eligible = ((cov > low) & (cov < high) & mask.bool()).flatten().nonzero().flatten()
    n = min(len(eligible), max(1, int(ratio * mask.sum().item())))
    keep = torch.ones(cov.numel(), device=cov.device)
    if n:
        pick = eligible[torch.randperm(len(eligible), generator=generator)[:n].to(eligible.device)]
        keep[pick] = 0.0
    return keep.view_as(cov)


def kl_cov_mask(cov: Tensor, mask: Tensor, ratio: float) -> Tensor:
    """KL-Cov (Cui et al., 2025, Sec. 4): the top max(1, int(ratio * #tokens)) tokens by covariance,
    which get the penalty coef * |log pi - log pi_old|. Returns a (N, T) 0/1 mask of the chosen tokens."""
    n = max(1, int(ratio * mask.sum().item()))
    scores = torch.where(mask.bool(), cov, torch.full_like(cov, -torch.inf)).flatten()
    chosen = torch.zeros_like(scores)
    chosen[torch.topk(scores, min(n, int(mask.sum().item()))).indices] = 1.0
    return chosen.view_as(cov)


def high_entropy_mask(entropy: Tensor, mask: Tensor, top_frac: float = 0.2) -> Tensor:
    """The "forking" tokens (Wang et al., 2025): the top `top_frac` of the batch's completion tokens by
    entropy of the distribution they were drawn from; the policy gradient is kept on these only.
    entropy, mask: (N, T) -> (N, T) 0/1 mask (ceil(top_frac * #tokens) tokens)."""
    n_tok = int(mask.sum().item())
    n = min(n_tok, math.ceil(top_frac * n_tok))
    scores = torch.where(mask.bool(), entropy.detach(), torch.full_like(entropy, -torch.inf)).flatten()
    chosen = torch.zeros_like(scores)
    if n:
        chosen[torch.topk(scores, n).indices] = 1.0
    return chosen.view_as(entropy)


def fit_entropy_reward(entropy: Tensor, reward: Tensor) -> tuple[float, float, float]:
    """Fit Cui et al. (2025, Eq. 1)'s law R = -a exp(H) + b by least squares; returns (a, b, R^2).

    Linear in (a, b): regress R on x = exp(H). entropy, reward: (n,) paired points (e.g. per eval step).
    The law says performance is bought with entropy: at H = 0 it predicts the ceiling R = b - a.
    """
    x = torch.exp(entropy.double().flatten())
    y = reward.double().flatten()
    X = torch.stack([-x, torch.ones_like(x)], dim=1)  # (n, 2): R = a * (-e^H) + b
    sol = torch.linalg.lstsq(X, y[:, None]).solution.flatten()
    a, b = sol.tolist()
    resid = y - X @ sol
    r2 = 1 - (resid ** 2).sum() / ((y - y.mean()) ** 2).sum().clamp(min=1e-12)
    return a, b, r2.item()


def overlong_filter_mask(mask: Tensor, ended: Tensor) -> Tensor:
    """DAPO's overlong filtering (Yu et al., 2025, Sec. 3.4): a completion cut at the length limit
    before its EOS is masked out of the loss (its reward says nothing about its answer).
    mask: (N, T), ended: (N,) bool -> (N, T)."""
    return mask * ended.to(mask.dtype)[:, None]
