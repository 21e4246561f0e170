"""Tests for the per-step shortcuts of the trainers (benchmarks/bench_steps.py measures them):
each one must give the numbers of the long way round."""

import pytest
import torch

from minirlhf import accumulate, grpo
from minirlhf.grpo import preset, train_grpo
from minirlhf.zoo import new_tiny_model

PROMPTS = ["3 +4 *2\n", "5 -1\n", "7 *3 +2 -1\n", "0 +9\n"]


def tiny_model(tok, seed=0):
    torch.manual_seed(seed)
    return new_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def distinct_chars(prompts, completions):  # groups differ, so every advantage is not 0
    return [float(len(set(c))) for c in completions]


def count_chunked_passes(monkeypatch) -> list[int]:
    """Count the no-gradient log-prob passes train_grpo makes (old policy, reference, sampler)."""
    calls, original = [], accumulate.logprobs_in_chunks

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(accumulate, "logprobs_in_chunks", counting)
    return calls


@pytest.mark.parametrize("overrides, passes_per_step", [
    (dict(mu=1, beta=0.0), 0),  # the shortcut: no pass at all
    (dict(mu=1, beta=0.04), 1),  # the reference only
    (dict(mu=2, beta=0.0), 1),  # mu > 1: the later update needs pi_old
    (dict(mu=1, beta=0.04, kl_placement="reward", kl_estimator="k1"), 2),  # the KL enters the advantages
])
def test_old_logprob_pass_only_when_needed(tok, monkeypatch, overrides, passes_per_step):
    calls = count_chunked_passes(monkeypatch)
    cfg = preset("grpo", steps=2, prompts_per_step=2, group_size=4, max_new_tokens=8, eval_every=0, **overrides)
    assert grpo.old_logp_pass_needed(cfg) == (cfg.mu > 1 or cfg.kl_placement == "reward")
    train_grpo(tiny_model(tok), tok, PROMPTS, distinct_chars, cfg)
    assert len(calls) == 2 * passes_per_step


@pytest.mark.parametrize("variant, micro_batch_size", [("grpo", 0), ("grpo", 3), ("dapo", 0), ("gspo", 0)])
def test_mu1_shortcut_gives_the_loss_and_weights_of_the_full_path(tok, monkeypatch, variant, micro_batch_size):
    # the same run twice from the same weights: with the shortcut (old_logp = this update's logp,
    # detached), then forced through the separate no-gradient pass of pi_old
    cfg = preset(variant, steps=3, prompts_per_step=2, group_size=4, mu=1, max_new_tokens=10, lr=1e-2,
                 eval_every=0, micro_batch_size=micro_batch_size, overlong_filter=False)
    runs = []
    for force_pass in (False, True):
        if force_pass:
            monkeypatch.setattr(grpo, "old_logp_pass_needed", lambda cfg: True)
        model = tiny_model(tok)
        log = train_grpo(model, tok, PROMPTS, distinct_chars, cfg)
        runs.append((log.rows, [p.detach().clone() for p in model.parameters()]))
    (rows_a, weights_a), (rows_b, weights_b) = runs
    start = [p.detach() for p in tiny_model(tok).parameters()]
    assert any(not torch.equal(w, s) for w, s in zip(weights_a, start))  # it trained
    for a, b in zip(rows_a, rows_b):
        for key in ("loss", "grad_norm", "policy/ratio_max_dev_first_update", "reward/mean"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (key, a["step"])
    for wa, wb in zip(weights_a, weights_b):
        torch.testing.assert_close(wa, wb, rtol=1e-5, atol=1e-7)
    assert rows_a[0]["policy/ratio_max_dev_first_update"] == 0.0  # exactly on-policy


def test_mu1_shortcut_gradient_equals_the_separate_old_pass(tok):
    # the identity the shortcut rests on, at the loss: the ratio's value is 1 either way and its
    # gradient is grad log pi; a shortcut that forgot the detach would have no policy gradient at all
    from minirlhf.lm import token_logprobs

    model = tiny_model(tok)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, len(tok), (6, 12), generator=g)
    attn = torch.ones_like(ids)
    mask = torch.zeros(6, 12)
    mask[:, 5:] = 1
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
    cfg = preset("grpo", beta=0.0)
    grads = []
    for old_kind in ("pass", "detach", "no_detach"):
        model.zero_grad()
        with torch.no_grad():
            old_pass = token_logprobs(model.eval(), ids, attn)
        logp = token_logprobs(model.train(), ids, attn)
        old = {"pass": old_pass, "detach": logp.detach(), "no_detach": logp}[old_kind]
        loss, _ = grpo.grpo_loss(logp, old, None, adv, mask, cfg)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-8)
    assert grads[0].abs().max() > 1e-4 and grads[2].abs().max() == 0  # the test can tell them apart
