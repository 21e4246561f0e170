"""Tests for running each distinct prompt once (`lm.lm_logits`, `lm.sample`'s prefill): the rows that
repeat a prompt (GRPO's G completions, DPO's chosen and rejected) must get the numbers of one pass per row."""

import contextlib

import pytest
import torch

from minirlhf import lm
from minirlhf.dpo import DPOConfig, train_dpo
from minirlhf.grpo import preset, train_grpo
from minirlhf.lm import first_completion_column, sample, shared_prompts, token_logprobs
from minirlhf.zoo import new_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(tok, seed=0):
    torch.manual_seed(seed)
    return new_tiny_model(tok, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def no_sharing(monkeypatch):
    """Force the plain path: one forward pass over every row."""
    monkeypatch.setattr(lm, "prompt_sharing_applies", lambda model, prompt_mask: False)


@contextlib.contextmanager
def rows_through_model(model, layer=None):
    """Yields a list that collects the (rows, columns) of every forward pass, seen at the embedding layer
    (or at the input of `layer`: the LM head's shows how many positions' logits were computed)."""
    shapes = []
    layer = layer if layer is not None else model.get_input_embeddings()
    hook = layer.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape[:2])))
    try:
        yield shapes
    finally:
        hook.remove()


def assert_same_training(weights_a, weights_b, start_model):
    """The two runs moved the weights the same way: their distance is under 1e-4 of the distance
    travelled. (Not element by element: Adam's first step is about lr * sign(g), so a gradient
    element at 1e-9, rounded another way, can move its weight differently; the sums cannot.)"""
    start = [p.detach() for p in start_model.parameters()]
    travelled = sum(((w - s) ** 2).sum() for w, s in zip(weights_a, start)).sqrt()
    apart = sum(((wa - wb) ** 2).sum() for wa, wb in zip(weights_a, weights_b)).sqrt()
    assert travelled > 1e-2  # it trained
    assert apart < 1e-4 * travelled, (apart.item(), travelled.item())


def repeated_prompt_batch(tok, seed=0):
    """8 rows, prompt columns 0..5 and completion columns 6..12. Rows 0-2 share prompt A (left-padded by 2),
    rows 3 and 6 share prompt B, rows 4, 5, 7 have prompt C: three distinct prompts, not in order.
    Completions of different lengths (right padding)."""
    g = torch.Generator().manual_seed(seed)
    P, L, pad = 6, 7, tok.pad_token_id
    prompts = torch.randint(5, len(tok), (3, P), generator=g)
    prompt_mask = torch.ones(3, P, dtype=torch.long)
    prompts[0, :2], prompt_mask[0, :2] = pad, 0
    which = torch.tensor([0, 0, 0, 1, 2, 2, 1, 2])
    comp = torch.randint(5, len(tok), (8, L), generator=g)
    comp_mask = torch.ones(8, L, dtype=torch.long)
    for row, length in [(1, 3), (4, 5), (7, 1)]:
        comp[row, length:], comp_mask[row, length:] = pad, 0
    ids = torch.cat([prompts[which], comp], 1)
    attn = torch.cat([prompt_mask[which], comp_mask], 1)
    return ids, attn, torch.cat([torch.zeros_like(prompt_mask[which]), comp_mask], 1), P


def test_shared_prompts_finds_the_distinct_prompts():
    ids = torch.tensor([[0, 7, 8, 1], [0, 7, 8, 2], [7, 7, 8, 3], [0, 7, 8, 4]])
    attn = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]])  # row 3: same tokens, no padding
    prompt_ids, prompt_mask, index = shared_prompts(ids, attn, 3)
    assert len(prompt_ids) == 3  # rows 0 and 1 share; row 3 has row 0's tokens but another mask: distinct
    assert index[0] == index[1] and len({index[0].item(), index[2].item(), index[3].item()}) == 3
    for i in range(4):  # every row gets back its own prompt, mask included
        assert torch.equal(prompt_ids[index[i]], ids[i, :3]) and torch.equal(prompt_mask[index[i]], attn[i, :3])


def test_first_completion_column():
    mask = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 1, 0]])
    assert first_completion_column(mask) == 3


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_entropy_and_gradients_equal_the_one_pass(tok, temperature):
    ids, attn, _, P = repeated_prompt_batch(tok)
    model = tiny_model(tok).train()
    # every completion position gets a different gradient; the prompt tokens none (what the methods train)
    weights = torch.linspace(-1, 1, ids.shape[1]) * (torch.arange(ids.shape[1]) >= P)
    results = []
    for prompt_length in (None, P):
        model.zero_grad()
        with rows_through_model(model) as shapes, rows_through_model(model, model.lm_head) as head_shapes:
            logp, entropy = token_logprobs(model, ids, attn, temperature, with_entropy=True,
                                           prompt_length=prompt_length)
        ((logp * weights).sum() + 0.3 * (entropy * weights).sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results.append((logp.detach(), entropy.detach(), grads, shapes, head_shapes))
    (logp_a, ent_a, grad_a, shapes_a, head_a), (logp_b, ent_b, grad_b, shapes_b, head_b) = results
    assert shapes_a == [(8, 12)]  # one pass over every row (the last token predicts nothing: not fed)
    assert head_a == [(8, 12)]  # without prompt_length: logits at every position fed
    assert shapes_b == [(3, 6), (8, 6)]  # each of the 3 prompts once, then the completions
    assert head_b == [(3, 1), (8, 6)]  # only the last prompt position (it predicts completion token 0)
    assert (logp_a[:, 1:P] != 0).sum() > 10 and (logp_a[:, P:] != 0).sum() > 30  # prompt and completion
    assert torch.all(logp_b[:, :P] == 0) and torch.all(ent_b[:, :P] == 0)  # with P: prompt tokens unscored
    torch.testing.assert_close(logp_b[:, P:], logp_a[:, P:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ent_b[:, P:], ent_a[:, P:], rtol=1e-5, atol=1e-6)
    assert grad_a.abs().max() > 1e-2
    # summed in another order: rounding of 1e-7 relative to the largest gradient, not of each element
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-4, atol=1e-5 * grad_a.abs().max().item())


@pytest.mark.parametrize("prompt_length", [None, 6])
def test_logprobs_equal_log_softmax_of_the_full_forward_pass(tok, prompt_length):
    # the definition, spelled out: every token fed, log_softmax, the next token's entry; padding 0
    ids, attn, _, P = repeated_prompt_batch(tok)
    model = tiny_model(tok)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).logits
        expected = torch.log_softmax(logits[:, :-1] / 0.7, -1).gather(-1, ids[:, 1:, None])[..., 0]
        expected = expected * attn[:, :-1] * attn[:, 1:]
        got = token_logprobs(model, ids, attn, temperature=0.7, prompt_length=prompt_length)
    if prompt_length is not None:  # only the completion tokens are scored
        expected[:, :prompt_length - 1] = 0
    assert torch.all(got[:, 0] == 0) and torch.all(got[attn == 0] == 0)
    torch.testing.assert_close(got[:, 1:], expected, rtol=1e-5, atol=1e-5)
    one = token_logprobs(model, ids[:, :1], attn[:, :1])  # a lone token: nothing to score
    assert one.shape == (8, 1) and torch.all(one == 0)


def test_no_repeated_prompt_and_no_prompt_length_take_one_pass(tok):
    ids, attn, _, P = repeated_prompt_batch(tok)
    model = tiny_model(tok)
    distinct = [0, 3, 4]  # one row of each prompt
    with rows_through_model(model) as shapes, rows_through_model(model, model.lm_head) as head_shapes:
        plain = token_logprobs(model, ids[distinct], attn[distinct], prompt_length=P)
        full = token_logprobs(model, ids, attn)  # no prompt_length: nothing known about the layout
        token_logprobs(model, ids, attn, prompt_length=ids.shape[1])  # no completion columns
    assert shapes == [(3, 12), (8, 12), (8, 12)]
    # one pass, but the logits of positions P-1 .. 11 only (they predict the completion tokens)
    assert head_shapes == [(3, 12 - (P - 1)), (8, 12), (8, 1)]
    assert torch.all(plain[:, :P] == 0)
    torch.testing.assert_close(plain[:, P:], full[distinct, P:], rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_takes_one_pass(tok):
    # transformers drops the KV cache under gradient checkpointing: sharing would lose the prompt
    ids, attn, _, P = repeated_prompt_batch(tok)
    model = tiny_model(tok)
    with torch.no_grad():
        expected = token_logprobs(model.eval(), ids, attn)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    with rows_through_model(model) as shapes:
        got = token_logprobs(model, ids, attn, prompt_length=P)
    assert shapes[0] == (8, 12)
    assert torch.all(got[:, :P] == 0)
    torch.testing.assert_close(got[:, P:], expected[:, P:], rtol=1e-5, atol=1e-6)
    with torch.no_grad(), rows_through_model(model) as shapes:  # no backward to replay: the cache is kept
        token_logprobs(model, ids, attn, prompt_length=P)
    assert shapes == [(3, 6), (8, 6)]


def test_sampler_prefill_once_per_prompt_gives_the_same_tokens(tok, monkeypatch):
    model = tiny_model(tok).eval()
    ids, attn, _, P = repeated_prompt_batch(tok)
    prompt_ids, prompt_mask = ids[:, :P], attn[:, :P]
    runs = []
    for sharing in (True, False):
        if not sharing:
            no_sharing(monkeypatch)
        with rows_through_model(model) as shapes:
            ro = sample(model, prompt_ids, prompt_mask, 12, tok.eos_token_id, tok.pad_token_id, temperature=1.0,
                        generator=torch.Generator().manual_seed(5))
        runs.append((ro, shapes))
    (shared, shapes_shared), (plain, shapes_plain) = runs
    assert shapes_shared[0] == (3, P) and shapes_plain[0] == (8, P)  # the prefill
    assert all(s == (8, 1) for s in shapes_shared[1:] + shapes_plain[1:])  # then one token per row per step
    assert torch.equal(shared.input_ids, plain.input_ids)
    assert torch.equal(shared.attention_mask, plain.attention_mask)
    assert len({tuple(r) for r in shared.completion_ids[:3].tolist()}) > 1  # rows of one prompt still differ
    # and the sampled tokens' log-probs (the logits after the shared prefill) agree too
    torch.testing.assert_close(token_logprobs(model, shared.input_ids, shared.attention_mask, prompt_length=P)[:, P:],
                               token_logprobs(model, plain.input_ids, plain.attention_mask)[:, P:],
                               rtol=1e-5, atol=1e-6)


def test_grpo_run_equals_the_run_without_prompt_sharing(tok, monkeypatch):
    prompts = ["3 +4 *2\n", "5 -1\n", "7 *3 +2 -1\n", "0 +9\n"]
    reward = lambda prompts, completions: [float(len(set(c))) for c in completions]  # noqa: E731
    cfg = preset("grpo", steps=3, prompts_per_step=2, group_size=4, mu=1, max_new_tokens=10, lr=1e-2, eval_every=0)
    runs = []
    for sharing in (True, False):
        if not sharing:
            no_sharing(monkeypatch)
        model = tiny_model(tok)
        with rows_through_model(model) as shapes:
            log = train_grpo(model, tok, prompts, reward, cfg)
        runs.append((log.rows, [p.detach().clone() for p in model.parameters()], shapes))
    (rows_a, weights_a, shapes_a), (rows_b, weights_b, shapes_b) = runs
    assert sum(s[0] == 2 for s in shapes_a) >= 6 and not any(s[0] == 2 for s in shapes_b)  # 2 prompts, 8 rows
    for a, b in zip(rows_a, rows_b):
        for key in ("loss", "grad_norm", "reward/mean", "entropy"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (key, a["step"])
    assert_same_training(weights_a, weights_b, tiny_model(tok))


@pytest.mark.parametrize("precompute_ref", [True, False])
def test_dpo_run_equals_the_run_without_prompt_sharing(tok, monkeypatch, precompute_ref):
    rows = [{"prompt": f"{a} +{b}\n", "chosen": str(a + b), "rejected": str(a + b + 1)}
            for a in range(4) for b in range(3)]
    cfg = DPOConfig(steps=3, batch_size=4, lr=1e-2, warmup_steps=0, precompute_ref=precompute_ref, log_every=1)
    runs = []
    for sharing in (True, False):
        if not sharing:
            no_sharing(monkeypatch)
        model = tiny_model(tok)
        with rows_through_model(model) as shapes:
            log = train_dpo(model, tok, rows, cfg)
        runs.append((log.rows, [p.detach().clone() for p in model.parameters()], shapes))
    (rows_a, weights_a, shapes_a), (rows_b, weights_b, shapes_b) = runs
    assert any(s[0] == 4 for s in shapes_a) and not any(s[0] == 4 for s in shapes_b)  # a prompt pass per pair
    for a, b in zip(rows_a, rows_b):
        for key in ("loss", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (key, a["step"])
    assert_same_training(weights_a, weights_b, tiny_model(tok))
