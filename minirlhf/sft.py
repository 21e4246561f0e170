"""Supervised fine-tuning (SFT): maximise the likelihood of demonstrations, completion tokens only.

    L_SFT(theta) = - 1/|C| * sum_{t in C} log pi_theta(y_t | x, y_<t)          (C: completion tokens)

This is the first stage of the InstructGPT pipeline (Ouyang et al., 2022, Sec. 3.5) and the
starting point of every other method here. Two details that matter:

* Completion-only loss: prompt tokens are context, not targets (TRL's `completion_only_loss`).
  Set `completion_only=False` to train on every token, as language-model pretraining does.
* Packing (optional): concatenate examples into fixed-length blocks so no compute is spent on
  padding. We pack naively, as nanoGPT does: tokens may attend across example boundaries.

Run: `minirlhf sft` (the CLI) or `train_sft(model, tokenizer, rows, SFTConfig())`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from einops import rearrange

from . import accumulate
from .checkpoint import checkpoint_due, resume_from, save_checkpoint
from .errors import check_checkpointing, check_config
from .lm import encode_pairs, token_logprobs
from .progress import MAX_ROWS, ProgressBar, greedy_completions
from .rl import masked_mean
from .utils import MetricsLogger, dist_info, set_seed, wrap_ddp


@dataclass
class SFTConfig:
    """Supervised fine-tuning. Defaults fit the built-in world on a laptop CPU."""

    lr: float = 3e-3
    """Peak learning rate of AdamW (tiny models like large steps)."""
    batch_size: int = 64
    """Sequences (or packed blocks) per optimizer step."""
    steps: int = 900
    """Optimizer steps (900 x 64 chains: a tiny model from scratch solves most in-distribution chains)."""
    warmup_steps: int = 30
    """Linear warm-up steps before the cosine decay."""
    min_lr_ratio: float = 0.1
    """The cosine schedule decays to lr * min_lr_ratio."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    max_length: int = 256
    """Longest prompt + completion in tokens; a longer row is an error, never truncated silently."""
    completion_only: bool = True
    """Train on completion tokens only (False: every token, as in pretraining)."""
    packing: bool = False
    """Concatenate examples into blocks of `max_length` tokens instead of padding them."""
    micro_batch_size: int = 0
    """Sequences per forward/backward pass (0: the whole batch); gradients accumulate to the full batch's exactly (accumulate.py)."""
    seed: int = 0
    """Seed for data order and initialisation."""
    log_every: int = 25
    """Log the training loss every this many steps."""
    checkpoint_dir: str | None = None
    """Folder for the resumable checkpoint (None: no checkpoints)."""
    checkpoint_every: int = 0
    """Write the checkpoint every this many steps (0: never)."""
    resume: bool = False
    """Continue from `checkpoint_dir` if a checkpoint is there."""

    def validate(self) -> None:
        """Raise ConfigError naming the flag of the first field out of range (before anything loads)."""
        check_config(self, at_least_1=("batch_size", "steps", "max_length", "log_every"), positive=("lr",),
                     non_negative=("warmup_steps", "weight_decay", "max_grad_norm", "micro_batch_size"), fractions=("min_lr_ratio",))
        check_checkpointing(self)


def sft_loss(logps: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over the masked tokens. logps, loss_mask: (B, T) -> scalar."""
    return -masked_mean(logps, loss_mask)


def pack_batch(batch: dict[str, torch.Tensor], block: int) -> dict[str, torch.Tensor]:
    """Concatenate the real tokens of a padded batch into rows of `block` tokens."""
    ids = batch["input_ids"][batch["attention_mask"].bool()]  # (N,) all real tokens in order
    comp = batch["completion_mask"][batch["attention_mask"].bool()]
    n_rows = max(1, ids.numel() // block)
    ids, comp = ids[: n_rows * block], comp[: n_rows * block]
    return {"input_ids": rearrange(ids, "(n t) -> n t", t=block),  # (n_rows, block)
            "attention_mask": torch.ones(n_rows, block, dtype=torch.long),
            "completion_mask": rearrange(comp, "(n t) -> n t", t=block)}


def lr_at(step: int, cfg: SFTConfig) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_sft(model, tokenizer, rows: list[dict], cfg: SFTConfig = SFTConfig(),
              eval_fn: Callable[[object], dict] | None = None, eval_every: int = 0,
              logger: MetricsLogger | None = None, progress: bool = False,
              stop_fn: Callable[[dict], bool] | None = None,
              on_step: Callable[[int], None] | None = None) -> MetricsLogger:
    """Train `model` in place on rows with "prompt" and "completion" fields; returns the log.

    `eval_fn(model) -> dict` runs every `eval_every` steps; if `stop_fn(metrics)` is true after
    an evaluation, training stops there (early stopping on a dev split). `progress=True` shows a
    progress bar (loss, lr, the evaluation's numbers) and, at each evaluation and at the end, the
    model's greedy completions of a few training prompts beside their demonstrations.

    Under `torchrun` (torch.distributed initialised) each rank takes its share of every batch
    and gradients are averaged by DistributedDataParallel; the loss is normalised by the number
    of tokens over all ranks, so N processes compute exactly the update of one.
    """
    cfg.validate()  # a bad value stops here, before any work
    g = set_seed(cfg.seed)
    logger = logger or MetricsLogger()
    device = next(model.parameters()).device
    rank, world = dist_info()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    model.train()
    t0 = time.time()
    order = torch.randperm(len(rows), generator=g)
    cursor, start = 0, 0
    start, extra = resume_from(cfg, model, opt, logger)
    if start:
        order, cursor = extra["order"], extra["cursor"]
        g.set_state(extra["generator"])
    ddp_model = wrap_ddp(model)
    bar = ProgressBar(range(start, cfg.steps), "sft", {"loss": "loss", "lr": "lr"}, logger, enabled=progress)
    for step in bar:
        # 1. a batch of demonstrations (reshuffled at every epoch)
        if cursor + cfg.batch_size > len(rows):
            order, cursor = torch.randperm(len(rows), generator=g), 0
        idx = order[cursor: cursor + cfg.batch_size].tolist()
        cursor += cfg.batch_size
        idx = idx[rank::world]  # this rank's share (all of it on one process)
        batch = encode_pairs(tokenizer, [rows[i]["prompt"] for i in idx],
                             [rows[i]["completion"] for i in idx], max_length=cfg.max_length)
        if cfg.packing:
            batch = pack_batch(batch, cfg.max_length)
        batch = {k: v.to(device) for k, v in batch.items()}
        loss_mask = batch["completion_mask"] if cfg.completion_only else batch["attention_mask"]
        # 2. the loss: negative log-likelihood of the completion tokens, normalised by the tokens
        #    of the whole batch (all ranks' under torchrun; DDP averages gradients, so x world),
        #    so micro-batches add up to the full batch's gradient (accumulate.py)
        n_tokens = loss_mask.sum().float()
        if world > 1:
            torch.distributed.all_reduce(n_tokens)

        def micro_loss(mb: slice):
            logps = token_logprobs(ddp_model, batch["input_ids"][mb], batch["attention_mask"][mb],
                                   score_mask=loss_mask[mb])  # (b, T): 0 off the loss (the chunked head skips it)
            return -(logps * loss_mask[mb]).sum() / n_tokens.clamp(min=1) * world, {}

        # 3. the update
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss, _ = accumulate.backward(micro_loss, loss_mask, cfg.micro_batch_size, per_token=False,
                                      weights=False, name="SFT loss")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        if rank == 0 and checkpoint_due(cfg, step + 1):
            save_checkpoint(cfg.checkpoint_dir, model, opt, step + 1,
                            {"order": order, "cursor": cursor, "generator": g.get_state()})
        if on_step is not None:
            on_step(step)
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            logger.log({"step": step, "loss": loss.item(), "grad_norm": grad_norm.item(),
                        "lr": lr_at(step, cfg), "time": time.time() - t0})
        evaluating = (eval_every and (step + 1) % eval_every == 0) or step == cfg.steps - 1
        if bar.enabled and evaluating:  # what the model writes now, beside the demonstration
            shown = [rows[i] for i in idx[:MAX_ROWS]]
            bar.samples({"prompt": [r["prompt"] for r in shown],
                         "completion": greedy_completions(model, tokenizer, [r["prompt"] for r in shown]),
                         "gold": [r["completion"] for r in shown]}, title=f"sft step {step}")
        if eval_fn is not None and eval_every and evaluating:
            model.eval()
            metrics = eval_fn(model)
            bar.show(metrics)
            logger.log({"step": step, **metrics, "time": time.time() - t0})
            model.train()
            if stop_fn is not None and stop_fn(metrics):
                break
    model.eval()
    return logger
