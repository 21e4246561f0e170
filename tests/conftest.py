"""Shared fixtures: the built-in tokenizer and tiny random models (fast, no checkpoint needed)."""

import pytest
import torch

from minirlhf.models import load_tokenizer, tiny_llama_config


@pytest.fixture(scope="session")
def tok():
    return load_tokenizer()


@pytest.fixture
def tiny_model(tok):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    cfg = tiny_llama_config(len(tok), hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: one thread is faster, and on a shared CPU several threads spin (50x slower).
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def chunked_head_rows(monkeypatch) -> list[int]:
    """The number of rows of each call of the chunked LM head (`lm.linear_logprobs_chunked`) during the test."""
    from minirlhf import lm

    rows, real = [], lm.linear_logprobs_chunked

    def counting(hidden, *args, **kwargs):
        rows.append(len(hidden))
        return real(hidden, *args, **kwargs)

    monkeypatch.setattr(lm, "linear_logprobs_chunked", counting)
    return rows
