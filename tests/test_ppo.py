"""PPO: GAE against brute force, the clipped surrogate by hand, on-policy ratio = 1, masked
whitening, where the KL penalty and the score land, the KL controllers, and a tiny end-to-end run."""

import copy
import math

import pytest
import torch
from transformers import LlamaForCausalLM

from minirlhf.lm import token_logprobs
from minirlhf.models import ScalarHeadModel, tiny_llama_config
from minirlhf.ppo import (AdaptiveKLController, FixedKLController, PPOConfig, approx_kl, disable_dropout,
                          make_experience, per_token_rewards, ppo_update, rollout_batch, token_values, train_ppo)
from minirlhf.rl import clipped_surrogate, discounted_returns, gae, masked_mean, masked_var, masked_whiten

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


PROMPTS = ["the film was", "it is", "the plot felt", "the music was"] * 2


def ragged_mask():
    """Completions of different lengths at different offsets (prompt left-padded, completion right-padded)."""
    m = torch.zeros(4, 9)
    m[0, 2:9] = 1  # runs to the end of the tensor
    m[1, 3:5] = 1
    m[2, 4:5] = 1  # a single token
    m[3, 1:7] = 1
    return m


def brute_force_gae(r, v, m, gamma, lam):
    """A_t = sum_l (gamma*lam)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t, V = 0 after the end."""
    B, T = r.shape
    A = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        steps = [t for t in range(T) if m[b, t]]
        val = {t: v[b, t].item() for t in steps}
        delta = {t: r[b, t].item() + gamma * val.get(t + 1, 0.0) - val[t] for t in steps}
        for t in steps:
            A[b, t] = sum((gamma * lam) ** (s - t) * delta[s] for s in steps if s >= t)
    return A


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.7), (0.99, 0.0)])
def test_gae_equals_brute_force_sum_on_ragged_masks(gamma, lam):
    g = torch.Generator().manual_seed(0)
    m = ragged_mask()
    r = torch.randn(4, 9, generator=g, dtype=torch.float64)
    v = torch.randn(4, 9, generator=g, dtype=torch.float64)
    adv, ret = gae(r * m, v * m, m, gamma, lam)
    expected = brute_force_gae(r, v, m, gamma, lam)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, (expected + v) * m)
    # garbage outside the mask must not change anything
    adv2, _ = gae(torch.where(m.bool(), r, 1e6), torch.where(m.bool(), v, -1e6), m, gamma, lam)
    torch.testing.assert_close(adv2, expected)


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_gae_with_lambda_one_is_discounted_returns_minus_values(gamma):
    g = torch.Generator().manual_seed(1)
    m = ragged_mask()
    r = torch.randn(4, 9, generator=g, dtype=torch.float64) * m
    v = torch.randn(4, 9, generator=g, dtype=torch.float64) * m
    adv, ret = gae(r, v, m, gamma, lam=1.0)
    torch.testing.assert_close(adv, (discounted_returns(r, m, gamma) - v) * m)
    torch.testing.assert_close(ret, discounted_returns(r, m, gamma))


def test_clipped_surrogate_values_and_gradients_by_hand():
    # (ratio, A) -> (loss, d loss / d logp) with eps = 0.2; loss = max(-A r, -A clip(r, 0.8, 1.2))
    cases = [(1.5, 1.0, -1.2, 0.0),    # A > 0, ratio above 1+eps: clipped, no gradient
             (0.5, 1.0, -0.5, -0.5),   # A > 0, ratio below: unclipped term wins, grad = -A r
             (1.5, -1.0, 1.5, 1.5),    # A < 0, ratio above: unclipped (pessimistic) term wins
             (0.5, -1.0, 0.8, 0.0),    # A < 0, ratio below 1-eps: clipped, no gradient
             (1.0, 2.0, -2.0, -2.0)]   # on-policy: loss -A, grad -A
    ratio = torch.tensor([c[0] for c in cases], dtype=torch.float64)
    adv = torch.tensor([c[1] for c in cases], dtype=torch.float64)
    old_logp = torch.full_like(ratio, -1.3)
    logp = (old_logp + ratio.log()).requires_grad_(True)
    loss, r = clipped_surrogate(logp, old_logp, adv, 0.2)
    loss.sum().backward()
    torch.testing.assert_close(r, ratio.detach())
    torch.testing.assert_close(loss.detach(), torch.tensor([c[2] for c in cases], dtype=torch.float64))
    torch.testing.assert_close(logp.grad, torch.tensor([c[3] for c in cases], dtype=torch.float64))


def test_masked_whiten_leaves_padding_alone_and_standardises_the_mask():
    m = ragged_mask()
    x = torch.randn(4, 9, generator=torch.Generator().manual_seed(2)) * 3 + 5
    w = masked_whiten(torch.where(m.bool(), x, float("nan")), m)  # NaN in padding must not leak
    assert torch.isfinite(w).all() and (w[~m.bool()] == 0).all()
    assert abs(masked_mean(w, m).item()) < 1e-6
    assert abs(masked_var(w, m).item() - 1.0) < 1e-5
    torch.testing.assert_close(w, masked_whiten(torch.where(m.bool(), x, 1e9), m))
    # shift_mean=False (reward whitening, as lm-human-preferences): std 1, the mean is kept
    w2 = masked_whiten(x, m, shift_mean=False)
    torch.testing.assert_close(masked_mean(w2, m), masked_mean(x, m))
    assert abs(masked_var(w2, m).item() - 1.0) < 1e-5


def test_kl_penalty_lands_on_completion_tokens_and_score_on_the_last_one():
    # columns: 0-1 prompt, 2.. completion; row 0 ended with EOS at column 4, row 1 was truncated
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]], dtype=torch.float)
    logp = torch.tensor([[0.0, -1.0, -0.5, -1.0, -0.2, -9.0], [0.0, -2.0, -0.1, -0.3, -0.7, -0.4]])
    ref = torch.tensor([[0.0, -3.0, -1.5, -0.5, -0.2, -1.0], [0.0, -1.0, -0.6, -0.3, -0.2, -0.9]])
    scores, ended = torch.tensor([2.0, 3.0]), torch.tensor([True, False])
    rewards, kl = per_token_rewards(scores, logp, ref, mask, beta=0.1, ended=ended, missing_eos_penalty=-1.0)
    expected = torch.tensor([[0, 0, -0.1 * 1.0, -0.1 * -0.5, 0.0 + 2.0, 0],  # prompt/padding get nothing
                             [0, 0, -0.1 * 0.5, 0.0, -0.1 * -0.5, -0.1 * 0.5 - 1.0]])  # penalty, not 3.0
    torch.testing.assert_close(rewards, expected)
    torch.testing.assert_close(kl, (logp - ref) * mask)
    # without the penalty the truncated row keeps its score
    rewards_np, _ = per_token_rewards(scores, logp, ref, mask, beta=0.1, ended=ended, missing_eos_penalty=None)
    assert math.isclose(rewards_np[1, 5].item(), -0.05 + 3.0, abs_tol=1e-6)


def test_kl_controllers():
    fixed = FixedKLController(0.1)
    fixed.update(100.0, 64)
    assert fixed.value == 0.1
    ctl = AdaptiveKLController(0.1, target=4.0, horizon=1000)
    ctl.update(8.0, 100)  # error = clip(8/4 - 1, -0.2, 0.2) = 0.2
    assert math.isclose(ctl.value, 0.1 * (1 + 0.2 * 100 / 1000))
    ctl.update(3.0, 100)  # error = -0.25 -> -0.2
    assert math.isclose(ctl.value, 0.1 * 1.02 * 0.98)
    ctl.update(4.0, 100)  # on target: unchanged
    assert math.isclose(ctl.value, 0.1 * 1.02 * 0.98)


def test_approx_kl_is_half_mean_squared_log_ratio():
    m = torch.tensor([[1.0, 1.0, 0.0]])
    assert math.isclose(approx_kl(torch.tensor([[-1.0, -2.0, 5.0]]), torch.tensor([[-1.5, -1.0, 0.0]]), m).item(),
                        0.5 * (0.25 + 1.0) / 2)


def test_value_of_token_t_is_read_before_it(tiny_model):
    vm = ScalarHeadModel(tiny_model)
    ids = torch.tensor([[5, 6, 7, 8]])
    attn = torch.ones_like(ids)
    full = vm(ids, attn)
    v = token_values(vm, ids, attn)
    torch.testing.assert_close(v[:, 1:], full[:, :-1])
    assert v[0, 0] == 0


def dropout_model(tok, seed=0):
    torch.manual_seed(seed)
    cfg = tiny_llama_config(len(tok), hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id, attention_dropout=0.5)
    return LlamaForCausalLM(cfg)


def test_dropout_off_makes_two_forward_passes_agree(tok):
    model = dropout_model(tok).train()
    ids = torch.randint(3, 60, (2, 12))
    attn = torch.ones_like(ids)
    assert not torch.allclose(token_logprobs(model, ids, attn), token_logprobs(model, ids, attn))
    disable_dropout(model)
    torch.testing.assert_close(token_logprobs(model, ids, attn), token_logprobs(model, ids, attn))


def test_sampling_and_logprobs_use_the_same_temperature(tok, tiny_model):
    with torch.no_grad():
        tiny_model.lm_head.weight.mul_(5.0)  # tied embeddings: T=0.5 and T=1 now differ (TV 0.44)
    cfg = PPOConfig(max_new_tokens=1, temperature=0.5)
    ro = rollout_batch(tiny_model, tok, ["the film was"] * 2000, cfg, torch.Generator().manual_seed(0))
    first = ro.completion_ids[:, 0]
    emp = torch.bincount(first, minlength=len(tok)).float() / len(first)
    ids = torch.cat([ro.input_ids[:1, :-1].expand(len(tok), -1), torch.arange(len(tok))[:, None]], 1)
    probs = {}
    for t in (0.5, 1.0):
        lp = token_logprobs(tiny_model, ids, torch.ones_like(ids), temperature=t)[:, -1]  # (V,)
        probs[t] = lp.exp()
    tv = {t: 0.5 * (emp - p).abs().sum().item() for t, p in probs.items()}
    assert tv[0.5] < 0.12 and tv[1.0] > 0.3, tv  # sampling noise at n=2000 is ~0.05


def tiny_rl_setup(tok):
    policy = dropout_model(tok, seed=1)
    ref = copy.deepcopy(policy).eval()
    value = ScalarHeadModel(copy.deepcopy(policy), head_init_std=0.0)
    for m in (policy, ref, value):
        disable_dropout(m)
    # fraction of lowercase letters in the completion: about 0.25 for a random model, dense signal
    reward = lambda ps, cs: [sum(ch.islower() for ch in c) / max(1, len(c)) for c in cs]  # noqa: E731
    return policy, ref, value, reward


def test_ratio_is_one_and_approx_kl_zero_on_the_first_minibatch(tok):
    policy, ref, value, reward = tiny_rl_setup(tok)
    cfg = PPOConfig(batch_size=8, mini_batch_size=4, ppo_epochs=2, max_new_tokens=12, lr=1e-2, temperature=0.8)
    g = torch.Generator().manual_seed(0)
    exp = make_experience(policy, ref, value, reward, tok, PROMPTS, cfg, beta=0.1, generator=g)
    assert exp["stats"]["objective/kl"].abs() < 1e-5  # policy == reference at the start
    opt = torch.optim.Adam(list(policy.parameters()) + list(value.parameters()), lr=cfg.lr, eps=cfg.adam_eps)
    stats = ppo_update(policy, value, opt, exp, cfg, g)
    assert len(stats) == cfg.ppo_epochs * cfg.batch_size // cfg.mini_batch_size
    first, last = stats[0], stats[-1]
    assert first["policy/ratio_max_dev"] < 1e-5 and first["policy/approxkl"] < 1e-10
    assert first["policy/clipfrac"] == 0.0 and first["val/clipfrac"] == 0.0
    # later minibatches are off-policy: the check above can fail
    assert last["policy/approxkl"] > 1e-6 and last["policy/ratio_max_dev"] > 1e-4


def test_nan_reward_raises_before_any_update(tok):
    policy, ref, value, _ = tiny_rl_setup(tok)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    cfg = PPOConfig(steps=1, batch_size=8, mini_batch_size=4, max_new_tokens=6, normalize_scores=False)
    with pytest.raises(FloatingPointError, match="reward"):
        train_ppo(policy, tok, PROMPTS, lambda p, c: [float("nan")] * len(c), cfg, ref_model=ref, value_model=value)
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())
    with pytest.raises(ValueError, match="requires_grad"):  # a frozen policy would silently never move
        train_ppo(copy.deepcopy(ref).requires_grad_(False), tok, PROMPTS, lambda p, c: [0.0] * len(c), cfg)
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        train_ppo(policy, tok, ["ok", ""], lambda p, c: [0.0] * len(c), cfg)


def test_train_ppo_end_to_end_raises_a_simple_reward(tok):
    policy, ref, _, reward = tiny_rl_setup(tok)
    cfg = PPOConfig(steps=12, batch_size=16, mini_batch_size=8, ppo_epochs=2, max_new_tokens=8, lr=1e-2,
                    beta=0.01, norm_samples=32, eval_every=6, adaptive_kl=True, target_kl=1.0, kl_horizon=100,
                    missing_eos_penalty=None)  # a random model almost never emits EOS
    log, out = train_ppo(policy, tok, PROMPTS, reward, cfg, ref_model=ref, gold_fn=reward, eval_prompts=PROMPTS)
    assert out is policy
    train_rows = [r for r in log.rows if "policy/approxkl" in r]
    assert len(train_rows) == cfg.steps
    for key in ("objective/kl", "objective/scores", "objective/gold", "policy/approxkl", "policy/clipfrac",
                "policy/entropy", "val/explained_var", "val/clipfrac", "returns/mean", "returns/std",
                "advantages/mean", "advantages/std", "objective/kl_coef"):
        assert all(math.isfinite(r[key]) for r in train_rows), key
    scores = log.series("objective/scores")
    assert sum(scores[-2:]) / 2 > sum(scores[:2]) / 2 + 0.15, scores  # +0.28..+0.41 over seeds 0-3
    betas = log.series("objective/kl_coef")
    assert betas[0] == cfg.beta and betas[-1] != cfg.beta  # the adaptive controller moved
    assert len(log.series("eval/gold")) == 3  # before training, after step 6 and after step 12


def test_clipped_value_loss_on_hand_values():
    """V_clip = V_old + clip(V - V_old, -0.2, 0.2); loss = 1/2 mean max((V-R)^2, (V_clip-R)^2) over the mask.
    Step 0: V moved by exactly the clip: both terms 0.25. Step 1: the unclipped term is larger (1.0 vs 0.04).
    Step 2: the clipped term wins (V_clip = 1.2, R = 3: 3.24 vs 1.0). Step 3 is masked out (it would add 81)."""
    from minirlhf.rl import clipped_value_loss

    values = torch.tensor([[1.0, 2.0, 2.0, 9.0]])
    old = torch.tensor([[0.8, 1.0, 1.0, 0.0]])
    returns = torch.tensor([[1.5, 1.0, 3.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, clipfrac = clipped_value_loss(values, old, returns, mask, clip=0.2)
    assert math.isclose(loss.item(), 0.5 * (0.25 + 1.0 + 3.24) / 3, rel_tol=1e-6)
    assert math.isclose(clipfrac.item(), 1 / 3, rel_tol=1e-6)
    # with a clip wide enough to never bind, it is plain 1/2 MSE
    loss_wide, frac_wide = clipped_value_loss(values, old, returns, mask, clip=100.0)
    assert math.isclose(loss_wide.item(), 0.5 * (0.25 + 1.0 + 1.0) / 3, rel_tol=1e-6) and frac_wide.item() == 0.0


def test_explained_variance_on_hand_values():
    """returns 1,2,3,4 and values 1,2,3,3: Var[R - V] = 0.25, Var[R] = 5/3 (unbiased), EV = 1 - 0.15 = 0.85."""
    from minirlhf.rl import explained_variance

    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0, 50.0]])
    values = torch.tensor([[1.0, 2.0, 3.0, 3.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])  # the last step is masked out
    assert math.isclose(explained_variance(values, returns, mask).item(), 0.85, rel_tol=1e-6)
    assert math.isclose(explained_variance(returns, returns, mask).item(), 1.0, abs_tol=1e-6)
    assert explained_variance(torch.full_like(returns, 2.5), returns, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_ppo_loss_is_policy_loss_plus_vf_coef_times_value_loss(tok):
    """ppo_loss on-policy (old log-probs = current, old values = current): ratio 1, so the policy loss is
    -mean(A) over completion tokens, the value clip cannot bind, and the total is pg + vf_coef * 1/2 MSE."""
    from minirlhf.ppo import ppo_loss

    policy, ref, value, reward = tiny_rl_setup(tok)
    torch.nn.init.normal_(value.head.weight, std=0.5)  # values away from 0, so the value loss is not trivial
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 10, 11, 0]])
    attn = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 1, 1, 0]], dtype=torch.float)
    with torch.no_grad():
        logp = token_logprobs(policy, ids, attn)
        v = token_values(value, ids, attn)
    adv = torch.tensor([[0.0, 0.0, 1.0, -2.0, 0.5], [0.0, 0.0, 3.0, 1.0, 0.0]])
    returns = torch.tensor([[0.0, 0.0, 1.0, 0.0, 2.0], [0.0, 0.0, -1.0, 0.5, 0.0]])
    mb = {"input_ids": ids, "attention_mask": attn, "mask": mask, "old_logp": logp, "advantages": adv,
          "old_values": v, "returns": returns}
    pg_expected = -(1.0 - 2.0 + 0.5 + 3.0 + 1.0) / 5
    vf_expected = 0.5 * (((v - returns) ** 2) * mask).sum().item() / 5
    for vf_coef in (0.1, 1.0):
        loss, stats = ppo_loss(policy, value, mb, PPOConfig(vf_coef=vf_coef))
        assert math.isclose(stats["loss/policy"].item(), pg_expected, rel_tol=1e-5)
        assert math.isclose(stats["loss/value"].item(), vf_expected, rel_tol=1e-5)
        assert math.isclose(loss.item(), pg_expected + vf_coef * vf_expected, rel_tol=1e-5)
        assert stats["val/clipfrac"].item() == 0.0 and stats["policy/ratio_max_dev"].item() < 1e-6
