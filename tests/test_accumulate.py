"""Micro-batching gives the full batch's gradient; LoRA's reference is the base; the KV-cache API samples the same."""

import copy
import warnings

import pytest
import torch

from minirlhf import accumulate
from minirlhf.dpo import DPOConfig, preference_logps, preference_loss, train_dpo
from minirlhf.data import encode_preference_batch
from minirlhf.grpo import GRPOConfig, grpo_loss
from minirlhf.lm import encode_pairs, encode_prompts, sample, token_logprobs
from minirlhf.sft import SFTConfig, train_sft

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["3 +4\n", "5 *2 -1\n", "1\n", "8 +8 +8 +1\n", "2 -7\n"]
COMPLETIONS = ["7\n#### 7", "0\n9\n#### 9", "1", "6\n4\n5\n#### 5", "5\n####"]  # lengths differ a lot


def grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def full_and_micro(model, loss_fn, mask, per_token, size=2):
    """(gradient of loss_fn on all rows, gradient accumulated over micro-batches of `size`)."""
    model.zero_grad()
    loss_fn(slice(0, mask.shape[0]))[0].backward()
    full = grads(model)
    model.zero_grad()
    accumulate.backward(loss_fn, mask, size, per_token=per_token)
    return full, grads(model)


def assert_same(a, b):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


def test_micro_batches_cover_the_rows_once():
    assert accumulate.micro_batches(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert accumulate.micro_batches(5, 0) == [slice(0, 5)] == accumulate.micro_batches(5, 8)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_grpo_loss_accumulates_to_the_full_batch_gradient(tok, tiny_model, agg):
    batch = encode_pairs(tok, PROMPTS, COMPLETIONS)
    ids, attn, mask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"].float()
    cfg = GRPOConfig(loss_agg=agg, beta=0.04)
    with torch.no_grad():
        old = token_logprobs(tiny_model, ids, attn) + 0.05 * torch.randn(ids.shape, generator=torch.Generator().manual_seed(0))
        ref = token_logprobs(tiny_model, ids, attn) - 0.1
    adv = torch.tensor([1.0, -0.5, 2.0, -1.0, 0.3])

    def loss_fn(mb):
        logp = token_logprobs(tiny_model, ids[mb], attn[mb])
        return grpo_loss(logp, old[mb], ref[mb], adv[mb], mask[mb], cfg)

    full, micro = full_and_micro(tiny_model, loss_fn, mask, per_token=agg == "token_mean")
    assert_same(full, micro)


def test_averaging_micro_batch_means_would_be_wrong_for_a_token_mean(tok, tiny_model):
    batch = encode_pairs(tok, PROMPTS, COMPLETIONS)
    ids, attn, mask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"].float()

    def loss_fn(mb):  # the SFT loss: a mean over the tokens of the rows given
        return -(token_logprobs(tiny_model, ids[mb], attn[mb]) * mask[mb]).sum() / mask[mb].sum(), {}

    full, weighted = full_and_micro(tiny_model, loss_fn, mask, per_token=True)
    assert_same(full, weighted)
    tiny_model.zero_grad()
    for mb in accumulate.micro_batches(5, 2):  # the shortcut: each micro-batch's mean / number of micro-batches
        (loss_fn(mb)[0] / 3).backward()
    assert not torch.allclose(full[0], tiny_model.embed_tokens.weight.grad if hasattr(tiny_model, "embed_tokens")
                              else next(tiny_model.parameters()).grad, rtol=1e-3)


def test_dpo_loss_accumulates_to_the_full_batch_gradient(tok, tiny_model):
    rows = [{"prompt": p, "chosen": c, "rejected": c[::-1] + "x"} for p, c in zip(PROMPTS, COMPLETIONS)]
    cfg = DPOConfig(rpo_alpha=0.5)
    with torch.no_grad():
        ref = preference_logps(tiny_model, encode_preference_batch(tok, rows))
    ref = {k: v - 0.2 for k, v in ref.items()}

    def loss_fn(mb):
        lp = preference_logps(tiny_model, encode_preference_batch(tok, rows[mb]))
        return preference_loss(cfg, lp, {k: v[mb] for k, v in ref.items()})

    full, micro = full_and_micro(tiny_model, loss_fn, torch.ones(len(rows), 1), per_token=False)
    assert_same(full, micro)


def params_after(train, model, micro):
    model = copy.deepcopy(model).train()
    train(model, micro)
    return [p.detach() for p in model.parameters()]


def test_trainers_take_the_same_step_with_micro_batches(tok, tiny_model):
    rows = [{"prompt": p, "completion": c} for p, c in zip(PROMPTS, COMPLETIONS)]
    sft = lambda m, micro: train_sft(m, tok, rows, SFTConfig(steps=1, batch_size=5, micro_batch_size=micro,  # noqa: E731
                                                              warmup_steps=1))
    assert_same(params_after(sft, tiny_model, 0), params_after(sft, tiny_model, 2))
    prefs = [{"prompt": p, "chosen": c, "rejected": c[::-1] + "x"} for p, c in zip(PROMPTS, COMPLETIONS)]
    dpo = lambda m, micro: train_dpo(m, tok, prefs, DPOConfig(steps=1, batch_size=5, micro_batch_size=micro,  # noqa: E731
                                                               lr=1e-3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_same(params_after(dpo, tiny_model, 0), params_after(dpo, tiny_model, 2))


def test_lora_reference_is_the_base_and_leaves_the_adapters_trainable(tok, tiny_model):
    from minirlhf.scaling import AdapterDisabledReference, ScaleOptions, prepare_policy, trainable_parameters

    base = copy.deepcopy(tiny_model)
    policy = prepare_policy(copy.deepcopy(tiny_model), ScaleOptions(lora_r=4, lora_target_modules="q_proj,v_proj"))
    ref = AdapterDisabledReference(policy)
    ref.eval().requires_grad_(False)  # what the trainers do to a reference
    assert trainable_parameters(policy) == 2 * 2 * 4 * (32 + 32)  # 2 layers x (q, v) x r (d_in + d_out), hidden 32
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.add_(0.5)  # the adapters have learned something
    batch = encode_pairs(tok, PROMPTS, COMPLETIONS)
    args = batch["input_ids"], batch["attention_mask"]
    torch.testing.assert_close(token_logprobs(ref, *args), token_logprobs(base, *args))
    assert not torch.allclose(token_logprobs(policy, *args), token_logprobs(base, *args))
    policy.train()
    token_logprobs(ref, *args)
    assert policy.training  # the reference pass runs in eval mode and puts the policy back


def naive_greedy(model, ids, mask, steps):
    """Greedy decoding by recomputing the whole sequence every step (no cache): the specification."""
    from minirlhf.models import position_ids_from_mask

    for _ in range(steps):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return ids


def test_sampling_with_the_cache_api_matches_recomputation_and_does_not_warn(tok, tiny_model):
    ids, mask = encode_prompts(tok, PROMPTS)
    eos = -1  # never emitted: every row runs all steps
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers' "past_key_values is deprecated"
        ro = sample(tiny_model, ids, mask, 6, eos, tok.pad_token_id, temperature=0)
        a = sample(tiny_model, ids, mask, 6, eos, tok.pad_token_id, 1.0, generator=torch.Generator().manual_seed(1))
        b = sample(tiny_model, ids, mask, 6, eos, tok.pad_token_id, 1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ro.input_ids, naive_greedy(tiny_model, ids, mask, 6))
    assert torch.equal(a.input_ids, b.input_ids)  # a fixed seed, the same tokens
