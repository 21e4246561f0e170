"""Rejection-sampling fine-tuning (RFT): the baseline RL on verifiable rewards must beat.

Sample k completions per prompt, keep the ones the verifier accepts, fine-tune on them, repeat.
This is STaR (Zelikman et al., 2022, without the rationalisation step), RFT (Yuan et al., 2023,
"Scaling relationship on learning mathematical reasoning") and ReST-EM (Singh et al., 2023, Sec. 3:
E-step = sample and filter with a binary reward, M-step = supervised fine-tuning):

    D_n     = {(x, y) : x in prompts_n, y ~ pi_{n-1}(. | x), y_1..y_k per x, R(x, y) = 1}
    pi_n    = argmin_theta  - 1/|D_n| sum_{(x, y) in D_n} log pi_theta(y | x)        (a few SFT steps)

As a policy gradient, this is REINFORCE with reward 1[correct] and no baseline, normalised by the
number of kept samples: wrong samples get no push down, which is what GRPO's negative advantages add.
`budget_like(grpo_cfg)` gives the config with the same number of samples as a GRPO run
(iterations x prompts_per_iteration x samples_per_prompt = steps x prompts_per_step x group_size),
so the two are compared at equal sampling cost.

Where we depart: each iteration continues from the last policy with a fresh AdamW and a constant lr
(ReST-EM and STaR restart from the base model: `restart_from_base=True`); duplicate completions of a
prompt are kept once (`dedup`). Run: `minirlhf rft`, or
`train_rft(load_model("arith-sft"), load_tokenizer(), prompts, arithmetic_trace_reward, RFTConfig())`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import check_config
from .lm import generate
from .progress import ProgressBar
from .sft import SFTConfig, train_sft
from .utils import MetricsLogger, set_seed

RewardFn = Callable[[list[str], list[str]], list[float]]


@dataclass
class RFTConfig:
    """Rejection-sampling fine-tuning. Defaults: arithmetic world, the sample budget of `GRPOConfig()`."""

    iterations: int = 4
    """Rounds of sample -> filter -> fine-tune (ReST-EM's E and M steps)."""
    prompts_per_iteration: int = 160
    """Prompts sampled per round (4 x 160 x 8 = 5120 samples: GRPOConfig's 40 steps x 16 prompts x 8)."""
    samples_per_prompt: int = 8
    """k: completions sampled per prompt (GRPO's group size)."""
    temperature: float = 1.0
    """Sampling temperature."""
    max_new_tokens: int = 64
    """Longest completion."""
    correct_threshold: float = 0.5
    """A completion is kept when its reward is above this (binary rewards: 1 kept, 0 dropped)."""
    dedup: bool = True
    """Keep each distinct completion of a prompt once."""
    max_per_prompt: int | None = None
    """Keep at most this many correct completions per prompt (None: all; STaR keeps 1)."""
    sft_steps: int = 15
    """SFT optimizer steps per round, on the kept samples."""
    batch_size: int = 64
    """SFT batch size (sequences)."""
    lr: float = 3e-4
    """SFT learning rate (constant after warmup)."""
    warmup_steps: int = 3
    """SFT linear warmup per round."""
    restart_from_base: bool = False
    """Fine-tune the base model each round on the latest samples (ReST-EM, STaR) instead of continuing."""
    eval_every: int = 1
    """Call eval_fn every this many rounds (and before the first)."""
    seed: int = 0
    """Seed for the prompt order, sampling and SFT."""

    def validate(self) -> None:
        """Raise ConfigError naming the flag of the first field out of range (before anything loads)."""
        check_config(self, at_least_1=("iterations", "prompts_per_iteration", "samples_per_prompt", "max_new_tokens",
                                       "sft_steps", "batch_size", "max_per_prompt"),
                     positive=("lr", "temperature"), non_negative=("warmup_steps", "eval_every"))

    @property
    def samples(self) -> int:
        """Completions sampled over the whole run."""
        return self.iterations * self.prompts_per_iteration * self.samples_per_prompt


def budget_like(grpo_cfg, iterations: int = 4, **overrides) -> RFTConfig:
    """The RFT config that samples as many completions as `grpo_cfg` (a GRPOConfig) over its run:
    samples_per_prompt = group_size, prompts_per_iteration = steps * prompts_per_step / iterations."""
    total_prompts = grpo_cfg.steps * grpo_cfg.prompts_per_step
    if total_prompts % iterations:
        raise ValueError(f"{total_prompts} GRPO prompts do not split into {iterations} RFT iterations")
    return RFTConfig(**{"iterations": iterations, "prompts_per_iteration": total_prompts // iterations,
                        "samples_per_prompt": grpo_cfg.group_size, "temperature": grpo_cfg.temperature,
                        "max_new_tokens": grpo_cfg.max_new_tokens, "seed": grpo_cfg.seed, **overrides})


def select_correct(prompts: list[str], completions: list[str], rewards: list[float], threshold: float = 0.5,
                   dedup: bool = True, max_per_prompt: int | None = None) -> list[dict]:
    """The rejection step: SFT rows {"prompt", "completion"} of the completions whose reward > threshold.

    prompts, completions, rewards: aligned lists (a prompt repeated k times). `dedup` keeps each distinct
    (prompt, completion) once; `max_per_prompt` caps the rows per prompt (first ones kept).
    """
    rows, seen, per_prompt = [], set(), {}
    for p, c, r in zip(prompts, completions, rewards, strict=True):
        if r <= threshold or (dedup and (p, c) in seen):
            continue
        if max_per_prompt is not None and per_prompt.get(p, 0) >= max_per_prompt:
            continue
        seen.add((p, c))
        per_prompt[p] = per_prompt.get(p, 0) + 1
        rows.append({"prompt": p, "completion": c})
    return rows


def train_rft(policy, tokenizer, prompts: list[str], reward_fn: RewardFn, cfg: RFTConfig = RFTConfig(),
              eval_fn: Callable[[object], dict] | None = None,
              logger: MetricsLogger | None = None, progress: bool = False) -> MetricsLogger:
    """Train `policy` in place by rejection sampling + SFT; returns the log (one row per round).

    progress: a progress bar (sample accuracy, rows kept, eval) and, at each evaluation, a few of the
    round's kept samples.

    Logged per round: `samples`, `kept` (rows fine-tuned on), `reward/mean` (accuracy of the samples),
    `frac_prompts_solved` (prompts with at least one kept sample), `sft/loss` (last step); `eval/*`.
    """
    cfg.validate()
    if not prompts:
        raise ValueError("train_rft needs at least one prompt")
    g = set_seed(cfg.seed)
    logger = logger or MetricsLogger()
    base = copy.deepcopy(policy.state_dict()) if cfg.restart_from_base else None
    order, cursor = torch.randperm(len(prompts), generator=g).tolist(), 0
    t0 = time.time()
    if eval_fn is not None:
        logger.log({"step": 0, **{f"eval/{k}": v for k, v in eval_fn(policy).items()}, "time": time.time() - t0})
    bar = ProgressBar(range(1, cfg.iterations + 1), "rft", {"reward/mean": "acc", "kept": "kept",
                                                          "eval/accuracy": "eval_acc"}, logger, enabled=progress)
    for it in bar:
        # 1. sample k completions for each of this round's prompts, from the current policy
        batch = []
        while len(batch) < cfg.prompts_per_iteration:
            if cursor >= len(prompts):
                order, cursor = torch.randperm(len(prompts), generator=g).tolist(), 0
            take = order[cursor: cursor + cfg.prompts_per_iteration - len(batch)]
            batch += [prompts[i] for i in take]
            cursor += len(take)
        repeated = [p for p in batch for _ in range(cfg.samples_per_prompt)]
        policy.eval()
        completions, _ = generate(policy, tokenizer, repeated, cfg.max_new_tokens, cfg.temperature, generator=g)
        # 2. keep the correct ones (the verifier is the reward function)
        rewards = [float(r) for r in reward_fn(repeated, completions)]
        rows = select_correct(repeated, completions, rewards, cfg.correct_threshold, cfg.dedup, cfg.max_per_prompt)
        row = {"step": it, "samples": len(repeated), "kept": len(rows), "reward/mean": sum(rewards) / len(rewards),
               "frac_prompts_solved": len({r["prompt"] for r in rows}) / len(batch)}
        # 3. supervised fine-tuning on them (from the base model for ReST-EM / STaR)
        if rows:
            if base is not None:
                policy.load_state_dict(base)
            sft_cfg = SFTConfig(lr=cfg.lr, batch_size=min(cfg.batch_size, len(rows)), steps=cfg.sft_steps,
                                warmup_steps=cfg.warmup_steps, min_lr_ratio=1.0, seed=cfg.seed + it,
                                log_every=cfg.sft_steps)
            sft_log = train_sft(policy, tokenizer, rows, sft_cfg)
            row["sft/loss"] = sft_log.series("loss")[-1]
        logger.log({**row, "time": time.time() - t0})
        if eval_fn is not None and cfg.eval_every and (it % cfg.eval_every == 0 or it == cfg.iterations):
            logger.log({"step": it, **{f"eval/{k}": v for k, v in eval_fn(policy).items()}, "time": time.time() - t0})
        if rows and (it == cfg.iterations or (cfg.eval_every and it % cfg.eval_every == 0)):
            bar.samples({"prompt": [r["prompt"] for r in rows], "kept completion": [r["completion"] for r in rows]},
                        title=f"rft step {it}")
    policy.eval()
    return logger
