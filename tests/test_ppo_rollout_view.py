"""ppo.token_view: the per-token KL penalty, value, advantage and ratio of one batch of experience."""

import copy

import pytest
import torch
from transformers import LlamaForCausalLM

from minirlhf.lm import token_logprobs
from minirlhf.models import ScalarHeadModel, tiny_llama_config
from minirlhf.ppo import PPOConfig, disable_dropout, make_experience, ppo_update, token_view
from minirlhf.rl import kl_k1

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def setup(tok):
    torch.manual_seed(3)
    policy = LlamaForCausalLM(tiny_llama_config(len(tok)))
    ref = copy.deepcopy(policy).eval()
    with torch.no_grad():  # the reference differs from the policy, so the KL penalty is not 0
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    value = ScalarHeadModel(copy.deepcopy(policy), head_init_std=0.1)
    for m in (policy, ref, value):
        disable_dropout(m)
    reward = lambda ps, cs: [float(len(c) % 5) for c in cs]  # noqa: E731
    return policy, ref, value, reward


def test_token_view_matches_the_experience_and_the_update(tok):
    policy, ref, value, reward = setup(tok)
    cfg = PPOConfig(batch_size=4, mini_batch_size=4, ppo_epochs=2, max_new_tokens=8, lr=1e-2)
    g = torch.Generator().manual_seed(0)
    exp = make_experience(policy, ref, value, reward, tok, ["the film was", "it is"] * 2, cfg, beta=0.2, generator=g)
    mask = exp["mask"]
    # on-policy: the ratio is exactly 1 on the completion, 0 outside
    v0 = token_view(policy, ref, exp, beta=0.2)
    torch.testing.assert_close(v0["ratio"], mask)
    # the KL penalty is -beta * k1 against the reference, and sums to -beta * objective/kl per completion
    k1 = kl_k1(exp["old_logp"], token_logprobs(ref, exp["input_ids"], exp["attention_mask"]))
    torch.testing.assert_close(v0["kl_penalty"], -0.2 * k1 * mask)
    torch.testing.assert_close(v0["kl_penalty"].sum(-1).mean(), -0.2 * exp["stats"]["objective/kl"])
    assert v0["kl_penalty"].abs().sum() > 0
    torch.testing.assert_close(v0["advantage"], exp["advantages"] * mask)
    torch.testing.assert_close(v0["value"], exp["old_values"])
    for k, t in v0.items():
        assert t.shape == mask.shape, k
        assert (t[mask == 0] == 0).all(), k
    # after an update the ratio moves off 1, and the other quantities (of the rollout) do not change
    opt = torch.optim.Adam(list(policy.parameters()) + list(value.parameters()), lr=cfg.lr)
    ppo_update(policy, value, opt, exp, cfg, g)
    v1 = token_view(policy, ref, exp, beta=0.2)
    assert ((v1["ratio"] - 1).abs() * mask).max() > 1e-3
    for k in ("kl_penalty", "value", "advantage"):
        torch.testing.assert_close(v1[k], v0[k])
