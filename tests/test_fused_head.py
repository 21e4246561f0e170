"""The chunked LM head of `lm.token_logprobs` on real vocabularies (`lm.fused_head`): which models take it,
the same log-probs, entropies and gradients as the model's own head, no (B, T, V) logits, and the wrappers
(PEFT LoRA, the LoRA reference with adapters off, autocast) seen through."""

import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2ForCausalLM

from minirlhf import lm
from minirlhf.dpo import DPOConfig, train_dpo
from minirlhf.grpo import preset, train_grpo
from minirlhf.lm import FUSED_HEAD_MIN_VOCAB, fused_head, token_logprobs
from minirlhf.scaling import AdapterDisabledReference, ScaleOptions, add_lora, autocast_forward
from minirlhf.stand_in import qwen2_config

pytestmark = pytest.mark.usefixtures("one_thread")
V = FUSED_HEAD_MIN_VOCAB  # the smallest vocabulary that takes the chunked head


def big_vocab_model(seed=0, vocab=V):
    """A Qwen2 with a real-sized vocabulary and a tiny trunk (hidden 32, 2 layers: ~1M parameters)."""
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(qwen2_config(vocab, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                         intermediate_size=64, pad_token_id=0, eos_token_id=1))


def batch(seed=0):
    """6 rows: prompts in columns 0..4 (rows 0-2 repeat one, left-padded by 1), completions 5..11 of lengths
    7, 3, 7, 5, 1, 7 (right padding); token ids all over the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    P, L = 5, 7
    prompts = torch.randint(2, V, (4, P), generator=g)
    pmask = torch.ones(4, P, dtype=torch.long)
    prompts[0, 0], pmask[0, 0] = 0, 0
    which = torch.tensor([0, 0, 0, 1, 2, 3])
    comp = torch.randint(2, V, (6, L), generator=g)
    cmask = torch.ones(6, L, dtype=torch.long)
    for row, length in [(1, 3), (3, 5), (4, 1)]:
        comp[row, length:], cmask[row, length:] = 0, 0
    return torch.cat([prompts[which], comp], 1), torch.cat([pmask[which], cmask], 1), P


def scored(model, ids, attn, P, plain: bool, monkeypatch, temperature=0.7):
    """log-probs, entropies and the gradient of a loss on both, through the chunked head or (plain) the model's."""
    with monkeypatch.context() as m:
        if plain:
            m.setattr(lm, "fused_head", lambda model: None)
        model.zero_grad()
        logp, ent = token_logprobs(model, ids, attn, temperature, with_entropy=True, prompt_length=P)
        w = torch.linspace(-1, 1, ids.shape[1])
        ((logp * w).sum() + 0.3 * (ent * w).sum()).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return logp.detach(), ent.detach(), grads


def test_which_models_take_the_chunked_head():
    model = big_vocab_model()
    assert fused_head(model) is model.lm_head
    assert fused_head(big_vocab_model(vocab=V - 1)) is None  # small logits: the model's own head, bit for bit
    tiny = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2))
    assert fused_head(tiny) is None  # the tiny world
    hooked = big_vocab_model()
    hooked.lm_head.forward = lambda x: torch.nn.functional.linear(x, hooked.lm_head.weight)  # as accelerate does
    assert fused_head(hooked) is None
    biased = big_vocab_model()
    biased.lm_head.bias = torch.nn.Parameter(torch.zeros(V))
    assert fused_head(biased) is None
    other = big_vocab_model()
    other.config.model_type = "gemma2"  # soft-capped logits: not hidden @ W^T
    assert fused_head(other) is None


@pytest.mark.parametrize("prompt_length", [None, 5])
def test_same_logprobs_entropies_and_gradients_as_the_models_head(monkeypatch, prompt_length):
    ids, attn, _ = batch()
    model = big_vocab_model().train()
    logp_a, ent_a, grad_a = scored(model, ids, attn, prompt_length, plain=True, monkeypatch=monkeypatch)
    logp_b, ent_b, grad_b = scored(model, ids, attn, prompt_length, plain=False, monkeypatch=monkeypatch)
    assert (logp_a != 0).sum() > 25 and grad_a.abs().max() > 1e-3
    torch.testing.assert_close(logp_b, logp_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent_b, ent_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-4, atol=1e-5 * grad_a.abs().max().item())
    assert torch.all(logp_b[attn == 0] == 0) and torch.all(logp_b[:, 0] == 0)


def test_no_vocabulary_sized_logits_and_the_head_is_restored():
    ids, attn, P = batch()
    model = big_vocab_model()
    outputs = []
    hook = model.lm_head.register_forward_hook(lambda m, args, out: outputs.append(tuple(out.shape)))
    token_logprobs(model, ids, attn, prompt_length=P)
    hook.remove()
    assert outputs == [(4, 1, 32), (6, 6, 32)]  # hidden states passed through: each distinct prompt, then the rest
    assert "forward" not in vars(model.lm_head)  # the head is itself again
    assert model(input_ids=ids[:, :3]).logits.shape == (6, 3, V)
    with pytest.raises(IndexError):  # an error inside the forward (a token id past the vocabulary) still restores it
        token_logprobs(model, ids + torch.eye(6, ids.shape[1], dtype=torch.long) * V, attn)
    assert "forward" not in vars(model.lm_head)


def test_lora_policy_and_its_adapter_disabled_reference(monkeypatch):
    pytest.importorskip("peft")
    ids, attn, P = batch()
    base = big_vocab_model()
    policy = add_lora(big_vocab_model(), ScaleOptions(lora_r=4))
    with torch.no_grad():  # move the adapters off zero, so adapters on and off differ
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    assert fused_head(policy) is policy.get_base_model().lm_head
    logp_a, ent_a, grad_a = scored(policy, ids, attn, P, plain=True, monkeypatch=monkeypatch)
    logp_b, ent_b, grad_b = scored(policy, ids, attn, P, plain=False, monkeypatch=monkeypatch)
    torch.testing.assert_close(logp_b, logp_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-4, atol=1e-5 * grad_a.abs().max().item())
    ref = AdapterDisabledReference(policy)
    assert fused_head(ref) is policy.get_base_model().lm_head
    with torch.no_grad():
        ref_logp = token_logprobs(ref, ids, attn, prompt_length=P)
        base_logp = token_logprobs(base, ids, attn, prompt_length=P)  # the same weights without adapters
    torch.testing.assert_close(ref_logp, base_logp, rtol=1e-5, atol=1e-5)  # adapters off through the head swap
    assert (ref_logp - logp_a).abs().max() > 0.1  # and they were on in the policy


def test_autocast_wrapper_is_seen_through():
    ids, attn, P = batch()
    model = big_vocab_model()
    with torch.no_grad():
        expected = token_logprobs(model, ids, attn, prompt_length=P)
        autocast_forward(model)  # CUDA autocast: inactive on these CPU tensors, so the same numbers
        assert model.autocast_dtype == torch.bfloat16
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "CUDA is not available": autocast disabled
            got = token_logprobs(model, ids, attn, prompt_length=P)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def word_tokenizer():
    """A word-level tokenizer over the whole 32k vocabulary: "w0" pads, "w1" ends, "w2" is unknown."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({f"w{i}": i for i in range(V)}, unk_token="w2"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="w0", eos_token="w1", unk_token="w2")


def random_words(g: torch.Generator, n: int) -> str:
    return " ".join(f"w{i}" for i in torch.randint(3, V, (n,), generator=g).tolist())


def weights_apart(run, monkeypatch):
    """Train twice, through the model's own head and the chunked one: (distance apart, distance travelled)."""
    weights = []
    for plain in (True, False):
        with monkeypatch.context() as m:
            if plain:
                m.setattr(lm, "fused_head", lambda model: None)
            policy = big_vocab_model()
            run(policy)
        weights.append(torch.cat([p.detach().flatten() for p in policy.parameters()]))
    start = torch.cat([p.detach().flatten() for p in big_vocab_model().parameters()])
    return (weights[1] - weights[0]).norm().item(), (weights[0] - start).norm().item()


def test_dpo_trains_the_same_through_either_head(monkeypatch):
    tok, g = word_tokenizer(), torch.Generator().manual_seed(0)
    rows = [{"prompt": random_words(g, 4), "chosen": random_words(g, 3), "rejected": random_words(g, 5)}
            for _ in range(8)]
    cfg = DPOConfig(batch_size=4, steps=3, lr=1e-3, warmup_steps=0, log_every=10**6, seed=0)
    apart, travelled = weights_apart(lambda policy: train_dpo(policy, tok, rows, cfg, ref_model=big_vocab_model()),
                                     monkeypatch)
    assert travelled > 1e-2 and apart < 1e-4 * travelled, (apart, travelled)  # measured: about 1e-6


def test_grpo_trains_the_same_through_either_head(monkeypatch):
    # sampling uses the model's own head either way; the update's log-probs and entropies go through the chunked one
    tok, g = word_tokenizer(), torch.Generator().manual_seed(0)
    prompts = [random_words(g, 3) for _ in range(4)]
    def reward(prompts, completions):  # the odd word ids in a completion
        return [float(sum(int(w[1:]) % 2 for w in c.split())) for c in completions]
    cfg = preset("grpo", steps=2, prompts_per_step=2, group_size=4, mu=2, max_new_tokens=6, lr=1e-3, beta=0.04,
                 eval_every=0)  # mu 2 and beta > 0: the pi_old and reference passes as well
    apart, travelled = weights_apart(lambda policy: train_grpo(policy, tok, prompts, reward, cfg,
                                                               ref_model=big_vocab_model()), monkeypatch)
    assert travelled > 1e-2 and apart < 1e-4 * travelled, (apart, travelled)  # measured: about 1e-6
