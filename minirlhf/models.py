"""Models: load any causal LM by hub name or local path, the tiny built-in configs, scalar heads.

Every method works on a Hugging Face `AutoModelForCausalLM`. The built-in world uses tiny
Llama models trained from scratch (rotary positions, so they can be asked about chains longer
than the ones they were trained on). A name such as "arith-sft" resolves to the checkpoint
shipped in `data/models/`; anything else goes to `from_pretrained` unchanged, so a user with
hub access passes "Qwen/Qwen2.5-0.5B-Instruct" or a local path the same way.

Security: weights load through safetensors; `trust_remote_code` is off unless asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerBase

DATA_DIR = Path(os.environ.get("MINIRLHF_DATA", Path(__file__).resolve().parents[1] / "data"))
MODELS_DIR = DATA_DIR / "models"
TOKENIZER_DIR = DATA_DIR / "tokenizer"


def resolve(name_or_path: str | os.PathLike) -> str:
    """A built-in name ("arith-sft", "tokenizer") -> its folder in data/; else returned as is."""
    name = str(name_or_path)
    if name == "tokenizer":
        return str(TOKENIZER_DIR)
    if (MODELS_DIR / name).is_dir():
        return str(MODELS_DIR / name)
    return name


def tiny_llama_config(vocab_size: int, hidden_size: int = 64, num_layers: int = 3,
                      num_heads: int = 4, intermediate_size: int = 256,
                      max_position_embeddings: int = 256, **special_ids) -> LlamaConfig:
    """A Llama of ~0.1-0.5M parameters: big enough for the tiny worlds, fast on 2 CPU cores."""
    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                       intermediate_size=intermediate_size, num_hidden_layers=num_layers,
                       num_attention_heads=num_heads, num_key_value_heads=num_heads,
                       max_position_embeddings=max_position_embeddings, rope_theta=10000.0,
                       tie_word_embeddings=True, **special_ids)


def load_tokenizer(name_or_path: str | os.PathLike = "tokenizer",
                   trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A tokenizer with a pad token (the EOS token is reused when the model has none)."""
    tok = AutoTokenizer.from_pretrained(resolve(name_or_path), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str | os.PathLike, dtype: torch.dtype | None = None,
               device: str | torch.device | None = None, trust_remote_code: bool = False):
    """Any causal LM by built-in name, hub name or local path (safetensors weights)."""
    kwargs = {"trust_remote_code": trust_remote_code, "use_safetensors": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(resolve(name_or_path), **kwargs)
    return model.to(device) if device is not None else model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens, so left and right padding give the same result.

    attention_mask: (B, T) -> position_ids: (B, T), 0 at the first real token of each row.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class ScalarHeadModel(nn.Module):
    """A causal-LM backbone with a linear head giving one scalar per token: (B, T) -> (B, T).

    Used as the reward model (read at the last real token), the value model of PPO (read at
    every completion token) and the process reward model (read at each step boundary).
    The head starts from small weights, so early outputs are near zero.
    """

    def __init__(self, backbone: nn.Module, head_init_std: float | None = None):
        super().__init__()
        self.backbone = backbone  # an AutoModelForCausalLM; we use its base model's hidden states
        hidden = backbone.config.hidden_size
        self.head = nn.Linear(hidden, 1)
        std = head_init_std if head_init_std is not None else 1.0 / (hidden + 1) ** 0.5
        nn.init.normal_(self.head.weight, std=std)  # as lm-human-preferences initialises its heads
        nn.init.zeros_(self.head.bias)

    @property
    def config(self):
        return self.backbone.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.backbone.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                       position_ids=position_ids_from_mask(attention_mask))
        hidden = out.last_hidden_state  # (B, T, H)
        return self.head(hidden).squeeze(-1).float()  # (B, T)

    @classmethod
    def from_causal_lm(cls, name_or_path: str | os.PathLike, trust_remote_code: bool = False,
                       **kw) -> "ScalarHeadModel":
        return cls(load_model(name_or_path, trust_remote_code=trust_remote_code), **kw)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        path = Path(path)
        self.backbone.save_pretrained(path)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  str(path / "scalar_head.safetensors"))

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike,
                        trust_remote_code: bool = False) -> "ScalarHeadModel":
        path = Path(resolve(name_or_path))
        model = cls(load_model(path, trust_remote_code=trust_remote_code))
        model.head.load_state_dict(load_file(str(path / "scalar_head.safetensors")))
        return model
