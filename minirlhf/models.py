"""Models: load any causal LM by hub name or local path, the tiny built-in configs, scalar heads.

Every method works on a Hugging Face `AutoModelForCausalLM`. The built-in world uses tiny
Llama models trained from scratch (rotary positions, so they can be asked about chains longer
than the ones they were trained on). A name such as "arith-sft" resolves to the checkpoint
shipped in `data/models/`; anything else goes to `from_pretrained` unchanged, so a user with
hub access passes "Qwen/Qwen2.5-0.5B-Instruct" or a local path the same way.

A name that can only be a local path (it starts with ".", "/" or "~", has more than one "/", or
its first part exists here) is checked before anything is loaded: a missing folder, a file, a
folder without config.json, without safetensors weights (pytorch_model.bin only), without a
tokenizer or (for a reward model) without scalar_head.safetensors is a `ModelLoadError` that says
which, at once and with no hub request. A hub name goes to `from_pretrained`; its failure (no
network, no such repo) is a `ModelLoadError` naming it. `check_same_vocab` refuses a reward model
or verifier that cannot read the policy's token ids.

Security: weights load through safetensors; `trust_remote_code` is off unless asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, TypeVar

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerBase

from .errors import ModelLoadError
from .utils import exception_line

DATA_DIR = Path(os.environ.get("MINIRLHF_DATA", Path(__file__).resolve().parents[1] / "data"))
MODELS_DIR = DATA_DIR / "models"
TOKENIZER_DIR = DATA_DIR / "tokenizer"
T = TypeVar("T")


def resolve(name_or_path: str | os.PathLike) -> str:
    """A built-in name ("arith-sft", "tokenizer") -> its folder in data/; else returned as is."""
    name = str(name_or_path)
    if name == "tokenizer":
        return str(TOKENIZER_DIR)
    if (MODELS_DIR / name).is_dir():
        return str(MODELS_DIR / name)
    return name


# ---------------------------------------------------------------------------------------------
# What a name means, and what a local folder lacks: checked before from_pretrained
# ---------------------------------------------------------------------------------------------

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model")
SCALAR_HEAD = "scalar_head.safetensors"


def _resolve(name_or_path: str | os.PathLike) -> tuple[str, bool]:
    """(what to load: `resolve(name_or_path)`, whether it is a local path rather than a hub name)."""
    name = resolve(name_or_path)
    return name, is_local_path(name_or_path) or is_local_path(name)


def is_local_path(name: str | os.PathLike) -> bool:
    """True when `name` can only mean a path on this machine, not a hub repo id ("org/name"):
    it starts with ".", "/" or "~", holds a backslash or a second "/", or it (or its first
    part, as "runs" in "runs/sft") exists here."""
    if isinstance(name, os.PathLike):
        return True
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:
        return True
    return Path(name).exists() or Path(name.split("/")[0]).exists()


def check_model_folder(path: str | os.PathLike) -> Path:
    """`path` as a Path if it is a loadable model folder (config.json and safetensors weights,
    every shard of a sharded model present); else a ModelLoadError saying what is missing."""
    folder = _existing_folder(path)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"not a model folder: no config.json in {path}")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        import json

        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        missing = [f for f in shards if not (folder / f).is_file()]
        if missing:
            raise ModelLoadError(f"incomplete model folder: {len(missing)} of {len(shards)} weight shards are "
                                 f"missing ({', '.join(missing[:3])}) in {path}")
    elif not (folder / "model.safetensors").is_file():
        if any(folder.glob("pytorch_model*.bin")):
            raise ModelLoadError(
                f"{path} holds pytorch_model.bin but no model.safetensors: weights are loaded as safetensors only "
                "(a pickle can run code); convert a model you trust once with: python -c \"from transformers import "
                f"AutoModelForCausalLM as M; M.from_pretrained('{path}', use_safetensors=False)"
                f".save_pretrained('{path}')\"")
        raise ModelLoadError(f"no weights: {path} has config.json but no model.safetensors "
                             "(an interrupted save or copy?)")
    return folder


def _existing_folder(path: str | os.PathLike) -> Path:
    """`path` expanded, if it is a folder; a ModelLoadError if it is missing or a file. (A model
    folder: the tokenizer is saved in the model's folder too.)"""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelLoadError(f"model folder not found: {path} (a local path: nothing is looked up on the hub)")
    if not folder.is_dir():
        raise ModelLoadError(f"{path} is a file, not a model folder: pass the folder that holds it")
    return folder


def _load_or_explain(load: Callable[[], T], name: str, local: bool, what: str) -> T:
    """`load()` (a from_pretrained or hub download of `name`, a `local` path or not), its failures
    (no network, no such repo or file, a bad config, a corrupt weights file) as one ModelLoadError
    naming `name`."""
    try:
        return load()
    except ModelLoadError:
        raise
    except (OSError, ValueError, SafetensorError, EntryNotFoundError) as e:
        reason = exception_line(e)
        if local:
            raise ModelLoadError(f"cannot load the {what} in {name}: {reason}") from e
        raise ModelLoadError(f"cannot load the {what} '{name}' from the Hugging Face hub: {reason}; "
                             "offline there is no hub: pass a local folder, or a model already in the "
                             "cache with HF_HUB_OFFLINE=1") from e


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
    """A tokenizer with a pad token (the EOS token is reused when the model has none).

    A local folder without tokenizer files is a ModelLoadError; so is a hub name that fails."""
    name, local = _resolve(name_or_path)
    if local:
        folder = _existing_folder(name)
        if not any((folder / f).is_file() for f in TOKENIZER_FILES):
            raise ModelLoadError(f"no tokenizer in {name} (no tokenizer.json or tokenizer_config.json): "
                                 "save it beside the model with tokenizer.save_pretrained(folder)")
    tok = _load_or_explain(lambda: AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code),
                           name, local, "tokenizer")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str | os.PathLike, dtype: torch.dtype | None = None,
               device: str | torch.device | None = None, trust_remote_code: bool = False):
    """Any causal LM by built-in name, hub name or local path (safetensors weights).

    A local folder is checked first (`check_model_folder`); every failure is a ModelLoadError."""
    name, local = _resolve(name_or_path)
    if local:
        check_model_folder(name)
    kwargs = {"trust_remote_code": trust_remote_code, "use_safetensors": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = _load_or_explain(lambda: AutoModelForCausalLM.from_pretrained(name, **kwargs), name, local, "model")
    return model.to(device) if device is not None else model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def embedding_rows(model: nn.Module) -> int:
    """How many token ids `model` (a causal LM or a ScalarHeadModel) can embed."""
    return getattr(model, "backbone", model).get_input_embeddings().num_embeddings


def check_same_vocab(scorer: nn.Module, policy: nn.Module, scorer_name: str, policy_name: str,
                     tokenizer: PreTrainedTokenizerBase | None = None, what: str = "reward model") -> None:
    """Refuse a model that scores the policy's samples (a reward model, a verifier) when it cannot
    read the policy's token ids: their embedding tables (and the tokenizer) must have one size.
    Otherwise the first sampled id past the scorer's table is an IndexError deep in training."""
    n_scorer, n_policy = embedding_rows(scorer), embedding_rows(policy)
    if n_scorer != n_policy:
        raise ModelLoadError(f"the {what} {scorer_name} has a vocabulary of {n_scorer} tokens but the policy "
                             f"{policy_name} has {n_policy}: the {what} must use the policy's tokenizer")
    if tokenizer is not None and len(tokenizer) > n_policy:
        raise ModelLoadError(f"the tokenizer of {policy_name} has {len(tokenizer)} tokens but the policy "
                             f"embeds only {n_policy}: load the tokenizer saved with the model")


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

    def trunk(self) -> nn.Module:
        """The transformer under the LM head (LlamaModel ...). Under LoRA the backbone is a peft
        PeftModel, whose adapters sit inside the model it wraps: the trunk is read from there."""
        backbone = self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone
        return backbone.base_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.trunk()(input_ids=input_ids, attention_mask=attention_mask,
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
        """A folder written by `save_pretrained` (a causal LM plus scalar_head.safetensors), or a
        hub repo holding the same; anything else is a ModelLoadError (checked before loading)."""
        name, local = _resolve(name_or_path)
        if local:
            head = check_model_folder(name) / SCALAR_HEAD
            if not head.is_file():
                raise ModelLoadError(f"not a reward model folder: no {SCALAR_HEAD} in {name} (a causal LM folder? "
                                     "train a reward model on it with `minirlhf rm --model ...`)")
        else:
            head = Path(_load_or_explain(lambda: hf_hub_download(name, SCALAR_HEAD), name, local, "reward model head"))
        model = cls(load_model(name_or_path, trust_remote_code=trust_remote_code))
        try:
            model.head.load_state_dict(load_file(str(head)))
        except (SafetensorError, RuntimeError) as e:
            raise ModelLoadError(f"cannot load the reward model head {head}: {exception_line(e)}") from e
        return model
