"""PPO for RLHF, InstructGPT style, with every implementation detail named and visible.

The loop of Ziegler et al. (2019) and InstructGPT (Ouyang et al., 2022, Sec. 3.5): sample
completions from the policy, score each with a reward model, subtract a per-token KL penalty
against the frozen SFT model, estimate advantages with a value model (GAE), and take a few
epochs of clipped PPO steps (Schulman et al., 2017) on minibatches of that experience.

    maximise  E_{x ~ prompts, y ~ pi}[ r_phi(x, y) ] - beta * KL(pi(.|x) || pi_ref(.|x))

The details follow "The N Implementation Details of RLHF with PPO" (Huang et al., ICLR blog
track 2024; a reproduction of openai/lm-human-preferences) and its TL;DR sequel "The N+
Implementation Details of RLHF with PPO" (Huang et al., 2024). Each one is numbered [D1]..[D14]
in the code below, where it happens:

  [D1]  dropout off in policy, reference and value model, so log-probs are deterministic
  [D2]  the same temperature when sampling and when computing every log-prob
  [D3]  the reward model reads the score at the last real token (EOS) of the completion
  [D4]  completions that never emit EOS get a fixed penalty score instead of the RM's
  [D5]  score normalisation: the RM's gain and bias are set so SFT samples score mean 0, std 1
  [D6]  per-token reward r_t = -beta * k1_t on every completion token, + score at the last one
  [D7]  the KL coefficient beta is fixed or adapted (Ziegler et al., 2019, Sec. 2.2)
  [D8]  the value model is initialised from the reward model (or the SFT model + zero head)
  [D9]  the value of token t is read at position t - 1 (the state before the action)
  [D10] GAE with gamma and lambda as a reverse recursion (rl.gae)
  [D11] reward whitening (optional) and advantage whitening over the batch (rl.masked_whiten)
  [D12] clipped surrogate policy loss (rl.clipped_surrogate) and clipped value loss
  [D13] several epochs over shuffled minibatches of one batch of experience
  [D14] Adam with eps = 1e-5 and gradient clipping by global norm

How it differs from the references: one optimiser for two separate networks (policy and value
model, as the N+ TL;DR code does, not a shared trunk); advantages are whitened once per batch
(lm-human-preferences whitens per minibatch); no learning-rate annealing. The per-token KL in
the reward is k1 = log pi - log pi_ref, exactly as lm-human-preferences and TRL do: its mean is
an unbiased estimate of the KL, it can be negative on a single token.

Run: `log, policy = train_ppo(load_model("review-sft"), tok, prompts, reward_fn_or_rm, PPOConfig())`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import checkpoint_due, resume_from, save_checkpoint
from .errors import ConfigError, check_checkpointing, check_config
from .lm import Rollout, decode_completions, encode_prompts, last_token_index, sample, token_logprobs
from .models import ScalarHeadModel, check_same_vocab
from .progress import ProgressBar
from .rl import (aggregate_loss, clip_fractions, clipped_surrogate, clipped_value_loss, explained_variance,
                 gae, kl_k1, masked_mean, masked_var, masked_whiten)
from .utils import MetricsLogger, check_finite, set_seed

RewardFn = Callable[[list[str], list[str]], list[float]]


@dataclass
class PPOConfig:
    """PPO for RLHF. Defaults fit the reviews world on a laptop CPU (about 0.6 s of one core per step)."""

    steps: int = 40
    """PPO iterations: one batch of rollouts, then `ppo_epochs` passes over it."""
    batch_size: int = 32
    """Prompts (= completions) per rollout batch."""
    mini_batch_size: int = 16
    """Completions per gradient step; batch_size must be a multiple of it."""
    ppo_epochs: int = 4
    """Passes over each batch of experience [D13]."""
    lr: float = 1e-4
    """Adam learning rate, shared by policy and value model. 3e-4 collapsed on some seeds (docs/seeds.md)."""
    adam_eps: float = 1e-5
    """Adam epsilon; 1e-5 as in the references, not PyTorch's 1e-8 [D14]."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm [D14]."""
    max_new_tokens: int = 64
    """Longest completion; a completion that reaches it without EOS gets `missing_eos_penalty`."""
    temperature: float = 1.0
    """Sampling temperature, also used in every log-prob so that ratios and KL are consistent [D2]."""
    beta: float = 0.1
    """KL coefficient (the initial value when `adaptive_kl`) [D6]. 0.05 was on the edge of collapse (docs/seeds.md)."""
    adaptive_kl: bool = False
    """Adapt beta towards `target_kl` (Ziegler et al., 2019) instead of keeping it fixed [D7]."""
    target_kl: float = 4.0
    """Target sequence-level KL (nats) of the adaptive controller."""
    kl_horizon: int = 10000
    """Horizon (in episodes) of the adaptive controller: larger reacts more slowly."""
    gamma: float = 1.0
    """Discount of GAE [D10]."""
    lam: float = 0.95
    """Lambda of GAE [D10]."""
    cliprange: float = 0.2
    """Clip epsilon of the policy ratio [D12]."""
    cliprange_value: float = 0.2
    """Clip of the value update around the rollout's values [D12]."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss (0.1 in lm-human-preferences)."""
    missing_eos_penalty: float | None = -1.0
    """Score given to a completion without EOS instead of the RM's (None: no penalty) [D4]."""
    normalize_scores: bool = True
    """Rescale scores so the initial policy's samples have mean 0, std 1 [D5]."""
    norm_samples: int = 128
    """Completions sampled from the initial policy to measure the score normalisation (<= #prompts)."""
    whiten_rewards: bool = False
    """Whiten the per-token rewards (scale only) before GAE [D11]."""
    value_init: str = "reward_model"
    """"reward_model" (a copy of the RM, InstructGPT) or "sft" (the policy's backbone, zero head) [D8]."""
    seed: int = 0
    """Seed for prompt order, sampling and minibatch order."""
    eval_every: int = 10
    """Evaluate on `eval_prompts` every this many steps (and at the end); 0 disables."""
    checkpoint_dir: str | None = None
    """Folder for the resumable checkpoint: policy and value weights, optimizer, RNG, KL coefficient."""
    checkpoint_every: int = 0
    """Write the checkpoint every this many steps (0: never)."""
    resume: bool = False
    """Continue from `checkpoint_dir` if a checkpoint is there."""

    def validate(self) -> None:
        """Raise ConfigError naming the flag of the first field out of range (before anything loads)."""
        check_config(self, at_least_1=("steps", "batch_size", "mini_batch_size", "ppo_epochs", "max_new_tokens",
                                       "norm_samples", "kl_horizon"),
                     positive=("lr", "adam_eps", "temperature", "target_kl"),
                     non_negative=("beta", "max_grad_norm", "cliprange", "cliprange_value", "vf_coef", "eval_every"),
                     fractions=("gamma", "lam"), choices={"value_init": ("reward_model", "sft")})
        if self.mini_batch_size > self.batch_size:
            raise ConfigError(f"--mini-batch-size ({self.mini_batch_size}) must be <= --batch-size ({self.batch_size})")
        check_checkpointing(self)


# ---------------------------------------------------------------------------------------------
# KL controllers [D7]
# ---------------------------------------------------------------------------------------------


class FixedKLController:
    """beta stays what it is."""

    def __init__(self, beta: float):
        self.value = beta

    def update(self, current_kl: float, n_episodes: int) -> None:
        pass


class AdaptiveKLController:
    """Ziegler et al. (2019), Sec. 2.2: a proportional controller on log(beta).

        e_t       = clip(KL_t / KL_target - 1, -0.2, 0.2)
        beta_{t+1} = beta_t * (1 + K_beta * e_t),   K_beta = n_episodes / horizon
    """

    def __init__(self, beta: float, target: float, horizon: int):
        self.value, self.target, self.horizon = beta, target, horizon

    def update(self, current_kl: float, n_episodes: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_episodes / self.horizon


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------


def per_token_rewards(scores: Tensor, logp: Tensor, ref_logp: Tensor, completion_mask: Tensor,
                      beta: float, ended: Tensor | None = None,
                      missing_eos_penalty: float | None = None) -> tuple[Tensor, Tensor]:
    """The RLHF reward of each token [D4, D6] (Ziegler et al., 2019, Eq. 2; Ouyang et al., 2022, Eq. 2).

        r_t = -beta * (log pi(y_t) - log pi_ref(y_t))          on every completion token (k1)
              + score                                          on the last completion token only

    scores, ended: (B,); logp, ref_logp, completion_mask: (B, T). A completion that did not end
    (`ended` False) has its score replaced by `missing_eos_penalty` when that is not None.
    Returns (rewards (B, T), k1 (B, T)), both 0 outside the completion.
    """
    mask = completion_mask.bool()
    if missing_eos_penalty is not None and ended is not None:
        scores = torch.where(ended, scores, torch.full_like(scores, missing_eos_penalty))  # (B,) [D4]
    kl = torch.where(mask, kl_k1(logp, ref_logp), torch.zeros_like(logp))  # (B, T) [D6]
    rewards = -beta * kl
    last = last_token_index(completion_mask)  # (B,) the EOS, or the last token of a truncated completion
    rewards[torch.arange(len(scores)), last] += scores.to(rewards.dtype)
    return rewards, kl


def approx_kl(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """policy/approxkl = 1/2 * mean((log pi - log pi_old)^2) over the mask (k2; 0 on-policy)."""
    return 0.5 * masked_mean((logp - old_logp) ** 2, mask)


def token_values(value_model: ScalarHeadModel, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """V(s_t) for each token t, aligned like `token_logprobs` [D9]. (B, T) -> (B, T).

    The head at position t has read tokens <= t, so the value of the state *before* token t
    (the one that chooses y_t) is the head's output at t - 1.
    """
    v = value_model(input_ids, attention_mask)  # (B, T): value after reading token t
    return F.pad(v[:, :-1], (1, 0))  # (B, T): value before token t


def disable_dropout(model: nn.Module) -> None:
    """[D1] Dropout makes log pi differ between two forward passes, so the ratio is not 1 on-policy."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if hasattr(m, "attention_dropout"):
            m.attention_dropout = 0.0
    if hasattr(getattr(model, "config", None), "attention_dropout"):
        model.config.attention_dropout = 0.0


# ---------------------------------------------------------------------------------------------
# Experience: rollout, scores, rewards, advantages
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def score_rollout(reward: RewardFn | ScalarHeadModel, tokenizer, prompts: list[str],
                  rollout: Rollout) -> Tensor:
    """Raw scores (B,) of the sampled completions [D3].

    A ScalarHeadModel reads the rollout's own tokens at the last real token, which is the EOS of
    a finished completion (the reward model was trained on completion + EOS). A plain reward
    function gets the decoded texts.
    """
    if isinstance(reward, ScalarHeadModel):
        out = reward(rollout.input_ids, rollout.attention_mask)  # (B, T)
        return out[torch.arange(out.shape[0]), last_token_index(rollout.attention_mask)].float()
    completions = decode_completions(tokenizer, rollout)
    scores = reward(prompts, completions)
    if len(scores) != len(prompts):
        raise ValueError(f"reward function returned {len(scores)} scores for {len(prompts)} prompts")
    return torch.tensor([float(s) for s in scores], device=rollout.input_ids.device)


def rollout_batch(policy, tokenizer, prompts: list[str], cfg: PPOConfig, generator) -> Rollout:
    ids, mask = encode_prompts(tokenizer, prompts)
    device = next(policy.parameters()).device
    return sample(policy, ids.to(device), mask.to(device), cfg.max_new_tokens, tokenizer.eos_token_id,
                  tokenizer.pad_token_id, temperature=cfg.temperature, generator=generator)  # [D2]


@torch.no_grad()
def make_experience(policy, ref_model, value_model, reward, tokenizer, prompts: list[str], cfg: PPOConfig,
                    beta: float, score_norm: tuple[float, float] = (0.0, 1.0),
                    generator: torch.Generator | None = None) -> dict:
    """Steps 1-6 of one PPO iteration: everything the update needs, computed without gradients."""
    policy.eval()
    # 1. rollout: sample one completion per prompt
    ro = rollout_batch(policy, tokenizer, prompts, cfg, generator)
    ids, attn, mask = ro.input_ids, ro.attention_mask, ro.completion_mask.float()  # (B, T)
    # 2. score at the end of the completion [D3], normalised [D5]
    raw_scores = score_rollout(reward, tokenizer, prompts, ro)  # (B,)
    check_finite("reward scores", raw_scores)
    scores = (raw_scores - score_norm[0]) / score_norm[1]  # (B,)
    # 3. log-probs of the sampled tokens under the policy and the reference, same temperature [D2]
    old_logp = token_logprobs(policy, ids, attn, temperature=cfg.temperature, score_mask=mask)  # (B, T)
    ref_logp = token_logprobs(ref_model, ids, attn, temperature=cfg.temperature, score_mask=mask)  # (B, T)
    old_values = token_values(value_model, ids, attn) * mask  # (B, T) [D9]
    # 4. per-token rewards: -beta * k1 everywhere, score (or the no-EOS penalty) at the end [D4, D6]
    rewards, kl = per_token_rewards(scores, old_logp, ref_logp, mask, beta, ro.ended, cfg.missing_eos_penalty)
    if cfg.whiten_rewards:  # [D11] scale only, as lm-human-preferences does
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    # 5. advantages and returns by GAE [D10]
    advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)  # (B, T)
    # 6. advantage whitening over the batch [D11]
    white_adv = masked_whiten(advantages, mask)
    check_finite("advantages", white_adv)
    return {"input_ids": ids, "attention_mask": attn, "mask": mask, "old_logp": old_logp,
            "old_values": old_values, "returns": returns, "advantages": white_adv,
            "stats": {"objective/kl": kl.sum(-1).mean(), "objective/scores": raw_scores.mean(),
                      "objective/scores_normalized": scores.mean(), "objective/kl_coef": beta,
                      "rollout/ended_frac": ro.ended.float().mean(), "rollout/length": mask.sum(-1).mean(),
                      "returns/mean": masked_mean(returns, mask), "returns/std": masked_var(returns, mask).sqrt(),
                      "advantages/mean": masked_mean(advantages, mask),
                      "advantages/std": masked_var(advantages, mask).sqrt(),
                      "val/mean": masked_mean(old_values, mask),
                      "val/explained_var": explained_variance(old_values, returns, mask)},
            "completions": decode_completions(tokenizer, ro), "scores": raw_scores.tolist()}


# ---------------------------------------------------------------------------------------------
# The update
# ---------------------------------------------------------------------------------------------


def ppo_loss(policy, value_model, mb: dict, cfg: PPOConfig) -> tuple[Tensor, dict]:
    """Loss of one minibatch [D12]: clipped surrogate + vf_coef * clipped value loss."""
    mask = mb["mask"]
    logp, entropy = token_logprobs(policy, mb["input_ids"], mb["attention_mask"], temperature=cfg.temperature,
                                   with_entropy=True, score_mask=mask)  # (b, T), 0 off the completion [D2]
    pg_tok, ratio = clipped_surrogate(logp, mb["old_logp"], mb["advantages"], cfg.cliprange)  # (b, T) Eq. 7
    pg_loss = aggregate_loss(pg_tok, mask, "token_mean")
    values = token_values(value_model, mb["input_ids"], mb["attention_mask"])  # (b, T)
    vf_loss, vf_clipfrac = clipped_value_loss(values, mb["old_values"], mb["returns"], mask, cfg.cliprange_value)
    loss = pg_loss + cfg.vf_coef * vf_loss
    stats = {"loss/policy": pg_loss.detach(), "loss/value": vf_loss.detach(),
             "policy/approxkl": approx_kl(logp.detach(), mb["old_logp"], mask),
             "policy/clipfrac": clip_fractions(ratio.detach(), mb["advantages"], mask, cfg.cliprange)["clipfrac"],
             "policy/entropy": masked_mean(entropy.detach(), mask),
             "policy/ratio_mean": masked_mean(ratio.detach(), mask),
             "policy/ratio_max_dev": ((ratio.detach() - 1).abs() * mask).max(),
             "val/clipfrac": vf_clipfrac}
    return loss, stats


def ppo_update(policy, value_model, optimizer, exp: dict, cfg: PPOConfig,
               generator: torch.Generator | None = None) -> list[dict]:
    """Step 7: `ppo_epochs` passes over shuffled minibatches of one batch of experience [D13].

    Returns one stats dict per minibatch, in order (the first one is exactly on-policy).
    """
    policy.train()
    value_model.train()
    B = exp["input_ids"].shape[0]
    if B % cfg.mini_batch_size:
        raise ValueError(f"batch_size={B} is not a multiple of mini_batch_size={cfg.mini_batch_size}")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    out = []
    for epoch in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=generator)
        for start in range(0, B, cfg.mini_batch_size):
            idx = order[start:start + cfg.mini_batch_size].to(exp["input_ids"].device)
            mb = {k: v[idx] for k, v in exp.items() if isinstance(v, Tensor)}
            loss, stats = ppo_loss(policy, value_model, mb, cfg)
            check_finite("PPO loss", loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)  # [D14]
            optimizer.step()
            out.append({"epoch": epoch, **{k: float(v) for k, v in stats.items()}})
    return out


@torch.no_grad()
def token_view(policy, ref_model, exp: dict, beta: float, temperature: float = 1.0) -> dict[str, Tensor]:
    """Per-token quantities of one batch of experience, for looking at (plots, debugging).

    exp: what `make_experience` returned; policy: the policy now (e.g. after `ppo_update` on exp).
    Returns (B, T) tensors, 0 outside the completion (`mask`):
        kl_penalty = -beta * (log pi_old(y_t) - log pi_ref(y_t))   the KL part of r_t [D6]
        value      = V(s_t) of the rollout's value model [D9]
        advantage  = the whitened GAE advantage the update used [D10, D11]
        ratio      = pi(y_t) / pi_old(y_t) under `policy` (1 on-policy) [D12]
    """
    mask = exp["mask"]  # (B, T)
    ids, attn = exp["input_ids"], exp["attention_mask"]
    ref_logp = token_logprobs(ref_model, ids, attn, temperature=temperature)  # (B, T)
    logp = token_logprobs(policy, ids, attn, temperature=temperature)  # (B, T)
    return {"kl_penalty": -beta * kl_k1(exp["old_logp"], ref_logp) * mask,
            "value": exp["old_values"] * mask,
            "advantage": exp["advantages"] * mask,
            "ratio": torch.exp(logp - exp["old_logp"]) * mask,
            "mask": mask}


# ---------------------------------------------------------------------------------------------
# Evaluation and the loop
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_policy(policy, ref_model, tokenizer, prompts: list[str], cfg: PPOConfig,
                    reward: RewardFn | ScalarHeadModel | None = None, gold_fn: RewardFn | None = None,
                    seed: int = 1234) -> dict:
    """Held-out prompts: mean proxy score, gold reward and sequence KL(pi || pi_ref) (k1, summed)."""
    was_training = policy.training
    policy.eval()
    ro = rollout_batch(policy, tokenizer, prompts, cfg, torch.Generator().manual_seed(seed))
    logp = token_logprobs(policy, ro.input_ids, ro.attention_mask, cfg.temperature, score_mask=ro.completion_mask)
    ref_logp = token_logprobs(ref_model, ro.input_ids, ro.attention_mask, cfg.temperature,
                              score_mask=ro.completion_mask)
    out = {"eval/kl": ((logp - ref_logp) * ro.completion_mask).sum(-1).mean().item(),
           "eval/ended_frac": ro.ended.float().mean().item()}
    if reward is not None:
        out["eval/scores"] = score_rollout(reward, tokenizer, prompts, ro).mean().item()
    if gold_fn is not None:
        out["eval/gold"] = sum(gold_fn(prompts, decode_completions(tokenizer, ro))) / len(prompts)
    policy.train(was_training)
    return out


def train_ppo(policy, tokenizer, prompts: list[str], reward_fn_or_rm: RewardFn | ScalarHeadModel,
              cfg: PPOConfig = PPOConfig(), ref_model=None, value_model: ScalarHeadModel | None = None,
              gold_fn: RewardFn | None = None, eval_prompts: list[str] | None = None,
              logger: MetricsLogger | None = None, progress: bool = False) -> tuple[MetricsLogger, nn.Module]:
    """Train `policy` (in place) with PPO against a reward; returns (log, policy).

    reward_fn_or_rm: a `reward_fn(prompts, completions) -> list[float]` or a `ScalarHeadModel`.
    ref_model: the frozen reference (default: a copy of the policy as it is now); it is set to
    eval mode and requires_grad=False in place, so pass a separate copy from the policy.
    value_model: default per `cfg.value_init` [D8]. gold_fn: logged as `objective/gold` on the
    training rollouts and `eval/gold` on `eval_prompts`. Every row of the log has `step`.
    progress: show a progress bar (score, gold, KL, entropy) and, every `cfg.eval_every` steps and
    at the end, a few of the batch's completions with their score and gold reward.
    """
    cfg.validate()  # a bad value stops here, before any work
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p:
            raise ValueError(f"prompts[{i}]: expected a non-empty string, got {p!r}")
    if not any(p.requires_grad for p in policy.parameters()):
        raise ValueError("the policy has no parameter with requires_grad=True (is it a frozen reference model?)")
    g = set_seed(cfg.seed)
    logger = logger or MetricsLogger()
    device = next(policy.parameters()).device
    # 0. the models: frozen reference, value model, dropout off everywhere [D1]
    ref_model = ref_model if ref_model is not None else copy.deepcopy(policy)
    ref_model.eval().requires_grad_(False)
    if isinstance(reward_fn_or_rm, ScalarHeadModel):
        check_same_vocab(reward_fn_or_rm, policy, "reward model", "policy", tokenizer)  # not an IndexError mid-run
        reward_fn_or_rm.eval().requires_grad_(False)
    value_from_rm = False
    if value_model is None:
        value_from_rm = cfg.value_init == "reward_model" and isinstance(reward_fn_or_rm, ScalarHeadModel)
        if value_from_rm:
            # [D8] InstructGPT (Sec. 3.5) / N+ TL;DR: the RM already knows what scores well, so the
            # value starts near the final score instead of near 0, and early advantages are less noisy.
            value_model = copy.deepcopy(reward_fn_or_rm).requires_grad_(True)
        else:
            # [D8] a copy of the policy's backbone with a zero-initialised head (lm-human-preferences)
            value_model = ScalarHeadModel(copy.deepcopy(policy), head_init_std=0.0).to(device)
    for m in (policy, ref_model, value_model):
        disable_dropout(m)
    # 0b. score normalisation [D5]: measured once on samples of the initial policy
    score_norm = (0.0, 1.0)
    if cfg.normalize_scores:
        norm_prompts = [prompts[i] for i in torch.randperm(len(prompts), generator=g)[:cfg.norm_samples].tolist()]
        policy.eval()
        norm_rollout = rollout_batch(policy, tokenizer, norm_prompts, cfg, g)
        s = score_rollout(reward_fn_or_rm, tokenizer, norm_prompts, norm_rollout)  # (N,) raw scores
        score_norm = (s.mean().item(), s.std().clamp(min=1e-6).item())
        if value_from_rm:
            with torch.no_grad():  # the RM-initialised value model gets the same gain and bias
                value_model.head.weight.div_(score_norm[1])
                value_model.head.bias.sub_(score_norm[0]).div_(score_norm[1])
    kl_ctl = (AdaptiveKLController(cfg.beta, cfg.target_kl, cfg.kl_horizon) if cfg.adaptive_kl
              else FixedKLController(cfg.beta))  # [D7]
    params = list(policy.parameters()) + list(value_model.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps)  # [D14]
    t0 = time.time()
    order, cursor = torch.randperm(len(prompts), generator=g), 0
    # 0c. resume: the trainable weights (policy and value model) and everything the loop carries
    trained = nn.ModuleDict({"policy": policy, "value": value_model})
    start, extra = resume_from(cfg, trained, optimizer, logger)  # after the reference and value copies
    if start:
        order, cursor, score_norm = extra["order"], extra["cursor"], tuple(extra["score_norm"])
        g.set_state(extra["generator"])
        kl_ctl.value = extra["kl_coef"]
    elif eval_prompts:
        logger.log({"step": -1, **evaluate_policy(policy, ref_model, tokenizer, eval_prompts, cfg,
                                                   reward_fn_or_rm, gold_fn), "time": 0.0})
    bar = ProgressBar(range(start, cfg.steps), "ppo", {"objective/scores": "score", "objective/gold": "gold",
                                                       "objective/kl": "kl", "policy/entropy": "entropy",
                                                       "eval/gold": "eval_gold"}, logger, enabled=progress)
    for step in bar:
        # 1. a batch of training prompts (reshuffled at each pass over them)
        if cursor + cfg.batch_size > len(order):
            order, cursor = torch.randperm(len(prompts), generator=g), 0
        batch_prompts = [prompts[i] for i in order[cursor:cursor + cfg.batch_size].tolist()]
        cursor += cfg.batch_size
        # 2-6. rollout, score, rewards, advantages
        exp = make_experience(policy, ref_model, value_model, reward_fn_or_rm, tokenizer, batch_prompts, cfg,
                              kl_ctl.value, score_norm, g)
        row = {"step": step, **{k: float(v) for k, v in exp["stats"].items()}}
        gold = gold_fn(batch_prompts, exp["completions"]) if gold_fn is not None else None
        if gold is not None:
            row["objective/gold"] = sum(gold) / len(gold)
        # 7. PPO epochs over minibatches
        mb_stats = ppo_update(policy, value_model, optimizer, exp, cfg, g)
        for k in mb_stats[0]:
            if k != "epoch":
                row[k] = sum(s[k] for s in mb_stats) / len(mb_stats)
        # 8. the KL controller sees this batch's KL [D7]
        kl_ctl.update(row["objective/kl"], cfg.batch_size)
        row["time"] = time.time() - t0
        logger.log(row)
        if (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step == cfg.steps - 1:
            bar.samples({"prompt": batch_prompts, "completion": exp["completions"], "score": exp["scores"],
                         **({"gold": gold} if gold is not None else {})}, title=f"ppo step {step}")
        if eval_prompts and cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step == cfg.steps - 1):
            logger.log({"step": step, **evaluate_policy(policy, ref_model, tokenizer, eval_prompts, cfg,
                                                        reward_fn_or_rm, gold_fn), "time": time.time() - t0})
        if checkpoint_due(cfg, step + 1):
            save_checkpoint(cfg.checkpoint_dir, trained, optimizer, step + 1, {
                "order": order, "cursor": cursor, "score_norm": list(score_norm), "generator": g.get_state(),
                "kl_coef": kl_ctl.value})
    policy.eval()
    return logger, policy
