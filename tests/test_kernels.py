"""Kernels vs their references, on CPU through Triton's interpreter (fp32, small shapes).

Triton's interpreter must be on (TRITON_INTERPRET=1) before anything imports triton.language:
`@triton.jit` reads the variable when a function is decorated, triton's own helpers (tl.zeros...)
included. tests/conftest.py imports transformers, which imports triton.language, so in a normal
`pytest tests/` session it is too late by the time this module loads. Then this module collects
one test only, `test_kernels_in_fresh_interpreter_process`, which re-runs this file in a fresh
Python with TRITON_INTERPRET=1 in its environment and fails with that run's output if any test
fails there. Run directly (`TRITON_INTERPRET=1 pytest tests/test_kernels.py`) every test is
collected here. If triton is missing this module fails at import, never skips (triton is the
`kernels` extra, installed in CI).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # in time if nothing has imported triton.language yet

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

try:
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
except ImportError as err:  # a loud failure, not a skip
    raise ImportError("tests/test_kernels.py needs triton (pip install 'minirlhf[kernels]')") from err

from minirlhf import kernels as K
from minirlhf import rl
from minirlhf.lm import token_logprobs
from minirlhf.models import position_ids_from_mask

INTERPRETER_READY = os.environ["TRITON_INTERPRET"] == "1" and isinstance(tl.standard.zeros, InterpretedFunction)

# small tiles so that the interpreter is quick and every edge (partial tiles, several splits) is hit
TILES = dict(block_n=16, block_v=32, block_h=16)


def triton_lp(x, w, y, with_entropy=False, temperature=1.0, v_splits=3):
    module = K.triton_module("logprobs_triton", x.device)  # the interpreted kernels
    logp, entropy = module.linear_logprobs_triton(x, w, y, temperature, v_splits=v_splits, **TILES)
    return (logp, entropy) if with_entropy else logp


def chunked_lp(x, w, y, with_entropy=False, temperature=1.0):
    return K.linear_logprobs_chunked(x, w, y, with_entropy, temperature, chunk_size=10)


IMPLEMENTATIONS = {"naive": K.linear_logprobs_naive, "chunked": chunked_lp, "triton": triton_lp}


def random_problem(N=37, H=40, V=203, seed=0):
    """V = 203 is not a multiple of any tile, N = 37 not a multiple of block_n."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, H, generator=g)
    w = torch.randn(V, H, generator=g) * 0.3
    y = torch.randint(0, V, (N,), generator=g)
    return x, w, y


def values_and_grads(fn, x, w, y, g_lp=None, g_h=None, temperature=1.0):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    logp, entropy = fn(x, w, y, with_entropy=True, temperature=temperature)
    loss = 0.0
    if g_lp is not None:
        loss = loss + (logp * g_lp).sum()
    if g_h is not None:
        loss = loss + (entropy * g_h).sum()
    loss.backward()
    return logp.detach(), entropy.detach(), x.grad, w.grad


def test_kernels_are_interpreted():
    from triton.runtime.interpreter import InterpretedFunction
    lp_mod = K.triton_module("logprobs_triton", torch.device("cpu"))
    scan_mod = K.triton_module("scan_triton", torch.device("cpu"))
    assert isinstance(lp_mod._forward_kernel, InterpretedFunction)
    assert isinstance(lp_mod._backward_kernel, InterpretedFunction)
    assert isinstance(scan_mod._reverse_scan_kernel, InterpretedFunction)


# ---------------------------------------------------------------------------------------------
# Fused linear log-probs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_hand_computed_logprob_and_entropy(impl):
    # H = 1, x = 1: the logits are the weight column z = (0, 1, 2)
    x = torch.tensor([[1.0], [1.0]])
    w = torch.tensor([[0.0], [1.0], [2.0]])
    y = torch.tensor([2, 0])
    logp, entropy = IMPLEMENTATIONS[impl](x, w, y, with_entropy=True)
    Z = 1 + math.e + math.e**2
    p = torch.tensor([1 / Z, math.e / Z, math.e**2 / Z])
    assert torch.allclose(logp, torch.tensor([2 - math.log(Z), -math.log(Z)]), atol=1e-6)
    assert torch.allclose(entropy, -(p * p.log()).sum().expand(2), atol=1e-6)
    # all-equal logits: logp = -log V and H = log V (the maximum), even with V > one tile
    x, w, y = torch.ones(3, 16), torch.zeros(77, 16), torch.tensor([0, 40, 76])
    logp, entropy = IMPLEMENTATIONS[impl](x, w, y, with_entropy=True)
    assert torch.allclose(logp, torch.full((3,), -math.log(77)), atol=1e-5)
    assert torch.allclose(entropy, torch.full((3,), math.log(77)), atol=1e-5)


@pytest.mark.parametrize("impl", ["chunked", "triton"])
@pytest.mark.parametrize("grads", ["logp", "entropy", "both"])
def test_values_and_gradients_match_naive(impl, grads):
    x, w, y = random_problem()
    g = torch.Generator().manual_seed(1)
    g_lp = torch.randn(x.shape[0], generator=g) if grads in ("logp", "both") else None
    g_h = torch.randn(x.shape[0], generator=g) if grads in ("entropy", "both") else None
    ref = values_and_grads(K.linear_logprobs_naive, x, w, y, g_lp, g_h)
    out = values_and_grads(IMPLEMENTATIONS[impl], x, w, y, g_lp, g_h)
    for name, a, b in zip(["logp", "entropy", "dX", "dW"], ref, out):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), f"{impl} {name}: max err {(a - b).abs().max():.2e}"


@pytest.mark.parametrize("impl", ["chunked", "triton"])
def test_temperature_matches_naive(impl):
    x, w, y = random_problem(N=20, V=70, seed=2)
    g_lp, g_h = torch.randn(20), torch.randn(20)
    ref = values_and_grads(K.linear_logprobs_naive, x, w, y, g_lp, g_h, temperature=0.7)
    out = values_and_grads(IMPLEMENTATIONS[impl], x, w, y, g_lp, g_h, temperature=0.7)
    for a, b in zip(ref, out):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("v_splits", [1, 2, 7])
def test_vocab_splits_merge_exactly(v_splits):
    # the partial (m, s, t) of each vocabulary slice are merged with the online-LSE rule
    x, w, y = random_problem(N=18, V=150, seed=3)
    ref_lp, ref_h = K.linear_logprobs_naive(x, w, y, with_entropy=True)
    lp, h = triton_lp(x, w, y, with_entropy=True, v_splits=v_splits)
    assert torch.allclose(lp, ref_lp, atol=1e-5) and torch.allclose(h, ref_h, atol=1e-5)


def test_large_logits_stay_finite():
    # logits ~ 1e3: exp would overflow without the running max
    x, w, y = random_problem(N=9, V=100, seed=4)
    lp, h = triton_lp(x * 300, w, y, with_entropy=True)
    ref_lp, ref_h = K.linear_logprobs_naive(x.double() * 300, w.double(), y, with_entropy=True)
    assert torch.isfinite(lp).all() and torch.isfinite(h).all()
    assert torch.allclose(lp, ref_lp, rtol=1e-5, atol=1e-2)
    assert (h >= -1e-4).all()


@pytest.mark.parametrize("impl", ["chunked", "triton"])
def test_gradient_signs_and_identities(impl):
    x, w, y = random_problem(N=1, V=50, seed=5)
    _, _, dx, dw = values_and_grads(IMPLEMENTATIONS[impl], x, w, y, g_lp=torch.ones(1))
    # d logp / d W_j = (onehot_j - p_j) x: the target row moves towards x, all others away
    proj = dw @ x[0]  # (V,)
    assert proj[y[0]] > 0 and (proj[torch.arange(50) != y[0]] < 0).all()
    # sum_j dz_j = 0 for both terms, so the rows of dW sum to 0
    x, w, y = random_problem(seed=6)
    _, _, _, dw = values_and_grads(IMPLEMENTATIONS[impl], x, w, y, torch.randn(37), torch.randn(37))
    assert dw.sum(0).abs().max() < 1e-4
    # raising the entropy of a peaked row pushes its top logit down
    x, w, y = torch.ones(1, 16), torch.zeros(40, 16), torch.tensor([0])
    w[3] = 0.2
    _, _, _, dw = values_and_grads(IMPLEMENTATIONS[impl], x, w, y, g_h=torch.ones(1))
    assert (dw[3] @ x[0]) < 0


def test_dispatcher_leading_dims_and_token_logprobs(tiny_model):
    # the kernel on the model's last hidden state gives lm.token_logprobs' numbers
    torch.manual_seed(0)
    ids = torch.randint(3, tiny_model.config.vocab_size, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    ref_lp, ref_h = token_logprobs(tiny_model, ids, mask, temperature=0.8, with_entropy=True)
    out = tiny_model.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask))
    hidden = out.last_hidden_state[:, :-1]  # (B, T-1, H)
    valid = (mask[:, :-1] * mask[:, 1:]).bool()
    for backend in ("reference", "triton"):
        lp, h = K.linear_logprobs(hidden, tiny_model.lm_head.weight, ids[:, 1:], with_entropy=True,
                                  temperature=0.8, backend=backend)
        assert lp.shape == (2, 8)
        assert torch.allclose(lp[valid], ref_lp[:, 1:][valid], atol=1e-5)
        assert torch.allclose(h[valid], ref_h[:, 1:][valid], atol=1e-5)


def test_dispatcher_switches(monkeypatch):
    cpu = torch.device("cpu")
    assert K.resolve_backend(cpu) == "reference"  # auto on CPU
    monkeypatch.setenv(K.ENV_VAR, "triton")
    assert K.resolve_backend(cpu) == "triton"
    assert K.resolve_backend(cpu, "reference") == "reference"  # the argument wins
    monkeypatch.setenv(K.ENV_VAR, "cuda-please")
    with pytest.raises(ValueError, match="unknown kernel backend"):
        K.resolve_backend(cpu)
    monkeypatch.setenv(K.ENV_VAR, "auto")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        K.resolve_backend(cpu, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    # the env var really routes the call: count calls into each path
    calls = []
    lp_mod = K.triton_module("logprobs_triton", cpu)
    orig_triton, orig_ref = lp_mod.linear_logprobs_triton, K.linear_logprobs_chunked
    monkeypatch.setattr(lp_mod, "linear_logprobs_triton", lambda *a, **k: calls.append("triton") or orig_triton(*a, **k))
    monkeypatch.setattr(K, "linear_logprobs_chunked", lambda *a, **k: calls.append("reference") or orig_ref(*a, **k))
    x, w, y = random_problem(N=4, V=20)
    monkeypatch.setenv(K.ENV_VAR, "triton")
    a = K.linear_logprobs(x, w, y)
    monkeypatch.setenv(K.ENV_VAR, "reference")
    b = K.linear_logprobs(x, w, y)
    assert calls == ["triton", "reference"] and torch.allclose(a, b, atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    x, w, y = random_problem(N=4, V=20)
    with pytest.raises(ValueError, match=r"targets\[2\] = 20"):
        K.linear_logprobs(x, w, torch.tensor([0, 1, 20, 3]))
    with pytest.raises(ValueError, match="hidden size mismatch"):
        K.linear_logprobs(x, w[:, :5], y)
    with pytest.raises(ValueError, match="disagree"):
        K.linear_logprobs(x, w, y[:3])
    with pytest.raises(ValueError, match="bfloat16"):
        K.linear_logprobs(x, w.bfloat16(), y)


def test_chunked_bf16_close_to_fp32():
    x, w, y = random_problem(seed=7)
    ref = values_and_grads(K.linear_logprobs_naive, x.double(), w.double(), y, torch.ones(37), torch.ones(37))
    out = values_and_grads(chunked_lp, x.bfloat16(), w.bfloat16(), y, torch.ones(37), torch.ones(37))
    for name, a, b in zip(["logp", "entropy", "dX", "dW"], ref, out):
        rel = (a - b.double()).norm() / a.norm()
        assert rel < 2e-2, f"{name}: relative error {rel:.2e}"


# ---------------------------------------------------------------------------------------------
# Advantage scan
# ---------------------------------------------------------------------------------------------


def ragged_batch(B=6, T=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    mask = torch.zeros(B, T)
    for b, length in enumerate([0, 1, 5, T, 9, 7][:B]):
        mask[b, :length] = 1
    mask[4, 2] = 0  # a hole: the recursion restarts as rl.gae's does
    mask[5, :3] = 0  # left padding before the completion
    return rewards, values, mask


def test_gae_hand_computed():
    r, v, m = torch.tensor([[0.0, 0.0, 1.0, 5.0]]), torch.zeros(1, 4), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = K.gae(r, v, m, gamma=0.5, lam=1.0, backend="triton")
    # the episode ends at t = 2, so the reward 5 at the padded t = 3 is never seen
    assert torch.equal(adv, torch.tensor([[0.25, 0.5, 1.0, 0.0]])) and torch.equal(ret, adv)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (0.7, 0.0)])
def test_gae_matches_rl_exactly(gamma, lam):
    r, v, m = ragged_batch()
    ref_adv, ref_ret = rl.gae(r, v, m, gamma, lam)
    adv, ret = K.gae(r, v, m, gamma, lam, backend="triton")
    assert torch.equal(adv, ref_adv) and torch.equal(ret, ref_ret)
    assert torch.equal(K.discounted_returns(r, m, gamma, backend="triton"), rl.discounted_returns(r, m, gamma))


def test_scan_several_programs_and_identity():
    # B = 300 > block_b = 128: three programs, the last one partial
    r, v, m = ragged_batch(B=6, T=33, seed=1)
    r, v, m = r.repeat(50, 1), v.repeat(50, 1), m.repeat(50, 1)
    adv, _ = K.gae(r, v, m, 0.97, 1.0, backend="triton")
    assert torch.equal(adv, rl.gae(r, v, m, 0.97, 1.0)[0])
    # GAE with lam = 1 is discounted returns minus values (on the mask)
    G = K.discounted_returns(r, m, 0.97, backend="triton")
    assert torch.allclose(adv, (G - v) * m, atol=1e-5)


def test_scan_dispatch_and_errors():
    r, v, m = ragged_batch()
    assert torch.equal(K.gae(r, v, m, 0.9, 0.9, backend="reference")[0], rl.gae(r, v, m, 0.9, 0.9)[0])
    adv64, _ = K.gae(r.double(), v.double(), m.double(), backend="triton")  # float64 stays on the reference
    assert adv64.dtype == torch.float64
    with pytest.raises(ValueError, match="one shape"):
        K.gae(r, v[:, :-1], m)


# ---------------------------------------------------------------------------------------------
# In a process where triton.language was imported without the interpreter: run in a fresh one
# ---------------------------------------------------------------------------------------------


def test_kernels_in_fresh_interpreter_process():
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-q",
                           "-o", "addopts=", "-p", "no:cacheprovider"], cwd=root, env=env, capture_output=True, text=True)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, f"kernel tests failed under the interpreter:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    assert "passed" in summary and "failed" not in summary and "skipped" not in summary, summary


if INTERPRETER_READY:  # this process can run the kernels: the subprocess is not needed
    del test_kernels_in_fresh_interpreter_process
else:  # only the subprocess test runs here, so nothing is run twice
    for _name in [n for n in list(globals()) if n.startswith("test_") and n != "test_kernels_in_fresh_interpreter_process"]:
        del globals()[_name]
