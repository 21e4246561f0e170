"""Arithmetic chains: a verifiable world with a final-answer reward and a label for every step.

A prompt is a start value and a few operations, all modulo `modulus` (10 by default):

    prompt:      "3 +4 *2 -7\\n"
    completion:  "3+4=7\\n7*2=4\\n4-7=7\\n#### 7"

One step per line, then the final answer after "####" (the same marker GSM8K uses, so the
answer extractor works on real GSM8K solutions too).

Step labels. A step is *valid* when it is well formed, applies the prompt's next operation,
starts from the previous line's result (or the start value) and computes it right. It is
*on track* when, in addition, its result is the true running value. The two differ because
some steps hide earlier errors: "*0" sends every value to 0, so "5*0=0" after a wrong "7*2=5"
is valid and back on track, and the final answer is right although the process was wrong.
This is what separates outcome rewards from process rewards (see notebook 06).

In distribution, chains have 2-5 operations; out of distribution (OOD), 6-7.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

OPS = ("+", "-", "*")
STEP_RE = re.compile(r"^(\d+)([+\-*])(\d+)=(\d+)$")
ANSWER_RE = re.compile(r"####\s*(-?[\d,]+(?:\.\d+)?)")

# A number as people and models write it: "-3", "$1,234", "-$5", "12.00", ".5" (group "sign", "sign2", "digits")
NUMBER = r"(?P<sign>-?)\s*(?:\\?\$)?\s*(?P<sign2>-?)(?P<digits>\d[\d,]*(?:\.\d+)?|\.\d+)"
# Where a final answer is written, most explicit first; the last occurrence of the first kind found counts
FINAL_ANSWER_RES = (
    re.compile(r"####\s*" + NUMBER),  # GSM8K: "#### 1,234"
    re.compile(r"\\boxed\{\s*" + NUMBER + r"\s*(?:\\?%)?\s*\}"),  # LaTeX: "\boxed{12}"
    re.compile(r"answer\s*(?:is|:)\s*:?[\s*]*" + NUMBER, re.IGNORECASE),  # "The answer is 12."
    re.compile(r"^\s*" + NUMBER + r"\s*\.?\s*$"),  # the whole text: "12"
)


@dataclass
class ArithmeticConfig:
    """How the arithmetic world is generated."""

    modulus: int = 10
    """All values live in 0..modulus-1."""
    min_ops: int = 2
    """Fewest operations in an in-distribution chain."""
    max_ops: int = 5
    """Most operations in an in-distribution chain."""
    ood_min_ops: int = 6
    """Fewest operations in an out-of-distribution (longer) chain."""
    ood_max_ops: int = 7
    """Most operations in an out-of-distribution chain."""
    n_train: int = 20000
    """Training problems (SFT and RL prompts)."""
    n_test: int = 500
    """Problems in each test split (in distribution and OOD)."""
    n_dev: int = 300
    """In-distribution problems for model selection (early stopping), never trained on."""
    seed: int = 0
    """Seed of the generator: the same seed gives the same files, byte for byte."""


def apply_op(left: int, op: str, operand: int, modulus: int) -> int:
    if op == "+":
        return (left + operand) % modulus
    if op == "-":
        return (left - operand) % modulus
    if op == "*":
        return (left * operand) % modulus
    raise ValueError(f"unknown operation {op!r}")


def make_problem(rng: random.Random, n_ops: int, modulus: int) -> tuple[int, list[tuple[str, int]]]:
    start = rng.randrange(modulus)
    ops = [(rng.choice(OPS), rng.randrange(modulus)) for _ in range(n_ops)]
    return start, ops


def format_prompt(start: int, ops: list[tuple[str, int]]) -> str:
    return f"{start} " + " ".join(f"{op}{a}" for op, a in ops) + "\n"


def parse_prompt(prompt: str) -> tuple[int, list[tuple[str, int]]]:
    tokens = prompt.strip().split()
    if not tokens:
        raise ValueError(f"empty arithmetic prompt: {prompt!r}")
    start = int(tokens[0])
    ops = []
    for tok in tokens[1:]:
        if len(tok) < 2 or tok[0] not in OPS or not tok[1:].isdigit():
            raise ValueError(f"malformed operation {tok!r} in prompt {prompt!r}")
        ops.append((tok[0], int(tok[1:])))
    return start, ops


def solve(start: int, ops: list[tuple[str, int]], modulus: int) -> list[int]:
    """The true running values after each operation."""
    values, v = [], start
    for op, a in ops:
        v = apply_op(v, op, a, modulus)
        values.append(v)
    return values


def format_completion(start: int, ops: list[tuple[str, int]], modulus: int) -> str:
    lines, v = [], start
    for op, a in ops:
        nxt = apply_op(v, op, a, modulus)
        lines.append(f"{v}{op}{a}={nxt}")
        v = nxt
    return "\n".join(lines) + f"\n#### {v}"


def extract_answer(text: str) -> str | None:
    """The final answer after '####' (works for GSM8K solutions too), commas removed."""
    m = ANSWER_RE.search(text)
    return m.group(1).replace(",", "") if m else None


def extract_numeric_answer(text: str) -> Fraction | None:
    """The final answer of a real-data solution as an exact number, or None if it has none.

    Accepts what models write: "#### $1,234", "#### 12.00" (== 12), "#### -3", "\\boxed{12}",
    "The answer is 12." and a text that is only a number; commas, "$" and a trailing "%" are
    ignored. Compare the results with `==` (Fraction: 12.00 == 12 exactly). The built-in world
    keeps `extract_answer` (a string after "####").
    """
    for pattern in FINAL_ANSWER_RES:
        matches = list(pattern.finditer(text))
        if matches:
            m = matches[-1]
            value = Fraction(m.group("digits").replace(",", ""))
            return -value if m.group("sign") or m.group("sign2") else value
    return None


def numeric_answer_reward(gold: dict[str, Fraction]) -> Callable[[list[str], list[str]], list[float]]:
    """The verifiable reward on real data: 1.0 when a completion's final answer equals its prompt's
    gold answer (`gold`: prompt -> number, e.g. from `data.load_prompts_with_answers`), else 0.0.

    A completion without a final answer is wrong, never equal to a missing gold answer.
    """

    def answer_reward(prompts: list[str], completions: list[str]) -> list[float]:
        return [float((a := extract_numeric_answer(c)) is not None and a == gold[p])
                for p, c in zip(prompts, completions)]

    return answer_reward


@dataclass
class ChainResult:
    """What the checker says about one completion."""

    answer: str | None
    """The extracted final answer, or None if there is no '#### N' line."""
    answer_correct: bool
    """The final answer equals the true answer (the outcome reward)."""
    step_valid: list[bool] = field(default_factory=list)
    """Per written step: well formed, right operation, continues the previous line, computed right."""
    step_on_track: list[bool] = field(default_factory=list)
    """Per written step: valid, and its result is the true running value (a hidden error counts as
    back on track: after "7*2=5", the valid step "5*0=0" is on track again)."""
    n_expected_steps: int = 0
    """How many steps the prompt asks for."""

    @property
    def reward(self) -> float:
        return 1.0 if self.answer_correct else 0.0

    @property
    def trace_correct(self) -> bool:
        """Every step valid, exactly the expected number of steps, and the right answer."""
        return (self.answer_correct and len(self.step_valid) == self.n_expected_steps
                and all(self.step_valid))


def split_steps(completion: str) -> tuple[list[str], str | None]:
    """Split a completion into its step lines and its answer line ('#### N'), if any."""
    lines = [ln.strip() for ln in completion.strip().split("\n") if ln.strip()]
    steps, answer_line = [], None
    for ln in lines:
        if ln.startswith("####"):
            answer_line = ln
            break
        steps.append(ln)
    return steps, answer_line


def check_chain(prompt: str, completion: str, modulus: int = 10) -> ChainResult:
    """Grade a completion: final-answer correctness and a label for every written step."""
    start, ops = parse_prompt(prompt)
    truth = solve(start, ops, modulus)
    steps, answer_line = split_steps(completion)
    answer = extract_answer(answer_line) if answer_line else None
    valid, on_track = [], []
    prev_written: int | None = start  # the value the next line must start from
    for i, line in enumerate(steps):
        m = STEP_RE.match(line)
        ok = False
        result = None
        if m and i < len(ops):
            left, op, a, result = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            ok = (prev_written is not None and left == prev_written and (op, a) == ops[i]
                  and result == apply_op(left, op, a, modulus))
        valid.append(ok)
        on_track.append(ok and result == truth[i])
        prev_written = result
    correct = answer is not None and answer.lstrip("-").isdigit() and int(answer) == truth[-1] \
        if truth else False
    return ChainResult(answer, bool(correct), valid, on_track, len(ops))


def arithmetic_reward(prompts: list[str], completions: list[str], modulus: int = 10) -> list[float]:
    """The verifiable outcome reward: 1.0 for a right final answer, else 0.0."""
    return [check_chain(p, c, modulus).reward for p, c in zip(prompts, completions)]


def arithmetic_trace_reward(prompts: list[str], completions: list[str], modulus: int = 10) -> list[float]:
    """A stricter verifiable reward: 1.0 only if every step is valid and the answer is right.

    With 10 possible answers, ~10% of wrong chains still end on the right answer by luck (and `*0`
    hides earlier slips), so the outcome reward also pays for wrong reasoning; this one does not.
    """
    return [1.0 if check_chain(p, c, modulus).trace_correct else 0.0 for p, c in zip(prompts, completions)]


def generate_split(n: int, min_ops: int, max_ops: int, modulus: int, seed: int) -> list[dict]:
    """Rows in TRL's prompt-completion format, plus the answer and the number of operations."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        n_ops = rng.randint(min_ops, max_ops)
        start, ops = make_problem(rng, n_ops, modulus)
        rows.append({"prompt": format_prompt(start, ops),
                     "completion": format_completion(start, ops, modulus),
                     "answer": str(solve(start, ops, modulus)[-1]),
                     "n_ops": n_ops})
    return rows


def generate(cfg: ArithmeticConfig = ArithmeticConfig()) -> dict[str, list[dict]]:
    """The splits: train, dev and test (in distribution) and test_ood (longer chains).

    Dev and test problems are removed from the training split, so accuracy is measured on
    unseen chains; dev is for choosing when to stop, test for reporting.
    """
    test = generate_split(cfg.n_test, cfg.min_ops, cfg.max_ops, cfg.modulus, cfg.seed + 1)
    test_ood = generate_split(cfg.n_test, cfg.ood_min_ops, cfg.ood_max_ops, cfg.modulus, cfg.seed + 2)
    test_prompts = {r["prompt"] for r in test}
    dev = [r for r in generate_split(cfg.n_dev, cfg.min_ops, cfg.max_ops, cfg.modulus, cfg.seed + 3)
           if r["prompt"] not in test_prompts]
    held_out = test_prompts | {r["prompt"] for r in dev}
    train = [r for r in generate_split(cfg.n_train, cfg.min_ops, cfg.max_ops, cfg.modulus, cfg.seed)
             if r["prompt"] not in held_out]
    return {"train": train, "dev": dev, "test": test, "test_ood": test_ood}
