"""Issue 18's RL toolbox: REINFORCE++, where the KL goes (exact gradients on a tiny categorical policy),
entropy tools (bonus, Clip-Cov, KL-Cov, forking tokens, the R = -a exp(H) + b fit), off-policy
corrections (TIS, MIS, CISPO, stale and hotter samplers), DAPO's overlong filter, pass@k advantages, RFT."""

import math

import pytest
import torch

from minirlhf import rl
from minirlhf.cli import build_config, build_parser
from minirlhf.errors import ConfigError
from minirlhf.grpo import GRPOConfig, compute_advantages, grpo_loss, pass_at_k, preset, token_advantages, train_grpo
from minirlhf.rft import RFTConfig, budget_like, select_correct, train_rft
from minirlhf.zoo import new_tiny_model


def tiny_model(tok, seed=0):
    torch.manual_seed(seed)
    return new_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


PROMPTS = ["3 +4 *2\n", "5 -1\n", "7 *3 +2 -1\n", "0 +9\n", "2 *2 *2\n", "9 -9 +1\n"]
distinct_chars = lambda ps, cs: [float(len(set(c))) for c in cs]  # noqa: E731  (groups differ)


# ----------------------------------------------------------------------------------------------
# 1. REINFORCE++
# ----------------------------------------------------------------------------------------------


def test_batch_advantages_use_the_batch_not_the_group():
    rewards = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # the first group has zero variance
    A = rl.batch_advantages(rewards, eps=0.0)
    mean, std = 0.75, math.sqrt(0.25)  # unbiased std of 1, 1, 0, 1 = sqrt(0.75 / 3)
    torch.testing.assert_close(A, (rewards - mean) / std)
    assert (A[0] != 0).all()  # GRPO would give the first group exactly 0
    assert torch.equal(compute_advantages(rewards, GRPOConfig())[0], torch.zeros(2))
    torch.testing.assert_close(compute_advantages(rewards, preset("reinforce_pp")), rl.batch_advantages(rewards))


def test_reinforce_pp_kl_in_the_reward_hand_values():
    R = torch.tensor([1.0, 0.0])
    kl = torch.tensor([[0.5, 1.0], [2.0, 9.0]])  # the 9.0 is padding and must not count
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    beta = 0.1
    raw = rl.kl_reward_advantages(R, kl, mask, beta)
    # return-to-go of r_t = -beta KL_t, plus R: 1 - 0.1 * 1.5, 1 - 0.1 * 1.0; 0 - 0.1 * 2.0
    torch.testing.assert_close(raw, torch.tensor([[0.85, 0.9], [-0.2, 0.0]]))
    vals = torch.tensor([0.85, 0.9, -0.2])
    expected = (vals - vals.mean()) / vals.std()  # whitened over the batch's 3 tokens
    A = rl.reinforce_pp_advantages(R, kl, mask, beta)
    torch.testing.assert_close(A[mask.bool()], expected, atol=1e-6, rtol=1e-5)
    assert A[1, 1] == 0
    # the trainer's path: k1 of pi_old against the reference, whitened
    cfg = preset("reinforce_pp", beta=beta)
    old, ref = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]])), torch.log(torch.tensor([[0.5, 0.25], [0.125, 0.5]]))
    out = token_advantages(torch.zeros(2), R, old, ref, mask, cfg)
    k1 = old - ref  # (0, log 2), (log 4, 0)
    torch.testing.assert_close(out, rl.reinforce_pp_advantages(R, k1, mask, beta))


def test_reinforce_pp_preset_on_the_command_line():
    args = build_parser().parse_args(["grpo", "--variant", "reinforce_pp", "--steps", "2"])
    cfg = build_config(GRPOConfig, args)
    cfg = preset(cfg.variant, **{k: getattr(cfg, k) for k in args.given_fields if k != "variant"})  # as run_grpo
    assert (cfg.advantage, cfg.kl_placement, cfg.kl_estimator, cfg.beta, cfg.steps) == ("batch", "reward", "k1",
                                                                                        0.01, 2)
    with pytest.raises(ConfigError, match="--kl-estimator"):
        GRPOConfig(kl_estimator="k4").validate()


# ----------------------------------------------------------------------------------------------
# 2. Where the KL goes: exact expected gradients on a one-step categorical policy
# ----------------------------------------------------------------------------------------------

V = 5
g0 = torch.Generator().manual_seed(0)
LOGITS, REF, BEHAVIOUR = (torch.randn(V, generator=g0, dtype=torch.float64) for _ in range(3))
REVERSE = rl.reverse_kl_gradient(LOGITS, REF)
FORWARD = rl.forward_kl_gradient(LOGITS, REF)


def classify(grad):
    return ("reverse" if torch.allclose(grad, REVERSE) else "forward" if torch.allclose(grad, FORWARD)
            else "zero" if torch.allclose(grad, torch.zeros(V, dtype=torch.float64)) else "other")


def test_true_kl_gradients_by_hand():
    # d KL(pi||q) / d z = pi * (log(pi/q) - KL); d KL(q||pi) / d z = pi - q
    pi, q = torch.softmax(LOGITS, -1), torch.softmax(REF, -1)
    kl = (pi * (pi / q).log()).sum()
    torch.testing.assert_close(REVERSE, pi * ((pi / q).log() - kl))
    torch.testing.assert_close(FORWARD, pi - q)
    assert classify(REVERSE) == "reverse" and classify(FORWARD) == "forward"  # the two differ here


@pytest.mark.parametrize("estimator,placement,expected", [
    ("k1", "reward", "reverse"), ("k2", "loss", "reverse"),   # the reverse-KL gradient
    ("k3", "loss", "forward"),                                # GRPO's choice: the forward KL's gradient
    ("k1", "loss", "zero"),                                   # E_pi[grad log pi] = 0
    ("k2", "reward", "other"), ("k3", "reward", "other"),     # score function alone misses E_pi[grad k]
])
@pytest.mark.parametrize("regime", ["on-policy", "off-policy, detached IS weight"])
def test_which_kl_gradient_each_combination_follows(estimator, placement, expected, regime):
    behaviour, importance = (None, "none") if regime == "on-policy" else (BEHAVIOUR, "detached")
    g = rl.expected_kl_gradient(LOGITS, REF, estimator, placement, behaviour, importance)
    assert classify(g) == expected


@pytest.mark.parametrize("estimator,placement", [(e, p) for e in rl.KL_ESTIMATORS for p in rl.KL_PLACEMENTS])
def test_off_policy_without_importance_weights_follows_neither_kl(estimator, placement):
    g = rl.expected_kl_gradient(LOGITS, REF, estimator, placement, BEHAVIOUR, "none")
    assert classify(g) == "other"


def test_differentiable_ratio_makes_k1_and_k3_in_the_loss_exact():
    # E_b[pi/b * k] = E_pi[k] = KL(pi||ref) for k1 and k3 (both unbiased), so its gradient is exact
    for behaviour in (None, BEHAVIOUR):
        for est in ("k1", "k3"):
            assert classify(rl.expected_kl_gradient(LOGITS, REF, est, "loss", behaviour, "differentiable")) == "reverse"
        assert classify(rl.expected_kl_gradient(LOGITS, REF, "k2", "loss", behaviour, "differentiable")) == "other"


def test_kl_placement_in_grpo_loss():
    logp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    for est, value in (("k1", math.log(2)), ("k2", 0.5 * math.log(2) ** 2), ("k3", 0.5 - 1 + math.log(2))):
        loss, m = grpo_loss(logp, logp, ref, torch.tensor([0.0]), torch.ones(1, 1),
                            GRPOConfig(beta=0.5, kl_estimator=est, loss_agg="token_mean"))
        assert loss.item() == pytest.approx(0.5 * value)
        assert m["objective/kl"].item() == pytest.approx(0.5 - 1 + math.log(2))  # logged as k3 always
    # in the reward: nothing in the loss (the KL is in the advantages)
    loss, _ = grpo_loss(logp, logp, ref, torch.tensor([0.0]), torch.ones(1, 1),
                        GRPOConfig(beta=0.5, kl_placement="reward", loss_agg="token_mean"))
    assert loss.item() == 0.0


# ----------------------------------------------------------------------------------------------
# 3. Entropy tools
# ----------------------------------------------------------------------------------------------


def test_entropy_bonus_pushes_entropy_up():
    cfg = GRPOConfig(entropy_coef=0.1, loss_agg="token_mean")
    H = torch.tensor([[0.3, 0.7]], requires_grad=True)
    loss, _ = grpo_loss(torch.zeros(1, 2), torch.zeros(1, 2), None, torch.tensor([0.0]), torch.ones(1, 2), cfg,
                        entropy=H)
    assert loss.item() == pytest.approx(-0.1 * 0.5)
    loss.backward()
    torch.testing.assert_close(H.grad, torch.tensor([[-0.05, -0.05]]))  # minimising raises H


def test_token_covariance_hand_values():
    logp = torch.tensor([[-0.1, -1.0], [-2.0, 0.0]])
    A = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    cov = rl.token_covariance(logp, A, mask)
    lm, am = (-0.1 - 1.0 - 2.0) / 3, 1 / 3
    expected = torch.tensor([[(-0.1 - lm) * (1 - am), (-1.0 - lm) * (1 - am)], [(-2.0 - lm) * (-1 - am), 0.0]])
    torch.testing.assert_close(cov, expected)


def test_clip_cov_stops_the_gradient_of_chosen_tokens_only():
    cov = torch.tensor([[0.5, 2.0, 3.0, 6.0], [4.0, 1.5, -1.0, 2.5]])
    mask = torch.ones(2, 4)
    keep = rl.clip_cov_mask(cov, mask, ratio=0.25, low=1.0, high=5.0, generator=torch.Generator().manual_seed(0))
    dropped = (keep == 0)
    assert dropped.sum() == 2  # int(0.25 * 8) tokens
    assert ((cov[dropped] > 1.0) & (cov[dropped] < 5.0)).all()  # only from the covariance band
    assert rl.clip_cov_mask(cov, mask, ratio=1e-4, low=1.0, high=5.0).eq(0).sum() == 1  # at least one
    assert rl.clip_cov_mask(cov, mask, ratio=0.5, low=10.0, high=20.0).eq(0).sum() == 0  # none eligible


def test_clip_cov_and_kl_cov_in_the_loss():
    logp0 = torch.tensor([[-0.1, -2.0], [-0.2, -3.0]])
    A = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 2)
    # cov = (logp + 1.325) * A: 1.225, -0.675 / -1.125, 1.675: two tokens with positive covariance
    torch.testing.assert_close(rl.token_covariance(logp0, A[:, None], mask),
                               torch.tensor([[1.225, -0.675], [-1.125, 1.675]]))
    cfg = GRPOConfig(cov_method="clip_cov", cov_ratio=0.25, clip_cov_low=0.0, clip_cov_high=100.0,
                     loss_agg="token_mean")
    logp = logp0.clone().requires_grad_()
    loss, m = grpo_loss(logp, logp0, None, A, mask, cfg, generator=torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(0.0)  # the value is unchanged: mean of -A * ratio, ratio 1
    loss.backward()
    zero = logp.grad == 0
    assert zero.sum() == 1 and (zero[0, 0] or zero[1, 1])  # one positive-covariance token lost its gradient
    assert m["cov/frac_selected"].item() == pytest.approx(0.25)
    # KL-Cov: the top token by covariance, (1, 1), gets coef * |log pi - log pi_old|
    cfg = GRPOConfig(cov_method="kl_cov", cov_ratio=0.25, kl_cov_coef=2.0, loss_agg="token_mean")
    logp = (logp0 + 0.1).requires_grad_()  # every token moved up by 0.1 since sampling
    loss, _ = grpo_loss(logp, logp0, None, A, mask, cfg)
    r = math.exp(0.1)
    assert loss.item() == pytest.approx((-r - r + r + r) / 4 + 2.0 * 0.1 / 4, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-r, -r], [r, r + 2.0]]) / 4)


def test_forking_tokens_keep_the_top_entropy_fraction():
    entropy = torch.tensor([[0.1, 2.0, 0.3, 0.0, 1.5], [0.9, 0.2, 5.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0] * 5, [1.0, 1.0, 0.0, 0.0, 0.0]])  # the 5.0 is padding
    keep = rl.high_entropy_mask(entropy, mask, 0.2)  # ceil(0.2 * 7) = 2 tokens: 2.0 and 1.5
    assert keep.tolist() == [[0, 1, 0, 0, 1], [0, 0, 0, 0, 0]]
    cfg = GRPOConfig(entropy_top_frac=0.2, loss_agg="token_mean")
    logp = torch.zeros(2, 5, requires_grad=True)
    loss, _ = grpo_loss(logp, logp.detach(), None, torch.tensor([1.0, 1.0]), mask, cfg, entropy=entropy)
    loss.backward()
    assert (logp.grad[keep.bool()] < 0).all() and (logp.grad[~keep.bool()] == 0).all()


def test_fit_entropy_reward_recovers_a_and_b():
    g = torch.Generator().manual_seed(0)
    H = torch.linspace(0.05, 1.2, 30, dtype=torch.float64)
    R = -0.3 * torch.exp(H) + 0.9 + 0.005 * torch.randn(30, generator=g, dtype=torch.float64)
    a, b, r2 = rl.fit_entropy_reward(H, R)
    assert a == pytest.approx(0.3, abs=0.01) and b == pytest.approx(0.9, abs=0.01) and r2 > 0.99
    a, b, r2 = rl.fit_entropy_reward(H, -0.3 * torch.exp(H) + 0.9)  # exact data: exact fit
    assert (a, b, r2) == pytest.approx((0.3, 0.9, 1.0))


# ----------------------------------------------------------------------------------------------
# 4. Off-policy: TIS, MIS, CISPO, overlong filtering, stale and hotter samplers
# ----------------------------------------------------------------------------------------------


def test_tis_and_mis_weights_hand_values():
    trainer = torch.log(torch.tensor([0.5, 0.9, 0.1, 0.4]))
    sampler = torch.log(torch.tensor([0.5, 0.3, 0.4, 0.1]))  # rho = 1, 3, 0.25, 4
    torch.testing.assert_close(rl.truncated_is_weight(trainer, sampler, cap=2.0), torch.tensor([1.0, 2.0, 0.25, 2.0]))
    torch.testing.assert_close(rl.masked_is_weight(trainer, sampler, 0.5, 2.0), torch.tensor([1.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(rl.masked_is_weight(trainer, sampler, 0.2, 3.5), torch.tensor([1.0, 3.0, 0.25, 0.0]))


def test_tis_multiplies_each_tokens_loss():
    old = torch.log(torch.tensor([[0.9, 0.1]]))
    sampler = torch.log(torch.tensor([[0.3, 0.2]]))  # rho = 3 (capped at 2), 0.5
    logp = old.clone().requires_grad_()
    loss, m = grpo_loss(logp, old, None, torch.tensor([1.0]), torch.ones(1, 2),
                        GRPOConfig(is_correction="tis", is_cap=2.0, loss_agg="token_mean"),
                        sampler_logp=sampler)
    assert loss.item() == pytest.approx(-(2.0 + 0.5) / 2)
    assert m["offpolicy/frac_truncated"].item() == 0.5 and m["offpolicy/ratio_max_dev"].item() == pytest.approx(2.0)


def test_cispo_gradient_on_hand_values():
    # ratios 0.5, 1.0, 2.0 with eps_low 0.2, eps_high 0.28: weights 0.8, 1.0, 1.28 (stop-gradient)
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[0.5, 1.0, 2.0]])).requires_grad_()
    loss, ratio = rl.cispo_surrogate(logp, old, torch.tensor([[2.0]]), clip_low=0.2, clip_high=0.28)
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.6, -2.0, -2.56]]))  # -w * A: none is zero
    # PPO's clip zeroes the gradient of the clipped token (ratio 2 > 1.28 with A > 0)
    logp2 = logp.detach().clone().requires_grad_()
    ppo, _ = rl.clipped_surrogate(logp2, old, torch.tensor([[2.0]]), 0.2, 0.28)
    ppo.sum().backward()
    assert logp2.grad[0, 2] == 0 and logp2.grad[0, 0] != 0
    # through grpo_loss with the preset (token_mean over 3 tokens), A < 0 here
    logp3 = logp.detach().clone().requires_grad_()
    loss, m = grpo_loss(logp3, old, None, torch.tensor([-1.0]), torch.ones(1, 3), preset("cispo"))
    loss.backward()
    torch.testing.assert_close(logp3.grad, torch.tensor([[0.5, 1.0, 1.28]]) / 3)  # preset: eps_low 1 (no lower clip)


def test_overlong_filter_masks_truncated_samples():
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    ended = torch.tensor([False, True])  # the first hit the length limit without EOS
    torch.testing.assert_close(rl.overlong_filter_mask(mask, ended), torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
    assert preset("dapo").overlong_filter and not GRPOConfig().overlong_filter


def test_overlong_filter_in_the_loop_masks_every_cut_completion(tok):
    # a random model never ends within 6 tokens: with the filter, nothing reaches the loss
    for on in (True, False):
        model = tiny_model(tok)
        before = [p.detach().clone() for p in model.parameters()]
        cfg = GRPOConfig(steps=1, prompts_per_step=2, group_size=4, max_new_tokens=6, eval_every=0,
                         overlong_filter=on)
        log = train_grpo(model, tok, PROMPTS, [distinct_chars], cfg)
        moved = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert log.rows[-1]["completion/ended"] == 0.0
        assert moved != on
        assert ("frac_overlong_filtered" in log.rows[-1]) == on


def test_sampler_ratio_is_one_on_policy_and_not_with_another_temperature(tok):
    rows = {}
    for temp in (1.0, 0.7):  # the trainer's temperature is 1.0
        cfg = GRPOConfig(steps=1, prompts_per_step=2, group_size=4, max_new_tokens=8, eval_every=0,
                         sampler_temperature=temp, is_correction="tis")
        rows[temp] = train_grpo(tiny_model(tok), tok, PROMPTS, [distinct_chars], cfg).rows[-1]
    assert rows[1.0]["offpolicy/ratio_max_dev"] < 1e-5  # same weights, same temperature: rho = 1
    assert rows[0.7]["offpolicy/ratio_max_dev"] > 0.01
    assert rows[1.0]["policy/ratio_max_dev_first_update"] < 1e-5  # pi_old is the trainer either way


def test_stale_sampler_lags_by_staleness_steps(tok):
    cfg = GRPOConfig(steps=3, prompts_per_step=2, group_size=4, max_new_tokens=8, eval_every=0, staleness=1,
                     lr=1e-2, warmup_steps=0, is_correction="mis", mis_low=0.0, mis_high=1e9)
    log = train_grpo(tiny_model(tok), tok, PROMPTS, [distinct_chars], cfg)
    dev = [r["offpolicy/ratio_max_dev"] for r in log.rows if "loss" in r]
    assert dev[0] < 1e-5  # step 1: no older weights yet, the sampler is the policy
    assert dev[1] > 1e-3 and dev[2] > 1e-3  # then it samples with last step's weights


# ----------------------------------------------------------------------------------------------
# 5. pass@k advantages and rejection-sampling fine-tuning
# ----------------------------------------------------------------------------------------------


def test_pass_at_k_advantages_hand_values():
    correct = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]])
    A = rl.pass_at_k_advantages(correct, k=2, eps=0.0)
    # group 0: c = 1, pass@2 = 1 - C(3,2)/C(4,2) = 1/2; wrong sample value 1 - C(2,1)/C(3,1) = 1/3
    R, s = 0.5, 0.5
    torch.testing.assert_close(A[0], torch.tensor([(1 - R) / s] + [(1 / 3 - R) / s] * 3))
    assert pass_at_k(4, 1, 2) == pytest.approx(R)
    # group 1: c = 3 > G - k: pass@2 = 1 and every advantage 0 (a wrong sample is not pushed down)
    torch.testing.assert_close(A[1], torch.zeros(4))
    torch.testing.assert_close(A[2], torch.zeros(4))


def test_pass_at_k_values_average_to_pass_at_k_and_k1_is_grpo():
    correct = torch.tensor([[1, 0, 0, 1, 0, 0, 1, 0]])
    for k in (1, 2, 3, 5):
        A = rl.pass_at_k_advantages(correct, k, eps=0.0)
        assert A.sum().item() == pytest.approx(0.0, abs=1e-5)  # the values average to pass@k
    p = 3 / 8
    torch.testing.assert_close(rl.pass_at_k_advantages(correct, 1, eps=0.0),
                               (correct.float() - p) / math.sqrt(p * (1 - p)))
    # a wrong sample is pushed down less as k grows (exploration spared)
    wrong = [rl.pass_at_k_advantages(correct, k, eps=0.0)[0, 1].item() for k in (1, 2, 3)]
    right = [rl.pass_at_k_advantages(correct, k, eps=0.0)[0, 0].item() for k in (1, 2, 3)]
    assert all(w < 0 for w in wrong) and all(r > 0 for r in right)
    # zero sum fixes the ratio: A_wrong / A_right = -c / (G - c)
    assert all(w / r == pytest.approx(-3 / 5) for w, r in zip(wrong, right))
    assert wrong[0] < wrong[1] < wrong[2]  # here the push shrinks as pass@k saturates: 3/8, 0.64, 0.82
    with pytest.raises(ConfigError, match="--pass-k"):
        preset("pass_at_k", group_size=4).validate()


def test_select_correct_keeps_the_right_distinct_rows():
    prompts = ["a", "a", "a", "b", "b"]
    comps = ["x", "x", "y", "z", "w"]
    rewards = [1.0, 1.0, 1.0, 0.0, 1.0]
    assert select_correct(prompts, comps, rewards) == [{"prompt": "a", "completion": "x"},
                                                        {"prompt": "a", "completion": "y"},
                                                        {"prompt": "b", "completion": "w"}]
    assert len(select_correct(prompts, comps, rewards, dedup=False)) == 4
    assert select_correct(prompts, comps, rewards, max_per_prompt=1) == [{"prompt": "a", "completion": "x"},
                                                                          {"prompt": "b", "completion": "w"}]


def test_rft_budget_matches_grpo_and_trains(tok):
    assert RFTConfig().samples == GRPOConfig().steps * GRPOConfig().prompts_per_step * GRPOConfig().group_size
    cfg = budget_like(GRPOConfig(steps=2, prompts_per_step=3, group_size=4, max_new_tokens=8), iterations=2,
                      sft_steps=2, batch_size=4)
    assert (cfg.prompts_per_iteration, cfg.samples_per_prompt, cfg.samples) == (3, 4, 24)
    model = tiny_model(tok)
    before = [p.detach().clone() for p in model.parameters()]
    many_chars = lambda ps, cs: [float(len(set(c)) > 3) for c in cs]  # noqa: E731
    log = train_rft(model, tok, PROMPTS, many_chars, cfg, eval_fn=lambda m: {"dummy": 1.0})
    rounds = [r for r in log.rows if "kept" in r]
    assert [r["samples"] for r in rounds] == [12, 12] and all(0 < r["kept"] <= 12 for r in rounds)
    assert len(log.series("eval/dummy")) == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ----------------------------------------------------------------------------------------------
# 6. RAFT++: the positive-only policy gradient (item 6's demonstration, notebook 11 section 0b)
# ----------------------------------------------------------------------------------------------


def test_first_copies_marks_the_first_of_each_distinct_completion():
    c = torch.tensor([[[1, 2], [1, 2], [3, 4], [1, 2]],  # group 0: rows 1 and 3 repeat row 0
                      [[5, 6], [6, 5], [5, 6], [6, 5]]])  # group 1: rows 2 and 3 repeat rows 0 and 1
    assert rl.first_copies(c).tolist() == [[True, False, True, False], [True, True, False, False]]
    # the same completion in two different groups is a first copy in each
    assert rl.first_copies(torch.tensor([[[7, 7]], [[7, 7]]])).tolist() == [[True], [True]]


def test_positive_advantages_hand_values():
    correct = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0]]).bool()
    first = torch.tensor([[True, False, True, True], [True, True, True, True]])
    assert rl.positive_advantages(correct).tolist() == [[1, 1, 0, 1], [0, 0, 0, 0]]
    assert rl.positive_advantages(correct, first).tolist() == [[1, 0, 0, 1], [0, 0, 0, 0]]
    rewards = torch.tensor([[1.0, 1.0, 0.0, 1.0]])  # the binary reward: correct means > 0.5
    cfg = preset("raft_pp")
    assert compute_advantages(rewards, cfg, first[:1]).tolist() == [[1, 0, 0, 1]]
    assert compute_advantages(rewards, preset("raft_pp", positive_distinct=False), first[:1]).tolist() == [[1, 1, 0, 1]]
    assert cfg.beta == 0 and cfg.drop_zero_advantage and cfg.minibatch_size == 64


def test_positive_advantage_gradient_is_the_sft_gradient_on_the_accepted_rows():
    # at ratio 1 the clipped surrogate with A = 1 has the gradient of -log pi per token: SFT on the kept rows
    logp = torch.randn(3, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]).float()
    A = torch.tensor([1.0, 0.0, 1.0])
    loss, _ = grpo_loss(logp, logp.detach(), None, A, mask, preset("raft_pp", loss_agg="token_mean"))
    (g,) = torch.autograd.grad(loss, logp)
    expected = -(A[:, None] * mask) / mask.sum()  # d/dlogp of -sum(A logp mask) / #tokens
    torch.testing.assert_close(g, expected)


def test_raft_pp_trains_on_the_accepted_rows_in_minibatches(tok, monkeypatch):
    from minirlhf import grpo
    seen_adv, seen_rows = [], []
    real_adv, real_loss = grpo.compute_advantages, grpo.grpo_loss
    monkeypatch.setattr(grpo, "compute_advantages", lambda r, c, f=None: seen_adv.append(real_adv(r, c, f)) or seen_adv[-1])
    monkeypatch.setattr(grpo, "grpo_loss", lambda logp, *a, **k: seen_rows.append(logp.shape[0]) or real_loss(logp, *a, **k))
    parity = lambda ps, cs: [float(len(set(c)) % 2) for c in cs]  # noqa: E731  (about half the rows accepted)
    cfg = preset("raft_pp", steps=2, prompts_per_step=3, group_size=4, mu=3, minibatch_size=2, max_new_tokens=8,
                 eval_every=0, temperature=2.0)
    log = train_grpo(tiny_model(tok), tok, PROMPTS, parity, cfg)
    rows = [r for r in log.rows if "rows_trained" in r]
    assert [r["rows_trained"] for r in rows] == [int(a.sum()) for a in seen_adv]  # only A != 0 rows train
    assert all(0 < r["rows_trained"] < 12 for r in rows)  # some accepted, some not
    assert seen_rows == [min(2, r["rows_trained"]) for r in rows for _ in range(3)]  # mu minibatches of 2 rows
    assert all(r["policy/ratio_max_dev_first_update"] < 1e-5 for r in rows)


def test_raft_pp_with_nothing_accepted_leaves_the_weights(tok):
    model = tiny_model(tok)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = preset("raft_pp", steps=1, prompts_per_step=2, group_size=4, max_new_tokens=8, eval_every=0)
    log = train_grpo(model, tok, PROMPTS, lambda ps, cs: [0.0] * len(cs), cfg)
    assert log.rows[-1]["rows_trained"] == 0 and "loss" not in log.rows[-1]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
