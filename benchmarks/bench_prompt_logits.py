"""What the LM head costs on a real vocabulary: one DPO or SFT step, three ways of computing log-probs.

`lm.token_logprobs(..., prompt_length=P)` computes logits only at the positions that predict a
completion token (P - 1 on); nothing trains on the prompt tokens' own next-token predictions. On
the tiny world's 100-token vocabulary that is nothing; on Qwen2.5's 151,936-token vocabulary the
LM head is a large part of each position's work and its fp32 logits (0.6 MB a position) most of
the activation memory. This script measures the difference on a randomly initialised model of
Qwen2.5-0.5B's shape (hidden 896, 14 heads, 2 KV heads, MLP 4864, tied embeddings; `--layers`
of them, 24 in the real model) for one DPO policy step: chosen and rejected of `--pairs` pairs
in one `token_logprobs` call (each prompt once), the summed completion log-probs, backward.

    "all positions":     the model's logits at every position, then the completion positions are
                         taken (minirlhf before 2026-12-03; TRL 1.16 on a CPU, whose fused head
                         scores only the completion positions on CUDA)
    "completions only":  the model's logits from position P - 1 on (transformers' `logits_to_keep`)
    "chunked head":      the final hidden states of those positions, scored by `lm.token_logprobs`'s
                         chunked LM head (`lm.fused_head`): no (B, T, V) logits at all (the default
                         from 32k vocabulary entries on)

Each variant runs in its own process (so each has its own peak memory), alternating A, B, A, B
for `--rounds` rounds; a run builds the model (not timed), runs one warm-up step and `--steps`
timed steps (process CPU time), and reports the median step time and the growth of the
process's peak resident memory over the steps (`ru_maxrss` after the model was built). The
table gives the medians over rounds and each variant's ratio to "all positions".

    python benchmarks/bench_prompt_logits.py                      # HH-like: prompt 256, replies 64
    python benchmarks/bench_prompt_logits.py --prompt-len 64 --completion-len 256

`--method sft`: one SFT step instead, on 2 x `--pairs` rows of distinct prompts, the loss on the
completion tokens (no prompt repeats, so no shared prompt pass; SFT asks for the completion tokens with
`score_mask`, which leaves the model's own head as it is and keeps the chunked head off the prompt):

    "all positions":     the model's own head, logits at every position
    "chunked, every token":  the chunked head scoring every token (SFT before it passed score_mask)
    "chunked head":      the chunked head scoring the completion tokens only (what ships)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = {"dpo": {"all": "all positions", "completions": "completions only", "chunked": "chunked head"},
            "sft": {"all": "all positions", "every": "chunked, every token", "chunked": "chunked head"}}


def one_run(args) -> dict:
    """The child process: build the model, time `args.steps` steps of one variant, print JSON."""
    import torch
    from transformers import Qwen2ForCausalLM

    from minirlhf import lm
    from minirlhf.stand_in import qwen2_config

    torch.set_num_threads(args.threads)
    if args.variant == "all":  # logits at every position: the model is never asked to keep fewer
        lm._keep_last = lambda model, n: {}
    if args.variant in ("all", "completions"):  # the model's own LM head
        lm.fused_head = lambda model: None
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(qwen2_config(151936, hidden_size=896, num_layers=args.layers, num_heads=14,
                                          num_kv_heads=2, intermediate_size=4864)).train()
    g = torch.Generator().manual_seed(1)
    P, C, B = args.prompt_len, args.completion_len, args.pairs
    prompts = torch.randint(10, 151000, (B, P), generator=g)
    if args.method == "sft":  # 2B distinct prompts
        prompts = torch.cat([prompts, torch.randint(10, 151000, (B, P), generator=g)])
    else:  # chosen and rejected share theirs
        prompts = prompts.repeat(2, 1)
    ids = torch.cat([prompts, torch.randint(10, 151000, (2 * B, C), generator=g)], 1)  # (2B, P+C)
    attn = torch.ones_like(ids)
    completions = torch.zeros_like(ids)
    completions[:, P:] = 1
    if args.method == "sft":  # what train_sft asks for: the completion tokens (every token before)
        kwargs = {"score_mask": completions if args.variant == "chunked" else None}
    else:
        kwargs = {"prompt_length": P}
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for step in range(1 + args.steps):
        model.zero_grad(set_to_none=True)
        start = time.process_time()
        logps = lm.token_logprobs(model, ids, attn, **kwargs)  # (2B, P+C)
        logps[:, P:].sum().backward()
        if step:  # the first step warms up
            times.append(time.process_time() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"ms": 1000 * statistics.median(times), "peak_mb": (peak - base) / 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=list(VARIANTS), default="dpo")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (Qwen2.5-0.5B has 24)")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--completion-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variant", choices=sorted({v for m in VARIANTS.values() for v in m}),
                        help=argparse.SUPPRESS)  # the child's
    args = parser.parse_args()
    for flag in ("layers", "pairs", "prompt_len", "completion_len", "rounds", "steps", "threads"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.variant:
        print(json.dumps(one_run(args)))
        return
    variants = VARIANTS[args.method]
    results = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:  # A, B, A, B
            cmd = [sys.executable, __file__, "--variant", v] + [
                f"--{k.replace('_', '-')}={getattr(args, k)}"
                for k in ("method", "layers", "pairs", "prompt_len", "completion_len", "steps", "threads")]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode:
                sys.exit(f"the {variants[v]!r} run failed: {out.stderr.strip().splitlines()[-1:]}")
            results[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
    import torch
    import transformers

    step = "DPO policy" if args.method == "dpo" else "SFT"
    batch = f"{args.pairs} pairs" if args.method == "dpo" else f"{2 * args.pairs} rows"
    print(f"#### One {step} step (forward + backward), {platform.machine()} CPU, {args.threads} thread(s), "
          f"process CPU time; torch {torch.__version__}, transformers {transformers.__version__}\n")
    print(f"Qwen2.5-0.5B-shaped model with {args.layers} layers, vocabulary 151,936, fp32; {batch}, "
          f"prompt {args.prompt_len} + completions {args.completion_len} tokens; "
          f"{args.rounds} A/B rounds x {args.steps} timed steps.\n")
    print("| log-probs from | step ms (median of rounds) | peak memory growth MB |")
    print("|---|---|---|")
    med = {v: (statistics.median(r["ms"] for r in results[v]), statistics.median(r["peak_mb"] for r in results[v]))
           for v in variants}
    for v, name in variants.items():
        print(f"| {name} | {med[v][0]:.0f} | {med[v][1]:.0f} |")
    for v in list(variants)[1:]:
        print(f"\n{variants[v]} / all positions: time {med[v][0] / med['all'][0]:.2f}, "
              f"peak memory growth {med[v][1] / med['all'][1]:.2f}")
    if args.method == "sft":
        print(f"\nchunked head / chunked, every token: time {med['chunked'][0] / med['every'][0]:.2f}")


if __name__ == "__main__":
    main()
