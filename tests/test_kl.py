"""KL estimators (values by hand, unbiasedness on samples) and masked reductions."""

import math

import torch

from minirlhf.rl import kl_k1, kl_k2, kl_k3, masked_mean, masked_var, masked_whiten


def test_kl_estimators_hand_values():
    logp, logp_ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert torch.allclose(kl_k1(logp, logp_ref), torch.tensor([math.log(2.0)]))
    assert torch.allclose(kl_k2(logp, logp_ref), torch.tensor([0.5 * math.log(2.0) ** 2]))
    # r = pi_ref / pi = 0.5 -> k3 = 0.5 - 1 - log 0.5
    assert torch.allclose(kl_k3(logp, logp_ref), torch.tensor([0.5 - 1 + math.log(2.0)]))
    same = torch.tensor([-1.3, -0.2])
    for k in (kl_k1, kl_k2, kl_k3):
        assert torch.all(k(same, same) == 0)


def test_kl_estimators_unbiased_on_samples():
    torch.manual_seed(0)
    p = torch.distributions.Categorical(logits=torch.randn(20))
    q = torch.distributions.Categorical(logits=torch.randn(20))
    true_kl = torch.distributions.kl_divergence(p, q).item()
    x = p.sample((400_000,))
    lp, lq = p.log_prob(x), q.log_prob(x)
    assert abs(kl_k1(lp, lq).mean().item() - true_kl) < 0.01
    assert abs(kl_k3(lp, lq).mean().item() - true_kl) < 0.01
    assert (kl_k3(lp, lq) >= 0).all()  # k3 is non-negative per sample, k1 is not
    assert (kl_k1(lp, lq) < 0).any()
    assert kl_k3(lp, lq).var() < kl_k1(lp, lq).var()  # lower variance


def test_masked_reductions_ignore_padding():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, float("nan"), float("inf")]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, m).item() == 2.0
    assert torch.allclose(masked_mean(x, m, dim=-1), torch.tensor([1.5, 3.0]))
    assert torch.allclose(masked_var(x, m), torch.tensor(1.0))  # var of 1,2,3 (unbiased)
    w = masked_whiten(x, m)
    assert torch.isfinite(w).all() and (w[~m.bool()] == 0).all()
    assert abs(masked_mean(w, m).item()) < 1e-6
