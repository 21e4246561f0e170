"""Benchmark the fused linear log-prob kernel and the advantage scan against their alternatives.

One run, fresh random data, one markdown table per kernel. For the log-probs at each size:

* naive PyTorch (materialise X W^T, log-softmax, gather; autograd backward),
* chunked PyTorch (minirlhf's reference and CPU fallback: (chunk, V) at a time, recompute in backward),
* minirlhf's Triton kernel (CUDA only),
* Liger-Kernel's fused linear cross-entropy and Apple's Cut Cross-Entropy, if installed
  ("not installed" otherwise; both compute the cross-entropy -logp, which is what we time).

Columns: extra peak memory over the inputs during forward+backward (CUDA only; includes the
dX and dW outputs themselves), forward-only time (no_grad: how RL computes old/reference
log-probs), forward+backward time, effective TFLOP/s = 6 N H V / (fwd+bwd time) (the
recomputation is not counted as useful work), and the relative errors ||a - ref|| / ||ref||
of the output, dX and dW against an fp32 reference (chunked path in fp32, TF32 off). The loss
differentiated is -sum(logp), i.e. a summed cross-entropy. For the scan: minirlhf's Triton
GAE vs the Python loop of `rl.gae`.

Run on a GPU (H100: about 10 minutes, most of it in the naive path at N = 16384):

    pip install -e '.[kernels]'            # and optionally: pip install liger-kernel cut-cross-entropy
    python benchmarks/bench_kernels.py     # default sizes: N = 4096, 16384 at H = 4096, V = 128256, bf16

CPU smoke run (educational size, reference paths only, a few seconds):

    python benchmarks/bench_kernels.py --small
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import time
from dataclasses import dataclass

import torch

from minirlhf import kernels as K
from minirlhf import rl


@dataclass
class Args:
    """Command-line arguments (see --help)."""

    small: bool = False
    """CPU-friendly smoke run: the educational size only, reference paths on CPU."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """Where to run."""
    dtype: str = "bfloat16"
    """Input dtype of hidden states and weight for the log-prob benchmark."""
    reps: int = 5
    """Timed repetitions (after 2 warm-up runs); the median is reported."""
    seed: int = 0
    """Seed of the random data."""


GPU_SIZES = [(256, 512, 8192), (4096, 4096, 128256), (16384, 4096, 128256)]  # (N, H, V), first = educational
SMALL_SIZES = [(256, 64, 1000)]
GPU_SCAN = [(256, 1024), (1024, 4096)]  # (B, T)
SMALL_SCAN = [(16, 64)]


# ---------------------------------------------------------------------------------------------
# The contenders: each maps (x, w, y) to (per-row output or scalar, loss to differentiate)
# ---------------------------------------------------------------------------------------------


def naive(x, w, y):
    logp = K.linear_logprobs_naive(x, w, y)
    return logp, -logp.sum()


def chunked(x, w, y):
    logp = K.linear_logprobs_chunked(x, w, y)
    return logp, -logp.sum()


def minirlhf_triton(x, w, y):
    logp = K.linear_logprobs(x, w, y, backend="triton")
    return logp, -logp.sum()


def liger(x, w, y):
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    loss = liger_fused_linear_cross_entropy(x, w, y, reduction="sum")
    loss = loss[0] if isinstance(loss, tuple) else loss
    return -loss, loss  # only the summed loss is available: its error is reported as "output"


def cut_cross_entropy(x, w, y):
    from cut_cross_entropy import linear_cross_entropy
    ce = linear_cross_entropy(x, w, y, reduction="none")  # (N,)
    return -ce.float(), ce.float().sum()


def contenders(device: torch.device) -> dict[str, tuple[callable, str | None]]:
    """name -> (function, reason it cannot run here or None)."""
    def installed(module: str) -> str | None:
        return None if importlib.util.find_spec(module) is not None else "not installed"

    cuda_only = None if device.type == "cuda" else "CUDA only"
    return {"naive PyTorch": (naive, None), "chunked PyTorch": (chunked, None),
            "minirlhf Triton": (minirlhf_triton, cuda_only if K.triton_available() else "not installed"),
            "Liger-Kernel FLCE": (liger, installed("liger_kernel") or cuda_only),
            "Cut Cross-Entropy": (cut_cross_entropy, installed("cut_cross_entropy") or cuda_only)}


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, device, reps):
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def rel_err(a, ref):
    return float((a.double() - ref.double()).norm() / ref.double().norm().clamp(min=1e-30))


def fp32_reference(x, w, y):
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    xr, wr = x.float().requires_grad_(), w.float().requires_grad_()
    logp = K.linear_logprobs_chunked(xr, wr, y, chunk_size=1024)
    (-logp.sum()).backward()
    torch.backends.cuda.matmul.allow_tf32 = tf32
    return logp.detach(), xr.grad, wr.grad


def bench_logprobs(N, H, V, args, device, dtype):
    g = torch.Generator(device=device).manual_seed(args.seed)
    x = (torch.randn(N, H, device=device, generator=g) * 1.0).to(dtype)
    w = (torch.randn(V, H, device=device, generator=g) * H**-0.5).to(dtype)
    y = torch.randint(0, V, (N,), device=device, generator=g)
    ref_out, ref_dx, ref_dw = fp32_reference(x, w, y)
    rows = []
    for name, (fn, reason) in contenders(device).items():
        row = {"method": name, "size": f"{N}x{H}x{V}"}
        if reason is not None:
            rows.append(dict(row, note=reason))
            continue
        try:
            xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()

            def fwd():
                with torch.no_grad():
                    fn(x, w, y)

            def fwd_bwd():
                xg.grad = wg.grad = None
                out, loss = fn(xg, wg, y)
                loss.backward()
                return out

            fwd_ms = median_ms(fwd, device, args.reps)
            peak = None
            if device.type == "cuda":
                xg.grad = wg.grad = None
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            out = fwd_bwd()
            if device.type == "cuda":
                torch.cuda.synchronize()
                peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            errs = (rel_err(out.detach().sum(), ref_out.sum()) if out.dim() == 0 else rel_err(out.detach(), ref_out),
                    rel_err(xg.grad, ref_dx), rel_err(wg.grad, ref_dw))
            fb_ms = median_ms(fwd_bwd, device, args.reps)
            rows.append(dict(row, mem=peak, fwd=fwd_ms, fb=fb_ms, tflops=6 * N * H * V / (fb_ms * 1e-3) / 1e12,
                             err_out=errs[0], err_dx=errs[1], err_dw=errs[2]))
        except Exception as err:  # an optional third-party kernel may not support this setting
            rows.append(dict(row, note=f"failed: {type(err).__name__}: {str(err)[:80]}"))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def bench_scan(B, T, args, device):
    g = torch.Generator(device=device).manual_seed(args.seed)
    r, v = torch.randn(B, T, device=device, generator=g), torch.randn(B, T, device=device, generator=g)
    lengths = torch.randint(1, T + 1, (B,), device=device, generator=g)
    mask = (torch.arange(T, device=device)[None] < lengths[:, None]).float()  # ragged
    rows = []
    ref_ms = median_ms(lambda: rl.gae(r, v, mask, 1.0, 0.95), device, args.reps)
    rows.append({"method": "rl.gae (Python loop over t)", "size": f"{B}x{T}", "ms": ref_ms, "err": 0.0})
    if device.type == "cuda" and K.triton_available():
        ms = median_ms(lambda: K.gae(r, v, mask, 1.0, 0.95, backend="triton"), device, args.reps)
        diff = float((K.gae(r, v, mask, 1.0, 0.95, backend="triton")[0] - rl.gae(r, v, mask, 1.0, 0.95)[0]).abs().max())
        rows.append({"method": "minirlhf Triton scan", "size": f"{B}x{T}", "ms": ms, "err": diff})
    else:
        rows.append({"method": "minirlhf Triton scan", "size": f"{B}x{T}", "note": "CUDA only"})
    return rows


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def print_tables(lp_rows, scan_rows, device, dtype):
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"\n### Fused linear log-probs ({dtype}, {where}, torch {torch.__version__})\n")
    print("| method | N x H x V | extra peak MiB | fwd ms | fwd+bwd ms | TFLOP/s | rel err out | rel err dX | rel err dW |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in lp_rows:
        if "note" in r:
            print(f"| {r['method']} | {r['size']} | {r['note']} | | | | | | |")
        else:
            print(f"| {r['method']} | {r['size']} | {fmt(r['mem'], '.0f') if r['mem'] is not None else 'n/a (CPU)'} | "
                  f"{r['fwd']:.2f} | {r['fb']:.2f} | {r['tflops']:.3g} | {r['err_out']:.1e} | {r['err_dx']:.1e} | {r['err_dw']:.1e} |")
    print(f"\n### Advantage scan (GAE, fp32, ragged masks, {where})\n")
    print("| method | B x T | ms | max abs diff vs rl.gae |")
    print("|---|---|---|---|")
    for r in scan_rows:
        if "note" in r:
            print(f"| {r['method']} | {r['size']} | {r['note']} | |")
        else:
            print(f"| {r['method']} | {r['size']} | {r['ms']:.2f} | {r['err']:.1e} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="CPU smoke run: educational size only")
    parser.add_argument("--device", default=Args.device)
    parser.add_argument("--dtype", default=Args.dtype, choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--reps", type=int, default=Args.reps)
    parser.add_argument("--seed", type=int, default=Args.seed)
    args = Args(**vars(parser.parse_args()))
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    sizes, scans = (SMALL_SIZES, SMALL_SCAN) if args.small else (GPU_SIZES, GPU_SCAN)
    if args.small and device.type == "cpu":
        torch.set_num_threads(1)  # a smoke run on a shared laptop: be a good neighbour
        args.reps = max(args.reps, 20)  # small timings are noisy
    start = time.perf_counter()
    lp_rows = [row for N, H, V in sizes for row in bench_logprobs(N, H, V, args, device, dtype)]
    scan_rows = [row for B, T in scans for row in bench_scan(B, T, args, device)]
    print_tables(lp_rows, scan_rows, device, args.dtype)
    print(f"\n(total {time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
