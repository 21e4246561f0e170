"""Issue 18, item 4: a sampler whose weights are the policy's rounded to bf16 / fp16 (`sampler_precision`),
as an inference engine holding low-precision weights while the trainer scores in fp32."""

import copy

import pytest
import torch

from minirlhf.errors import ConfigError
from minirlhf.grpo import GRPOConfig, load_sampler_weights, make_sampler, train_grpo
from minirlhf.zoo import new_tiny_model

PROMPTS = ["3 +4 *2\n", "5 -1\n", "7 *3 +2 -1\n", "0 +9\n", "2 *2 *2\n", "9 -9 +1\n"]
distinct_chars = lambda ps, cs: [float(len(set(c))) for c in cs]  # noqa: E731  (groups differ)


def tiny_model(tok, seed=0):
    torch.manual_seed(seed)
    return new_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def test_rounding_by_hand():
    # 1 + 2^-10 needs 11 significant bits: fp16 has them, bf16 (8 bits) rounds to 1; 1 + 2^-7 fits both
    lin = torch.nn.Linear(3, 1, bias=False)
    state = {"weight": torch.tensor([[1 + 2 ** -10, 1 + 2 ** -7, -3.0]])}
    load_sampler_weights(lin, state, "bfloat16")
    assert lin.weight.dtype == torch.float32
    assert lin.weight.tolist() == [[1.0, 1 + 2 ** -7, -3.0]]
    load_sampler_weights(lin, state, "float16")
    assert lin.weight.tolist() == [[1 + 2 ** -10, 1 + 2 ** -7, -3.0]]
    load_sampler_weights(lin, state, "float32")
    assert lin.weight.tolist() == state["weight"].tolist()


def test_sampler_is_a_rounded_copy_and_the_policy_is_untouched(tok):
    policy = tiny_model(tok)
    before = copy.deepcopy(policy.state_dict())
    assert make_sampler(policy, GRPOConfig())[0] is policy  # fp32, not stale: the policy samples itself
    sampler, _ = make_sampler(policy, GRPOConfig(sampler_precision="bfloat16"))
    assert sampler is not policy
    load_sampler_weights(sampler, policy.state_dict(), "bfloat16")
    moved = 0
    for name, w in policy.state_dict().items():
        assert torch.equal(w, before[name])  # rounding acts on the copy only
        s = sampler.state_dict()[name]
        if w.is_floating_point():
            assert torch.equal(s, w.to(torch.bfloat16).float())
            # round to nearest: relative error at most 2^-8 (bf16's unit roundoff)
            assert ((s - w).abs() <= 2 ** -8 * w.abs()).all()
            moved += int((s != w).sum())
    assert moved > 0.9 * sum(p.numel() for p in policy.parameters())  # random fp32 weights: almost all change


def test_ratio_is_one_in_fp32_and_not_with_rounded_weights(tok):
    dev = {}
    for precision in ("float32", "bfloat16", "float16"):
        # sampler_temperature = the trainer's: the sampler's log-probs are computed (and logged) in every case
        cfg = GRPOConfig(steps=1, prompts_per_step=2, group_size=4, max_new_tokens=8, eval_every=0,
                         sampler_temperature=1.0, sampler_precision=precision, is_correction="mis")
        row = train_grpo(tiny_model(tok), tok, PROMPTS, [distinct_chars], cfg).rows[-1]
        dev[precision] = row["offpolicy/ratio_max_dev"]
        assert row["policy/ratio_max_dev_first_update"] < 1e-6  # pi / pi_old: the trainer is fp32 throughout
        assert row["offpolicy/frac_masked"] == 0.0  # a rounding error moves rho by far less than MIS's band
    assert dev["float32"] == 0.0  # the same weights: pi_old / pi_sampler = 1 exactly
    assert 0 < dev["float16"] < dev["bfloat16"] < 0.5  # fp16 keeps 3 more bits than bf16


def test_stale_and_rounded_sampler_together(tok):
    # staleness 1 with bf16: step 1 samples with the rounded start weights, later steps with last step's
    cfg = GRPOConfig(steps=2, prompts_per_step=2, group_size=4, max_new_tokens=8, eval_every=0, staleness=1,
                     sampler_precision="bfloat16", lr=1e-2, warmup_steps=0)
    dev = [r["offpolicy/ratio_max_dev"] for r in train_grpo(tiny_model(tok), tok, PROMPTS, [distinct_chars],
                                                             cfg).rows if "loss" in r]
    assert 0 < dev[0] < 0.1 and dev[1] > dev[0]  # rounding only, then rounding + a step of lag at lr 1e-2


def test_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="--sampler-precision"):
        GRPOConfig(sampler_precision="int8").validate()
