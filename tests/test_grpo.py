"""Tests for minirlhf/grpo.py: hand-computed advantages and losses, clip bounds, the loop."""

import math

import pytest
import torch

from minirlhf import grpo
from minirlhf.grpo import (GRPOConfig, compute_advantages, dynamic_sampling_filter, format_reward,
                           grpo_loss, make_reference, overlong_penalty, pass_at_k, preset, train_grpo)
from minirlhf.worlds.arithmetic import arithmetic_reward
from minirlhf.zoo import new_tiny_model


def tiny_model(tok, seed=0):
    torch.manual_seed(seed)
    return new_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


# ----------------------------------------------------------------------------------------------
# Advantages
# ----------------------------------------------------------------------------------------------


def test_group_advantages_hand_made_and_zero_variance_groups():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0],   # mean 0.5, unbiased std sqrt(1/3)
                            [1.0, 1.0, 1.0, 1.0],   # all right: no signal
                            [0.0, 0.0, 0.0, 0.0]])  # all wrong: no signal
    A = compute_advantages(rewards, preset("grpo"))
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    torch.testing.assert_close(A[0], torch.tensor([a, -a, -a, a]))
    assert torch.equal(A[1:], torch.zeros(2, 4))  # exactly zero, never NaN
    # Dr. GRPO: centred only, no division by the std
    A_dr = compute_advantages(rewards, preset("dr_grpo"))
    torch.testing.assert_close(A_dr[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    assert torch.equal(A_dr[1:], torch.zeros(2, 4))


def test_rloo_advantages_match_leave_one_out_definition():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.5]])
    A = compute_advantages(rewards, preset("rloo"))
    # A_i = r_i - mean of the other three, by hand
    torch.testing.assert_close(A, torch.tensor([[1 - 0.5 / 3, 0 - 1.5 / 3, 0 - 1.5 / 3, 0.5 - 1 / 3]]))
    # and against the definition, term by term
    for i in range(4):
        others = torch.cat([rewards[0, :i], rewards[0, i + 1:]])
        assert A[0, i].item() == pytest.approx(rewards[0, i].item() - others.mean().item())


def test_dynamic_sampling_drops_exactly_zero_variance_groups():
    rewards = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.3], [0.0, 0.0, 0.0],
                            [-0.5, -0.5, -0.5]])
    assert dynamic_sampling_filter(rewards).tolist() == [True, False, True, False, False]


def test_overlong_penalty_eq13():
    lengths = torch.tensor([5, 6, 7, 8, 10, 11])
    # L_max = 10, L_cache = 4: free up to 6 tokens, then a ramp to -1 at 10, then -1
    torch.testing.assert_close(overlong_penalty(lengths, max_len=10, cache=4),
                               torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0, -1.0]))


def test_format_reward_and_pass_at_k():
    assert format_reward(["p"] * 4, ["1+2=3\n#### 3", "#### 12 ", "#### x", "3"]) == [1.0, 1.0, 0.0, 0.0]
    assert pass_at_k(2, 1, 1) == pytest.approx(0.5)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 7, 4) == 1.0  # n - c < k: certain
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


# ----------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------


RAGGED_MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])  # lengths 3 and 1


@pytest.mark.parametrize("mode,expected", [
    ("token_mean", (-3 + 2) / 4),             # every token weighs the same
    ("seq_mean_token_mean", (-1 + 2) / 2),    # every sequence weighs the same
    ("seq_mean_token_sum", (-3 + 2) / 2),
    ("seq_mean_token_sum_norm", (-3 / 8 + 2 / 8) / 2),  # divided by the constant max_new_tokens = 8
])
def test_each_aggregation_on_a_ragged_batch(mode, expected):
    cfg = GRPOConfig(loss_agg=mode, max_new_tokens=8)
    logp = torch.zeros(2, 4, requires_grad=True)
    A = torch.tensor([1.0, -2.0])  # on-policy, ratio 1, so the per-token loss is -A
    loss, m = grpo_loss(logp, logp.detach(), None, A, RAGGED_MASK, cfg)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert torch.equal(logp.grad[RAGGED_MASK == 0], torch.zeros(4))  # padding gets no gradient
    assert (logp.grad[0, :3] < 0).all() and logp.grad[1, 0] > 0  # A > 0 pushes log-probs up


def test_ratio_is_one_on_policy_and_nothing_is_clipped():
    logp = torch.randn(3, 5)
    loss, m = grpo_loss(logp.clone().requires_grad_(), logp, None, torch.tensor([1.0, -1.0, 0.5]),
                        torch.ones(3, 5), preset("dapo"))
    assert m["policy/ratio_mean"].item() == 1.0 and m["policy/ratio_max_dev"].item() == 0.0
    assert m["clip_ratio/low"].item() == 0.0 and m["clip_ratio/high"].item() == 0.0


@pytest.mark.parametrize("A", [1.0, -1.0])
def test_clip_higher_bounds_zero_gradient_outside_the_trust_region(A):
    cfg = preset("dapo", loss_agg="token_mean")  # eps_low 0.2, eps_high 0.28
    ratios = torch.tensor([0.75, 0.81, 1.0, 1.21, 1.27, 1.29])
    logp = ratios.log()[None].clone().requires_grad_()  # (1, 6); old_logp = 0
    loss, m = grpo_loss(logp, torch.zeros(1, 6), None, torch.tensor([A]), torch.ones(1, 6), cfg)
    loss.backward()
    g = logp.grad[0]
    if A > 0:  # clipped above 1 + 0.28 only: 1.21 and 1.27 still learn (symmetric 0.2 would stop 1.21)
        assert (g[:5] < 0).all() and g[5] == 0
        assert m["clip_ratio/high"].item() == pytest.approx(1 / 6) and m["clip_ratio/low"].item() == 0
    else:  # clipped below 1 - 0.2 only
        assert g[0] == 0 and (g[1:] > 0).all()
        assert m["clip_ratio/low"].item() == pytest.approx(1 / 6) and m["clip_ratio/high"].item() == 0


def test_gspo_sequence_ratio_is_the_length_normalised_log_ratio():
    cfg = preset("gspo", clip_low=10.0, clip_high=10.0)  # no clipping, to see the raw ratio
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    old = torch.zeros(1, 3)
    logp = torch.tensor([[0.1, 0.3, 5.0]], requires_grad=True)  # the padded 5.0 must not count
    loss, m = grpo_loss(logp, old, None, torch.tensor([2.0]), mask, cfg)
    s = math.exp(0.2)  # exp(mean of the two log-ratios)
    assert m["policy/ratio_mean"].item() == pytest.approx(s)
    assert loss.item() == pytest.approx(-2.0 * s)
    loss.backward()  # d(-A s)/d logp_t = -A s / |o|
    torch.testing.assert_close(logp.grad, torch.tensor([[-s, -s, 0.0]]))


def test_k3_kl_term_in_the_loss():
    cfg = GRPOConfig(beta=0.5, loss_agg="token_mean")
    logp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    loss, m = grpo_loss(logp, logp, ref, torch.tensor([0.0]), torch.ones(1, 1), cfg)
    k3 = 0.5 - 1 - math.log(0.5)  # r = pi_ref / pi = 0.5
    assert m["objective/kl"].item() == pytest.approx(k3)
    assert loss.item() == pytest.approx(0.5 * k3)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, logp, None, torch.tensor([0.0]), torch.ones(1, 1), cfg)


def test_beta_zero_keeps_no_reference(tok):
    model = tiny_model(tok)
    assert make_reference(model, GRPOConfig(beta=0.0)) is None
    ref = make_reference(model, GRPOConfig(beta=0.1))
    assert ref is not model and not any(p.requires_grad for p in ref.parameters())


def test_unknown_variant_and_options_raise():
    with pytest.raises(ValueError, match="variant"):
        preset("ppo")
    with pytest.raises(ValueError, match="aggregation"):
        grpo_loss(torch.zeros(1, 2), torch.zeros(1, 2), None, torch.ones(1), torch.ones(1, 2),
                  GRPOConfig(loss_agg="sum"))


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------

PROMPTS = ["3 +4 *2\n", "5 -1\n", "7 *3 +2 -1\n", "0 +9\n", "2 *2 *2\n", "9 -9 +1\n"]


@pytest.mark.parametrize("variant", list(grpo.PRESETS))
def test_smoke_train_each_variant(tok, variant):
    model = tiny_model(tok)
    before = [p.detach().clone() for p in model.parameters()]
    # format reward of a random model is 0 everywhere; a length reward makes groups differ
    length_reward = lambda ps, cs: [len(c) / 10 for c in cs]  # noqa: E731
    reward_fns, weights = [arithmetic_reward, format_reward, length_reward], [1.0, 0.5, 0.1]
    if preset(variant).advantage in ("pass_at_k", "positive"):  # binary rewards: parity of the distinct characters
        reward_fns, weights = [lambda ps, cs: [float(len(set(c)) % 2) for c in cs]], None
    pass_k = {"pass_k": 2} if preset(variant).advantage == "pass_at_k" else {}  # k < G = 4
    # a random model seldom ends within 12 tokens: overlong filtering would mask every row (tested on its own)
    cfg = preset(variant, steps=2, prompts_per_step=2, group_size=4, mu=2, max_new_tokens=12,
                 eval_every=1, reward_weights=weights, overlong_filter=False, **pass_k)
    log = train_grpo(model, tok, PROMPTS, reward_fns, cfg, eval_fn=lambda m: {"dummy": 1.0})
    train_rows = [r for r in log.rows if "loss" in r]
    assert len(train_rows) == 2 and len(log.series("eval/dummy")) == 3  # before, step 1, step 2
    for r in train_rows:
        for k in ("loss", "reward/mean", "reward/std", "frac_reward_zero_std", "entropy",
                  "clip_ratio/low", "clip_ratio/high", "completion_length/mean", "grad_norm"):
            assert math.isfinite(r[k]), (variant, k, r[k])
        assert r["policy/ratio_max_dev_first_update"] < 1e-5  # pi_old is the sampling policy
        assert ("objective/kl" in r) == (cfg.beta > 0)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_dynamic_sampling_in_the_loop_resamples_to_fill_the_batch(tok):
    # the prompt "0 +9" always gets reward 0 (a zero-variance group), the others a varying reward
    def reward(ps, cs):
        return [0.0 if p.startswith("0") else float(i % 2) for i, p in enumerate(ps)]
    cfg = preset("dapo", steps=1, prompts_per_step=2, group_size=4, max_new_tokens=12, overlong_cache=0,
                 max_sampling_rounds=3, eval_every=0)
    log = train_grpo(tiny_model(tok), tok, ["0 +9\n", "5 -1\n"], reward, cfg)
    r = log.rows[-1]
    # each round samples both prompts and keeps only "5 -1": two rounds fill the 2 groups
    assert r["frac_reward_zero_std"] == 0.5
    assert r["sampling_rounds"] == 2 and r["groups_trained"] == 2


def test_nan_reward_raises_before_any_update(tok):
    model = tiny_model(tok)
    before = [p.detach().clone() for p in model.parameters()]

    def bad_reward(ps, cs):
        return [float("nan") if i == 3 else 1.0 for i in range(len(cs))]
    with pytest.raises(FloatingPointError, match="bad_reward.*row 3"):
        train_grpo(model, tok, PROMPTS, [bad_reward], preset("grpo", steps=1, prompts_per_step=2,
                                                              group_size=2, max_new_tokens=8))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_lr_warmup_makes_the_first_adam_step_small(tok):
    # Adam's first step is lr * g / |g| (bias-corrected), so with warmup over W updates every
    # weight with a non-negligible gradient moves by exactly lr / (W + 1).
    model = tiny_model(tok)
    before = [p.detach().clone() for p in model.parameters()]
    distinct_chars = lambda ps, cs: [float(len(set(c))) for c in cs]  # noqa: E731  (groups differ)
    cfg = preset("dr_grpo", steps=1, prompts_per_step=2, group_size=4, mu=1, max_new_tokens=12,
                 lr=1e-2, warmup_steps=3, eval_every=0)
    log = train_grpo(model, tok, PROMPTS, [distinct_chars], cfg)
    step = max((p.detach() - b).abs().max().item() for p, b in zip(model.parameters(), before))
    assert step == pytest.approx(1e-2 / 4, rel=1e-3)
    assert log.rows[-1]["lr"] == pytest.approx(1e-2 / 4)
