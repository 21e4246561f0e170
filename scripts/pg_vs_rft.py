"""Why does rejection sampling (RFT) lift held-out accuracy more than GRPO? The same loop, five advantages.

    python scripts/pg_vs_rft.py --advantage group     [--rounds 6 --prompts 320 --group 8 --updates 15 --lr 3e-4]
    python scripts/pg_vs_rft.py --advantage distinct  (positive-only on distinct correct chains: RFT as a PG)

Each round samples `prompts` x `group` completions of fresh training prompts from `arith-sft` (the current
policy, T = 1), scores them with the trace reward, and takes `updates` minibatch steps (64 rows) of the clipped
surrogate (`grpo.grpo_loss`, old log-probs fixed at sampling) with a fresh AdamW (betas 0.9, 0.95, 3 warm-up
steps): `rft.train_rft`'s loop with notebook 11's settings (6 rounds x 320 prompts x 8, 15 steps of 64, lr 3e-4),
but a policy-gradient loss. Only the advantage changes:

    group      GRPO's (R - mean) / std per group (negative for wrong completions)
    group_positive  the same with the negative advantages set to 0 (wrong completions are not pushed down)
    positive   1[correct]: REINFORCE with no baseline (every correct row, duplicates included)
    per_prompt 1[correct] / #correct in the group: each solved prompt carries the same weight
    distinct   1 for the first copy of each distinct correct (prompt, completion), else 0 (RFT's dedup)

Rows with advantage 0 are dropped before the minibatches. Prints held-out greedy answer / trace accuracy on the
500 test chains after every round, and at the end the gains over SFT with a paired bootstrap CI (minirlhf.stats).
Results and their reading: docs/grpo.md (issue 18, item 6, second pass).
"""

import argparse
import json
import time

import torch

from minirlhf.evaluate import eval_arithmetic
from minirlhf.grpo import compute_advantages, grpo_loss, preset
from minirlhf.lm import decode_completions, encode_prompts, sample, token_logprobs
from minirlhf.models import load_model, load_tokenizer
from minirlhf.stats import paired_bootstrap
from minirlhf.worlds.arithmetic import arithmetic_trace_reward
from minirlhf.zoo import load_split

ADVANTAGES = ("group", "group_positive", "positive", "per_prompt", "distinct")


def advantages(kind: str, rewards: torch.Tensor, prompts: list[str], completions: list[str]) -> torch.Tensor:
    """rewards: (B, G) in {0, 1} -> advantages (B * G,) for `kind` (one of ADVANTAGES)."""
    correct = (rewards > 0.5).float()  # (B, G)
    if kind in ("group", "group_positive"):
        a = compute_advantages(rewards, preset("grpo")).flatten()
        return a.clamp(min=0) if kind == "group_positive" else a
    if kind == "positive":
        return correct.flatten()
    if kind == "per_prompt":
        return (correct / correct.sum(1, keepdim=True).clamp(min=1)).flatten()
    if kind == "distinct":
        seen, out = set(), torch.zeros(correct.numel())
        for i, (p, c, ok) in enumerate(zip(prompts, completions, correct.flatten().tolist())):
            if ok and (p, c) not in seen:
                seen.add((p, c))
                out[i] = 1.0
        return out
    raise ValueError(f"unknown --advantage {kind!r}; choose one of {ADVANTAGES}")


def per_prompt(model, tok, rows) -> tuple[list[float], list[float]]:
    """Greedy (answer, trace) correctness per test prompt, as two lists of 0/1."""
    res = [r for _, _, r in eval_arithmetic(model, tok, rows, return_samples=True)["samples"]]
    return [float(r.answer_correct) for r in res], [float(r.trace_correct) for r in res]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--advantage", choices=ADVANTAGES, default="group")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--prompts", type=int, default=320)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--updates", type=int, default=15)
    ap.add_argument("--minibatch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--clip-high", type=float, default=0.2, help="eps_high of the clipped surrogate")
    ap.add_argument("--loss-agg", default="seq_mean_token_mean", help="rl.aggregate_loss mode")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok = load_tokenizer()
    train = [r["prompt"] for r in load_split("arithmetic", "train")]
    test = load_split("arithmetic", "test")
    policy = load_model("arith-sft")
    cfg = preset("grpo", beta=0.0, clip_high=args.clip_high, loss_agg=args.loss_agg)  # default clip 0.2
    g = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(train), generator=g).tolist()
    e = eval_arithmetic(policy, tok, test)
    print(json.dumps({"round": 0, "answer": e["accuracy"], "trace": e["trace_accuracy"]}), flush=True)
    sft = per_prompt(policy, tok, test)
    t0 = time.process_time()
    for rd in range(1, args.rounds + 1):
        batch = [train[i] for i in order[(rd - 1) * args.prompts: rd * args.prompts]]
        rep = [p for p in batch for _ in range(args.group)]  # (B * G,) a group is G adjacent rows
        ids, pmask = encode_prompts(tok, rep)
        policy.eval()
        with torch.no_grad():
            ro = sample(policy, ids, pmask, 64, tok.eos_token_id, tok.pad_token_id, 1.0, generator=g)
        completions = decode_completions(tok, ro)
        rewards = torch.tensor(arithmetic_trace_reward(rep, completions)).view(-1, args.group)  # (B, G)
        adv = advantages(args.advantage, rewards, rep, completions)  # (B * G,)
        rows = (adv != 0).nonzero().flatten()
        inp, attn, mask, adv = ro.input_ids[rows], ro.attention_mask[rows], ro.completion_mask[rows].float(), adv[rows]
        with torch.no_grad():
            old = torch.cat([token_logprobs(policy, inp[i:i + 256], attn[i:i + 256]) for i in range(0, len(rows), 256)])
        opt = torch.optim.AdamW(policy.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
        policy.train()
        for k in range(args.updates):
            for group in opt.param_groups:
                group["lr"] = args.lr * min(1.0, (k + 1) / 4)  # 3 warm-up steps, as rft.RFTConfig
            idx = torch.randperm(len(rows), generator=g)[: args.minibatch]
            loss, _ = grpo_loss(token_logprobs(policy, inp[idx], attn[idx]), old[idx], None, adv[idx], mask[idx], cfg)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            opt.step()
        e = eval_arithmetic(policy, tok, test)
        print(json.dumps({"round": rd, "train_reward": round(rewards.mean().item(), 3), "rows": len(rows),
                          "answer": e["accuracy"], "trace": e["trace_accuracy"],
                          "cpu_s": round(time.process_time() - t0, 1)}), flush=True)
    # the end vs SFT, prompt by prompt over the 500 test chains (95% paired bootstrap)
    for what, end, start in zip(("answer", "trace"), per_prompt(policy, tok, test), sft):
        print(f"{what} gain over SFT: {paired_bootstrap(end, start)}", flush=True)


if __name__ == "__main__":
    main()
