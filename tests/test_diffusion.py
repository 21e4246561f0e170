"""Tests for minirlhf.diffusion: step log-probs by hand, on-policy ratios, SDE marginals, losses."""

import math

import pytest
import torch

from minirlhf.diffusion import (DDPOConfig, DiffusionDPOConfig, DRaFTConfig, FlowGRPOConfig, ddpo_is_loss,
                                ddpo_sf_loss, diffusion_dpo_loss, frozen_copy, gaussian_logprob, path_kl, sample,
                                train_ddpo, train_diffusion_dpo, train_draft, train_flow_grpo, trajectory_logprobs)
from minirlhf.diffusion.diffusion_dpo import denoising_errors
from minirlhf.diffusion.models import Denoiser, NetConfig, load_diffusion_model, save_net
from minirlhf.diffusion.rewards import (box_distance_reward, box_reward, compressed_bytes, mode_coverage,
                                        quantise_digits)
from minirlhf.diffusion.samplers import alpha_bar, gaussian_kl_same_std, step_mean_std
from minirlhf.diffusion.worlds import gaussian_flow_velocity, mode_centres

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(kind="ddpm", dim=2, n_labels=3, seed=0):
    torch.manual_seed(seed)
    return Denoiser(NetConfig(kind, "points", dim, n_labels, hidden=16, depth=1))


class Constant:
    """A 'network' that always predicts the same vector (eps or v)."""

    def __init__(self, value, kind):
        self.value, self.kind = torch.tensor(value), kind

    def __call__(self, x, t, labels):
        return self.value.expand_as(x)


# ------------------------------------------------------------------ Gaussian step log-probs


def test_gaussian_logprob_hand_value():
    x, mean, std = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 1.0]]), torch.tensor([0.5])
    # -(0.25 + 1) / (2 * 0.25) - 2 log 0.5 - log(2 pi)
    expected = -2.5 - 2 * math.log(0.5) - math.log(2 * math.pi)
    assert gaussian_logprob(x, mean, std).item() == pytest.approx(expected, abs=1e-6)
    ref = torch.distributions.Normal(mean, std[:, None]).log_prob(x).sum(-1)
    assert torch.allclose(gaussian_logprob(x, mean, std), ref, atol=1e-6)


def test_ddim_step_logprob_matches_hand_computed_gaussian():
    eps = [0.3, -0.2]
    g = torch.Generator().manual_seed(0)
    traj = sample(Constant(eps, "ddpm"), torch.zeros(1, dtype=torch.long), n_steps=2, noise=1.0, generator=g, dim=2)
    # step 0: t = 1 -> s = 0.5 with DDIM eta = 1, computed with the math module
    ab_t, ab_s = alpha_bar(torch.tensor(1.0)).item(), alpha_bar(torch.tensor(0.5)).item()
    x_t, x_s = traj.xs[0, 0].tolist(), traj.xs[0, 1].tolist()
    var = (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)
    logp = 0.0
    for xt, xs, e in zip(x_t, x_s, eps):
        x0 = (xt - math.sqrt(1 - ab_t) * e) / math.sqrt(ab_t)
        mu = math.sqrt(ab_s) * x0 + math.sqrt(1 - ab_s - var) * e
        logp += -(xs - mu) ** 2 / (2 * var) - 0.5 * math.log(2 * math.pi * var)
    assert traj.logps[0, 0].item() == pytest.approx(logp, rel=1e-5)
    # step 1 lands on ab = 1: sigma = 0, deterministic, masked out, and x_0 is the predicted x0
    assert traj.mask[0].tolist() == [1.0, 0.0] and traj.logps[0, 1].item() == 0.0
    x0_hat = (traj.xs[0, 1] - math.sqrt(1 - ab_s) * torch.tensor(eps)) / math.sqrt(ab_s)
    assert torch.allclose(traj.samples[0], x0_hat, atol=1e-5)


def test_flow_sde_step_logprob_matches_hand_computed_gaussian():
    v, a = [0.4, -1.0], 0.7
    g = torch.Generator().manual_seed(1)
    traj = sample(Constant(v, "flow"), torch.zeros(1, dtype=torch.long), n_steps=4, noise=a, generator=g, dim=2)
    # step 2: t = 0.5 -> s = 0.25, dt = -0.25; sigma_t = a sqrt(t / (1 - t))
    t, dt = 0.5, -0.25
    sigma = a * math.sqrt(t / (1 - t))
    std = sigma * math.sqrt(-dt)
    logp = 0.0
    for xt, xs, vv in zip(traj.xs[0, 2].tolist(), traj.xs[0, 3].tolist(), v):
        mu = xt + (vv + sigma ** 2 / (2 * t) * (xt + (1 - t) * vv)) * dt
        logp += -(xs - mu) ** 2 / (2 * std ** 2) - 0.5 * math.log(2 * math.pi * std ** 2)
    assert traj.logps[0, 2].item() == pytest.approx(logp, rel=1e-5)
    # step 0 starts at t = 1, where sigma_t uses 1 - t_1 = 0.25 in the denominator (as flow_grpo)
    sigma0 = a * math.sqrt(1.0 / 0.25)
    std0 = sigma0 * math.sqrt(0.25)
    mu0 = [xt + (vv + sigma0 ** 2 / 2 * xt) * dt for xt, vv in zip(traj.xs[0, 0].tolist(), v)]
    logp0 = sum(-(xs - m) ** 2 / (2 * std0 ** 2) - 0.5 * math.log(2 * math.pi * std0 ** 2)
                for xs, m in zip(traj.xs[0, 1].tolist(), mu0))
    assert traj.logps[0, 0].item() == pytest.approx(logp0, rel=1e-5)
    assert traj.mask.sum().item() == 4  # every flow SDE step is stochastic


def test_zero_noise_is_deterministic_euler_ode():
    v = [0.4, -1.0]
    traj = sample(Constant(v, "flow"), torch.zeros(1, dtype=torch.long), n_steps=4, noise=0.0, dim=2)
    assert traj.mask.sum().item() == 0
    assert torch.allclose(traj.samples[0], traj.xs[0, 0] - torch.tensor(v), atol=1e-6)  # x_0 = x_1 - v


# ------------------------------------------------------------------ on-policy ratio


@pytest.mark.parametrize("kind,noise", [("ddpm", 1.0), ("flow", 0.7)])
def test_recomputed_logprobs_equal_sampling_logprobs(kind, noise):
    net = tiny(kind)
    labels = torch.tensor([0, 1, 2, 0])
    traj = sample(net, labels, n_steps=5, noise=noise, generator=torch.Generator().manual_seed(0))
    logp = trajectory_logprobs(net, traj)
    assert torch.allclose(logp, traj.logps, atol=1e-4)
    assert torch.allclose(torch.exp(logp - traj.logps) * traj.mask, traj.mask, atol=1e-4)


def test_first_update_ratio_is_one_ddpo_and_flow_grpo():
    box = lambda labels, x: box_distance_reward(labels, x)  # noqa: E731
    log = train_ddpo(tiny("ddpm"), box, DDPOConfig(iterations=1, labels_per_batch=3, samples_per_label=4, n_steps=4))
    assert log.rows[0]["policy/first_ratio"] == pytest.approx(1.0, abs=1e-5)
    log = train_flow_grpo(tiny("flow"), box, FlowGRPOConfig(iterations=1, labels_per_batch=3, samples_per_label=4,
                                                            n_steps=4))
    assert log.rows[0]["policy/first_ratio"] == pytest.approx(1.0, abs=1e-5)


# ------------------------------------------------------------------ SDE keeps the ODE's marginals


def test_flow_grpo_sde_has_the_ode_marginals_on_gaussian_data():
    """Exact velocity of N(m, S) data: the SDE (a = 0.7) and the ODE both reach the known marginals
    N((1 - t) m, (1 - t)^2 S + t^2 I) at t = 0.5 and t = 0 (Euler error + sampling error < 0.03),
    while noise added without the score correction misses them by far."""
    m, S = torch.tensor([1.0, -0.5]), torch.tensor([[0.5, 0.2], [0.2, 0.3]])
    net = gaussian_flow_velocity(m, S)
    n, K = 20000, 200
    labels = torch.zeros(n, dtype=torch.long)
    for a in (0.0, 0.7):
        traj = sample(net, labels, K, a, kind="flow", generator=torch.Generator().manual_seed(0), dim=2)
        for k in (K // 2, K):
            t = traj.ts[k].item()
            x = traj.xs[:, k]
            assert torch.allclose(x.mean(0), (1 - t) * m, atol=0.03), (a, t)
            assert torch.allclose(torch.cov(x.T), (1 - t) ** 2 * S + t ** 2 * torch.eye(2), atol=0.03), (a, t)
    # negative control: the same noise without the drift correction (a plain "noisy ODE")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g)
    ts = torch.linspace(1, 0, K + 1)
    for k in range(K):
        t, dt = ts[k].item(), (ts[k + 1] - ts[k]).item()
        sigma = 0.7 * math.sqrt(t / (1 - min(t, ts[1].item())))
        x = x + net(x, torch.full((n,), t)) * dt + sigma * math.sqrt(-dt) * torch.randn(n, 2, generator=g)
    assert (torch.cov(x.T) - S).abs().max() > 0.3


def test_ddim_stochastic_and_deterministic_share_marginals_on_gaussian_data():
    """Exact eps of N(m, S) data under the cosine VP schedule: DDIM eta = 1 and eta = 0 both give N(m, S)."""
    m, S = torch.tensor([1.0, -0.5]), torch.tensor([[0.5, 0.2], [0.2, 0.3]])

    def eps_net(x, t, labels):  # E[eps | x_t] = sqrt(1 - ab) C^{-1} (x - sqrt(ab) m), C = ab S + (1 - ab) I
        ab = alpha_bar(t[:1]).double()  # the samplers call every row with the same t
        C = ab * S.double() + (1 - ab) * torch.eye(2, dtype=torch.float64)
        return ((1 - ab).sqrt() * (x.double() - ab.sqrt() * m.double()) @ torch.linalg.inv(C)).float()

    labels = torch.zeros(20000, dtype=torch.long)
    for eta in (0.0, 1.0):
        x = sample(eps_net, labels, 100, eta, kind="ddpm", generator=torch.Generator().manual_seed(0), dim=2).samples
        assert torch.allclose(x.mean(0), m, atol=0.03), eta
        assert torch.allclose(torch.cov(x.T), S, atol=0.03), eta


# ------------------------------------------------------------------ losses: values and signs


def test_ddpo_losses_gradient_signs_and_clip():
    logp = torch.zeros(2, 3, requires_grad=True)
    adv, mask = torch.tensor([1.0, -1.0]), torch.ones(2, 3)
    ddpo_sf_loss(logp, adv, mask).backward()
    assert (logp.grad[0] < 0).all() and (logp.grad[1] > 0).all()  # descent raises logp where A > 0
    old = torch.zeros(2, 3)
    new = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)  # ratio e^0.5 > 1.2 at [0, 0]
    loss, ratio = ddpo_is_loss(new, old, adv, mask, clip_range=0.2)
    loss.backward()
    assert new.grad[0, 0].item() == 0.0  # clipped: A > 0 and ratio above 1 + eps
    assert new.grad[0, 1].item() < 0 and new.grad[1, 1].item() > 0
    assert loss.item() == pytest.approx((-1.2 - 1 - 1 + 1 + 1 + 1) / 6, abs=1e-6)


def test_gaussian_kl_hand_value_and_zero_for_same_policy():
    kl = gaussian_kl_same_std(torch.tensor([0.3, 0.4]), torch.zeros(2), torch.tensor(0.5))
    assert kl.item() == pytest.approx(0.25 / (2 * 0.25))
    net = tiny("flow")
    traj = sample(net, torch.tensor([0, 1]), n_steps=3, noise=0.7)
    assert path_kl(net, frozen_copy(net), traj).abs().max().item() == 0.0


def test_diffusion_dpo_loss_is_log2_at_init_and_sign():
    net = tiny("ddpm")
    ref = frozen_copy(net)
    x_w, x_l, labels = torch.randn(8, 2), torch.randn(8, 2), torch.zeros(8, dtype=torch.long)
    t, noise = torch.rand(8), torch.randn(8, 2)
    err_w, err_l = denoising_errors(net, "ddpm", x_w, labels, t, noise), denoising_errors(net, "ddpm", x_l, labels, t, noise)
    ref_w, ref_l = denoising_errors(ref, "ddpm", x_w, labels, t, noise), denoising_errors(ref, "ddpm", x_l, labels, t, noise)
    loss, inside = diffusion_dpo_loss(err_w, err_l, ref_w, ref_l, beta=100.0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    # lower error on the chosen sample than the reference -> inside > 0 -> loss < log 2
    loss2, inside2 = diffusion_dpo_loss(ref_w - 0.01, ref_l, ref_w, ref_l, beta=100.0)
    assert inside2.min().item() == pytest.approx(0.5, abs=1e-5) and loss2.item() < math.log(2)


# ------------------------------------------------------------------ rewards, DRaFT graph, loops


def test_rewards_hand_values():
    x = torch.tensor([[0.0, 1.0], [0.0, -0.5], [4.0, -1.0]])
    assert box_reward(None, x).tolist() == [1.0, 0.0, 0.0]
    assert box_distance_reward(None, x).tolist() == pytest.approx([0.0, -0.5, -math.sqrt(2)], abs=1e-5)
    flat, noisy = -torch.ones(1, 64), torch.rand(1, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert quantise_digits(torch.tensor([[-1.0, 0.0, 1.0]])).tolist() == [[0, 8, 16]]
    assert compressed_bytes(flat).item() < compressed_bytes(noisy).item()
    cov = mode_coverage(mode_centres().repeat(10, 1))
    assert cov == {"modes_covered": 8, "on_manifold": 1.0}


def test_draft_keeps_graph_only_for_last_k_steps():
    """DRaFT-1's gradient equals the gradient of the last step alone, taken from the detached x_{t_1}."""
    net = tiny("ddpm")
    labels = torch.tensor([0, 1])
    traj = sample(net, labels, n_steps=4, noise=0.0, grad_last_k=1, generator=torch.Generator().manual_seed(0))
    traj.samples.pow(2).sum().backward()
    g1 = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    t, s = traj.ts[-2].expand(2), traj.ts[-1].expand(2)
    last, _ = step_mean_std(net, "ddpm", traj.xs[:, -2].detach(), t, s, labels, 0.0, traj.ts[1].item())
    assert torch.allclose(last, traj.samples, atol=1e-6)
    last.pow(2).sum().backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(g1, net.parameters()))
    net.zero_grad()
    traj2 = sample(net, labels, n_steps=4, noise=0.0, grad_last_k=2, generator=torch.Generator().manual_seed(0))
    traj2.samples.pow(2).sum().backward()
    assert not all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(g1, net.parameters()))
    assert not sample(net, labels, n_steps=4, noise=0.0).samples.requires_grad


def test_loops_run_and_nan_reward_raises(tmp_path):
    reward = lambda labels, x: box_distance_reward(labels, x)  # noqa: E731
    log = train_draft(tiny("flow"), reward, DRaFTConfig(iterations=2, batch_size=8, n_steps=4))
    assert len(log.rows) == 2 and math.isfinite(log.rows[-1]["loss"])
    pairs = {"labels": torch.zeros(4, dtype=torch.long), "chosen": torch.randn(4, 2), "rejected": torch.randn(4, 2)}
    log = train_diffusion_dpo(tiny("ddpm"), pairs, DiffusionDPOConfig(steps=1, batch_size=4))
    assert log.rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # first step: policy = reference
    with pytest.raises(FloatingPointError):
        train_ddpo(tiny("ddpm"), lambda labels, x: torch.full((x.shape[0],), float("nan")),
                   DDPOConfig(iterations=1, labels_per_batch=2, samples_per_label=2, n_steps=3))
    with pytest.raises(KeyError, match="rejected"):
        train_diffusion_dpo(tiny("ddpm"), {"labels": pairs["labels"], "chosen": pairs["chosen"]})
    # save / load round trip (float16 on disk)
    net = tiny("flow")
    save_net(net, tmp_path / "m")
    loaded = load_diffusion_model(str(tmp_path / "m"))
    x, t, lab = torch.randn(5, 2), torch.rand(5), torch.tensor([0, 1, 2, 0, 1])
    assert loaded.kind == "flow" and torch.allclose(loaded(x, t, lab), net(x, t, lab), atol=1e-2)


# ------------------------------------------------------------------ MixGRPO: SDE window, ODE elsewhere


def test_sde_window_steps_outside_are_deterministic_ode_steps():
    from minirlhf.diffusion.flow_grpo import sde_window
    net = tiny("flow")
    labels = torch.tensor([0, 1, 2, 0])
    window = sde_window(6, 2, 3)  # steps 3, 4
    assert window.tolist() == [False, False, False, True, True, False]
    traj = sample(net, labels, 6, 0.7, generator=torch.Generator().manual_seed(0), sde_steps=window)
    assert traj.mask.tolist() == [[0.0, 0.0, 0.0, 1.0, 1.0, 0.0]] * 4
    assert (traj.logps[:, ~window] == 0).all() and (traj.logps[:, window] != 0).all()
    # outside the window x_s is the Euler ODE step x_t + v dt (no noise), whatever the generator
    ode = sample(net, labels, 6, 0.0, generator=torch.Generator().manual_seed(1), x_init=traj.xs[:, 0])
    assert torch.equal(traj.xs[:, :4], ode.xs[:, :4])
    with torch.no_grad():
        t, s = traj.ts[5].expand(4), traj.ts[6].expand(4)
        x5 = traj.xs[:, 5]
        assert torch.allclose(traj.xs[:, 6], x5 + net(x5, t, labels) * (s - t)[:, None], atol=1e-6)
    # a window covering every step is the plain SDE sampler, draw for draw
    full = sample(net, labels, 6, 0.7, generator=torch.Generator().manual_seed(0), sde_steps=sde_window(6, 6, 0))
    plain = sample(net, labels, 6, 0.7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(full.xs, plain.xs) and torch.equal(full.logps, plain.logps)


def _counted_flow_grpo(cfg):
    """Train a tiny flow model; count the (sample, step) rows the policy and the reference evaluate in the update."""
    policy = tiny("flow")
    ref = frozen_copy(policy)
    rows = {"update": 0}

    def count(module, args, out):
        if torch.is_grad_enabled() or module is ref:  # the update's policy passes (with grad) and ref passes
            rows["update"] += args[0].shape[0]
    policy.register_forward_hook(count)
    ref.register_forward_hook(lambda m, a, o: count(ref, a, o))
    log = train_flow_grpo(policy, box_distance_reward, cfg, ref=ref)
    return policy, log, rows["update"]


def test_full_window_is_plain_flow_grpo_and_the_update_shrinks_with_the_window():
    base = dict(iterations=2, labels_per_batch=3, samples_per_label=4, n_steps=8)
    plain, _, n_plain = _counted_flow_grpo(FlowGRPOConfig(**base))
    full, _, n_full = _counted_flow_grpo(FlowGRPOConfig(**base, sde_window=8))
    for p, q in zip(plain.parameters(), full.parameters()):
        assert torch.equal(p, q)  # same seed, same weights, bit for bit
    _, log, n_window = _counted_flow_grpo(FlowGRPOConfig(**base, sde_window=2, window_start=1))
    # 2 rounds x 12 samples x steps x (policy + ref): K = 8 steps vs the window's 2
    assert n_plain == n_full == 2 * 12 * 8 * 2
    assert n_window == 2 * 12 * 2 * 2
    assert log.rows[0]["policy/first_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert log.rows[0]["window/size"] == 2


def test_sliding_window_schedule_and_config_errors():
    from minirlhf.diffusion.flow_grpo import window_start_at
    from minirlhf.errors import ConfigError
    cfg = FlowGRPOConfig(n_steps=10, sde_window=4, window_start=0, window_shift_every=3, window_stride=2)
    assert [window_start_at(cfg, it) for it in range(0, 15, 3)] == [0, 2, 4, 6, 6]  # stops at K - W = 6
    for bad in (dict(sde_window=11), dict(sde_window=-1), dict(sde_window=4, window_start=7), dict(window_stride=0),
                dict(window_shift_every=-1)):
        with pytest.raises(ConfigError):
            FlowGRPOConfig(n_steps=10, **bad).validate()
