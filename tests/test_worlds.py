"""The built-in worlds: the arithmetic checker's labels, the gold reward, and determinism."""

import math

import pytest

from minirlhf.worlds import arithmetic, reviews
from minirlhf.worlds.arithmetic import check_chain

PROMPT = "3 +4 *2 -7\n"  # 3+4=7, 7*2=4, 4-7=7


def test_correct_chain_all_steps_valid():
    r = check_chain(PROMPT, "3+4=7\n7*2=4\n4-7=7\n#### 7")
    assert r.answer == "7" and r.answer_correct and r.reward == 1.0
    assert r.step_valid == [True, True, True] and r.step_on_track == [True, True, True]
    assert r.trace_correct and r.n_expected_steps == 3


def test_arithmetic_error_then_consistent_steps():
    # step 1 wrong (7*2 = 4, not 5); step 2 computes right from the wrong value: valid but off track
    r = check_chain(PROMPT, "3+4=7\n7*2=5\n5-7=8\n#### 8")
    assert r.step_valid == [True, False, True]
    assert r.step_on_track == [True, False, False]
    assert not r.answer_correct and not r.trace_correct


def test_hidden_error_right_answer_wrong_process():
    # "*0" hides the earlier error: outcome reward 1, but the trace is wrong
    prompt = "3 +4 *0 +2\n"  # 3+4=7, 7*0=0, 0+2=2
    r = check_chain(prompt, "3+4=8\n8*0=0\n0+2=2\n#### 2")
    assert r.step_valid == [False, True, True]
    assert r.step_on_track == [False, True, True]
    assert r.answer_correct and r.reward == 1.0 and not r.trace_correct


def test_malformed_wrong_op_and_discontinuity():
    r = check_chain(PROMPT, "3+4=7\n7+2=9\nfoo\n#### 7")
    assert r.step_valid == [True, False, False]  # wrong operation, then a malformed line
    r = check_chain(PROMPT, "3+4=7\n6*2=2\n2-7=5\n#### 5")
    assert r.step_valid == [True, False, True]  # step 2 does not continue from 7
    assert r.step_on_track == [True, False, False]


def test_missing_answer_and_extra_steps():
    r = check_chain(PROMPT, "3+4=7\n7*2=4\n4-7=7")
    assert r.answer is None and not r.answer_correct
    r = check_chain(PROMPT, "3+4=7\n7*2=4\n4-7=7\n7+1=8\n#### 7")
    assert r.step_valid == [True, True, True, False]  # a step the prompt did not ask for
    assert r.answer_correct and not r.trace_correct


def test_reference_completion_is_always_correct():
    for row in arithmetic.generate_split(200, 2, 7, 10, seed=5):
        r = check_chain(row["prompt"], row["completion"])
        assert r.trace_correct and r.answer == row["answer"]


def test_extract_answer_gsm8k_format():
    assert arithmetic.extract_answer("so she has 1,234 left\n#### 1,234") == "1234"
    assert arithmetic.extract_answer("no answer") is None


def test_generation_is_deterministic_and_splits_disjoint():
    cfg = arithmetic.ArithmeticConfig(n_train=500, n_test=100, n_dev=50)
    a, b = arithmetic.generate(cfg), arithmetic.generate(cfg)
    assert a == b
    train = {r["prompt"] for r in a["train"]}
    assert not train & {r["prompt"] for r in a["test"]}
    assert not train & {r["prompt"] for r in a["dev"]}
    assert all(6 <= r["n_ops"] <= 7 for r in a["test_ood"])
    assert all(2 <= r["n_ops"] <= 5 for r in a["train"])
    cfg_rev = reviews.ReviewsConfig(n_sft=50, n_pairs_train=20, n_pairs_test=10, n_prompts_test=5)
    assert reviews.generate(cfg_rev) == reviews.generate(cfg_rev)


def test_gold_reward_hand_computed():
    # sentiment: great (2) + very good (1.5 * 1) = 3.5 -> 2 tanh(1.75)
    assert reviews.sentiment("the movie was great, and the plot was very good .") == pytest.approx(3.5)
    assert reviews.gold_reward("the movie was great, and the plot was very good .") == \
        pytest.approx(2 * math.tanh(1.75))
    # negation halves and flips: not bad -> -0.5 * -1.5 = 0.75
    assert reviews.sentiment("it was not bad .") == pytest.approx(0.75)
    # a repeated adjective costs 0.5; broken grammar costs 2
    assert reviews.gold_reward("it was great and great .") == pytest.approx(2 * math.tanh(2.0) - 0.5)
    assert not reviews.is_fluent("great great great")
    assert reviews.gold_reward("great great great") == pytest.approx(2 * math.tanh(3.0) - 1.0 - 2.0)


def test_preference_pairs_follow_bradley_terry():
    rows = reviews.generate_pairs(300, seed=1)
    for r in rows:
        assert r["chosen"] != r["rejected"] and r["chosen"] and r["rejected"]
        p = reviews.bradley_terry_prob(r["gold_chosen"], r["gold_rejected"])
        assert r["p_chosen"] == pytest.approx(p, abs=1e-5)
    # labels are noisy but agree with the gold reward more often than not
    agree = sum(r["gold_chosen"] > r["gold_rejected"] for r in rows) / len(rows)
    assert 0.6 < agree < 0.95


def test_extract_answer_on_real_gsm8k_solutions():
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "data" / "gsm8k" / "gsm8k_test_300.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    answers = [arithmetic.extract_answer(r["answer"]) for r in rows]
    assert len(rows) == 300 and all(a is not None for a in answers)
    assert answers[0] == "18"  # Janet's ducks
    assert all(a.lstrip("-").replace(".", "").isdigit() for a in answers)


def test_trace_reward_pays_only_for_fully_correct_chains():
    prompt = "3 +4 *2 *0 +5\n"
    right = "3+4=7\n7*2=4\n4*0=0\n0+5=5\n#### 5"
    hidden = "3+4=7\n7*2=5\n5*0=0\n0+5=5\n#### 5"  # a wrong step hidden by *0: the answer is right
    short = "3+4=7\n#### 5"  # the right answer with steps missing
    wrong = "3+4=7\n7*2=4\n4*0=0\n0+5=5\n#### 6"
    comps = [right, hidden, short, wrong]
    assert arithmetic.arithmetic_reward([prompt] * 4, comps) == [1.0, 1.0, 1.0, 0.0]
    assert arithmetic.arithmetic_trace_reward([prompt] * 4, comps) == [1.0, 0.0, 0.0, 0.0]
