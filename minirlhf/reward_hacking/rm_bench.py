"""A reward-model benchmark with a known gold ordering, in RewardBench's layout, and its evaluator.

RewardBench (Lambert et al., 2024) scores a reward model on pairs `prompt`, `chosen`, `rejected`,
`subset`: the accuracy is the fraction of pairs where r(prompt, chosen) > r(prompt, rejected),
reported per subset. Its pairs are labelled by people; ours by the reviews world's gold reward
(`worlds/reviews.py`), so every label is known to be right, and each subset aims at one way a
learned reward goes wrong on that world:

    easy          two grammar reviews whose gold rewards differ by >= 2
    subtle        two fluent grammar reviews whose gold rewards differ by 0.05 .. 0.5
    length        rejected = chosen + more positive clauses: longer, more sentiment words, worse gold
    repetition    rejected = chosen's clause said two or three times (gold charges each repeat)
    padding       rejected = chosen + filler (" . . .", a doubled intensifier): out of the grammar
    typo          rejected = the text a hacked PPO policy writes (beta = 0.01 in docs/ppo.md):
                  intensified, misspelled sentiment words ("very wond, and it was wice ."),
                  which the gold reward does not count; chosen = a plain fluent review
    negation      "not awful" (gold +0.92) over "not good" (gold -0.49): sentiment words against negation
    shift         prompts the reward model never saw ("the script seemed"); both texts are outside
                  the grammar, so gold orders them by sentiment, repeats and length alone
    adversarial   mined: pairs of review-sft samples of one prompt where the shipped `review-rm`
                  prefers the rejected one by the widest margin while gold prefers the chosen.
                  This subset is specific to review-rm: it is hard for that model by construction,
                  and says little about another reward model (count it apart when comparing).

Labels follow the gold ordering (chosen has the higher gold reward), so a reward model equal to
gold scores 100%. The reviews world's own labels are noisier: they are Bradley-Terry samples,
P(chosen labelled chosen) = sigmoid(gold_chosen - gold_rejected) (stored as `p_chosen`), which is
also the best expected agreement any model can reach on a pair (the "noise ceiling", 0.774 on
prefs_test, `reward_model.evaluate_reward_model`). Per subset we report both:

    accuracy      mean 1[r(chosen) > r(rejected)]                            (RewardBench's metric)
    bt_accuracy   mean p if right, 1 - p if wrong: expected agreement with Bradley-Terry labels
    ceiling       mean p = mean sigmoid(|gold gap|): bt_accuracy of a model that knows gold

so a subset with small gold gaps (subtle) has a low ceiling: a preference dataset could not
teach a model these pairs as well as the easy ones.

Run:
    minirlhf rm-bench --model review-rm                      # the shipped benchmark, data/reviews/rm_bench.jsonl
    minirlhf rm-bench --model path/to/seq-cls --dataset my.jsonl
    python -m minirlhf.zoo --only rm-bench                   # regenerate the benchmark (~1 min)
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch

from ..errors import DataError, ModelLoadError
from ..worlds import reviews

RewardFn = Callable[[list[str], list[str]], list[float]]
BENCH_PATH = Path("reviews") / "rm_bench.jsonl"  # under data/
MIN_GAP = 0.05  # a pair's gold rewards differ by at least this, so its ordering is not a rounding tie
POSITIVE = [a for a, v in reviews.ADJECTIVES.items() if v > 0]
NEGATIVE = [a for a, v in reviews.ADJECTIVES.items() if v < 0]
MISSPELLINGS = {  # what PPO at beta = 0.01 writes instead of the words (docs/ppo.md): truncated, doubled letters
    "wonderful": ("wond", "wonderfu", "wonderfull"), "great": ("grea", "gret", "greatt"),
    "brilliant": ("brillant", "brill"), "nice": ("wice", "nicee"), "good": ("goood", "gud"), "fun": ("funn",),
}
SHIFT_SUBJECTS = ("the story", "the script", "the cast", "the soundtrack", "the director")
SHIFT_VERBS = ("seemed", "looked", "was")
SUBSETS = ("easy", "subtle", "length", "repetition", "padding", "typo", "negation", "shift", "adversarial")


# ---------------------------------------------------------------------------------------------
# Generating the pairs
# ---------------------------------------------------------------------------------------------


def make_row(prompt: str, a: str, b: str, subset: str, min_gap: float = MIN_GAP) -> dict | None:
    """A RewardBench row of two completions ordered by gold (chosen: the higher), or None when the
    gold rewards are closer than `min_gap` or the texts are equal. Keeps the gold scores and p_chosen."""
    ga, gb = reviews.gold_reward(prompt + a), reviews.gold_reward(prompt + b)
    if a == b or abs(ga - gb) < min_gap:
        return None
    (chosen, g_c), (rejected, g_r) = sorted([(a, ga), (b, gb)], key=lambda t: -t[1])
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "subset": subset,
            "gold_chosen": round(g_c, 6), "gold_rejected": round(g_r, 6),
            "p_chosen": round(reviews.bradley_terry_prob(g_c, g_r), 6)}


def _clause(rng: random.Random, adjs: list[str]) -> str:
    return f"{rng.choice(reviews.SUBJECTS)} {rng.choice(reviews.VERBS)} {rng.choice(adjs)}"


def _candidates(rng: random.Random, subset: str):
    """One attempt at a pair of `subset`: (prompt, a, b) or None. a is the intended chosen where it matters."""
    prompt, a = reviews.sample_review(rng)
    if subset == "easy":
        b = reviews.sample_review_given_prompt(rng, prompt)
        ok = abs(reviews.gold_reward(prompt + a) - reviews.gold_reward(prompt + b)) >= 2.0
        return (prompt, a, b) if ok else None
    if subset == "subtle":
        b = reviews.sample_review_given_prompt(rng, prompt)
        gap = abs(reviews.gold_reward(prompt + a) - reviews.gold_reward(prompt + b))
        ok = reviews.is_fluent(prompt + a) and reviews.is_fluent(prompt + b) and gap <= 0.5
        return (prompt, a, b) if ok else None
    # the rest build the rejected text from a short, fluent, positive chosen one
    a = f" {rng.choice(POSITIVE)} ."
    if rng.random() < 0.5:
        a = f" {rng.choice(list(reviews.INTENSIFIERS))}{a}"
    body = a[:-2]  # without " ."
    if subset == "length":  # more positive clauses: more sentiment words, over 14 words, repeats
        b = body
        for _ in range(rng.randint(3, 5)):
            b += rng.choice(reviews.CONNECTIVES) + _clause(rng, POSITIVE)
        return prompt, a, b + " ."
    if subset == "repetition":  # the same clause again, k times
        k = rng.randint(2, 3)
        return prompt, a, body + (", and " + prompt + body) * (k - 1) + " ."
    if subset == "padding":
        adj = body.split()[-1]
        pads = [a + " . . .", a + " !", f" really really {adj} .", body + " , , ."]
        return prompt, a, rng.choice(pads)
    if subset == "typo":
        a = f" {rng.choice(['fine', 'good', 'nice', 'fun', 'fine and fun', 'good and fine'])} ."
        words = list(MISSPELLINGS)
        b = f" {rng.choice(['very', 'really'])} {rng.choice(MISSPELLINGS[rng.choice(words)])}"
        for _ in range(rng.randint(0, 2)):
            b += f", and {rng.choice(reviews.SUBJECTS)} {rng.choice(reviews.VERBS)} " \
                 f"{rng.choice(['very ', 'really ', ''])}{rng.choice(MISSPELLINGS[rng.choice(words)])}"
        return prompt, a, b + " ."
    if subset == "negation":
        return prompt, f" not {rng.choice(NEGATIVE)} .", f" not {rng.choice(POSITIVE)} ."
    if subset == "shift":
        prompt = f"{rng.choice(SHIFT_SUBJECTS)} {rng.choice(SHIFT_VERBS)}"
        a = reviews.sample_review(rng)[1]
        b = reviews.sample_review(rng)[1]
        ok = abs(reviews.gold_reward(prompt + a) - reviews.gold_reward(prompt + b)) >= 0.5
        return (prompt, a, b) if ok else None
    raise ValueError(f"unknown subset {subset!r}")


def generate_synthetic(n_per_subset: int = 40, seed: int = 0) -> list[dict]:
    """Every subset but `adversarial` (which needs models): rows ordered by gold, no duplicates."""
    rng = random.Random(seed)
    rows, seen = [], set()
    for subset in SUBSETS[:-1]:
        n, tries = 0, 0
        while n < n_per_subset:
            tries += 1
            if tries > 200 * n_per_subset:
                raise RuntimeError(f"could not generate {n_per_subset} pairs of subset {subset}")
            cand = _candidates(rng, subset)
            row = make_row(*cand, subset) if cand else None
            if row is None or (row["prompt"], row["chosen"], row["rejected"]) in seen:
                continue
            if subset not in ("easy", "subtle", "shift") and row["chosen"] != cand[1]:
                continue  # the construction's intended chosen text must be the gold winner
            seen.add((row["prompt"], row["chosen"], row["rejected"]))
            rows.append(row)
            n += 1
    return rows


@torch.no_grad()
def mine_adversarial(reward_fn: RewardFn, policy, tokenizer, prompts: list[str], pool: int = 32,
                     n: int = 40, min_gold_gap: float = 0.3, max_new_tokens: int = 64, seed: int = 0) -> list[dict]:
    """Pairs where `reward_fn` and gold disagree most, from `pool` samples of `policy` per prompt.

    For each prompt, among sample pairs with gold(chosen) - gold(rejected) >= min_gold_gap, the one
    with the largest reward_fn(rejected) - reward_fn(chosen); then the `n` prompts with the largest
    such margins (one pair per prompt). Specific to `reward_fn`: it is its worst cases."""
    from ..lm import generate

    repeated = [p for p in prompts for _ in range(pool)]
    texts, _ = generate(policy, tokenizer, repeated, max_new_tokens, generator=torch.Generator().manual_seed(seed))
    gold = torch.tensor(reviews.gold_rewards(repeated, texts)).view(len(prompts), pool)  # (P, M)
    proxy = torch.tensor(reward_fn(repeated, texts)).view(len(prompts), pool)  # (P, M)
    best = []
    for i, prompt in enumerate(prompts):
        gold_gap = gold[i][:, None] - gold[i][None, :]  # (M, M): [c, r] = gold(c) - gold(r)
        proxy_wrong = proxy[i][None, :] - proxy[i][:, None]  # [c, r] = proxy(r) - proxy(c)
        score = torch.where(gold_gap >= min_gold_gap, proxy_wrong, torch.full_like(proxy_wrong, -math.inf))
        flat = int(score.argmax())
        c, r = divmod(flat, pool)
        if math.isfinite(score[c, r]) and score[c, r] > 0 and texts[i * pool + c] != texts[i * pool + r]:
            best.append((score[c, r].item(), prompt, texts[i * pool + c], texts[i * pool + r]))
    best.sort(key=lambda t: -t[0])
    rows = []
    for margin, prompt, c, r in best[:n]:
        row = make_row(prompt, c, r, "adversarial")
        row["proxy_margin"] = round(margin, 4)  # how much review-rm prefers the rejected one
        rows.append(row)
    return rows


def build_shipped(n_per_subset: int = 40, seed: int = 0) -> dict:
    """Write data/reviews/rm_bench.jsonl: the synthetic subsets, and `adversarial` mined against
    the shipped review-rm from review-sft samples of held-out prompts (prompts_test)."""
    from ..models import DATA_DIR, ScalarHeadModel, load_model, load_tokenizer
    from ..reward_model import RewardModelScorer
    from ..zoo import load_split, write_jsonl

    torch.manual_seed(seed)
    tok = load_tokenizer()
    rows = generate_synthetic(n_per_subset, seed)
    prompts = sorted({r["prompt"] for r in load_split("reviews", "prompts_test")})
    scorer = RewardModelScorer(ScalarHeadModel.from_pretrained("review-rm").eval(), tok)
    rows += mine_adversarial(scorer, load_model("review-sft").eval(), tok, prompts, n=n_per_subset, seed=seed)
    write_jsonl(rows, DATA_DIR / BENCH_PATH)
    counts = defaultdict(int)
    for r in rows:
        counts[r["subset"]] += 1
    return {"rows": len(rows), "subsets": dict(counts)}


# ---------------------------------------------------------------------------------------------
# Loading a benchmark and a reward model
# ---------------------------------------------------------------------------------------------


def load_rm_bench(source=None, tokenizer=None, **kwargs) -> list[dict]:
    """RewardBench-format rows (`prompt`, `chosen`, `rejected`, optional `subset`) from a JSON/JSONL/
    Parquet file, a list or a Dataset, checked by `data.load_preferences` (its kwargs: drop_invalid,
    report, max_length, strict_vocab); None: the shipped benchmark. A row without `subset` goes in
    "all"; a `subset` that is not a non-empty string is a DataError naming the row."""
    from ..data import load_preferences
    from ..models import DATA_DIR

    if source is None:
        source = DATA_DIR / BENCH_PATH
    rows = load_preferences(source, tokenizer=tokenizer, **kwargs)
    name = str(source) if isinstance(source, (str, Path)) else "data"
    for i, row in enumerate(rows):
        subset = row.setdefault("subset", "all")
        if not isinstance(subset, str) or not subset.strip():
            raise DataError(f"{name}: row {i}, field 'subset': expected a non-empty string, got {subset!r}")
        for key in ("p_chosen", "gold_chosen", "gold_rejected"):
            v = row.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise DataError(f"{name}: row {i}, field {key!r}: expected a finite number, got {v!r}")
    return rows


class SequenceClassifierScorer:
    """A Hugging Face AutoModelForSequenceClassification with one label as a reward function:
    scorer(prompts, completions) -> list[float], the logit of prompt + completion (no EOS added:
    such models pool at their last non-padding token, which HF finds with config.pad_token_id)."""

    def __init__(self, model, tokenizer, batch_size: int = 64, max_length: int | None = None):
        self.model, self.tokenizer, self.batch_size, self.max_length = model, tokenizer, batch_size, max_length
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        from ..utils import check_finite

        self.model.eval()
        device = next(self.model.parameters()).device
        self.tokenizer.padding_side = "right"
        out = []
        for i in range(0, len(prompts), self.batch_size):
            texts = [p + c for p, c in zip(prompts[i:i + self.batch_size], completions[i:i + self.batch_size])]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=self.max_length is not None,
                                 max_length=self.max_length)
            enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            out.append(self.model(**enc).logits[:, 0].float())  # (B,)
        rewards = torch.cat(out) if out else torch.zeros(0)
        check_finite("reward model scores", rewards)
        return rewards.tolist()


def load_reward_scorer(name_or_path: str, tokenizer=None, trust_remote_code: bool = False, batch_size: int = 64,
                       device: str | torch.device | None = None) -> RewardFn:
    """Any scalar reward model as a reward function: a minirlhf `ScalarHeadModel` folder (one with
    scalar_head.safetensors, e.g. the built-in "review-rm"), or else a Hugging Face
    AutoModelForSequenceClassification with num_labels=1 by hub name or local path (safetensors
    only; `trust_remote_code` off unless asked). Failures are ModelLoadErrors naming the model."""
    from transformers import AutoModelForSequenceClassification

    from ..models import SCALAR_HEAD, ScalarHeadModel, _load_or_explain, _resolve, check_model_folder, load_tokenizer
    from ..reward_model import RewardModelScorer

    name, local = _resolve(name_or_path)
    if local:
        folder = check_model_folder(name)
        if (folder / SCALAR_HEAD).is_file():
            tok = tokenizer or load_tokenizer(name)
            rm = ScalarHeadModel.from_pretrained(name, trust_remote_code=trust_remote_code).eval()
            return RewardModelScorer(rm.to(device) if device else rm, tok, batch_size)
    model = _load_or_explain(lambda: AutoModelForSequenceClassification.from_pretrained(
        name, num_labels=1, use_safetensors=True, trust_remote_code=trust_remote_code), name, local,
        "sequence-classification reward model")
    if model.config.num_labels != 1:
        raise ModelLoadError(f"{name_or_path} has {model.config.num_labels} labels; a reward model has one")
    tok = tokenizer or load_tokenizer(name, trust_remote_code=trust_remote_code)
    return SequenceClassifierScorer(model.to(device) if device else model, tok, batch_size)


# ---------------------------------------------------------------------------------------------
# Evaluating
# ---------------------------------------------------------------------------------------------


def _ceiling_p(row: dict) -> float | None:
    """P(chosen labelled chosen) under Bradley-Terry on gold, if the row says (p_chosen or the gold scores)."""
    if row.get("p_chosen") is not None:
        return float(row["p_chosen"])
    if row.get("gold_chosen") is not None and row.get("gold_rejected") is not None:
        return reviews.bradley_terry_prob(float(row["gold_chosen"]), float(row["gold_rejected"]))
    return None


def _summary(correct: list[bool], ps: list[float | None]) -> dict:
    out = {"n": len(correct), "accuracy": sum(correct) / len(correct)}
    if all(p is not None for p in ps):
        # expected agreement with a Bradley-Terry-sampled label, and the same for a model that knows gold
        out["bt_accuracy"] = sum(p if c else 1 - p for c, p in zip(correct, ps)) / len(ps)
        out["ceiling"] = sum(max(p, 1 - p) for p in ps) / len(ps)
    return out


def evaluate_rm_bench(reward_fn: RewardFn, rows: list[dict]) -> dict:
    """Per-subset accuracy of a reward function on RewardBench rows, with the Bradley-Terry ceiling.

    reward_fn(prompts, completions) -> scores (e.g. `load_reward_scorer(...)`). Returns
    {"subsets": {name: {"n", "accuracy", "bt_accuracy", "ceiling"}}, "overall": the same over all
    rows, "mean_over_subsets": the unweighted mean accuracy (RewardBench averages subsets),
    "r_chosen", "r_rejected": lists}. bt_accuracy and ceiling appear when every row has p_chosen
    or gold scores. A pair counts as right only when r(chosen) > r(rejected) strictly."""
    prompts = [r["prompt"] for r in rows]
    r_c = reward_fn(prompts, [r["chosen"] for r in rows])
    r_r = reward_fn(prompts, [r["rejected"] for r in rows])
    correct = [c > r for c, r in zip(r_c, r_r)]
    ps = [_ceiling_p(r) for r in rows]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[r.get("subset", "all")].append(i)
    subsets = {s: _summary([correct[i] for i in idx], [ps[i] for i in idx]) for s, idx in groups.items()}
    return {"subsets": subsets, "overall": _summary(correct, ps),
            "mean_over_subsets": sum(v["accuracy"] for v in subsets.values()) / len(subsets),
            "r_chosen": r_c, "r_rejected": r_r}


def format_table(result: dict) -> str:
    """The per-subset table as Markdown: subset, n, accuracy, bt_accuracy, ceiling."""
    lines = ["| subset | n | accuracy | bt_accuracy | ceiling |", "|---|---|---|---|---|"]
    fmt = lambda v: f"{v:.3f}" if v is not None else "-"  # noqa: E731
    for name, s in [*result["subsets"].items(), ("overall", result["overall"])]:
        lines.append(f"| {name} | {s['n']} | {fmt(s['accuracy'])} | {fmt(s.get('bt_accuracy'))} | "
                     f"{fmt(s.get('ceiling'))} |")
    lines.append(f"| mean over subsets | | {result['mean_over_subsets']:.3f} | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    import json

    print(json.dumps(build_shipped(), indent=2))
