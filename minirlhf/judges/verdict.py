"""Generative verifiers: the language model is the judge, the reward is the probability of "Yes".

Zhang et al. 2024 ("Generative Verifiers: Reward Modeling as Next-Token Prediction") train the
LM itself, by SFT, to answer a question about a solution with a verdict token, and use

    r(x, y) = p_theta("Yes" | x, y, I)          I = "Is the answer correct (Yes/No)?"   (GenRM, Sec. 3)

the probability of the "Yes" token under the *full-vocabulary* softmax. The built-in tokenizer is
character-level (`minirlhf/tokenizer.py`, 100 tokens), so our verdict tokens are the single
characters 'Y' (yes) and 'N' (no) and the question is `QUESTION` below. Two readings of the verdict:

    full vocabulary (default, as the paper):   p(Y) = exp(z_Y) / sum_v exp(z_v)
    restricted to {Y, N}:                      p(Y) = exp(z_Y) / (exp(z_Y) + exp(z_N)) = sigmoid(z_Y - z_N)

After SFT on verdicts the two agree (the rest of the vocabulary has ~no mass); before it, or on an
off-distribution input, the restricted reading still gives a usable score. The restricted one is
also what a pairwise judge uses for "A" vs "B" (`pairwise.py`).

Training data come from the arithmetic world's checker: a sample of arith-sft, the question, and
the verdict 'Y' iff the whole trace is right (`check_chain(...).trace_correct`; gold step labels
made prefix-closed, their minimum, exactly the label of the gold PRM's answer step in `prm.py`).
With `rationale=True` the verdict follows a short written check naming the first wrong step
("step 2 wrong\\nN" / "all steps right\\nY"): generative chain-of-thought verification (GenRM-CoT);
its reward is p(Y) after a sampled check, averaged over several samples (test-time scaling).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor

from ..lm import encode_prompts, generate, position_ids_from_mask
from ..prm import gold_step_labels

QUESTION = "\nIs it right? "   # appended after the solution; the next token is the verdict
YES, NO = "Y", "N"             # single characters of the built-in tokenizer
ALL_RIGHT = "all steps right"  # the written check of a right chain; a wrong one's is "step k wrong"


def verdict_ids(tokenizer, yes: str = YES, no: str = NO) -> tuple[int, int]:
    """Token ids of the two verdict strings; each must be exactly one token."""
    ids = []
    for s in (yes, no):
        toks = tokenizer(s, add_special_tokens=False)["input_ids"]
        if len(toks) != 1:
            raise ValueError(f"verdict {s!r} is {len(toks)} tokens for this tokenizer; pick a single-token verdict")
        ids.append(toks[0])
    return ids[0], ids[1]


def verdict_prob(logits: Tensor, yes_id: int, no_id: int, restrict: bool = False) -> Tensor:
    """p(Yes) from next-token logits. (..., V) -> (...).

    restrict=False: softmax over the whole vocabulary, read at Yes (GenRM, Zhang et al. 2024).
    restrict=True:  softmax over {Yes, No} only = sigmoid(z_yes - z_no).
    """
    logits = logits.float()
    if restrict:
        return torch.sigmoid(logits[..., yes_id] - logits[..., no_id])
    return F.softmax(logits, dim=-1)[..., yes_id]


def verifier_prompt(prompt: str, completion: str, question: str = QUESTION) -> str:
    """The text the verifier reads: problem + solution + question (the verdict comes next)."""
    return prompt + completion + question


def first_wrong_step(prompt: str, completion: str) -> int | None:
    """1-based index of the first wrong step of a chain by the gold (prefix-closed) labels, or None."""
    labels = gold_step_labels(prompt, completion)
    return next((k + 1 for k, y in enumerate(labels) if not y), None)


def rationale(prompt: str, completion: str) -> str:
    """The written check of GenRM-CoT: which step is wrong, then the verdict on its own line."""
    k = first_wrong_step(prompt, completion)
    return (ALL_RIGHT + "\n" + YES) if k is None else (f"step {k} wrong\n" + NO)


def parse_check(check: str) -> int | None | str:
    """A written check -> the step it names (int), None for "all steps right", or "other" (off the grammar)."""
    line = check.split("\n")[0].strip()
    if line == ALL_RIGHT:
        return None
    m = re.fullmatch(r"step (\d+) wrong", line)
    return int(m.group(1)) if m else "other"


def check_accuracy(checks: list[str], prompts: list[str], completions: list[str]) -> dict[str, float]:
    """How well written checks locate the first wrong step (gold: `first_wrong_step`).

    exact: the check is the gold one (names the first wrong step, or says all right on a right chain);
    verdict: it says "all right" on a right chain, names some step on a wrong one;
    step_on_wrong: among wrong chains, it names the first wrong step; right_on_right: among right chains, it
    says all right; off_grammar: neither form; mode_step_on_wrong: the baseline of a check that always names the
    most frequent first wrong step of these wrong chains.
    """
    said = [parse_check(c) for c in checks]
    gold = [first_wrong_step(p, c) for p, c in zip(prompts, completions)]
    wrong = [(s, y) for s, y in zip(said, gold) if y is not None]
    right = [s for s, y in zip(said, gold) if y is None]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {"exact": mean([s == y for s, y in zip(said, gold)]),
            "verdict": mean([s is None if y is None else isinstance(s, int) for s, y in zip(said, gold)]),
            "step_on_wrong": mean([s == y for s, y in wrong]), "right_on_right": mean([s is None for s in right]),
            "off_grammar": mean([s == "other" for s in said]),
            "mode_step_on_wrong": max((sum(y == k for _, y in wrong) for _, k in wrong), default=0) / len(wrong)
            if wrong else float("nan")}


def verdict_rows(prompts: list[str], completions: list[str], labels: list[bool] | None = None,
                 with_rationale: bool = False) -> list[dict]:
    """SFT rows {"prompt": problem + solution + question, "completion": verdict}.

    labels: the verdicts (True = right); default the checker's whole-trace correctness, which is
    the minimum of the gold step labels. with_rationale: the completion is `rationale(...)`.
    """
    if labels is None:
        labels = [first_wrong_step(p, c) is None for p, c in zip(prompts, completions)]
    rows = []
    for p, c, y in zip(prompts, completions, labels):
        target = rationale(p, c) if with_rationale else (YES if y else NO)
        rows.append({"prompt": verifier_prompt(p, c), "completion": target})
    return rows


@torch.no_grad()
def verdict_scores(model, tokenizer, prompts: list[str], completions: list[str], restrict: bool = False,
                   batch_size: int = 512, question: str = QUESTION, yes: str = YES, no: str = NO) -> Tensor:
    """p(Y | problem, solution, question) for each solution -> (N,). One forward pass, no sampling.

    yes, no: the two tokens compared. For GenRM-CoT, yes="a", no="s" reads the first token of the written
    check ("all steps right" vs "step k wrong") = p(the check says all right), restricted to the two:
    the limit of `cot_verdict_scores` as n_samples grows, when the verdict follows its check (see `first_token_scores`).
    """
    yes_id, no_id = verdict_ids(tokenizer, yes, no)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    texts = [verifier_prompt(p, c, question) for p, c in zip(prompts, completions)]
    out = []
    for i in range(0, len(texts), batch_size):
        ids, mask = encode_prompts(tokenizer, texts[i:i + batch_size])  # left-padded: the last column is the question's end
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits[:, -1]
        out.append(verdict_prob(logits, yes_id, no_id, restrict).cpu())  # (b,)
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def first_token_scores(model, tokenizer, prompts: list[str], completions: list[str]) -> Tensor:
    """GenRM-CoT without sampling: p(the written check starts "all steps right") over {'a', 's'} -> (N,).

    A sampled check starts with 'a' with this probability, and after training its verdict is Y after
    "all steps right" and N after "step k wrong" (~always), so the average of many sampled verdicts tends to it.
    """
    return verdict_scores(model, tokenizer, prompts, completions, restrict=True, yes=ALL_RIGHT[0], no="s")


@torch.no_grad()
def cot_verdict_samples(model, tokenizer, prompts: list[str], completions: list[str], n_samples: int = 4,
                        temperature: float = 1.0, max_check_tokens: int = 24, restrict: bool = True,
                        generator: torch.Generator | None = None) -> tuple[Tensor, list[str]]:
    """`n_samples` written checks per solution and p(Y) read after each -> ((N, n_samples), the N * n_samples checks).
    temperature 0 is the greedy check (then n_samples = 1 suffices)."""
    yes_id, no_id = verdict_ids(tokenizer)
    texts = [verifier_prompt(p, c) for p, c in zip(prompts, completions) for _ in range(n_samples)]
    checks, _ = generate(model, tokenizer, texts, max_check_tokens, temperature, generator=generator, batch_size=512)
    checks = [c.split("\n")[0] + "\n" for c in checks]  # keep the written check, drop whatever verdict it sampled
    device = next(model.parameters()).device
    scores = []
    for i in range(0, len(texts), 512):
        ids, mask = encode_prompts(tokenizer, [t + c for t, c in zip(texts[i:i + 512], checks[i:i + 512])])
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits[:, -1]
        scores.append(verdict_prob(logits, yes_id, no_id, restrict).cpu())
    return torch.cat(scores).view(len(prompts), n_samples), checks


def cot_verdict_scores(model, tokenizer, prompts: list[str], completions: list[str], n_samples: int = 4,
                       temperature: float = 1.0, max_check_tokens: int = 24, restrict: bool = True,
                       generator: torch.Generator | None = None) -> Tensor:
    """GenRM-CoT with majority-style averaging: sample `n_samples` written checks per solution, read
    p(Y) after each check, average -> (N,). The check ends at its newline; the verdict is read there.
    """
    return cot_verdict_samples(model, tokenizer, prompts, completions, n_samples, temperature, max_check_tokens,
                               restrict, generator)[0].mean(-1)
