"""Reviews: a preference world with a known gold reward (the offline "positive IMDb review" task).

The DPO paper (Rafailov et al., 2023, Sec. 6) tests methods on "generate a positive movie
review" with a sentiment classifier as the gold reward. We have no hub, so the world is a small
generative grammar of reviews and a gold reward written down in code:

    review  := clause ( (", and " | ", but ") clause )*  " ."
    clause  := subject " " verb " " adjp
    adjp    := adj | intensifier " " adj | "not " adj | adj " and " adj

    gold(text) = 2 * tanh(sentiment / 2)                 saturating sentiment
                 - 0.5 * repeats                         each repeated adjective
                 - 0.25 * max(0, n_words - 14)           rambling
                 - 2.0 * [text is not in the grammar]    disfluency

`sentiment` sums each adjective's polarity, x1.5 after "very"/"really", x(-0.5) after "not".
The reward is hackable on purpose: sentiment words pile up linearly in a learned reward model,
while the gold reward saturates and charges for repetition, length and broken grammar.

Preference pairs: two completions of the same prompt drawn from the grammar, labelled by
sampling from the Bradley-Terry model of the gold reward,
    P(a > b) = sigmoid(gold(a) - gold(b)),
so the labels are noisy, and the best any reward model can do on held-out pairs is the
"noise ceiling" mean(max(p, 1 - p)) (stored per pair as `p_chosen`).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

SUBJECTS = ("the movie", "the film", "the plot", "the acting", "the music", "the ending", "it")
VERBS = ("was", "is", "felt")
ADJECTIVES = {  # polarity of each adjective
    "great": 2.0, "wonderful": 2.0, "brilliant": 2.0, "fun": 1.0, "good": 1.0, "nice": 1.0,
    "fine": 0.5, "okay": 0.0, "long": -0.5, "slow": -1.0, "dull": -1.0, "bad": -1.5,
    "boring": -1.5, "awful": -2.0, "terrible": -2.0,
}
INTENSIFIERS = {"very": 1.5, "really": 1.5}
NEGATION = -0.5
CONNECTIVES = (", and ", ", but ")
MAX_FLUENT_WORDS = 14

_ADJ = "|".join(ADJECTIVES)
_ADJP = rf"(?:(?:very|really|not) )?(?:{_ADJ})(?: and (?:{_ADJ}))?"
_CLAUSE = rf"(?:{'|'.join(SUBJECTS)}) (?:{'|'.join(VERBS)}) {_ADJP}"
GRAMMAR_RE = re.compile(rf"^{_CLAUSE}(?:, (?:and|but) {_CLAUSE})* \.$")


@dataclass
class ReviewsConfig:
    """How the reviews world is generated."""

    n_sft: int = 20000
    """Reviews for pretraining/SFT of the base review model."""
    n_pairs_train: int = 10000
    """Preference pairs for training reward models and DPO."""
    n_pairs_test: int = 1000
    """Held-out preference pairs."""
    n_prompts_test: int = 256
    """Held-out prompts for RL evaluation."""
    seed: int = 0
    """Seed of the generator: the same seed gives the same files, byte for byte."""


# ---------------------------------------------------------------------------------------------
# The grammar (the base distribution)
# ---------------------------------------------------------------------------------------------


def sample_adjp(rng: random.Random) -> str:
    adj = rng.choice(list(ADJECTIVES))
    u = rng.random()
    if u < 0.2:
        return f"{rng.choice(list(INTENSIFIERS))} {adj}"
    if u < 0.3:
        return f"not {adj}"
    if u < 0.45:
        # "adj and adj": occasionally the same adjective twice (a repetition the gold reward charges)
        second = adj if rng.random() < 0.25 else rng.choice(list(ADJECTIVES))
        return f"{adj} and {second}"
    return adj


def sample_clause(rng: random.Random, subject: str | None = None, verb: str | None = None) -> str:
    return f"{subject or rng.choice(SUBJECTS)} {verb or rng.choice(VERBS)} {sample_adjp(rng)}"


def sample_review(rng: random.Random) -> tuple[str, str]:
    """A (prompt, completion) pair: the prompt is the first subject and verb."""
    subject, verb = rng.choice(SUBJECTS), rng.choice(VERBS)
    n_clauses = rng.choices([1, 2, 3, 4], weights=[0.35, 0.4, 0.2, 0.05])[0]
    text = sample_clause(rng, subject, verb)
    for _ in range(n_clauses - 1):
        text += rng.choice(CONNECTIVES) + sample_clause(rng)
    text += " ."
    prompt = f"{subject} {verb}"
    return prompt, text[len(prompt):]


# ---------------------------------------------------------------------------------------------
# The gold reward
# ---------------------------------------------------------------------------------------------


def sentiment(text: str) -> float:
    """Sum of adjective polarities, scaled by a preceding intensifier or negation."""
    words = re.findall(r"[a-z]+", text.lower())
    total = 0.0
    for i, w in enumerate(words):
        if w in ADJECTIVES:
            scale = 1.0
            if i > 0 and words[i - 1] in INTENSIFIERS:
                scale = INTENSIFIERS[words[i - 1]]
            elif i > 0 and words[i - 1] == "not":
                scale = NEGATION
            total += scale * ADJECTIVES[w]
    return total


def is_fluent(text: str) -> bool:
    """True when the text is a sentence of the grammar."""
    return bool(GRAMMAR_RE.match(text.strip()))


def gold_reward(text: str) -> float:
    """The gold reward of a whole review (prompt + completion). See the module docstring."""
    words = re.findall(r"[a-z]+", text.lower())
    adjs = [w for w in words if w in ADJECTIVES]
    repeats = len(adjs) - len(set(adjs))
    score = 2.0 * math.tanh(sentiment(text) / 2.0)
    score -= 0.5 * repeats
    score -= 0.25 * max(0, len(words) - MAX_FLUENT_WORDS)
    score -= 0.0 if is_fluent(text) else 2.0
    return score


def gold_rewards(prompts: list[str], completions: list[str]) -> list[float]:
    return [gold_reward(p + c) for p, c in zip(prompts, completions)]


def bradley_terry_prob(r_a: float, r_b: float) -> float:
    """P(a preferred over b) = sigmoid(r_a - r_b) (Bradley and Terry, 1952)."""
    return 1.0 / (1.0 + math.exp(-(r_a - r_b)))


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


def generate_sft(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [dict(zip(("prompt", "completion"), sample_review(rng))) for _ in range(n)]


def generate_pairs(n: int, seed: int) -> list[dict]:
    """Preference pairs in TRL's prompt/chosen/rejected format, with gold scores and P(chosen)."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        prompt, a = sample_review(rng)
        b = a
        while b == a:  # a second completion of the same prompt, never identical
            b = sample_review_given_prompt(rng, prompt)
        ga, gb = gold_reward(prompt + a), gold_reward(prompt + b)
        p_a = bradley_terry_prob(ga, gb)
        a_wins = rng.random() < p_a  # a sampled, noisy label
        chosen, rejected = (a, b) if a_wins else (b, a)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                     "gold_chosen": round(ga if a_wins else gb, 6),
                     "gold_rejected": round(gb if a_wins else ga, 6),
                     "p_chosen": round(p_a if a_wins else 1.0 - p_a, 6)})
    return rows


def sample_review_given_prompt(rng: random.Random, prompt: str) -> str:
    while True:
        p, c = sample_review(rng)
        if p == prompt:
            return c


def generate(cfg: ReviewsConfig = ReviewsConfig()) -> dict[str, list[dict]]:
    """sft (prompt/completion), prefs_train and prefs_test (prompt/chosen/rejected), prompts_test."""
    rng = random.Random(cfg.seed + 3)
    return {
        "sft": generate_sft(cfg.n_sft, cfg.seed),
        "prefs_train": generate_pairs(cfg.n_pairs_train, cfg.seed + 1),
        "prefs_test": generate_pairs(cfg.n_pairs_test, cfg.seed + 2),
        "prompts_test": [{"prompt": sample_review(rng)[0]} for _ in range(cfg.n_prompts_test)],
    }
