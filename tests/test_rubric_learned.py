"""Tests for minirlhf.judges.rubric_learned: the learned rubric's reward is the weighted sum of its
per-question p('Y'), its labels are thresholds of the gold criteria, and the shipped judge answers them."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from minirlhf.errors import ConfigError
from minirlhf.judges import rubric, rubric_learned as rl
from minirlhf.worlds import reviews


class LengthJudge(nn.Module):
    """A fake judge: z_Y - z_N = 0.1 * (tokens read) - 5 at every position, all other logits 0."""

    def __init__(self, tok):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.yes, self.no, self.vocab = tok.convert_tokens_to_ids("Y"), tok.convert_tokens_to_ids("N"), len(tok)

    def forward(self, input_ids, attention_mask, position_ids=None):
        n = attention_mask.sum(-1, keepdim=True).float()  # (B, 1)
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.yes] = (0.1 * n - 5.0).expand(input_ids.shape)
        return SimpleNamespace(logits=logits)


def test_learned_reward_is_the_weighted_sum_of_the_per_question_p_yes(tok):
    prompts, comps = ["the film was", "it felt"], [" good .", " very long and dull and long and slow ."]
    w, b = [1.5, -0.5, 2.0, 0.25, 3.0], -1.0
    scorer = rl.LearnedRubricScorer(LengthJudge(tok), tok, w, b)
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    for p, c, got, probs in zip(prompts, comps, scorer(prompts, comps), scorer.probs(prompts, comps)):
        # character tokenizer, no BOS: the judge reads len(prompt + review + question) tokens
        hand = [sig(0.1 * len(p + c + q.question) - 5.0) for q in rl.QUESTIONS]
        assert probs.tolist() == pytest.approx(hand, abs=1e-6)
        assert got == pytest.approx(b + sum(wi * pi for wi, pi in zip(w, hand)), abs=1e-6)


def test_weights_must_match_the_questions(tok):
    with pytest.raises(ConfigError, match="3 weights for 5 questions"):
        rl.LearnedRubricScorer(LengthJudge(tok), tok, [1.0, 2.0, 3.0])


def test_labels_are_thresholds_of_the_gold_criteria():
    texts = ["the film was good .",                                   # positive, not very, fluent
             "the film was wonderful and brilliant .",                # very positive
             "the film was good and good .",                          # a repeat
             "the film was bad .",                                    # negative
             "the film was good and the plot was fun and the acting was nice and the ending was fine .",  # > 14 words
             "the film was good and"]                                 # off the grammar
    y = rl.criterion_labels(texts)
    names = [q.name for q in rl.QUESTIONS]
    assert names == ["positive", "very_positive", "no_repeats", "concise", "fluent"]
    for t, row in zip(texts, y.tolist()):
        g = rl.gold_criteria(t)
        assert sum(g.values()) == pytest.approx(reviews.gold_reward(t))  # the four gold criteria sum to gold
        assert row == [g["positive"] > 0, reviews.sentiment(t) >= 2, g["no_repeats"] == 0, g["concise"] == 0,
                       g["fluent"] == 0]
    assert y[0].tolist() == [True, False, True, True, True]
    assert y[2, 2].item() is False and y[3, 0].item() is False and y[4, 3].item() is False and y[5, 4].item() is False
    assert y[1, 1].item() is True


def test_labels_equal_the_rule_based_checklist_on_sft_reviews():
    from minirlhf.zoo import load_split

    texts = [r["prompt"] + r["completion"] for r in load_split("reviews", "sft")[:300]]
    texts += [t[:-2] for t in texts[::3]] + [t + " and good and good" for t in texts[:60]]  # broken, repeated, long
    y = rl.criterion_labels(texts).double()
    assert torch.equal(y, rubric.criteria_scores(rubric.CHECKLIST, texts))
    assert 0 < y.mean(0).min() and y.mean(0).max() < 1  # every question has both answers here


def test_rows_one_per_review_and_question():
    rows = rl.criterion_rows(["the film was", "it was"], [" good and good .", " bad ."])
    assert len(rows) == 2 * len(rl.QUESTIONS)
    assert rows[0] == {"prompt": "the film was good and good .\nPositive? ", "completion": "Y"}
    assert rows[2] == {"prompt": "the film was good and good .\nNo repeats? ", "completion": "N"}
    assert rows[5]["prompt"].endswith("bad .\nPositive? ") and rows[5]["completion"] == "N"


def test_criterion_accuracy_by_hand():
    probs = torch.tensor([[0.9, 0.2], [0.4, 0.6], [0.7, 0.1]], dtype=torch.float64)
    labels = torch.tensor([[True, False], [True, False], [False, False]])
    acc = rl.criterion_accuracy(probs, labels)
    assert acc["positive"] == pytest.approx(1 / 3) and acc["very_positive"] == pytest.approx(2 / 3)
    assert acc["positive/base_rate"] == pytest.approx(2 / 3) and acc["very_positive/base_rate"] == 0.0


def test_fit_linear_recovers_weights_and_bias():
    g = torch.Generator().manual_seed(0)
    S = torch.rand(200, 3, generator=g, dtype=torch.float64)
    t = (0.5 + S @ torch.tensor([2.0, -1.0, 0.25], dtype=torch.float64)).tolist()
    w, b = rubric.fit_linear(S, t, ridge=1e-9)
    assert w.tolist() == pytest.approx([2.0, -1.0, 0.25], abs=1e-5) and b == pytest.approx(0.5, abs=1e-5)
    with pytest.raises(ValueError, match="one row per target"):
        rubric.fit_linear(S, t[:10])


def test_zoo_step_after_its_backbone():
    from minirlhf import zoo

    steps = list(zoo.BUILD_STEPS)
    assert steps.index("rubric-judge") > steps.index("review-sft")


def test_missing_rubric_json_is_a_one_line_error(tmp_path):
    from minirlhf.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="rubric.json is missing"):
        rl.load_learned_rubric(str(tmp_path))


def test_shipped_judge_answers_four_of_its_five_questions_better_than_the_majority(tok):
    """review-rubric on 300 held-out reviews (prefs_test's last 200 chosen, every second one cut before its " .").
    Measured: positive 0.86 (majority 0.57), very_positive 0.86 (0.71), concise 0.95 (0.88), fluent 0.80 (0.67);
    no_repeats 0.88 vs a majority answer of 0.87: the one question it has not learned (docs/judges.md)."""
    from minirlhf.zoo import load_split

    scorer = rl.load_learned_rubric("review-rubric", tok)
    assert scorer.weights.shape == (5,) and [q.name for q in scorer.questions] == [q.name for q in rl.QUESTIONS]
    rows = load_split("reviews", "prefs_test")[-200:]
    p, c = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    p, c = p + p[::2], c + [x[:-2] for x in c[::2]]
    acc = rl.criterion_accuracy(scorer.probs(p, c), rl.criterion_labels([a + b for a, b in zip(p, c)]))
    for name in ("positive", "very_positive", "concise", "fluent"):
        base = acc[f"{name}/base_rate"]
        assert acc[name] > max(base, 1 - base) + 0.05, (name, acc)
    good, bad = scorer(["the film was", "the film was"], [" great .", " bad and bad and awful and"])
    assert good > bad + 1.0
