"""Log-probs (and entropy) of target tokens straight from hidden states: the PyTorch references.

Every RL method for language models needs, for each token, log pi(y_t | y_<t) and often the
entropy of the next-token distribution. The usual code computes the logits of the LM head,

    z = X @ W^T                    # (N, V): N tokens, V vocabulary entries
    logp = z[y] - logsumexp(z)     # (N,)
    H    = logsumexp(z) - sum_j softmax(z)_j z_j

and the (N, V) logits are the largest tensor of the step: N = 16384 tokens with Llama-3's
V = 128256 is 4.2 GB in bf16, 8.4 GB in fp32, and autograd keeps several of them.

Two references live here; they are the *specification* that the Triton kernel in
`logprobs_triton.py` is tested against:

* `linear_logprobs_naive`: the three lines above, with autograd doing the backward. It
  materialises the full logits; use it only as a spec and in benchmarks.
* `linear_logprobs_chunked`: a `torch.autograd.Function` that walks over chunks of rows,
  materialises only a (chunk, V) block at a time, saves nothing of size V, and recomputes
  each block in the backward. It is the CPU fallback the dispatcher in `__init__.py` uses.

The backward, for one row with p = softmax(z), g_lp = dL/dlogp and g_H = dL/dH:

    dlogp/dz_j = onehot_j - p_j
    dH/dz_j    = -p_j (z_j - E_p[z])          (E_p[z] = sum_k p_k z_k)
    dz_j       = g_lp (onehot_j - p_j) - g_H p_j (z_j - E_p[z])
    dX = dz @ W      dW = dz^T @ X            (summed over the chunks)

Same idea as Liger-Kernel's fused linear cross-entropy (Hsu et al., 2024) and Apple's Cut
Cross-Entropy (Wijmans et al., 2024), here without their gradient filtering (exact) and with
the entropy added. `temperature` divides the logits (z = X W^T / temperature), as
`minirlhf.lm.token_logprobs` and the sampler do.

Run: `python -c "from minirlhf.kernels import linear_logprobs; help(linear_logprobs)"`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def logprobs_from_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[target]. logits: (..., V), targets: (...) -> (...). Computed in fp32."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """H = logsumexp(z) - sum softmax(z) * z. (..., V) -> (...)."""
    logits = logits.float()
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)


# rows per chunk are chosen so that one fp32 (chunk, V) block holds about this many elements
DEFAULT_CHUNK_ELEMENTS = 2**26  # 256 MB in fp32


def check_linear_logprobs_inputs(hidden: Tensor, weight: Tensor, targets: Tensor) -> None:
    """Raise a clear error on shapes, dtypes or target ids that cannot be right."""
    if hidden.dim() != 2 or weight.dim() != 2 or targets.dim() != 1:
        raise ValueError(f"expected hidden (N, H), weight (V, H), targets (N,); got hidden "
                         f"{tuple(hidden.shape)}, weight {tuple(weight.shape)}, targets {tuple(targets.shape)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden size mismatch: hidden has H={hidden.shape[1]}, weight has H={weight.shape[1]}")
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"hidden has N={hidden.shape[0]} rows but targets has {targets.shape[0]}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden is {hidden.dtype} but weight is {weight.dtype}; cast one of them")
    if targets.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"targets must be int32/int64 token ids, got {targets.dtype}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= weight.shape[0]):
        bad = int(((targets < 0) | (targets >= weight.shape[0])).nonzero()[0])
        raise ValueError(f"targets[{bad}] = {int(targets[bad])} is not a token id in [0, V={weight.shape[0]})")


def linear_logprobs_naive(hidden: Tensor, weight: Tensor, targets: Tensor, with_entropy: bool = False,
                          temperature: float = 1.0) -> Tensor | tuple[Tensor, Tensor]:
    """The specification: materialise the logits, log-softmax, gather.

    hidden (N, H), weight (V, H), targets (N,) -> logp (N,) fp32 [, entropy (N,) fp32].
    The logits come out of the matmul in the input dtype (as in a Hugging Face model) and the
    softmax runs in fp32.
    """
    logits = (hidden @ weight.T) / temperature  # (N, V), materialised
    logp = logprobs_from_logits(logits, targets)  # (N,)
    if not with_entropy:
        return logp
    return logp, entropy_from_logits(logits)


def _chunk_rows(n_rows: int, vocab: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return chunk_size
    return max(1, min(n_rows, DEFAULT_CHUNK_ELEMENTS // max(vocab, 1)))


def logits_block(hidden: Tensor, weight: Tensor, temperature: float) -> Tensor:
    """z = X W^T / temperature for a block of rows, in fp32. (n, H), (V, H) -> (n, V)."""
    return (hidden @ weight.T).float() / temperature


class ChunkedLinearLogprobs(torch.autograd.Function):
    """Chunked over rows; forward saves (N,)-sized statistics only, backward recomputes logits."""

    # under CUDA autocast (`scaling.autocast_forward`) the backward runs in the forward's autocast state
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float,
                chunk: int) -> tuple[Tensor, Tensor]:
        N = hidden.shape[0]
        logp = hidden.new_empty(N, dtype=torch.float32)  # (N,)
        lse = hidden.new_empty(N, dtype=torch.float32)   # (N,) log-sum-exp of each row
        mean_z = hidden.new_empty(N, dtype=torch.float32)  # (N,) E_p[z] of each row
        for i in range(0, N, chunk):
            z = logits_block(hidden[i:i + chunk], weight, temperature)  # (n, V), freed each chunk
            lse_c = torch.logsumexp(z, dim=-1)  # (n,)
            p = torch.exp(z - lse_c[:, None])  # (n, V)
            lse[i:i + chunk] = lse_c
            mean_z[i:i + chunk] = (p * z).sum(-1)
            logp[i:i + chunk] = z.gather(1, targets[i:i + chunk, None]).squeeze(1) - lse_c
        entropy = lse - mean_z  # H = lse - E_p[z]
        ctx.save_for_backward(hidden, weight, targets, lse, mean_z)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.set_materialize_grads(False)
        return logp, entropy

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, g_lp: Tensor | None, g_h: Tensor | None):
        hidden, weight, targets, lse, mean_z = ctx.saved_tensors
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if g_lp is None and g_h is None:
            return None, None, None, None, None
        dx = torch.zeros_like(hidden, dtype=torch.float32) if need_dx else None  # (N, H) fp32 accumulator
        dw = torch.zeros_like(weight, dtype=torch.float32) if need_dw else None  # (V, H) fp32 accumulator
        for i in range(0, hidden.shape[0], chunk := ctx.chunk):
            x = hidden[i:i + chunk]  # (n, H)
            z = logits_block(x, weight, ctx.temperature)  # (n, V), recomputed
            p = torch.exp(z - lse[i:i + chunk, None])  # (n, V) softmax
            dz = torch.zeros_like(z)
            if g_lp is not None:  # g_lp (onehot - p)
                g = g_lp[i:i + chunk, None].float()
                dz -= g * p
                dz.scatter_add_(1, targets[i:i + chunk, None], g)
            if g_h is not None:  # -g_H p (z - E_p[z])
                dz -= g_h[i:i + chunk, None].float() * p * (z - mean_z[i:i + chunk, None])
            dz = (dz / ctx.temperature).to(hidden.dtype)  # chain rule through z = XW^T / temperature
            if need_dx:
                dx[i:i + chunk] = dz @ weight  # (n, V) @ (V, H)
            if need_dw:
                dw += dz.T @ x  # (V, n) @ (n, H), accumulated in fp32 across chunks
        return (dx.to(hidden.dtype) if need_dx else None, dw.to(weight.dtype) if need_dw else None,
                None, None, None)


def linear_logprobs_chunked(hidden: Tensor, weight: Tensor, targets: Tensor, with_entropy: bool = False,
                            temperature: float = 1.0, chunk_size: int | None = None
                            ) -> Tensor | tuple[Tensor, Tensor]:
    """Chunked reference: same values and gradients as `linear_logprobs_naive`, (chunk, V) memory.

    hidden (N, H), weight (V, H), targets (N,) -> logp (N,) fp32 [, entropy (N,) fp32].
    `chunk_size` rows per block (default: about 2**26 logits per block).
    """
    check_linear_logprobs_inputs(hidden, weight, targets)
    chunk = _chunk_rows(hidden.shape[0], weight.shape[0], chunk_size)
    logp, entropy = ChunkedLinearLogprobs.apply(hidden, weight, targets, float(temperature), chunk)
    return (logp, entropy) if with_entropy else logp
