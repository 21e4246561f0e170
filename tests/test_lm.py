"""Per-token log-probs (padding side must not matter), sampling masks and EOS handling."""

import pytest
import torch

from minirlhf.lm import (decode_completions, encode_pairs, encode_prompts, last_token_index, sample,
                         sequence_logprob, token_logprobs)


def right_pad(batch, pad_id):
    """Move every row's real tokens to the left (right padding) -> same sequences, other layout."""
    ids, attn, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    out = {k: torch.zeros_like(v) for k, v in batch.items()}
    out["input_ids"].fill_(pad_id)
    for i in range(ids.shape[0]):
        keep = attn[i].bool()
        n = int(keep.sum())
        out["input_ids"][i, :n] = ids[i][keep]
        out["attention_mask"][i, :n] = 1
        out["completion_mask"][i, :n] = comp[i][keep]
    return out


def test_layout_and_eos(tok):
    b = encode_pairs(tok, ["ab", "abcd"], ["xyz", "q"])
    assert b["input_ids"].shape == (2, 4 + 4)
    # prompt left-padded, completion + EOS right-padded
    assert b["attention_mask"][0].tolist() == [0, 0, 1, 1, 1, 1, 1, 1]
    assert b["completion_mask"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert b["input_ids"][0, 7].item() == tok.eos_token_id
    assert b["completion_mask"][1].tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
    assert last_token_index(b["attention_mask"]).tolist() == [7, 5]


def test_overlong_row_is_an_error_naming_the_row(tok):
    with pytest.raises(ValueError, match="row 1"):
        encode_pairs(tok, ["a", "b" * 10], ["c", "d"], max_length=8)


def test_padding_side_does_not_change_logprobs(tok, tiny_model):
    b = encode_pairs(tok, ["3 +4\n", "12 *3 -1\n", "x"], ["3+4=7\n#### 7", "1", "hello there"])
    lp_left = token_logprobs(tiny_model, b["input_ids"], b["attention_mask"])
    seq_left = sequence_logprob(lp_left, b["completion_mask"])
    r = right_pad(b, tok.pad_token_id)
    lp_right = token_logprobs(tiny_model, r["input_ids"], r["attention_mask"])
    seq_right = sequence_logprob(lp_right, r["completion_mask"])
    assert torch.allclose(seq_left, seq_right, atol=1e-5)
    # and each row alone, unpadded, gives the same value
    for i in range(3):
        keep = b["attention_mask"][i].bool()
        ids = b["input_ids"][i][keep][None]
        lp = token_logprobs(tiny_model, ids, torch.ones_like(ids))
        assert torch.allclose(sequence_logprob(lp, b["completion_mask"][i][keep][None]), seq_left[i:i + 1],
                              atol=1e-5)
    # padding positions carry exactly 0
    assert (lp_left[b["attention_mask"] == 0] == 0).all()


def test_logprobs_match_manual_softmax(tok, tiny_model):
    b = encode_pairs(tok, ["ab"], ["cd"])
    lp = token_logprobs(tiny_model, b["input_ids"], b["attention_mask"])
    logits = tiny_model(input_ids=b["input_ids"]).logits[0]
    manual = torch.log_softmax(logits[2], -1)[b["input_ids"][0, 3]]  # "d" given "abc"
    assert torch.allclose(lp[0, 3], manual, atol=1e-5)


def test_sampling_masks_eos_and_reproducibility(tok, tiny_model):
    ids, mask = encode_prompts(tok, ["3 +4\n", "1 *2 -3\n"])
    g = torch.Generator().manual_seed(0)
    r1 = sample(tiny_model, ids, mask, 12, tok.eos_token_id, tok.pad_token_id, generator=g)
    r2 = sample(tiny_model, ids, mask, 12, tok.eos_token_id, tok.pad_token_id,
                generator=torch.Generator().manual_seed(0))
    assert torch.equal(r1.input_ids, r2.input_ids)
    comp, cm = r1.completion_ids, r1.completion_mask[:, r1.prompt_length:]
    for i in range(2):
        n = int(cm[i].sum())
        assert cm[i, :n].all() and not cm[i, n:].any()  # the mask is a prefix
        assert (comp[i, n:] == tok.pad_token_id).all()
        eos = (comp[i, :n] == tok.eos_token_id).nonzero()
        if r1.ended[i]:
            assert eos.numel() == 1 and eos.item() == n - 1  # EOS is the last real token
        else:
            assert eos.numel() == 0 and n == comp.shape[1]
    assert all(tok.eos_token not in t for t in decode_completions(tok, r1))


def test_sampling_in_inference_mode_gives_no_grad_tokens_and_trainable_tensors(tok, tiny_model):
    """The loop runs under inference_mode: the same tokens as under no_grad, and the rollout it
    returns is ordinary tensors, so a training forward + backward on it works."""
    from minirlhf.lm import _sample_loop

    ids, mask = encode_prompts(tok, ["3 +4\n", "3 +4\n", "1 *2 -3\n"])
    with torch.no_grad():
        ref = _sample_loop(tiny_model, ids, mask, 10, tok.eos_token_id, tok.pad_token_id, 0.9, None,
                           torch.Generator().manual_seed(3))
    r = sample(tiny_model, ids, mask, 10, tok.eos_token_id, tok.pad_token_id, 0.9,
               generator=torch.Generator().manual_seed(3))
    assert torch.equal(r.input_ids, ref.input_ids) and torch.equal(r.completion_mask, ref.completion_mask)
    for t in (r.input_ids, r.attention_mask, r.completion_mask, r.ended):
        assert not t.is_inference()
    logps = token_logprobs(tiny_model, r.input_ids, r.attention_mask)
    (logps * r.completion_mask).sum().backward()
    grads = [p.grad for p in tiny_model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    tiny_model.zero_grad(set_to_none=True)


def test_greedy_tokens_have_the_highest_logprob(tok, tiny_model):
    """Greedy sampling (temperature 0) picks, at every step, the token token_logprobs scores highest."""
    ids, mask = encode_prompts(tok, ["ab", "abcdef"])
    r = sample(tiny_model, ids, mask, 6, tok.eos_token_id, tok.pad_token_id, temperature=0)
    lp = token_logprobs(tiny_model, r.input_ids, r.attention_mask)  # (B, T)
    P = r.prompt_length
    checked = 0
    for i in range(2):
        for t in range(P, r.input_ids.shape[1]):
            if r.completion_mask[i, t]:
                # every other token at that position, put in place of the sampled one, scores lower
                alt = r.input_ids[i:i + 1].repeat(len(tok), 1)
                alt[:, t] = torch.arange(len(tok))
                lp_all = token_logprobs(tiny_model, alt, r.attention_mask[i:i + 1].repeat(len(tok), 1))[:, t]
                assert lp_all.argmax().item() == r.input_ids[i, t].item()
                assert torch.isclose(lp[i, t], lp_all.max(), atol=1e-5)
                checked += 1
    assert checked >= 2


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_frequencies_match_token_logprobs(tok, tiny_model, temperature):
    """Sample one token 4,000 times: the frequencies are exp(token_logprobs) at the same temperature
    (total variation < 0.05), and clearly not the distribution of another temperature."""
    with torch.no_grad():
        tiny_model.get_output_embeddings().weight.mul_(8.0)  # a peaked, non-uniform next-token distribution
    n = 4000
    ids, mask = encode_prompts(tok, ["3 +4"] * n)
    r = sample(tiny_model, ids, mask, 1, tok.eos_token_id, tok.pad_token_id, temperature=temperature,
               generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(r.completion_ids[:, 0], minlength=len(tok)).float() / n
    full = r.input_ids[:1].repeat(len(tok), 1)
    full[:, -1] = torch.arange(len(tok))  # every possible first token after the prompt

    def probs(temp):
        return token_logprobs(tiny_model, full, r.attention_mask[:1].repeat(len(tok), 1), temperature=temp)[:, -1].exp()

    p = probs(temperature)
    assert torch.isclose(p.sum(), torch.tensor(1.0), atol=1e-4)
    assert 0.5 * (freq - p).abs().sum() < 0.05
    other = probs(1.0 if temperature != 1.0 else 0.5)
    assert 0.5 * (freq - other).abs().sum() > 0.1  # the check can tell temperatures apart
