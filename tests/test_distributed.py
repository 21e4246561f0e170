"""Two CPU processes under DistributedDataParallel (gloo) train exactly like one process:
SFT, the reward model and DPO each split every batch between the ranks, also from the command line;
GRPO replicates sampling and splits the update."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from minirlhf.dpo import DPOConfig, train_dpo
from minirlhf.models import ScalarHeadModel, load_tokenizer, tiny_llama_config
from minirlhf.reward_model import RewardConfig, train_reward_model
from minirlhf.sft import SFTConfig, train_sft

ROWS = [{"prompt": f"{a} *{b}\n", "completion": f"{a}*{b}={(a * b) % 10}\n#### {(a * b) % 10}"}
        for a in range(10) for b in range(4)]
PAIRS = [{"prompt": f"{a} *{b}\n", "chosen": f"{(a * b) % 10}", "rejected": f"{(a * b + 3) % 10}"}
         for a in range(6) for b in range(3)]  # 18 pairs: batches of 5 (shares of 3 and 2) cross epochs


def make_model(tok):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(len(tok), hidden_size=32, num_layers=2, num_heads=2,
                                              intermediate_size=64, pad_token_id=tok.pad_token_id))


def sft(tok):
    model = make_model(tok)
    train_sft(model, tok, ROWS, SFTConfig(steps=6, batch_size=8, warmup_steps=2, log_every=1))
    return model


def reward_model(tok):
    rm = ScalarHeadModel(make_model(tok))
    train_reward_model(rm, tok, PAIRS, RewardConfig(steps=6, batch_size=5, warmup_steps=2, log_every=1))
    return rm


def dpo(tok):
    policy = make_model(tok)
    train_dpo(policy, tok, PAIRS, DPOConfig(steps=6, batch_size=5, warmup_steps=2, lr=1e-3, log_every=1))
    return policy


def grpo_run(variant, group_size):
    """GRPO (seq-mean loss, beta > 0; 9 rows: shares of 4 and 5) or DAPO (token-mean loss, dynamic
    sampling), mu = 2."""
    def run(tok):
        from minirlhf import grpo

        policy = make_model(tok)
        prompts = [r["prompt"] for r in ROWS]

        def ones(ps, cs):  # a dense toy reward, so groups have non-zero advantages
            return [c.count("1") / 4 for c in cs]
        grpo.train_grpo(policy, tok, prompts, ones, grpo.preset(variant, steps=3, prompts_per_step=3, group_size=group_size,
                                                                 max_new_tokens=8, mu=2, warmup_steps=1, lr=1e-3,
                                                                 eval_every=0))
        return policy
    return run


TRAINERS = {"sft": sft, "reward_model": reward_model, "dpo": dpo, "grpo": grpo_run("grpo", 3),
            "dapo": grpo_run("dapo", 4)}


def _worker(rank, world, port, name, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = TRAINERS[name](load_tokenizer())
    if rank == 0:
        torch.save({k: v.detach() for k, v in model.state_dict().items()}, out)
    dist.destroy_process_group()


@pytest.mark.parametrize("name", list(TRAINERS))
def test_two_processes_match_one(tmp_path, name):
    single = TRAINERS[name](load_tokenizer())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, port, name, str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    start = ScalarHeadModel(make_model(load_tokenizer())) if name == "reward_model" else make_model(load_tokenizer())
    start = start.state_dict()
    moved = max((v - start[k]).abs().max().item() for k, v in single.state_dict().items())
    assert moved > 1e-3, moved  # training changed the weights: matching is not matching the start
    for k, v in single.state_dict().items():
        assert torch.allclose(v, ddp[k], atol=2e-5, rtol=1e-4), k


def test_cli_under_torchrun_matches_one_process(tmp_path, monkeypatch, tok):
    from safetensors.torch import load_file

    from minirlhf.cli import main

    make_model(tok).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    argv = ["dpo", "--model", str(tmp_path / "tiny"), "--dataset", str(tmp_path / "prefs.jsonl"), "--device", "cpu",
            "--steps", "4", "--batch-size", "5", "--lr", "1e-3"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(torchrun + ["-m", "minirlhf"] + argv + ["--name", "ddp"], cwd=tmp_path, text=True,
                          capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count('"method"') == 1  # only rank 0 prints its summary
    monkeypatch.chdir(tmp_path)
    assert main(argv + ["--name", "one"]) == 0
    one, ddp = (load_file(str(tmp_path / f"runs/{n}/model/model.safetensors")) for n in ("one", "ddp"))
    start = make_model(tok).state_dict()
    assert max((v - start[k]).abs().max().item() for k, v in one.items()) > 1e-3  # training moved the weights
    for k, v in one.items():
        assert torch.allclose(v, ddp[k], atol=2e-5, rtol=1e-4), k


def test_single_process_commands_refuse_torchrun(monkeypatch, capsys):
    from minirlhf.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["ppo", "--steps", "1"]) == 1
    assert capsys.readouterr().err.startswith("error: minirlhf ppo runs in one process")
