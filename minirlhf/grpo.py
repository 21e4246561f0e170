"""GRPO and its family: policy gradients on verifiable rewards with a group baseline, no critic.

For each prompt q, sample a group of G completions o_1..o_G, score them with a verifiable reward
(the arithmetic checker: is the final answer right?), and push up the completions that beat
their group. GRPO (Shao et al., 2024, "DeepSeekMath", Eq. 3) maximises

    J(theta) = E[ 1/G sum_i 1/|o_i| sum_t { min(r_it A_i, clip(r_it, 1-eps, 1+eps) A_i)
                                              - beta * D_KL[pi_theta || pi_ref] } ]
    r_it = pi_theta(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t),   A_i = (R_i - mean(R)) / std(R)

with the k3 estimator for the KL (Eq. 4). The variants change one or two pieces each, and
`preset(name)` returns the config of each paper (everything else stays the same):

    variant   advantage                    ratio     clip (low, high)  aggregation (rl.aggregate_loss)  extras
    grpo      (R - mean) / (std + eps)     token     0.2, 0.2          seq_mean_token_mean (Eq. 3)      beta 0.04
    dr_grpo   R - mean  (no std)           token     0.2, 0.2          seq_mean_token_sum_norm          (Liu et al., 2025)
    dapo      (R - mean) / (std + eps)     token     0.2, 0.28         token_mean (Eq. 10)             dynamic sampling,
                                                                                                       overlong penalty + filter (Yu et al., 2025)
    rloo      R - mean of the others       token     0.2, 0.2          seq_mean_token_sum              (Ahmadian et al., 2024)
    gspo      (R - mean) / (std + eps)     sequence  3e-4, 4e-4        seq_mean_token_mean             (Zheng et al., 2025)
    reinforce_pp  R - beta sum_{s>=t} KL_s,  token  0.2, 0.2          token_mean                      k1 KL in the reward,
                  whitened over the batch                                                          beta 0.01 (Hu, 2025)
    cispo     (R - mean) / (std + eps)     token     CISPO weight 0, 1.28  token_mean              (MiniMax-M1, 2025)
    clip_cov, kl_cov   GRPO + Cui et al. (2025)'s covariance tools (2 % of tokens: our batches are small)
    forking   DAPO, policy gradient on the 20 % highest-entropy tokens only (Wang et al., 2025)
    pass_at_k advantages from the group's unbiased pass@4 (Chen et al., 2025, Sec. 3.3)
    raft_pp   1[correct] on each distinct correct completion, 0 else (no baseline); the rows with A = 0
              dropped; 320 prompts x 8 per step, 30 clipped updates on minibatches of 64 (Xiong et al., 2025)

The issue-18 toolbox is a set of fields, each off by default (the presets above switch them on):
`kl_estimator` x `kl_placement` (where the KL goes: rl.expected_kl_gradient shows which gives the
reverse-KL gradient), `entropy_coef`, `cov_method` (Clip-Cov / KL-Cov), `entropy_top_frac` (forking
tokens), `policy_loss="cispo"`, `overlong_filter`, and the off-policy knobs `staleness`,
`sampler_temperature` with the corrections `is_correction` = "tis" / "mis".

Where we depart from the papers (all for a laptop CPU and a 0.2M-parameter model):
* One rollout batch is reused for `mu` full-batch updates (random minibatches of `minibatch_size` rows
  when it is set: the raft_pp preset); the old policy is the policy that sampled, so the ratio is
  exactly 1 on the first update (logged and tested).
* DAPO's dynamic sampling keeps sampling (up to `max_sampling_rounds` rounds) to fill the batch
  with groups of non-zero reward variance; if the rounds run out it trains on the groups it has.
  Groups are filtered on the *total* reward (what the advantage sees), not only on accuracy.
* DAPO's overlong filtering (`overlong_filter`, Sec. 3.4) masks completions cut before their EOS out of
  the loss; the soft overlong punishment (Eq. 13) is added to the reward. The preset has both.
* REINFORCE++ normalises over the batch of one sampling round (under torchrun: over this rank's rows);
  it runs the same clipped surrogate (PPO-style, as the paper does) with full-batch updates.
* Off-policy: with `staleness` k the sampler holds the weights of k steps ago (asynchronous RL); with
  `sampler_temperature` it samples at another temperature, and its log-probs are computed at that
  temperature; with `sampler_precision` its weights are the policy's rounded to bf16 / fp16. pi_old is
  always the trainer's policy before the updates (the "proximal" policy);
  `is_correction` reweights each token by pi_old / pi_sampler (TIS: truncated; MIS: masked outside a band).
* RLOO is written as the same clipped surrogate with the leave-one-out advantage; with mu = 1
  this is exactly REINFORCE with the RLOO baseline on the sequence log-prob.

Run: `train_grpo(load_model("arith-sft"), load_tokenizer(), prompts, [arithmetic_reward], preset("grpo"))`,
or see notebooks/05_grpo.ipynb. The reward functions (answer format, DAPO's overlong penalty, their weighted
sum with its NaN check) are in rewards.py, pass@k in evaluate.py; both are re-exported here.
"""

from __future__ import annotations

import collections
import copy
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from einops import rearrange, repeat
from torch import Tensor

from . import accumulate, rl
from .checkpoint import checkpoint_due, resume_from, save_checkpoint
from .errors import ConfigError, check_checkpointing, check_config
from .lm import Rollout, decode_completions, encode_prompts, sample, token_logprobs
from .evaluate import pass_at_k  # noqa: F401  (minirlhf.grpo.pass_at_k, as before)
from .progress import ProgressBar
# re-exported: the rollout machinery lived here before rollouts.py
from .rollouts import (EARLY_STEPS, SAMPLER_PRECISIONS, concat_rollouts, early_rollout_warnings,  # noqa: F401
                       load_sampler_weights, make_reference, make_sampler, rank_share)
from .rewards import FORMAT_RE, RewardFn, format_reward, overlong_penalty, score  # noqa: F401  (re-exported)
from .utils import MetricsLogger, check_finite, dist_info, set_seed, wrap_ddp



@dataclass
class GRPOConfig:
    """GRPO-family RL on verifiable rewards. Defaults: arithmetic world, tiny model, laptop CPU."""

    variant: str = "grpo"
    """Name of the paper preset this config came from (for logs); `preset()` sets the fields below."""
    steps: int = 40
    """Training steps; one step = one batch of rollouts followed by `mu` updates."""
    prompts_per_step: int = 16
    """Prompts per rollout batch (B); the batch holds B * G completions."""
    group_size: int = 8
    """G: completions sampled per prompt."""
    mu: int = 1
    """Gradient updates per batch of rollouts (GRPO's mu); > 1 makes the clip matter."""
    lr: float = 3e-4
    """AdamW peak learning rate (constant after warmup); on arith-sft 1e-3 and above collapses."""
    warmup_steps: int = 10
    """Linear lr warmup over this many optimizer updates; Adam's first updates are sign-like (size lr on every weight)."""
    adam_eps: float = 1e-8
    """AdamW eps; larger values damp the sign-like updates of weights whose gradient is only noise."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    temperature: float = 1.0
    """Sampling temperature for rollouts (log-probs use the same temperature)."""
    max_new_tokens: int = 64
    """Longest completion; also the constant of Dr. GRPO's `seq_mean_token_sum_norm`."""
    beta: float = 0.0
    """Weight of the KL to the reference policy (`kl_estimator`, placed by `kl_placement`); 0: no reference model."""
    kl_estimator: str = "k3"
    """KL estimator of the penalty: "k1" (log pi - log ref), "k2" (1/2 (log pi - log ref)^2) or "k3" (GRPO Eq. 4)."""
    kl_placement: str = "loss"
    """"loss": beta * k(pi, ref) per token, differentiated (GRPO); "reward": -beta * k per token added to the
    reward, detached (REINFORCE-style, as PPO-RLHF and REINFORCE++). Only k1-in-reward and k2-in-loss follow
    the reverse-KL gradient (rl.expected_kl_gradient)."""
    clip_low: float = 0.2
    """eps_low: the ratio is clipped below at 1 - clip_low (for A < 0)."""
    clip_high: float = 0.2
    """eps_high: the ratio is clipped above at 1 + clip_high (for A > 0); DAPO's clip-higher is 0.28."""
    scale_rewards: bool = True
    """Divide group-centred rewards by the group std (GRPO); False is Dr. GRPO."""
    advantage: str = "group"
    """"group" (GRPO: group mean baseline), "rloo" (leave-one-out), "batch" (REINFORCE++: whitened over the
    whole batch, not per group), "pass_at_k" (Chen et al. 2025: the group's pass@`pass_k`, binary rewards) or
    "positive" (RAFT++, Xiong et al. 2025: 1 for a completion with reward > 0.5, else 0; no baseline)."""
    positive_distinct: bool = True
    """"positive" advantage: credit each distinct correct completion of a prompt once (RFT's dedup; a copy of
    an earlier completion of its group gets 0). Without it a prompt solved the same way 8 times weighs 8x."""
    pass_k: int = 4
    """k of the "pass_at_k" advantage (below group_size: with k = G a group with one right answer is all 1)."""
    policy_loss: str = "clip"
    """"clip" (PPO/GRPO clipped surrogate) or "cispo" (MiniMax-M1: sg[clip(r)] * A * log pi, every token keeps
    its gradient); both clip the ratio at 1 - clip_low, 1 + clip_high."""
    entropy_coef: float = 0.0
    """Entropy bonus: subtract entropy_coef * H(pi(.|context)) per token from the loss (0: off)."""
    cov_method: str = "none"
    """Cui et al. 2025's entropy tools: "clip_cov" (stop the gradient of a random `cov_ratio` of the tokens with
    covariance in (clip_cov_low, clip_cov_high)), "kl_cov" (add kl_cov_coef * |log pi - log pi_old| on the top
    `cov_ratio` tokens by covariance; acts from the second of `mu` updates), or "none"."""
    cov_ratio: float = 2e-4
    """Fraction of the batch's tokens Clip-Cov / KL-Cov act on (the paper's 2e-4 is ~1 token of our batches)."""
    clip_cov_low: float = 1.0
    """Clip-Cov: lower bound of the covariance band of eligible tokens."""
    clip_cov_high: float = 5.0
    """Clip-Cov: upper bound of the covariance band of eligible tokens."""
    kl_cov_coef: float = 1.0
    """KL-Cov: weight of |log pi - log pi_old| on the chosen tokens."""
    entropy_top_frac: float = 1.0
    """Keep the policy gradient only on this top fraction of the batch's tokens by entropy, the "forking"
    tokens (Wang et al. 2025 keep 0.2); 1.0 keeps every token."""
    overlong_filter: bool = False
    """DAPO's overlong filtering: completions cut at max_new_tokens before EOS are masked out of the loss."""
    staleness: int = 0
    """Off-policy: the sampler uses the weights of this many steps ago (asynchronous RL); 0: on-policy."""
    sampler_temperature: float | None = None
    """Off-policy: the sampler's temperature (its log-probs are computed at it); None: `temperature`."""
    sampler_precision: str = "float32"
    """Off-policy: the sampler's weights are the policy's rounded to this dtype ("bfloat16", "float16"; as an
    inference engine holding low-precision weights), its log-probs computed from them; "float32": the policy's own."""
    is_correction: str = "none"
    """Sampler-trainer mismatch correction per token, rho = pi_old / pi_sampler: "tis" (min(rho, is_cap)),
    "mis" (rho inside [mis_low, mis_high], else the token is dropped) or "none"."""
    is_cap: float = 2.0
    """TIS: the cap C of min(rho, C)."""
    mis_low: float = 0.5
    """MIS: tokens with rho below this are dropped."""
    mis_high: float = 2.0
    """MIS: tokens with rho above this are dropped."""
    importance: str = "token"
    """"token" (per-token ratio, PPO/GRPO) or "sequence" (GSPO's length-normalised sequence ratio)."""
    loss_agg: str = "seq_mean_token_mean"
    """How per-token losses become a scalar: one of rl.AGGREGATIONS."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards are all equal (zero advantage) and sample more to fill the batch."""
    max_sampling_rounds: int = 3
    """Dynamic sampling: at most this many rollout rounds per step, then train on what was kept."""
    overlong_cache: int = 0
    """DAPO's soft overlong punishment: penalty ramps from 0 to -1 over the last this many tokens (0: off)."""
    overlong_max_len: int | None = None
    """L_max of the overlong punishment (None: max_new_tokens)."""
    reward_weights: list[float] | None = None
    """Weight of each reward function (None: all 1)."""
    adv_eps: float = 1e-4
    """eps in (R - mean) / (std + eps)."""
    eval_every: int = 10
    """Call eval_fn every this many steps (and before the first and after the last)."""
    seed: int = 0
    """Seed for prompt order and sampling."""
    checkpoint_dir: str | None = None
    """Folder for the resumable checkpoint (None: no checkpoints)."""
    checkpoint_every: int = 0
    """Write the checkpoint every this many steps (0: never)."""
    resume: bool = False
    """Continue from `checkpoint_dir` if a checkpoint is there."""
    minibatch_size: int = 0
    """Each of the `mu` updates uses a random minibatch of this many rows of the batch (0: the whole batch)."""
    drop_zero_advantage: bool = False
    """Drop the rows whose advantage is exactly 0 before the updates (no policy gradient, they only dilute the
    per-sequence mean and cost compute; with beta > 0 they would have carried the KL term)."""
    micro_batch_size: int = 0
    """Completions per forward/backward pass (0: all B * G at once); gradients accumulate to the full
    batch's exactly (accumulate.py; Clip-Cov, KL-Cov and forking tokens then select within each micro-batch)."""

    def validate(self) -> None:
        """Raise ConfigError naming the flag of the first field out of range (before anything loads)."""
        check_config(self, at_least_1=("steps", "prompts_per_step", "mu", "max_new_tokens", "max_sampling_rounds",
                                       "overlong_max_len", "pass_k"),
                     at_least={"group_size": 2},  # a group baseline needs two completions to compare
                     positive=("lr", "adam_eps", "temperature", "adv_eps", "sampler_temperature", "is_cap",
                               "mis_high"),
                     non_negative=("warmup_steps", "max_grad_norm", "beta", "clip_low", "clip_high",
                                   "overlong_cache", "eval_every", "entropy_coef", "cov_ratio", "kl_cov_coef",
                                   "staleness", "mis_low", "micro_batch_size", "minibatch_size"),
                     fractions=("entropy_top_frac",),
                     choices={"variant": PRESETS, "advantage": ADVANTAGES,
                              "importance": ("token", "sequence"), "loss_agg": rl.AGGREGATIONS,
                              "kl_estimator": rl.KL_ESTIMATORS, "kl_placement": rl.KL_PLACEMENTS,
                              "policy_loss": ("clip", "cispo"), "cov_method": ("none", "clip_cov", "kl_cov"),
                              "is_correction": ("none", "tis", "mis"),
                              "sampler_precision": tuple(SAMPLER_PRECISIONS)})
        if self.advantage == "pass_at_k" and self.pass_k >= self.group_size:  # k = G: every advantage is 0
            raise ConfigError(f"--pass-k must be < --group-size {self.group_size} (with k = G every advantage "
                              f"is 0), got {self.pass_k}")
        if self.entropy_top_frac == 0:
            raise ConfigError("--entropy-top-frac must be in (0, 1], got 0 (no token would keep a gradient)")
        check_checkpointing(self)


ADVANTAGES = ("group", "rloo", "batch", "pass_at_k", "positive")
"""The choices of `GRPOConfig.advantage` (compute_advantages)."""

PRESETS: dict[str, dict] = {
    "grpo": dict(beta=0.04),  # Shao et al. 2024, Eq. 3: per-sequence token mean, std scaling, KL in the loss
    "dr_grpo": dict(scale_rewards=False, loss_agg="seq_mean_token_sum_norm"),  # Liu et al. 2025
    "dapo": dict(clip_high=0.28, loss_agg="token_mean", dynamic_sampling=True,  # Yu et al. 2025
                 overlong_cache=16, overlong_filter=True),
    "rloo": dict(advantage="rloo", scale_rewards=False, loss_agg="seq_mean_token_sum"),  # Ahmadian et al. 2024
    "gspo": dict(importance="sequence", clip_low=3e-4, clip_high=4e-4),  # Zheng et al. 2025, Sec. 4
    # Hu 2025: batch-whitened advantages, k1 KL per token in the reward (paper's KL coefficient 0.01)
    "reinforce_pp": dict(advantage="batch", beta=0.01, kl_estimator="k1", kl_placement="reward",
                         loss_agg="token_mean"),
    # MiniMax-M1 2025, Eq. 4: no lower bound on the IS weight (eps_low 1), eps_high ours (DAPO's 0.28)
    "cispo": dict(policy_loss="cispo", clip_low=1.0, clip_high=0.28, loss_agg="token_mean"),
    "clip_cov": dict(cov_method="clip_cov", cov_ratio=0.02, loss_agg="token_mean"),  # Cui et al. 2025
    "kl_cov": dict(cov_method="kl_cov", cov_ratio=0.02, mu=2, loss_agg="token_mean"),  # Cui et al. 2025
    "forking": dict(clip_high=0.28, loss_agg="token_mean", dynamic_sampling=True,  # Wang et al. 2025, on DAPO
                    overlong_cache=16, overlong_filter=True, entropy_top_frac=0.2),
    "pass_at_k": dict(advantage="pass_at_k", pass_k=4),  # Chen et al. 2025, Sec. 3.3
    # Xiong et al. 2025 (RAFT++): the policy gradient of rejection sampling, no KL; the batch shape of
    # expert iteration (a large sample batch, many minibatch steps on its correct chains): docs/grpo.md
    "raft_pp": dict(advantage="positive", beta=0.0, drop_zero_advantage=True, prompts_per_step=320, mu=30,
                    minibatch_size=64, steps=6, warmup_steps=3, eval_every=1),
}


def preset(variant: str, **overrides) -> GRPOConfig:
    """The config of one paper: `preset("dapo", steps=20)`."""
    if variant not in PRESETS:
        raise ValueError(f"unknown GRPO variant {variant!r}; choose one of {list(PRESETS)}")
    return GRPOConfig(**{**PRESETS[variant], "variant": variant, **overrides})


# ---------------------------------------------------------------------------------------------
# The pure pieces: dynamic sampling filter, advantages, loss
# ---------------------------------------------------------------------------------------------


def dynamic_sampling_filter(rewards: Tensor) -> Tensor:
    """DAPO's dynamic sampling (Yu et al., 2025, Eq. 11: 0 < #correct < G), for any reward.

    rewards: (B, G) -> keep: (B,) bool, False for groups whose rewards are all equal (their
    advantages are all 0, so they carry no gradient and only dilute the batch).
    """
    return rewards.max(dim=1).values > rewards.min(dim=1).values


def compute_advantages(rewards: Tensor, cfg: GRPOConfig, first: Tensor | None = None) -> Tensor:
    """rewards: (B, G) -> advantages (B, G), one per completion (shared by all its tokens).
    first: (B, G) bool, the first copy of each distinct completion (rl.first_copies), used by "positive"
    when cfg.positive_distinct."""
    if cfg.advantage == "rloo":
        return rl.rloo_advantages(rewards)
    if cfg.advantage == "group":
        return rl.group_advantages(rewards, scale_by_std=cfg.scale_rewards, eps=cfg.adv_eps)
    if cfg.advantage == "batch":  # REINFORCE++ (with the KL in the reward, train_grpo re-whitens per token)
        return rl.batch_advantages(rewards, eps=cfg.adv_eps)
    if cfg.advantage == "pass_at_k":  # binary rewards: a completion is correct when its reward is > 0.5
        return rl.pass_at_k_advantages(rewards > 0.5, cfg.pass_k, eps=cfg.adv_eps)
    if cfg.advantage == "positive":  # RAFT++: binary rewards, as pass_at_k
        return rl.positive_advantages(rewards > 0.5, first if cfg.positive_distinct else None)
    raise ValueError(f"unknown advantage {cfg.advantage!r}; choose one of {ADVANTAGES}")


def token_advantages(advantages: Tensor, rewards: Tensor, old_logp: Tensor, ref_logp: Tensor | None,
                     mask: Tensor, cfg: GRPOConfig) -> Tensor:
    """Put the KL in the reward when `cfg.kl_placement == "reward"` (else return `advantages` unchanged).

    advantages, rewards: (N,) sequence advantages and raw rewards; old_logp, ref_logp, mask: (N, T).
    The per-token penalty -beta * k(pi_old, ref) is detached (a reward) and summed from each token to the end:
        "batch" (REINFORCE++): whiten(R - beta * sum_{s>=t} k_s) over the batch's tokens (rl.reinforce_pp_advantages)
        otherwise:             A_i - beta * sum_{s>=t} k_s                               (rl.kl_reward_advantages)
    Returns (N, T) per-token advantages, or the (N,) input.
    """
    if cfg.beta == 0 or cfg.kl_placement != "reward":
        return advantages
    if ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (log-probs under the reference policy)")
    kl = rl.kl_estimate(old_logp, ref_logp, cfg.kl_estimator)  # (N, T) of the policy that sampled
    if cfg.advantage == "batch":
        return rl.reinforce_pp_advantages(rewards, kl, mask, cfg.beta)
    return rl.kl_reward_advantages(advantages, kl, mask, cfg.beta)


def grpo_loss(logp: Tensor, old_logp: Tensor, ref_logp: Tensor | None, advantages: Tensor,
              mask: Tensor, cfg: GRPOConfig, entropy: Tensor | None = None, sampler_logp: Tensor | None = None,
              generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The GRPO-family loss to minimise. logp, old_logp, ref_logp, mask: (N, T); advantages: (N,), or
    (N, T) per token (the KL in the reward); entropy: (N, T) of pi at each token (with its gradient, for
    the bonus); sampler_logp: (N, T) under the sampler when it is not the trainer (off-policy).

        per_token = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)) + beta * k3    (GRPO Eq. 3, 4)
        loss      = aggregate(per_token, mask, cfg.loss_agg)

    r is the token ratio pi/pi_old, or with `importance="sequence"` GSPO's (Zheng et al., 2025,
    Eq. 7) s_i = exp(1/|o_i| sum_t log(pi/pi_old)), shared by every token of o_i.
    Then, each when its field asks for it: CISPO's surrogate replaces the clip (rl.cispo_surrogate);
    the policy-gradient term is kept on the forking tokens only (rl.high_entropy_mask); Clip-Cov stops the
    gradient of a few high-covariance tokens, KL-Cov adds kl_cov_coef * |log pi - log pi_old| on the top ones;
    the token is reweighted by TIS / MIS (pi_old / pi_sampler); - entropy_coef * H is added; the KL term
    is beta * k(pi, ref) with `kl_estimator` (only when `kl_placement == "loss"`).
    """
    A = advantages.reshape(-1, 1) if advantages.dim() == 1 else advantages  # (N, 1) or (N, T)
    mask = mask.float()
    if cfg.importance == "sequence":
        seq_log_ratio = rl.masked_mean(logp - old_logp, mask, dim=-1)  # (N,)  GSPO Eq. 7
        log_ratio = seq_log_ratio[:, None].expand_as(logp)  # (N, T)
        per_token, ratio = rl.clipped_surrogate(log_ratio, torch.zeros_like(log_ratio), A,
                                                cfg.clip_low, cfg.clip_high)
    elif cfg.importance == "token" and cfg.policy_loss == "cispo":
        per_token, ratio = rl.cispo_surrogate(logp, old_logp, A, cfg.clip_low, cfg.clip_high)  # (N, T)
    elif cfg.importance == "token":
        per_token, ratio = rl.clipped_surrogate(logp, old_logp, A, cfg.clip_low, cfg.clip_high)  # (N, T)
    else:
        raise ValueError(f"unknown importance {cfg.importance!r}; choose 'token' or 'sequence'")
    A_tok = A.expand_as(logp)
    extra = {}
    if cfg.entropy_top_frac < 1.0:  # Wang et al. 2025: the policy gradient on the forking tokens only
        if entropy is None:
            raise ValueError("entropy_top_frac < 1 needs the per-token entropy")
        forking = rl.high_entropy_mask(entropy, mask, cfg.entropy_top_frac)  # (N, T)
        per_token = per_token * forking
        if forking.any():
            extra["entropy/forking_threshold"] = entropy.detach()[forking.bool()].min()
    if cfg.cov_method != "none":  # Cui et al. 2025, Sec. 4
        cov = rl.token_covariance(logp, A_tok, mask)  # (N, T)
        extra["cov/mean"] = rl.masked_mean(cov, mask)
        if cfg.cov_method == "clip_cov":
            keep = rl.clip_cov_mask(cov, mask, cfg.cov_ratio, cfg.clip_cov_low, cfg.clip_cov_high, generator)
            per_token = torch.where(keep.bool(), per_token, per_token.detach())  # same value, no gradient
            chosen = 1 - keep
        elif cfg.cov_method == "kl_cov":
            chosen = rl.kl_cov_mask(cov, mask, cfg.cov_ratio)
            per_token = per_token + cfg.kl_cov_coef * chosen * (logp - old_logp).abs()
        else:
            raise ValueError(f"unknown cov_method {cfg.cov_method!r}; choose 'none', 'clip_cov' or 'kl_cov'")
        extra["cov/frac_selected"] = rl.masked_mean(chosen, mask)
    if sampler_logp is not None:  # the sampler is not the trainer: how far apart, and the correction
        rho = torch.exp(old_logp - sampler_logp)  # (N, T) pi_old / pi_sampler
        extra["offpolicy/ratio_max_dev"] = ((rho - 1).abs() * mask).max()
        extra["offpolicy/ratio_mean"] = rl.masked_mean(rho, mask)
        if cfg.is_correction == "tis":
            w = rl.truncated_is_weight(old_logp, sampler_logp, cfg.is_cap)
            extra["offpolicy/frac_truncated"] = rl.masked_mean((rho > cfg.is_cap).float(), mask)
        elif cfg.is_correction == "mis":
            w = rl.masked_is_weight(old_logp, sampler_logp, cfg.mis_low, cfg.mis_high)
            extra["offpolicy/frac_masked"] = rl.masked_mean((w == 0).float(), mask)
        else:
            w = None
        if w is not None:
            per_token = per_token * w
    if cfg.entropy_coef > 0:
        if entropy is None:
            raise ValueError("entropy_coef > 0 needs the per-token entropy")
        per_token = per_token - cfg.entropy_coef * entropy
    metrics = {**rl.clip_fractions(ratio.detach(), A_tok, mask, cfg.clip_low, cfg.clip_high),
               "policy/ratio_mean": rl.masked_mean(ratio.detach(), mask),
               "policy/ratio_max_dev": ((ratio.detach() - 1).abs() * mask).max(),
               # k3 between the sampling policy and the current one: how far the mu updates moved
               "policy/approx_kl": rl.masked_mean(rl.kl_k3(logp.detach(), old_logp), mask)}
    if cfg.beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs ref_logp (log-probs under the reference policy)")
        kl = rl.kl_k3(logp.detach(), ref_logp)  # (N, T)  GRPO Eq. 4, logged whatever the estimator
        if cfg.kl_placement == "loss":  # else the KL is already in the advantages (token_advantages)
            per_token = per_token + cfg.beta * rl.kl_estimate(logp, ref_logp, cfg.kl_estimator)
        metrics["objective/kl"] = rl.masked_mean(kl, mask)
    metrics.update(extra)
    loss = rl.aggregate_loss(per_token, mask, cfg.loss_agg, max_len=cfg.max_new_tokens)
    return loss, metrics


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def old_logp_pass_needed(cfg: GRPOConfig) -> bool:
    """Whether train_grpo computes pi_old's log-probs in a no-gradient forward pass before the updates.

    With one update per batch (mu = 1) pi_old is the policy being updated, with the same weights,
    so that update's own log-probs, detached, are pi_old's (as TRL does): one forward pass fewer
    per step, the same loss and gradient (a test runs both paths). The pass stays for mu > 1 (the
    later updates need the log-probs from before the first) and for the KL in the reward (it
    enters the advantages before any update). On a model with dropout the shortcut gives a ratio
    of exactly 1, as on-policy it should be; the pass (in eval mode) would differ by the dropout noise.
    """
    return cfg.mu > 1 or (cfg.beta > 0 and cfg.kl_placement == "reward")


def train_grpo(policy, tokenizer, prompts: list[str], reward_fns: RewardFn | list[RewardFn],
               cfg: GRPOConfig = GRPOConfig(), ref_model=None,
               eval_fn: Callable[[object], dict] | None = None,
               logger: MetricsLogger | None = None, progress: bool = False) -> MetricsLogger:
    """Train `policy` in place with the GRPO-family objective `cfg` describes; returns the log.

    reward_fns: one `fn(prompts, completions) -> list[float]` or a list (weighted by
    cfg.reward_weights). eval_fn(model) -> dict is logged with an "eval/" prefix.
    progress: show a progress bar (reward, KL, entropy, length) and, every `cfg.eval_every` steps
    and at the end, a group's completions with their rewards and group-relative advantages.
    With `cfg.checkpoint_dir` the run can be killed and resumed (`cfg.resume`) to the same
    weights: the checkpoint holds the prompt order, the sampling generator and the lr schedule.

    Under `torchrun` every rank samples the *same* rollouts (same weights, same generator: sampling
    is replicated, which keeps N processes exactly comparable with one) and trains on its share of
    the rows; each share's loss is weighted by the part of the full batch loss it carries, so DDP's
    average of the gradients is the one-process gradient. Metrics are rank 0's share; rank 0 alone
    evaluates and checkpoints.
    """
    cfg.validate()  # a bad value stops here, before any work
    reward_fns = reward_fns if isinstance(reward_fns, (list, tuple)) else [reward_fns]
    if not prompts:
        raise ValueError("train_grpo needs at least one prompt")
    g = set_seed(cfg.seed)
    logger = logger or MetricsLogger()
    device = next(policy.parameters()).device
    rank, world = dist_info()
    ref = make_reference(policy, cfg, ref_model)
    sampler, sampler_temperature = make_sampler(policy, cfg)  # the policy itself unless off-policy
    snapshots: collections.deque = collections.deque(maxlen=cfg.staleness + 1)  # weights of the last steps
    ddp_policy = wrap_ddp(policy)  # the policy itself on one process
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=(0.9, 0.99), eps=cfg.adam_eps, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda n: min(1.0, (n + 1) / (cfg.warmup_steps + 1)))
    B, G = cfg.prompts_per_step, cfg.group_size
    order, cursor = torch.randperm(len(prompts), generator=g).tolist(), 0
    # after make_reference (it copies the start); rows are numbered by steps done, from 1
    start, extra = resume_from(cfg, policy, opt, logger, step_offset=1)
    if start:
        order, cursor = extra["order"].tolist(), extra["cursor"]
        g.set_state(extra["generator"])
        sched.load_state_dict(extra["scheduler"])
    t0 = time.time()
    bar = ProgressBar(range(start + 1, cfg.steps + 1), cfg.variant,
                      {"reward/mean": "reward", "objective/kl": "kl", "entropy": "entropy",
                       "completion_length/mean": "length"}, logger, enabled=progress)

    def evaluate(step: int) -> None:
        if eval_fn is not None and rank == 0:
            metrics = {f"eval/{k}": v for k, v in eval_fn(policy).items()}
            bar.show(metrics)
            logger.log({"step": step, **metrics, "time": time.time() - t0})

    def checkpoint(step: int) -> None:
        if rank == 0 and checkpoint_due(cfg, step):
            save_checkpoint(cfg.checkpoint_dir, policy, opt, step, {
                "order": torch.tensor(order), "cursor": cursor, "generator": g.get_state(),
                "scheduler": sched.state_dict()})

    if not start:
        evaluate(0)
    early_rounds: list[dict] = []  # the sampling rounds of the first EARLY_STEPS steps
    for step in bar:
        kept_rollouts, kept_rewards, kept_adv, sampled_metrics = [], [], [], []
        if sampler is not policy:  # the weights of `staleness` steps ago (asynchronous RL), rounded to the precision
            snapshots.append(copy.deepcopy(policy.state_dict()))
            load_sampler_weights(sampler, snapshots[0], cfg.sampler_precision)
        for _ in range(cfg.max_sampling_rounds if cfg.dynamic_sampling else 1):
            # 1. a batch of B prompts, each repeated G times (a group is G adjacent rows)
            if cursor + B > len(prompts):
                order, cursor = torch.randperm(len(prompts), generator=g).tolist(), 0
            batch = [prompts[i] for i in order[cursor: cursor + B]]
            cursor += B
            group_prompts = [p for p in batch for _ in range(G)]  # (B * G,)
            ids, pmask = encode_prompts(tokenizer, group_prompts)
            policy.eval()
            rollout = sample(sampler, ids.to(device), pmask.to(device), cfg.max_new_tokens,
                             tokenizer.eos_token_id, tokenizer.pad_token_id, sampler_temperature,
                             generator=g)
            completions = decode_completions(tokenizer, rollout)
            lengths = rollout.completion_mask.sum(-1).cpu()  # (B * G,) tokens, EOS included
            # 2. verifiable rewards (+ DAPO's overlong punishment), checked finite before anything else
            rewards, reward_means = score(group_prompts, completions, reward_fns, cfg.reward_weights)
            if cfg.overlong_cache > 0:
                rewards = rewards + overlong_penalty(lengths, cfg.overlong_max_len or cfg.max_new_tokens,
                                                     cfg.overlong_cache)
            rewards = rearrange(rewards, "(b g) -> b g", g=G)  # (B, G): a group is G adjacent rows
            keep = dynamic_sampling_filter(rewards)  # (B,)
            sampled_metrics.append({"reward/mean": rewards.mean().item(), "reward/std": rewards.std().item(),
                                    "frac_reward_zero_std": 1.0 - keep.float().mean().item(),
                                    "completion_length/mean": lengths.float().mean().item(),
                                    "completion_length/max": lengths.max().item(),
                                    "completion/ended": rollout.ended.float().mean().item(), **reward_means})
            # 3. group-relative advantages (computed per group, so filtering cannot change them)
            first = (rl.first_copies(rearrange(rollout.input_ids, "(b g) t -> b g t", g=G))
                     if cfg.advantage == "positive" and cfg.positive_distinct else None)  # (B, G)
            advantages = compute_advantages(rewards, cfg, first)  # (B, G)
            if not cfg.dynamic_sampling:
                keep = torch.ones_like(keep)
            rows = repeat(keep, "b -> (b g)", g=G).nonzero().flatten()  # rows of the kept groups
            if len(rows):
                kept_rollouts.append(Rollout(rollout.input_ids[rows], rollout.attention_mask[rows],
                                             rollout.completion_mask[rows], rollout.prompt_length,
                                             rollout.ended[rows]))
                kept_adv.append(rearrange(advantages[keep], "b g -> (b g)"))
                kept_rewards.append(rewards[keep])
            # DAPO: keep sampling until the batch holds B informative groups
            if sum(len(a) for a in kept_adv) >= B * G:
                break
        n_kept = sum(len(a) for a in kept_adv)
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:  # one group, side by side
            bar.samples({"prompt": group_prompts[:G], "completion": completions[:G], "reward": rewards[0].tolist(),
                         "advantage": advantages[0].tolist()}, title=f"{cfg.variant} step {step}")
        if rank == 0 and step <= start + EARLY_STEPS:  # a run that cannot learn says so early, once
            early_rounds += sampled_metrics
            if step == min(start + EARLY_STEPS, cfg.steps):
                for message in early_rollout_warnings(early_rounds, step - start, B, G, cfg.max_new_tokens):
                    warnings.warn(message, stacklevel=2)
        row = {"step": step, **{k: sum(m[k] for m in sampled_metrics) / len(sampled_metrics)
                                for k in sampled_metrics[0]},
               "sampling_rounds": len(sampled_metrics), "groups_trained": min(n_kept, B * G) // G}
        if n_kept == 0:  # every group had zero variance: nothing to learn from this step
            logger.log({**row, "time": time.time() - t0})
            checkpoint(step)
            continue
        ro = concat_rollouts(kept_rollouts, tokenizer.pad_token_id)
        input_ids, attn = ro.input_ids[: B * G], ro.attention_mask[: B * G]  # (N, T)
        mask = ro.completion_mask[: B * G].float()  # (N, T)
        if cfg.overlong_filter:  # DAPO Sec. 3.4: completions cut before their EOS leave the loss
            ended = ro.ended[: B * G].to(mask.device)  # (N,)
            row["frac_overlong_filtered"] = 1.0 - ended.float().mean().item()
            mask = rl.overlong_filter_mask(mask, ended)
        advantages = torch.cat(kept_adv)[: B * G].to(device)  # (N,)
        check_finite("advantages", advantages)
        raw_rewards = torch.cat([r.flatten() for r in kept_rewards])[: B * G].to(device)  # (N,) REINFORCE++ needs R
        if cfg.drop_zero_advantage:  # RAFT++: train on the accepted rows only
            nz = (advantages != 0).nonzero().flatten()  # (N',)
            row["rows_trained"] = len(nz)
            if len(nz) == 0:  # nothing was accepted: no gradient this step
                logger.log({**row, "time": time.time() - t0})
                checkpoint(step)
                continue
            input_ids, attn, mask = input_ids[nz], attn[nz], mask[nz]
            advantages, raw_rewards = advantages[nz], raw_rewards[nz]
        advantages = torch.stack([advantages, raw_rewards], -1)  # (N, 2): rank_share slices both together
        # under torchrun: this rank's rows, and the part of the full batch loss they carry
        input_ids, attn, mask, advantages, share = rank_share(input_ids, attn, mask, advantages, cfg.loss_agg)
        advantages, raw_rewards = advantages.unbind(-1)  # (N,), (N,)
        # 4. log-probs of the sampling policy (pi_old) and of the reference, no gradient
        with torch.no_grad():  # micro_batch_size rows at a time (all at once by default)
            chunked = lambda model, t: accumulate.logprobs_in_chunks(model, input_ids, attn, t,  # noqa: E731
                                                                     cfg.micro_batch_size, ro.prompt_length)
            # (N, T); None: the update's own log-probs, detached, are pi_old's (old_logp_pass_needed)
            old_logp = chunked(policy, cfg.temperature) if old_logp_pass_needed(cfg) else None
            ref_logp = chunked(ref, cfg.temperature) if ref is not None else None
            # off-policy: the sampler's own log-probs, at its own temperature
            sampler_logp = (chunked(sampler, sampler_temperature)
                            if sampler is not policy or cfg.sampler_temperature is not None else None)
        advantages = token_advantages(advantages, raw_rewards, old_logp, ref_logp, mask, cfg)  # (N,) or (N, T)
        # 5. mu updates on the same rollouts: the clipped surrogate (+ beta * KL), aggregated
        policy.train()
        row["lr"] = opt.param_groups[0]["lr"]  # after warmup: cfg.lr
        def micro_loss(mb: slice, pick: Tensor | None):  # rows mb of this update's rows `pick` (None: all)
            rows = lambda x: None if x is None else (x if pick is None else x[pick])[mb]  # noqa: E731
            # prompt_length: the G completions of a prompt share one pass over it (lm.lm_logits; same numbers)
            logp, entropy = token_logprobs(ddp_policy, rows(input_ids), rows(attn), cfg.temperature,
                                           with_entropy=True, prompt_length=ro.prompt_length)
            old = logp.detach() if old_logp is None else rows(old_logp)  # mu = 1: pi_old is the policy itself
            loss, metrics = grpo_loss(logp, old, rows(ref_logp), rows(advantages), rows(mask), cfg,
                                      entropy=entropy, sampler_logp=rows(sampler_logp), generator=g)
            if world > 1:  # DDP averages the ranks' gradients: weight each by its part of the full loss
                loss = loss * share * world
            return loss, {**metrics, "_entropy": rl.masked_mean(entropy.detach(), rows(mask))}

        for update in range(cfg.mu):
            pick = (torch.randperm(len(advantages), generator=g)[: cfg.minibatch_size]
                    if cfg.minibatch_size else None)  # (M,) this update's random minibatch; None: every row
            opt.zero_grad(set_to_none=True)
            # each micro-batch's loss weighted by its part of the full batch's (its tokens for a token
            # mean, its rows for the per-sequence means): the sum is the full-batch gradient
            loss, metrics = accumulate.backward(lambda mb: micro_loss(mb, pick), mask if pick is None else mask[pick],
                                                cfg.micro_batch_size,
                                                per_token=cfg.loss_agg == "token_mean", name="GRPO loss")
            entropy_mean = metrics.pop("_entropy")
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            opt.step()
            sched.step()
            if update == 0:  # on-policy: must be exactly 1 (a test pins it)
                row["policy/ratio_max_dev_first_update"] = metrics["policy/ratio_max_dev"]
                row["entropy"] = entropy_mean
        # 6. log the last update's metrics (clip ratios, KL) with the rollout statistics
        logger.log({**row, **{k: float(v) for k, v in metrics.items()}, "loss": loss.item(),
                    "grad_norm": grad_norm.item(), "time": time.time() - t0})
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            evaluate(step)
        checkpoint(step)
    policy.eval()
    return logger
