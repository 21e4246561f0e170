"""How far can one GRPO step go? Move the weights along one batch's GRPO gradient and measure.

    python scripts/grpo_step_sizes.py [--model arith-sft] [--prompts 128] [--group 8]

For each step size eta (L2 norm of the weight change along the unit gradient) it prints the change
of the surrogate sum_i A_i * delta log pi(o_i) on the batch the gradient came from, and the reward
at temperature 1 on fresh train prompts. Results and their reading: docs/grpo.md (session 3).
"""

import argparse
import copy

import torch

from minirlhf.grpo import compute_advantages, grpo_loss, preset
from minirlhf.lm import decode_completions, encode_prompts, sample, token_logprobs
from minirlhf.models import load_model, load_tokenizer
from minirlhf.worlds.arithmetic import arithmetic_reward
from minirlhf.zoo import load_split


def rollouts(model, tok, prompts, group, seed):
    g = torch.Generator().manual_seed(seed)
    rep = [p for p in prompts for _ in range(group)]
    ids, mask = encode_prompts(tok, rep)
    ro = sample(model, ids, mask, 64, tok.eos_token_id, tok.pad_token_id, 1.0, generator=g)
    return ro, torch.tensor(arithmetic_reward(rep, decode_completions(tok, ro)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="arith-sft")
    p.add_argument("--prompts", type=int, default=128)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--fresh", type=int, default=256, help="fresh prompts (x 4 samples) for the reward")
    p.add_argument("--etas", type=float, nargs="*", default=[0.0, 0.03, 0.1, 0.3, -0.1])
    args = p.parse_args()
    tok, base = load_tokenizer(), load_model(args.model).eval()
    train = [r["prompt"] for r in load_split("arithmetic", "train")]
    cfg = preset("grpo", beta=0.0)
    ro, R = rollouts(base, tok, train[:args.prompts], args.group, seed=0)
    A = compute_advantages(R.view(-1, args.group), cfg).flatten()  # (N,)
    mask = ro.completion_mask.float()  # (N, T)
    with torch.no_grad():
        old = token_logprobs(base, ro.input_ids, ro.attention_mask)
    loss, _ = grpo_loss(token_logprobs(base, ro.input_ids, ro.attention_mask), old, None, A, mask, cfg)
    loss.backward()
    grads = [q.grad.clone() for q in base.parameters()]
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    print(f"batch reward {R.mean():.3f}, rows with A != 0: {(A != 0).float().mean():.2f}, grad norm {norm:.3f}")
    print("| eta | sum A * delta log-prob (batch) | fresh reward |\n|---|---|---|")
    fresh = train[5000:5000 + args.fresh]
    for eta in args.etas:
        m = copy.deepcopy(base).eval()
        with torch.no_grad():
            for q, g in zip(m.parameters(), grads):
                q -= eta * g / norm  # a step down the loss = up the surrogate
            surrogate = (A[:, None] * (token_logprobs(m, ro.input_ids, ro.attention_mask) - old) * mask).sum()
        _, Rf = rollouts(m, tok, fresh, 4, seed=1)
        print(f"| {eta} | {surrogate:+.1f} | {Rf.mean():.3f} |")


if __name__ == "__main__":
    main()
