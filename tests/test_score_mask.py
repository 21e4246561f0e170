"""`lm.token_logprobs(..., score_mask=M)`: only the tokens of M are scored (SFT's completion tokens, PPO's
response tokens). The chunked LM head never sees the others; the model's own head (the tiny world) gives
the kept tokens the same numbers bit for bit, so SFT and PPO runs there do not move by one bit."""

import copy

import pytest
import torch
from test_fused_head import batch, big_vocab_model, random_words, weights_apart, word_tokenizer
from test_ppo import PROMPTS, tiny_rl_setup

from minirlhf import ppo, sft
from minirlhf.lm import token_logprobs
from minirlhf.models import ScalarHeadModel
from minirlhf.ppo import PPOConfig, train_ppo
from minirlhf.sft import SFTConfig, train_sft

pytestmark = pytest.mark.usefixtures("one_thread")


def completion_mask(attn, P):
    """The completion tokens of `batch()`'s rows: real tokens from column P on."""
    mask = attn.clone()
    mask[:, :P] = 0
    return mask


def test_the_models_own_head_keeps_every_bit(tiny_model):
    ids, attn, P = batch()
    ids = ids % tiny_model.config.vocab_size
    score = completion_mask(attn, P)
    score[2, P + 1] = 0  # a hole inside a completion too
    results = []
    for mask in (None, score):
        tiny_model.zero_grad()
        logp, ent = token_logprobs(tiny_model, ids, attn, 0.7, with_entropy=True, score_mask=mask)
        ((logp * score).sum() + 0.3 * (ent * score).sum()).backward()
        results.append((logp.detach(), ent.detach(), [p.grad.clone() for p in tiny_model.parameters()]))
    (logp_a, ent_a, grad_a), (logp_b, ent_b, grad_b) = results
    keep = score.bool()
    assert torch.equal(logp_b[keep], logp_a[keep]) and torch.equal(ent_b[keep], ent_a[keep])
    assert torch.all(logp_b[~keep] == 0) and torch.all(ent_b[~keep] == 0)
    assert (logp_a[:, 1:P][attn[:, 1:P].bool() & attn[:, :P - 1].bool()] != 0).all()  # they were scored before
    assert all(torch.equal(a, b) for a, b in zip(grad_a, grad_b))


def test_the_chunked_head_scores_only_the_masked_tokens(chunked_head_rows):
    ids, attn, P = batch()
    model = big_vocab_model().train()
    score = completion_mask(attn, P)
    rows = chunked_head_rows  # tests/conftest.py
    logp_all = token_logprobs(model, ids, attn)
    logp = token_logprobs(model, ids, attn, score_mask=score)
    pairs = (attn[:, 1:] * attn[:, :-1]).sum().item()  # tokens with a real token before them
    assert rows == [pairs, score.sum().item()] and rows[1] < rows[0]
    keep = score.bool()
    torch.testing.assert_close(logp[keep], logp_all[keep], rtol=1e-5, atol=1e-5)
    assert torch.all(logp[~keep] == 0)


def without_score_mask(monkeypatch, module):
    """`module`'s token_logprobs as it was before score_mask: every real token scored."""
    def plain(*args, score_mask=None, **kwargs):
        return token_logprobs(*args, **kwargs)
    monkeypatch.setattr(module, "token_logprobs", plain)


def sft_run(model, tok, rows):
    cfg = SFTConfig(steps=6, batch_size=4, warmup_steps=1, lr=3e-3, log_every=1)
    log = train_sft(model, tok, rows, cfg)
    return log.series("loss"), [p.detach().clone() for p in model.parameters()]


def test_sft_on_the_tiny_world_does_not_move_a_bit(tok, tiny_model, monkeypatch):
    rows = [{"prompt": f"{a} +{b}\n", "completion": f"{a}+{b}={a + b}\n#### {a + b}"}
            for a in range(1, 5) for b in range(1, 4)]
    start = copy.deepcopy(tiny_model.state_dict())
    loss_b, weights_b = sft_run(tiny_model, tok, rows)
    tiny_model.load_state_dict(start)
    with monkeypatch.context() as m:
        without_score_mask(m, sft)
        loss_a, weights_a = sft_run(tiny_model, tok, rows)
    assert loss_a == loss_b and all(torch.equal(a, b) for a, b in zip(weights_a, weights_b))
    assert not torch.equal(weights_a[0], start["model.embed_tokens.weight"])  # it trained


def test_ppo_on_the_tiny_world_does_not_move_a_bit(tok, monkeypatch):
    cfg = PPOConfig(steps=2, batch_size=8, mini_batch_size=4, ppo_epochs=2, max_new_tokens=6, lr=1e-2, beta=0.05,
                    norm_samples=8, eval_every=2, missing_eos_penalty=None)
    runs = []
    for old in (True, False):
        with monkeypatch.context() as m:
            if old:
                without_score_mask(m, ppo)
            policy, ref, value, reward = tiny_rl_setup(tok)
            log, _ = train_ppo(policy, tok, PROMPTS, reward, cfg, ref_model=ref, value_model=value,
                               eval_prompts=PROMPTS)
        runs.append((log.rows, [p.detach().clone() for p in policy.parameters()]))
    (rows_a, weights_a), (rows_b, weights_b) = runs
    drop_time = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert drop_time(rows_a) == drop_time(rows_b)  # every logged number, eval/kl included
    assert all(torch.equal(a, b) for a, b in zip(weights_a, weights_b))


def test_sft_trains_the_same_through_either_head(monkeypatch, chunked_head_rows):
    # the chunked head scores the completion tokens only; the model's own head scores every token
    tok, g = word_tokenizer(), torch.Generator().manual_seed(0)
    rows = [{"prompt": random_words(g, 5), "completion": random_words(g, 3)} for _ in range(8)]
    cfg = SFTConfig(steps=3, batch_size=4, warmup_steps=0, lr=1e-3, log_every=10**6)
    apart, travelled = weights_apart(lambda policy: train_sft(policy, tok, rows, cfg), monkeypatch)
    scored = list(chunked_head_rows)
    assert travelled > 1e-2 and apart < 1e-4 * travelled, (apart, travelled)  # measured: 0 (one chunk, same sums)
    assert len(scored) == 3  # the chunked head ran, in the second run
    with monkeypatch.context() as m:  # a third run scoring every token, as SFT did before score_mask
        without_score_mask(m, sft)
        train_sft(big_vocab_model(), tok, rows, cfg)
    every = chunked_head_rows[len(scored):]
    assert sum(scored) < 0.5 * sum(every), (scored, every)  # the prompt tokens (5 words to 3 + EOS) not scored


def test_ppo_trains_the_same_through_either_head(monkeypatch, chunked_head_rows):
    # rollouts sample with the model's own head either way; the two no-gradient passes and the update score the
    # response tokens through the chunked head (the value model is a trunk with its own scalar head)
    tok, g = word_tokenizer(), torch.Generator().manual_seed(0)
    prompts = [random_words(g, 3) for _ in range(4)]
    def reward(prompts, completions):  # the odd word ids in a completion
        return [float(sum(int(w[1:]) % 2 for w in c.split())) for c in completions]
    cfg = PPOConfig(steps=2, batch_size=4, mini_batch_size=2, ppo_epochs=2, max_new_tokens=5, lr=1e-3, beta=0.05,
                    norm_samples=4, eval_every=10**6, missing_eos_penalty=None)
    def run(policy):
        train_ppo(policy, tok, prompts, reward, cfg, ref_model=big_vocab_model(),
                  value_model=ScalarHeadModel(big_vocab_model(seed=1)))
    apart, travelled = weights_apart(run, monkeypatch)
    scored = chunked_head_rows
    assert travelled > 1e-2 and apart < 1e-4 * travelled, (apart, travelled)  # measured: 0 (one chunk, same sums)
    assert scored and max(scored) <= 4 * 5  # the chunked head ran, on the 5 sampled tokens of 4 rows at most
