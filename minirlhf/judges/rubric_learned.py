"""A learned rubric: one small language model answers each criterion's yes/no question, the reward is
the weighted sum of its per-criterion probabilities of "Y".

`rubric.CHECKLIST` scores each criterion with a rule (a regex, the grammar). Rubric rewards in practice
(Gunjal et al. 2025, "Rubrics as Rewards") ask a *judge model* each question instead. Here the judge is
`review-sft` fine-tuned by SFT on verdicts (as `verdict.py`'s generative verifier): one row per review and
criterion,

    prompt + review + question_i  ->  'Y' / 'N'          label_i = the checklist's answer = a threshold of
                                                         the gold criterion (`criterion_labels`)

and its reward is the checklist's formula with the rules replaced by the judge's probabilities:

    R(x, y) = b + sum_i w_i p_theta('Y' | x, y, question_i)        p restricted to {Y, N} (`verdict.verdict_prob`)

with (w, b) fitted to gold by least squares on samples (`rubric.fit_linear`), exactly as the rule-based
checklist's weights. The questions (all phrased so that 'Y' is good):

    criterion       question              label (from `rubric.GOLD_RUBRIC`)
    positive        "Positive? "          positive criterion > 0          (sentiment > 0)
    very_positive   "Very positive? "     positive criterion >= 2 tanh(1) (sentiment >= 2)
    no_repeats      "No repeats? "        no_repeats criterion == 0
    concise         "At most 14 words? "  concise criterion == 0
    fluent          "Grammatical? "       fluent criterion == 0

The shipped judge `review-rubric` is built by `build_learned_rubric` (zoo step `rubric-judge`); its fitted
weights are stored in the checkpoint's `rubric.json` (`load_learned_rubric`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ConfigError, ModelLoadError
from . import rubric
from .verdict import verdict_scores


def gold_criteria(text: str) -> dict[str, float]:
    """The four gold criteria of one review (they sum to `reviews.gold_reward`)."""
    return {c.name: c.judge(text) for c in rubric.GOLD_RUBRIC}


_VERY = 2.0 * math.tanh(1.0) - 1e-9  # the positive criterion at sentiment 2 (tanh is monotone)


@dataclass(frozen=True)
class Question:
    """One criterion of the learned rubric: its name, the question the judge answers, the gold label."""

    name: str
    question: str  # appended after prompt + review; the next token is the verdict 'Y' / 'N'

    def label(self, text: str) -> bool:
        """The gold answer: a threshold of the gold criteria (`gold_criteria`)."""
        g = gold_criteria(text)
        return {"positive": g["positive"] > 0, "very_positive": g["positive"] >= _VERY,
                "no_repeats": g["no_repeats"] == 0, "concise": g["concise"] == 0,
                "fluent": g["fluent"] == 0}[self.name]


QUESTIONS: tuple[Question, ...] = (
    Question("positive", "\nPositive? "),
    Question("very_positive", "\nVery positive? "),
    Question("no_repeats", "\nNo repeats? "),
    Question("concise", "\nAt most 14 words? "),
    Question("fluent", "\nGrammatical? "),
)


def criterion_labels(texts: list[str], questions: tuple[Question, ...] = QUESTIONS) -> Tensor:
    """The gold yes/no answer of every question on every text -> (N, C) bool."""
    return torch.tensor([[q.label(t) for q in questions] for t in texts], dtype=torch.bool)


def criterion_rows(prompts: list[str], completions: list[str],
                   questions: tuple[Question, ...] = QUESTIONS) -> list[dict]:
    """SFT rows, one per (review, question): {"prompt": prompt + review + question, "completion": 'Y' / 'N'}."""
    rows = []
    for p, c in zip(prompts, completions):
        for q in questions:
            rows.append({"prompt": p + c + q.question, "completion": "Y" if q.label(p + c) else "N"})
    return rows


def criterion_probs(model, tokenizer, prompts: list[str], completions: list[str],
                    questions: tuple[Question, ...] = QUESTIONS, batch_size: int = 512) -> Tensor:
    """The judge's p('Y') (restricted to {Y, N}) for every review and question -> (N, C) float64."""
    cols = [verdict_scores(model, tokenizer, prompts, completions, restrict=True, batch_size=batch_size,
                           question=q.question) for q in questions]
    return torch.stack(cols, 1).double() if cols else torch.zeros(len(prompts), 0, dtype=torch.float64)


class LearnedRubricScorer:
    """The learned rubric as a reward function: scorer(prompts, completions) -> list[float] (as `RubricScorer`).

        R = bias + sum_i weights[i] * p('Y' | prompt + completion + questions[i].question)
    """

    def __init__(self, model, tokenizer, weights, bias: float = 0.0, questions: tuple[Question, ...] = QUESTIONS):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        if self.weights.shape != (len(questions),):
            raise ConfigError(f"{self.weights.numel()} weights for {len(questions)} questions: give one weight per"
                              " question", "learned rubric")
        self.model, self.tokenizer, self.bias, self.questions = model, tokenizer, float(bias), questions

    def probs(self, prompts: list[str], completions: list[str]) -> Tensor:
        return criterion_probs(self.model, self.tokenizer, prompts, completions, self.questions)  # (N, C)

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        return rubric.weighted_sum(self.probs(prompts, completions), self.weights, self.bias).tolist()


def fit_learned_rubric(model, tokenizer, prompts: list[str], completions: list[str], targets: list[float],
                       questions: tuple[Question, ...] = QUESTIONS, ridge: float = 1e-3) -> LearnedRubricScorer:
    """Weights and bias of the judge's per-question p('Y') fitted to `targets` (e.g. gold) by least squares."""
    w, b = rubric.fit_linear(criterion_probs(model, tokenizer, prompts, completions, questions), targets, ridge)
    return LearnedRubricScorer(model, tokenizer, w, b, questions)


def criterion_accuracy(probs: Tensor, labels: Tensor) -> dict[str, float]:
    """Per question: fraction of texts where p('Y') > 1/2 agrees with the gold label, and the base rate of 'Y'.
    probs (N, C), labels (N, C) -> {"<name>": accuracy, ..., "<name>/base_rate": ...} in `QUESTIONS`' order."""
    if probs.shape != labels.shape:
        raise ValueError(f"probs {tuple(probs.shape)} and labels {tuple(labels.shape)} differ in shape")
    out = {}
    for i, q in enumerate(QUESTIONS[:probs.shape[1]]):
        out[q.name] = ((probs[:, i] > 0.5) == labels[:, i]).double().mean().item()
        out[f"{q.name}/base_rate"] = labels[:, i].double().mean().item()
    return out


def load_learned_rubric(name: str = "review-rubric", tokenizer=None) -> LearnedRubricScorer:
    """The shipped learned rubric: the judge model and the weights fitted at build time (`rubric.json`)."""
    from ..models import load_model, load_tokenizer, resolve

    path = Path(resolve(name)) / "rubric.json"
    if not path.exists():
        raise ModelLoadError(f"{path} is missing (not a learned rubric judge)",
                             "build it with `python -m minirlhf.zoo --only rubric-judge`")
    spec = json.loads(path.read_text())
    by_name = {q.name: q for q in QUESTIONS}
    questions = tuple(by_name[n] for n in spec["questions"])
    return LearnedRubricScorer(load_model(name).eval(), tokenizer or load_tokenizer(), spec["weights"], spec["bias"],
                               questions)


# ---------------------------------------------------------------------------------------------
# Building the shipped judge (zoo step `rubric-judge`)
# ---------------------------------------------------------------------------------------------


@dataclass
class LearnedRubricConfig:
    """What `build_learned_rubric` trains."""

    samples: int = 4000
    """review-sft samples on SFT prompts, half at temperature 1, half at `hot_temperature`; 5 rows each."""
    hot_temperature: float = 1.5
    """The second half's sampling temperature (more broken, repetitive, long reviews: the negatives a policy
    under RL drifts towards)."""
    steps: int = 600
    """SFT steps."""
    lr: float = 1e-3
    """Peak learning rate (cosine to 10%)."""
    batch_size: int = 32
    """Rows per SFT step."""
    held_out: int = 1000
    """Held-out samples (prefs_test prompts, same two temperatures) for the per-question accuracy."""
    fit: int = 1000
    """Samples at temperature 1 (other SFT prompts) on which the shipped weights are fitted to gold."""
    seed: int = 0
    """Seed of sampling and data order."""


def _samples(model, tok, prompts: list[str], hot: float, g) -> list[str]:
    from ..lm import generate

    h = len(prompts) // 2
    a, _ = generate(model, tok, prompts[:h], 64, temperature=1.0, generator=g, batch_size=512)
    b, _ = generate(model, tok, prompts[h:], 64, temperature=hot, generator=g, batch_size=512)
    return a + b


def build_learned_rubric(cfg: LearnedRubricConfig | None = None, name: str = "review-rubric") -> dict:
    """`review-rubric`: review-sft fine-tuned on one yes/no row per (sample, question), labels from the gold
    criteria (`criterion_rows`); weights fitted to gold on other samples; data/models/<name> (+ rubric.json)."""
    import random
    import time
    from dataclasses import asdict

    from ..lm import generate
    from ..models import MODELS_DIR, count_parameters, load_model, load_tokenizer
    from ..sft import SFTConfig, train_sft
    from ..utils import set_seed
    from ..worlds import reviews
    from ..zoo import load_split

    cfg = cfg or LearnedRubricConfig()
    tok = load_tokenizer()
    g = set_seed(cfg.seed)
    t0, c0 = time.time(), time.process_time()
    sft = load_model("review-sft").eval()
    sft_prompts = [r["prompt"] for r in load_split("reviews", "sft")]
    tr_p = sft_prompts[:cfg.samples]
    tr_c = _samples(sft, tok, tr_p, cfg.hot_temperature, g)
    rows = criterion_rows(tr_p, tr_c)
    random.Random(cfg.seed).shuffle(rows)
    ho_p = [r["prompt"] for r in load_split("reviews", "prefs_test")[:cfg.held_out]]
    ho_c = _samples(sft, tok, ho_p, cfg.hot_temperature, g)
    ho_y = criterion_labels([p + c for p, c in zip(ho_p, ho_c)])

    def held_out(m):
        acc = criterion_accuracy(criterion_probs(m, tok, ho_p, ho_c), ho_y)
        return {"val": sum(acc[q.name] for q in QUESTIONS) / len(QUESTIONS),
                **{f"acc/{q.name}": acc[q.name] for q in QUESTIONS}}

    model = load_model("review-sft")
    sft_cfg = SFTConfig(lr=cfg.lr, steps=cfg.steps, batch_size=cfg.batch_size, warmup_steps=20, seed=cfg.seed,
                        log_every=100)
    log = train_sft(model, tok, rows, sft_cfg, eval_fn=held_out, eval_every=200, progress=True)
    model.eval()
    final = criterion_accuracy(criterion_probs(model, tok, ho_p, ho_c), ho_y)
    fit_p = sft_prompts[-cfg.fit:]
    fit_c, _ = generate(sft, tok, fit_p, 64, temperature=1.0, generator=g, batch_size=512)
    scorer = fit_learned_rubric(model, tok, fit_p, fit_c, reviews.gold_rewards(fit_p, fit_c))
    vals = [r for r in log.rows if "val" in r]
    info = {"backbone": "review-sft", "generator": "review-sft", "rows": len(rows),
            "questions": {q.name: q.question for q in QUESTIONS},
            "label_rate_Y": round(sum(r["completion"] == "Y" for r in rows) / len(rows), 4),
            "held_out_mean_accuracy": [(r["step"] + 1, round(r["val"], 4)) for r in vals],
            "held_out_accuracy": {k: round(v, 4) for k, v in final.items()},
            "held_out_samples": len(ho_p),
            "build_minutes": round((time.time() - t0) / 60, 2),
            "build_cpu_minutes": round((time.process_time() - c0) / 60, 2), "parameters": count_parameters(model),
            "config": asdict(cfg)}
    out = MODELS_DIR / name
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "rubric.json").write_text(json.dumps(
        {"questions": [q.name for q in QUESTIONS], "weights": scorer.weights.tolist(), "bias": scorer.bias,
         "fitted_on": f"{cfg.fit} review-sft samples (T = 1, the last SFT prompts), least squares to gold"}, indent=2))
    (out / "build_info.json").write_text(json.dumps({"name": name, **info}, indent=2))
    return info


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(json.dumps(build_learned_rubric(), indent=2))
