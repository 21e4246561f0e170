"""A stand-in for a real instruct model, built offline: the GPU presets' code path on a CPU.

`build_stand_in(folder)` saves a randomly initialised Qwen2ForCausalLM (Qwen2.5's architecture:
grouped-query attention with q/k/v biases, SwiGLU, RMSNorm, tied embeddings) at a tiny size, and a
byte-level BPE tokenizer trained on a few sentences, with ChatML special tokens and a chat template
in the form of Qwen2.5-Instruct's (`<|im_start|>role\\n...<|im_end|>\\n`, a default system turn; EOS
is `<|im_end|>`, padding `<|endoftext|>`). Every GPU preset runs on it through the same code as on
Qwen/Qwen2.5-0.5B-Instruct, with `--model <folder>` and small overrides (tests/test_gpu_presets.py).

    python -m minirlhf.stand_in runs/stand_in     # then: minirlhf grpo --preset ... --model runs/stand_in
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
CORPUS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May? Solve the problem step by step.",
    "On the last line, write the final answer as '#### <number>'. The answer is 72. #### 72",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.",
    "You are a helpful assistant. The review was great, the food was good and the service was bad.",
    "0 1 2 3 4 5 6 7 8 9 10 + - * / = << >> ####",
]


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE PreTrainedTokenizerFast with ChatML tokens and the chat template above."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(CORPUS * 4, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def qwen2_config(vocab_size: int, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                 num_kv_heads: int = 2, intermediate_size: int = 128, **ids):
    """Qwen2.5's architecture at a small size (0.5B: hidden 896, 24 layers, 14 heads, 2 KV heads, 4864 MLP)."""
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                       num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                       intermediate_size=intermediate_size, max_position_embeddings=4096,
                       tie_word_embeddings=True, **ids)


def build_stand_in(folder: str | Path, seed: int = 0, vocab_size: int | None = None, **sizes) -> Path:
    """Save the tokenizer and a random Qwen2ForCausalLM (safetensors) in `folder`; returns it.

    `vocab_size`: the model's vocabulary (default: the tokenizer's 512). Larger is what real checkpoints do
    (Qwen2.5: 151,936 embedding rows for 151,665 tokens); from 32,768 on, log-probs take the chunked LM head.
    """
    from transformers import Qwen2ForCausalLM

    folder = Path(folder)
    tok = build_tokenizer()
    if vocab_size is not None and vocab_size < len(tok):
        raise ValueError(f"vocab_size={vocab_size} is smaller than the tokenizer's {len(tok)} tokens")
    torch.manual_seed(seed)
    cfg = qwen2_config(vocab_size or len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                       bos_token_id=None, **sizes)
    Qwen2ForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    print(build_stand_in(sys.argv[1] if len(sys.argv) > 1 else "runs/stand_in"))
