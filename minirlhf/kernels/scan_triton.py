"""GAE and discounted returns as one Triton kernel: a reverse scan over time, per sequence block.

Specification: `minirlhf.rl.gae` / `minirlhf.rl.discounted_returns` (see `scan_reference.py`).
The reference loops over t in Python and launches a few small kernels per step: at T = 4096
that is tens of thousands of launches. Here one program owns BLOCK_B sequences and walks
t = T-1 .. 0 with the running advantage in registers:

    alive   = mask[:, t+1]   (0 at t = T-1)
    delta   = r_t + gamma * (V_{t+1} * alive) - V_t
    A_t     = delta + (gamma * lam) * alive * A_{t+1}   (gamma * lam in float64, as Python does)
    out_t   = A_t * mask_t,   returns_t = (A_t + V_t) * mask_t

The operations are the reference's, in the same order, in fp32, so the results agree to the
last bit or two (a GPU may fuse a multiply-add). Discounted returns are the same recursion
with V = 0 and lam = 1 (HAS_VALUES=False skips the value loads). The recursion is sequential
in t; a parallel (Blelloch) scan over t would pay off only for very long T with few
sequences, which is not RLHF's shape (many sequences, T <= a few thousand).
Inputs are (B, T) contiguous; reading column t of a row-major (B, T) tensor is strided, which
is acceptable here because the scan is tiny next to the model (see benchmarks/bench_kernels.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _reverse_scan_kernel(r_ptr, v_ptr, mask_ptr, adv_ptr, ret_ptr, B, T, gamma, gamma_lam,
                         HAS_VALUES: tl.constexpr, BLOCK_B: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)  # (BB,)
    ok = rows < B
    base = rows * T
    last_adv = tl.zeros((BLOCK_B,), tl.float32)  # A_{t+1}
    next_value = tl.zeros((BLOCK_B,), tl.float32)  # V_{t+1} (0 past the end)
    alive = tl.zeros((BLOCK_B,), tl.float32)  # mask_{t+1} (0 past the end)
    for i in range(0, T):
        t = T - 1 - i
        r = tl.load(r_ptr + base + t, mask=ok, other=0.0)
        m = tl.load(mask_ptr + base + t, mask=ok, other=0.0)
        if HAS_VALUES:
            v = tl.load(v_ptr + base + t, mask=ok, other=0.0)
            delta = r + gamma * (next_value * alive) - v
            last_adv = delta + gamma_lam * alive * last_adv
            tl.store(adv_ptr + base + t, last_adv * m, mask=ok)
            tl.store(ret_ptr + base + t, (last_adv * m + v) * m, mask=ok)
            next_value = v
        else:
            last_adv = r + gamma * alive * last_adv
            tl.store(adv_ptr + base + t, last_adv * m, mask=ok)
        alive = m


def _prepare(x: Tensor) -> Tensor:
    return x.float().contiguous()


def gae_triton(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95,
               block_b: int = 128) -> tuple[Tensor, Tensor]:
    """Same contract as `rl.gae`: (B, T) x3 -> (advantages, returns), zero outside the mask."""
    B, T = rewards.shape
    r, v, m = _prepare(rewards), _prepare(values), _prepare(mask)
    adv, ret = torch.empty_like(r), torch.empty_like(r)
    _reverse_scan_kernel[(triton.cdiv(B, block_b),)](r, v, m, adv, ret, B, T, float(gamma), float(gamma * lam),
                                                     HAS_VALUES=True, BLOCK_B=block_b)
    return adv.to(rewards.dtype), ret.to(rewards.dtype)


def discounted_returns_triton(rewards: Tensor, mask: Tensor, gamma: float = 1.0,
                              block_b: int = 128) -> Tensor:
    """Same contract as `rl.discounted_returns`: (B, T) x2 -> returns (B, T), zero outside the mask."""
    B, T = rewards.shape
    r, m = _prepare(rewards), _prepare(mask)
    out = torch.empty_like(r)
    _reverse_scan_kernel[(triton.cdiv(B, block_b),)](r, r, m, out, out, B, T, float(gamma), 1.0,
                                                     HAS_VALUES=False, BLOCK_B=block_b)
    return out.to(rewards.dtype)
