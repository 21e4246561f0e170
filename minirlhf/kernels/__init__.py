"""Explicit GPU kernels, each beside its PyTorch reference, behind one dispatcher.

    linear_logprobs(hidden, weight, targets, with_entropy=False)  # LM head + log-softmax + gather
    gae(rewards, values, mask, gamma, lam) / discounted_returns(rewards, mask, gamma)

On CUDA tensors these run the Triton kernels (`logprobs_triton.py`, `scan_triton.py`);
elsewhere they run the references (`logprobs_reference.py`'s chunked path, `rl.gae`), with the
same results up to floating-point rounding. Choose explicitly with the `backend=` argument or
the environment variable `MINIRLHF_KERNELS` (the argument wins):

* "auto" (default): Triton on CUDA when triton imports, the reference otherwise;
* "reference": always the PyTorch reference;
* "triton": always Triton. On CPU tensors this needs Triton's interpreter, i.e.
  `TRITON_INTERPRET=1` set before `minirlhf.kernels.*_triton` is first imported (tests do this).

Triton is imported lazily, only when a Triton path is chosen, so `import minirlhf.kernels` never
decides how triton kernels get compiled. Design notes and numbers: docs/kernels.md.
"""

from __future__ import annotations

import importlib
import os

import torch
from torch import Tensor

from minirlhf.kernels.logprobs_reference import (check_linear_logprobs_inputs, linear_logprobs_chunked,
                                                 linear_logprobs_naive)
from minirlhf.kernels.scan_reference import discounted_returns_reference, gae_reference

BACKENDS = ("auto", "triton", "reference")
ENV_VAR = "MINIRLHF_KERNELS"


def triton_available() -> bool:
    """True if triton can be imported (it is the `kernels` extra: pip install minirlhf[kernels])."""
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def interpreter_enabled() -> bool:
    """True if Triton's CPU interpreter is switched on (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(device: torch.device, backend: str | None = None) -> str:
    """'triton' or 'reference' for tensors on `device`, from the argument, else $MINIRLHF_KERNELS."""
    choice = (backend or os.environ.get(ENV_VAR, "auto")).lower()
    if choice not in BACKENDS:
        raise ValueError(f"unknown kernel backend {choice!r} (argument or ${ENV_VAR}); choose one of {BACKENDS}")
    if choice == "reference":
        return "reference"
    if choice == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "reference"
    if not triton_available():
        raise RuntimeError("backend 'triton' was requested but triton is not installed "
                           "(pip install 'minirlhf[kernels]')")
    if device.type != "cuda" and not interpreter_enabled():
        raise RuntimeError(f"backend 'triton' on a {device.type} tensor needs Triton's interpreter: set "
                           "TRITON_INTERPRET=1 before the kernels are imported, or use backend='reference'")
    return "triton"


def triton_module(name: str, device: torch.device):
    """Import minirlhf.kernels.<name>; on CPU make sure its kernels were built for the interpreter.

    `@triton.jit` reads TRITON_INTERPRET when a function is decorated, so a module imported before
    the variable was set holds GPU-only kernels; it is re-imported once in that case. Triton's
    own `tl.zeros` etc. are decorated when triton.language is first imported, which cannot be
    redone: that case is a clear error.
    """
    module = importlib.import_module(f"minirlhf.kernels.{name}")
    if device.type != "cuda":
        import triton.language as tl
        from triton.runtime.interpreter import InterpretedFunction
        if not isinstance(tl.standard.zeros, InterpretedFunction):  # triton's own helpers are jit too
            raise RuntimeError("triton.language was imported before TRITON_INTERPRET=1 was set (transformers "
                               "imports it), so the interpreter cannot run: set TRITON_INTERPRET=1 in the "
                               "environment or before importing torch/transformers")
        kernels = [v for k, v in vars(module).items() if k.endswith("_kernel")]
        if not all(isinstance(k, InterpretedFunction) for k in kernels):
            module = importlib.reload(module)
    return module


def linear_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, with_entropy: bool = False,
                    temperature: float = 1.0, backend: str | None = None, chunk_size: int | None = None
                    ) -> Tensor | tuple[Tensor, Tensor]:
    """log softmax(hidden @ weight^T / temperature)[targets] without the full logits [, entropy].

    hidden (..., H), weight (V, H), targets (...) -> logp (...) fp32 [, entropy (...) fp32].
    Differentiable in hidden and weight. `chunk_size`: rows per block of the reference path.
    """
    lead = targets.shape
    if hidden.shape[:-1] != lead:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(lead)} disagree on the leading dims")
    x, y = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)  # (N, H), (N,)
    check_linear_logprobs_inputs(x, weight, y)
    if resolve_backend(hidden.device, backend) == "triton":
        logp, entropy = triton_module("logprobs_triton", x.device).linear_logprobs_triton(x, weight, y, temperature)
    else:
        logp, entropy = linear_logprobs_chunked(x, weight, y, with_entropy=True, temperature=temperature,
                                                chunk_size=chunk_size)
    logp, entropy = logp.reshape(lead), entropy.reshape(lead)
    return (logp, entropy) if with_entropy else logp


def _check_scan_inputs(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
        raise ValueError(f"expected (B, T) tensors of one shape, got {shapes}")


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95,
        backend: str | None = None) -> tuple[Tensor, Tensor]:
    """`rl.gae` with a Triton path: (B, T) x3 -> (advantages, returns). float64 stays on the reference."""
    _check_scan_inputs(rewards=rewards, values=values, mask=mask)
    if rewards.dtype != torch.float64 and resolve_backend(rewards.device, backend) == "triton":
        return triton_module("scan_triton", rewards.device).gae_triton(rewards, values, mask, gamma, lam)
    return gae_reference(rewards, values, mask, gamma, lam)


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float = 1.0, backend: str | None = None) -> Tensor:
    """`rl.discounted_returns` with a Triton path: (B, T) x2 -> returns (B, T)."""
    _check_scan_inputs(rewards=rewards, mask=mask)
    if rewards.dtype != torch.float64 and resolve_backend(rewards.device, backend) == "triton":
        return triton_module("scan_triton", rewards.device).discounted_returns_triton(rewards, mask, gamma)
    return discounted_returns_reference(rewards, mask, gamma)


__all__ = ["linear_logprobs", "gae", "discounted_returns", "resolve_backend", "triton_available",
           "interpreter_enabled", "triton_module", "linear_logprobs_naive", "linear_logprobs_chunked", "BACKENDS", "ENV_VAR"]
