"""The exact target of KL-regularised fine-tuning, the memoryless schedule, the lean adjoint, the distance."""

import math

import pytest
import torch

from minirlhf.diffusion.adjoint import (MEMORYLESS, AdjointMatchingConfig, adjoint_matching_loss, lean_adjoint,
                                        memoryless_sigma, train_adjoint_matching)
from minirlhf.diffusion.ddpo import DDPOConfig, train_ddpo
from minirlhf.diffusion.models import Denoiser, NetConfig
from minirlhf.diffusion.noise_opt import NoiseOptConfig, optimise_noise
from minirlhf.diffusion.reward_weighted import RewardWeightedConfig, reward_weights, train_reward_weighted
from minirlhf.diffusion.rewards import box_distance_reward
from minirlhf.diffusion.samplers import flow_sde_mean_std, sample
from minirlhf.diffusion.target import make_grid, noise_floor, points_target, smoothed_kl, tilt
from minirlhf.diffusion.worlds import gaussian_flow_velocity
from minirlhf.errors import ConfigError


def test_target_integrates_to_one_and_base_matches_mixture():
    tg = points_target(box_distance_reward, beta=0.5)
    area = tg.cell ** 2
    assert torch.allclose(tg.density().sum(1) * area, torch.ones(4, dtype=torch.float64))
    base = points_target(None)
    # each label: half its mass on each of its two modes, and the tilt moves mass up (reward prefers y > 0)
    shares = base.mode_shares()
    assert torch.allclose(shares[0, [0, 4]], torch.tensor([0.5, 0.5], dtype=torch.float64), atol=1e-3)
    assert (tg.mode_shares()[:, :4].sum(1) > 0.8).all()
    # the lower mode of label 0 (y = -0.765) keeps exp(-0.765 / beta) of its weight (within-mode tilt aside)
    w = math.exp(-2 * math.sin(math.radians(22.5)) / 0.5)
    assert tg.mode_shares()[0, 4].item() == pytest.approx(w / (1 + w), abs=0.02)


def test_tilted_gaussian_with_linear_reward_is_shifted_gaussian():
    """p_base = N(mu, S), r(x) = w.x: p* = N(mu + S w / beta, S), on the grid."""
    mu, S = torch.tensor([0.3, -0.2], dtype=torch.float64), torch.tensor([[0.4, 0.1], [0.1, 0.25]], dtype=torch.float64)
    w, beta = torch.tensor([1.0, -0.5], dtype=torch.float64), 2.0
    _, pts = make_grid(lim=5.0, n=201)
    d = pts - mu
    log_base = -0.5 * (d @ torch.linalg.inv(S) * d).sum(1)
    p = tilt(log_base, pts @ w, beta)
    assert p.sum().item() == pytest.approx(1.0)
    mean = p @ pts
    cov = (pts - mean).T @ ((pts - mean) * p[:, None])
    assert torch.allclose(mean, mu + S @ w / beta, atol=1e-4)
    assert torch.allclose(cov, S, atol=2e-4)


def test_memoryless_schedule_identity_and_independence():
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    # sigma(t)^2 = 2 beta_t (alpha_dot / alpha beta_t - beta_dot) in the paper's time s = 1 - t, alpha = s, beta = 1 - s
    s = 1 - t
    assert torch.allclose(memoryless_sigma(t) ** 2, 2 * (1 - s) * ((1 / s) * (1 - s) + 1))
    # it is the Flow-GRPO SDE with a = sqrt(2), whose drift is then 2 v + x / (1 - t)
    x, v = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    tt, ss = t.float(), (t - 0.01).float()
    mean, std = flow_sde_mean_std(v.float(), x.float(), tt, ss, math.sqrt(2), t_cap=0.95)
    assert torch.allclose(mean, x.float() + (2 * v.float() + x.float() / (1 - tt[:, None])) * (ss - tt)[:, None], atol=1e-5)
    assert torch.allclose(std, memoryless_sigma(tt) * 0.1, atol=1e-5)
    # memoryless: the sample forgets the starting noise (exact velocity of Gaussian data); the ODE does not
    net = gaussian_flow_velocity(torch.tensor([1.0, -1.0]), torch.tensor([[0.3, 0.1], [0.1, 0.2]]))
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(10000, dtype=torch.long)
    corr = {}
    for noise in (MEMORYLESS["flow"], 0.7, 0.0):
        traj = sample(net, labels, 60, noise, kind="flow", generator=g, dim=2)
        z, x = traj.xs[:, 0], traj.samples
        c = ((z - z.mean(0)) * (x - x.mean(0))).mean(0) / (z.std(0) * x.std(0))
        corr[noise] = c.abs().max().item()
    assert corr[MEMORYLESS["flow"]] < 0.05 and 0.1 < corr[0.7] < corr[0.0], corr


def _tiny_flow(seed=0):
    torch.manual_seed(seed)
    return Denoiser(NetConfig("flow", "points", 2, 4, hidden=16, depth=1)).eval()


def test_lean_adjoint_is_autograd_vjp_through_the_base_chain():
    """With the base model as the sampler, a_k = -grad_{x_k} r(x_K) / beta through the chain with its noise fixed."""
    net, beta = _tiny_flow(), 0.7
    labels = torch.tensor([0, 1, 2, 3])
    traj = sample(net, labels, 6, MEMORYLESS["flow"], generator=torch.Generator().manual_seed(0))
    x = traj.samples.detach().requires_grad_(True)
    grad_r = torch.autograd.grad(box_distance_reward(labels, x).sum(), x)[0]
    adj, _ = lean_adjoint(net, traj, grad_r, beta)
    # autograd: replay x_{k+1} = m_k(x_k) + (stored x_{k+1} - m_k(stored x_k)) from x_2, differentiate r(x_K)
    from minirlhf.diffusion.samplers import step_means
    with torch.no_grad():
        means, _ = step_means(net, traj)
    resid = traj.xs[:, 1:] - means  # the noise s_k z_k of each step
    from minirlhf.diffusion.samplers import step_mean_std
    k0 = 2
    x0 = traj.xs[:, k0].clone().requires_grad_(True)
    x = x0
    for k in range(k0, 6):
        m, _ = step_mean_std(net, "flow", x, traj.ts[k].expand(4), traj.ts[k + 1].expand(4), labels,
                             MEMORYLESS["flow"], traj.ts[1].item())
        x = m + resid[:, k]
    (g,) = torch.autograd.grad(box_distance_reward(labels, x).sum(), x0)
    assert torch.allclose(x, traj.samples, atol=1e-5)
    assert torch.allclose(adj[:, k0], -g / beta, atol=1e-5)
    assert torch.allclose(adj[:, -1], -grad_r / beta)


def test_adjoint_matching_loss_zero_at_its_target_and_first_update_runs():
    B, K, D = 3, 4, 2
    base_mean, adj = torch.randn(B, K, D), torch.randn(B, K, D)
    std, mask = torch.rand(B, K) + 0.1, torch.ones(B, K)
    target = base_mean - std[..., None] ** 2 * adj
    assert adjoint_matching_loss(target, base_mean, std, adj, mask).item() == pytest.approx(0.0, abs=1e-10)
    # at the base (u = 0) the loss is sum_k s_k^2 ||a||^2
    expect = ((std[..., None] * adj) ** 2).sum(-1).sum(-1).mean()
    assert adjoint_matching_loss(base_mean, base_mean, std, adj, mask).item() == pytest.approx(expect.item(), rel=1e-5)
    net = _tiny_flow()
    log = train_adjoint_matching(net, box_distance_reward, AdjointMatchingConfig(iterations=2, batch_size=8, n_steps=4))
    assert log.rows[0]["objective/kl"] == pytest.approx(0.0, abs=1e-8)  # on-policy start: control 0
    with pytest.raises(ConfigError, match="--beta"):
        AdjointMatchingConfig(beta=0.0).validate()


def test_distance_floor_and_base_is_far():
    tg = points_target(box_distance_reward, beta=0.5)
    base = points_target(None)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(512)
    floor, floor_std = noise_floor(tg, 512, repeats=4, generator=g)
    assert floor < 0.03 and floor_std < 0.01
    d_target = smoothed_kl(tg.sample(labels, g), labels, tg).mean().item()
    d_base = smoothed_kl(base.sample(labels, g), labels, tg).mean().item()
    assert d_target < 2 * floor + 0.01
    assert d_base > 10 * floor
    # a collapsed sampler (only the upper modes) is far too
    up = tg.sample(labels, g)
    up[:, 1] = up[:, 1].abs()
    assert smoothed_kl(up, labels, tg).mean().item() > 10 * floor


def test_dpok_kl_term_and_reward_weights_and_noise_opt_run():
    net = _tiny_flow()
    cfg = DDPOConfig(iterations=1, labels_per_batch=2, samples_per_label=4, n_steps=4, eta=MEMORYLESS["flow"],
                     kl_coef=1.0, normalize_advantages=False)
    log = train_ddpo(net, box_distance_reward, cfg)
    assert log.rows[0]["policy/first_ratio"] == pytest.approx(1.0, abs=1e-4)
    w = reward_weights(torch.tensor([[0.0, -1.0, -2.0]]), beta=1.0)
    assert w.mean().item() == pytest.approx(1.0) and w[0, 0] / w[0, 1] == pytest.approx(math.e, rel=1e-5)
    log = train_reward_weighted(_tiny_flow(), box_distance_reward,
                                RewardWeightedConfig(samples_per_label=16, iterations=2, batch_size=8, n_steps=4))
    assert 0 < log.rows[-1]["weights/ess_fraction"] <= 1
    labels = torch.tensor([0, 1, 2, 3])
    _, x, log = optimise_noise(_tiny_flow(), labels, box_distance_reward, NoiseOptConfig(steps=20, n_steps=4, lr=0.2))
    assert box_distance_reward(labels, x).mean() >= log.rows[0]["reward"]
