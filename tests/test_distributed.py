"""Two CPU processes under DistributedDataParallel (gloo) train exactly like one process."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from minirlhf.models import load_tokenizer, tiny_llama_config
from minirlhf.sft import SFTConfig, train_sft

ROWS = [{"prompt": f"{a} *{b}\n", "completion": f"{a}*{b}={(a * b) % 10}\n#### {(a * b) % 10}"}
        for a in range(10) for b in range(4)]
CFG = SFTConfig(steps=6, batch_size=8, warmup_steps=2, log_every=1)


def make_model(tok):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(len(tok), hidden_size=32, num_layers=2, num_heads=2,
                                              intermediate_size=64, pad_token_id=tok.pad_token_id))


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    tok = load_tokenizer()
    model = make_model(tok)
    train_sft(model, tok, ROWS, CFG)
    if rank == 0:
        torch.save({k: v.detach() for k, v in model.state_dict().items()}, out)
    dist.destroy_process_group()


def test_two_processes_match_one(tmp_path):
    tok = load_tokenizer()
    single = make_model(tok)
    train_sft(single, tok, ROWS, CFG)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, port, str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    for k, v in single.state_dict().items():
        assert torch.allclose(v, ddp[k], atol=2e-5, rtol=1e-4), k
