"""Micro-batching with gradient accumulation that gives exactly the full batch's gradient.

A batch too large for memory is cut into micro-batches of `micro_batch_size` rows; each one's
loss is backpropagated and the gradients add up in `.grad`. The sum is the full-batch gradient
only if each micro-batch's loss is weighted by the part of the full-batch loss it carries:

    token mean      L = 1/N_tok sum_tokens l        micro-batch m: L_m * N_tok(m) / N_tok
    sequence mean   L = 1/B sum_sequences l_seq     micro-batch m: L_m * B(m) / B

where L_m is the loss the same function computes on micro-batch m alone (`fraction` gives the
weight). Dividing every micro-batch's mean by the number of micro-batches, the common shortcut,
gives the same gradient only for sequence means with equal micro-batches: for a token mean it
over-weights the tokens of micro-batches of short completions (a test shows the difference).
This is the same bookkeeping as splitting a batch over ranks (`grpo.rank_share`, DDP in
sft.py and dpo.py), done in time instead of in space.

    opt.zero_grad()
    loss, metrics = backward(lambda mb: my_loss(batch[mb]), mask, micro_batch_size=8, per_token=True)
    opt.step()
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .utils import check_finite


def micro_batches(n: int, size: int | None) -> list[slice]:
    """Slices of `size` consecutive rows covering range(n); one slice of all n for size 0 or None."""
    if not size or size >= n:
        return [slice(0, n)]
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def fraction(mask: Tensor, mb: slice, per_token: bool) -> float:
    """The part of the full-batch loss that micro-batch `mb` carries.

    mask: (N, T) tokens of the full batch that enter the loss. per_token: the loss is a mean over
    all tokens (its share is its tokens over all tokens), else a mean over rows (rows over N).
    """
    if per_token:
        return (mask[mb].sum() / mask.sum().clamp(min=1)).item()
    return (mb.stop - mb.start) / mask.shape[0]


def backward(loss_fn: Callable[[slice], tuple[Tensor, dict[str, Tensor]]], mask: Tensor,
             micro_batch_size: int | None, per_token: bool, weights: bool = True,
             name: str = "loss") -> tuple[Tensor, dict[str, float]]:
    """Backpropagate `loss_fn` over the micro-batches of a batch; returns the full-batch loss and metrics.

    loss_fn(mb) -> (the loss of rows `mb` alone, computed as on a full batch; its metrics).
    Each micro-batch's loss is scaled by `fraction(mask, mb, per_token)` before `.backward()`,
    so the accumulated `.grad` is the gradient of the full-batch loss (`weights=False`: loss_fn
    already divides by the full batch's count, as SFT's sum / all tokens does). Metrics are combined with
    the same weights (exact for means of the same kind), and as a maximum for names with "max".
    The caller zeroes the gradients before and steps the optimiser after. A non-finite
    micro-batch loss raises (NonFiniteError naming `name`) before its backward pass.
    """
    total = torch.zeros(())
    combined: dict[str, float] = {}
    for mb in micro_batches(mask.shape[0], micro_batch_size):
        loss, metrics = loss_fn(mb)
        check_finite(name, loss)
        share = fraction(mask, mb, per_token)
        w = share if weights else 1.0
        (loss * w).backward()
        total = total + loss.detach().float().cpu() * w
        for k, v in metrics.items():
            v = float(v)
            combined[k] = max(combined.get(k, v), v) if "max" in k else combined.get(k, 0.0) + share * v
    return total, combined


@torch.no_grad()
def logprobs_in_chunks(model, input_ids: Tensor, attention_mask: Tensor, temperature: float = 1.0,
                       chunk: int | None = None, prompt_length: int | None = None) -> Tensor:
    """`lm.token_logprobs` of a batch without gradient, `chunk` rows at a time (None: all at once).

    (N, T) -> (N, T). The no-gradient passes (the sampling policy's and the reference's
    log-probs) hold the whole (rows, T, V) logits otherwise: 40 GB for 128 completions of 512
    tokens with a 150k vocabulary. `prompt_length`: as in `token_logprobs` (rows of a chunk that
    repeat a prompt share one pass over it).
    """
    from .lm import token_logprobs

    return torch.cat([token_logprobs(model, input_ids[mb], attention_mask[mb], temperature,
                                     prompt_length=prompt_length)
                      for mb in micro_batches(input_ids.shape[0], chunk)])
