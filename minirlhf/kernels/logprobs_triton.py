"""Fused linear log-probs (+ entropy) in Triton: LM head, log-softmax and gather without the logits.

Specification: `logprobs_reference.py` (read it first; `tests/test_kernels.py` holds the two
together). Inputs hidden X (N, H), LM-head weight W (V, H), targets y (N,); outputs
logp (N,) and entropy (N,), both fp32. The (N, V) logits are never written to memory: each
program computes a (BLOCK_N, BLOCK_V) tile of z = X W^T in registers (fp32 accumulation over H)
and folds it into running statistics, the online log-sum-exp (Milakov & Gimelshein, 2018):

    m_new = max(m, max_j z_j)                       running maximum
    s     = s * exp(m - m_new) + sum_j exp(z_j - m_new)          -> sum_j exp(z_j - m)
    t     = t * exp(m - m_new) + sum_j exp(z_j - m_new) z_j      -> sum_j exp(z_j - m) z_j
    lse = m + log s,   E_p[z] = t / s,   H = lse - t / s,   logp = z_y - lse

Forward (`_forward_kernel`), grid (row blocks, vocab splits): a program owns BLOCK_N rows and
one contiguous slice of the vocabulary, and writes its partial (m, s, t, z_y). The partials are
merged in PyTorch with the same rescaling rule (the online log-sum-exp is associative), so
a few row blocks still fill the GPU: this is the split-K idea of Flash-Decoding.

Backward (`_backward_kernel`), grid (row blocks, vocab blocks): each program recomputes its
logits tile from X and W, turns it into dz with the saved lse and E_p[z] (formula in the
reference), then, one H-slice at a time, adds dz @ W_tile into dX and dz^T @ X_tile into dW
with fp32 atomic adds. Recomputing costs one more X W^T (the forward's flops again) but
saves storing (N, V); tiles are independent, so no program waits on another. The price:
fp32 atomics make dX/dW non-deterministic in the last bits, and dW needs an fp32 (V, H) buffer.
This is Cut Cross-Entropy's organisation (Wijmans et al., 2024) without its gradient filtering.

Precision: bf16/fp16 inputs feed the tensor cores, accumulation is fp32 everywhere; dz is cast
to the input dtype before the two backward matmuls (as the chunked reference does). fp32
inputs use exact fp32 dots ("ieee", not tf32). On CPU this file runs under Triton's interpreter
(TRITON_INTERPRET=1 set before this module is imported); there use fp32, the interpreter's
bf16 dot is not faithful. Block sizes are untuned defaults (no GPU was available to tune).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _forward_kernel(x_ptr, w_ptr, y_ptr, m_ptr, s_ptr, t_ptr, zy_ptr,
                    N, H, V, v_per_split, inv_temp,
                    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                    PRECISION: tl.constexpr):
    pid_n, pid_s = tl.program_id(0), tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    row_ok = rows < N
    y = tl.load(y_ptr + rows, mask=row_ok, other=-1)  # (BN,) target ids
    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)  # running max
    s = tl.zeros((BLOCK_N,), tl.float32)   # sum exp(z - m)
    t = tl.zeros((BLOCK_N,), tl.float32)   # sum exp(z - m) * z
    zy = tl.zeros((BLOCK_N,), tl.float32)  # logit of the target (if it falls in this slice)
    v_start = pid_s * v_per_split
    v_end = tl.minimum(v_start + v_per_split, V)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)  # (BV,)
        col_ok = cols < v_end
        z = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)  # (BN, BV) logits tile, registers only
        for h0 in range(0, H, BLOCK_H):
            hs = h0 + tl.arange(0, BLOCK_H)
            x = tl.load(x_ptr + rows[:, None] * H + hs[None, :],
                        mask=row_ok[:, None] & (hs[None, :] < H), other=0.0)  # (BN, BH)
            w = tl.load(w_ptr + cols[:, None] * H + hs[None, :],
                        mask=col_ok[:, None] & (hs[None, :] < H), other=0.0)  # (BV, BH)
            z = tl.dot(x, tl.trans(w), z, input_precision=PRECISION)
        z = z * inv_temp  # padded columns hold 0 here (W loaded as 0)
        m_new = tl.maximum(m, tl.max(tl.where(col_ok[None, :], z, float("-inf")), axis=1))  # finite
        alpha = tl.exp(m - m_new)  # rescales the old sums (0 on the first tile, m = -inf)
        e = tl.where(col_ok[None, :], tl.exp(z - m_new[:, None]), 0.0)  # (BN, BV)
        s = s * alpha + tl.sum(e, axis=1)
        t = t * alpha + tl.sum(e * z, axis=1)
        zy += tl.sum(tl.where(cols[None, :] == y[:, None], z, 0.0), axis=1)
        m = m_new
    out = pid_s * N + rows
    tl.store(m_ptr + out, m, mask=row_ok)
    tl.store(s_ptr + out, s, mask=row_ok)
    tl.store(t_ptr + out, t, mask=row_ok)
    tl.store(zy_ptr + out, zy, mask=row_ok)


@triton.jit
def _backward_kernel(x_ptr, w_ptr, y_ptr, lse_ptr, mean_z_ptr, g_lp_ptr, g_h_ptr, dx_ptr, dw_ptr,
                     N, H, V, inv_temp,
                     BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                     HAS_G_LP: tl.constexpr, HAS_G_H: tl.constexpr,
                     NEED_DX: tl.constexpr, NEED_DW: tl.constexpr, PRECISION: tl.constexpr):
    pid_n, pid_v = tl.program_id(0), tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)  # (BV,)
    row_ok, col_ok = rows < N, cols < V
    # 1. recompute the logits tile (same loop as the forward)
    z = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
    for h0 in range(0, H, BLOCK_H):
        hs = h0 + tl.arange(0, BLOCK_H)
        x = tl.load(x_ptr + rows[:, None] * H + hs[None, :],
                    mask=row_ok[:, None] & (hs[None, :] < H), other=0.0)
        w = tl.load(w_ptr + cols[:, None] * H + hs[None, :],
                    mask=col_ok[:, None] & (hs[None, :] < H), other=0.0)
        z = tl.dot(x, tl.trans(w), z, input_precision=PRECISION)
    z = z * inv_temp
    # 2. dz = g_lp (onehot - p) - g_H p (z - E_p[z]), then the chain rule through 1/temperature
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    p = tl.exp(z - lse[:, None])  # (BN, BV) softmax tile
    dz = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
    if HAS_G_LP:
        y = tl.load(y_ptr + rows, mask=row_ok, other=-1)
        g_lp = tl.load(g_lp_ptr + rows, mask=row_ok, other=0.0)
        onehot = (cols[None, :] == y[:, None]).to(tl.float32)
        dz += g_lp[:, None] * (onehot - p)
    if HAS_G_H:
        mean_z = tl.load(mean_z_ptr + rows, mask=row_ok, other=0.0)
        g_h = tl.load(g_h_ptr + rows, mask=row_ok, other=0.0)
        dz -= g_h[:, None] * p * (z - mean_z[:, None])
    dz = tl.where(row_ok[:, None] & col_ok[None, :], dz * inv_temp, 0.0)
    dz_in = dz.to(x_ptr.dtype.element_ty)  # tensor-core input dtype
    # 3. dX[rows] += dz @ W[cols];  dW[cols] += dz^T @ X[rows], one H-slice at a time
    for h0 in range(0, H, BLOCK_H):
        hs = h0 + tl.arange(0, BLOCK_H)
        h_ok = hs < H
        if NEED_DX:
            w = tl.load(w_ptr + cols[:, None] * H + hs[None, :], mask=col_ok[:, None] & h_ok[None, :], other=0.0)
            dx = tl.dot(dz_in, w, input_precision=PRECISION)  # (BN, BH)
            tl.atomic_add(dx_ptr + rows[:, None] * H + hs[None, :], dx, mask=row_ok[:, None] & h_ok[None, :])
        if NEED_DW:
            x = tl.load(x_ptr + rows[:, None] * H + hs[None, :], mask=row_ok[:, None] & h_ok[None, :], other=0.0)
            dw = tl.dot(tl.trans(dz_in), x, input_precision=PRECISION)  # (BV, BH)
            tl.atomic_add(dw_ptr + cols[:, None] * H + hs[None, :], dw, mask=col_ok[:, None] & h_ok[None, :])


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # tf32 is ignored for bf16/fp16 inputs


def _default_splits(n_row_blocks: int, vocab_blocks: int, device: torch.device) -> int:
    """Enough vocabulary splits for about two programs per streaming multiprocessor."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(vocab_blocks, triton.cdiv(2 * sms, n_row_blocks)))


class TritonLinearLogprobs(torch.autograd.Function):
    """autograd.Function around the two kernels; returns (logp, entropy), both (N,) fp32."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float,
                block_n: int, block_v: int, block_h: int, v_splits: int | None):
        hidden, weight = hidden.contiguous(), weight.contiguous()
        targets = targets.contiguous()
        (N, H), V = hidden.shape, weight.shape[0]
        n_blocks, v_blocks = triton.cdiv(N, block_n), triton.cdiv(V, block_v)
        splits = v_splits or _default_splits(n_blocks, v_blocks, hidden.device)
        v_per_split = triton.cdiv(v_blocks, splits) * block_v  # a whole number of tiles per split
        splits = triton.cdiv(V, v_per_split)  # no empty split
        m, s, t, zy = (torch.empty(splits, N, device=hidden.device, dtype=torch.float32) for _ in range(4))
        _forward_kernel[(n_blocks, splits)](
            hidden, weight, targets, m, s, t, zy, N, H, V, v_per_split, 1.0 / temperature,
            BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_H=block_h, PRECISION=_precision(hidden.dtype))
        # merge the vocabulary splits with the online log-sum-exp rule
        m_all = m.max(dim=0).values  # (N,)
        scale = torch.exp(m - m_all)  # (splits, N)
        s_all, t_all = (s * scale).sum(0), (t * scale).sum(0)
        lse = m_all + torch.log(s_all)  # (N,)
        mean_z = t_all / s_all  # E_p[z]
        logp, entropy = zy.sum(0) - lse, lse - mean_z
        ctx.save_for_backward(hidden, weight, targets, lse, mean_z)
        ctx.cfg = (temperature, block_n, block_v, block_h)
        ctx.set_materialize_grads(False)
        return logp, entropy

    @staticmethod
    def backward(ctx, g_lp: Tensor | None, g_h: Tensor | None):
        hidden, weight, targets, lse, mean_z = ctx.saved_tensors
        temperature, block_n, block_v, block_h = ctx.cfg
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if (g_lp is None and g_h is None) or not (need_dx or need_dw):
            return None, None, None, None, None, None, None, None
        (N, H), V = hidden.shape, weight.shape[0]
        dx = torch.zeros(N, H, device=hidden.device, dtype=torch.float32) if need_dx else lse  # (N, H) fp32
        dw = torch.zeros(V, H, device=hidden.device, dtype=torch.float32) if need_dw else lse  # (V, H) fp32
        g_lp_ = g_lp.float().contiguous() if g_lp is not None else lse  # placeholders are never read
        g_h_ = g_h.float().contiguous() if g_h is not None else lse
        _backward_kernel[(triton.cdiv(N, block_n), triton.cdiv(V, block_v))](
            hidden, weight, targets, lse, mean_z, g_lp_, g_h_, dx, dw, N, H, V, 1.0 / temperature,
            BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_H=block_h,
            HAS_G_LP=g_lp is not None, HAS_G_H=g_h is not None, NEED_DX=need_dx, NEED_DW=need_dw,
            PRECISION=_precision(hidden.dtype))
        return (dx.to(hidden.dtype) if need_dx else None, dw.to(weight.dtype) if need_dw else None,
                None, None, None, None, None, None)


def linear_logprobs_triton(hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float = 1.0,
                           block_n: int = 64, block_v: int = 128, block_h: int = 64,
                           v_splits: int | None = None) -> tuple[Tensor, Tensor]:
    """(N, H), (V, H), (N,) -> (logp (N,), entropy (N,)), fp32, differentiable in hidden and weight.

    Inputs are assumed validated (the dispatcher does it). Block sizes must be powers of two
    >= 16 (tl.dot's minimum). `v_splits` vocabulary slices per row block (default: fill the GPU).
    """
    return TritonLinearLogprobs.apply(hidden, weight, targets, float(temperature),
                                      block_n, block_v, block_h, v_splits)
