"""Tests for minirlhf.judges: verdict-token rewards, pairwise judging in both orders and its biases,
rubric rewards, and the online DPO loop's pairs (on fake judges with known behaviour)."""

import math

import pytest
import torch

from minirlhf.judges import online_dpo, pairwise, rubric, verdict
from minirlhf.worlds import reviews
from minirlhf.zoo import new_tiny_model


def tiny(tok, seed=0):
    torch.manual_seed(seed)
    return new_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


# --- verdict tokens ---------------------------------------------------------------------------------

def test_verdict_prob_is_the_hand_computed_softmax():
    z = torch.tensor([[1.0, 2.0, 0.5, -1.0]])  # vocab of 4, yes = 1, no = 3
    e = [math.exp(v) for v in (1.0, 2.0, 0.5, -1.0)]
    full = e[1] / sum(e)
    restricted = e[1] / (e[1] + e[3])
    assert verdict.verdict_prob(z, 1, 3)[0].item() == pytest.approx(full, abs=1e-6)
    assert verdict.verdict_prob(z, 1, 3, restrict=True)[0].item() == pytest.approx(restricted, abs=1e-6)
    # swapping yes and no gives 1 - p under the restricted reading, not under the full one
    assert verdict.verdict_prob(z, 3, 1, restrict=True)[0].item() == pytest.approx(1 - restricted, abs=1e-6)
    assert verdict.verdict_prob(z, 3, 1)[0].item() == pytest.approx(e[3] / sum(e), abs=1e-6)


def test_verdict_tokens_are_single_characters(tok):
    y, n = verdict.verdict_ids(tok)
    assert tok.convert_ids_to_tokens([y, n]) == ["Y", "N"]
    with pytest.raises(ValueError, match="single-token"):
        verdict.verdict_ids(tok, "Yes", "No")


def test_verdict_scores_read_the_model_at_the_question(tok):
    model = tiny(tok).eval()
    prompts, comps = ["3 +4\n", "2 *3 -1\n"], ["3+4=7\n#### 7", "2*3=6\n6-1=5\n#### 5"]
    s = verdict.verdict_scores(model, tok, prompts, comps)
    y, _ = verdict.verdict_ids(tok)
    for i in range(2):  # the same number from one unpadded forward pass
        ids = torch.tensor([tok(verdict.verifier_prompt(prompts[i], comps[i]), add_special_tokens=False)["input_ids"]])
        p = torch.softmax(model(input_ids=ids).logits[0, -1], -1)[y].item()
        assert s[i].item() == pytest.approx(p, abs=1e-5)


def test_verdict_rows_use_the_checker():
    prompts = ["3 +4 *2\n", "3 +4 *2\n", "3 +4 *2 *0 +5\n"]
    comps = ["3+4=7\n7*2=4\n#### 4", "3+4=7\n7*2=5\n#### 5", "3+4=7\n7*2=5\n5*0=0\n0+5=5\n#### 5"]
    rows = verdict.verdict_rows(prompts, comps)
    assert [r["completion"] for r in rows] == ["Y", "N", "N"]  # the last: right answer, hidden error
    assert rows[0]["prompt"] == prompts[0] + comps[0] + verdict.QUESTION
    cot = verdict.verdict_rows(prompts, comps, with_rationale=True)
    assert [r["completion"] for r in cot] == ["all steps right\nY", "step 2 wrong\nN", "step 2 wrong\nN"]


def test_parse_check_and_its_accuracy_by_hand():
    assert verdict.parse_check("all steps right\nY") is None
    assert verdict.parse_check("step 12 wrong\n") == 12
    assert verdict.parse_check("step two wrong") == "other" and verdict.parse_check("all steps rightY") == "other"
    prompts = ["3 +4 *2\n"] * 4
    comps = ["3+4=7\n7*2=4\n#### 4", "3+4=7\n7*2=5\n#### 5", "3+4=7\n7*2=5\n#### 5", "3+4=8\n8*2=6\n#### 6"]
    # gold first wrong step: None, 2, 2, 1
    checks = ["all steps right\n", "step 2 wrong\n", "step 1 wrong\n", "garbage\n"]
    acc = verdict.check_accuracy(checks, prompts, comps)
    assert acc == {"exact": 2 / 4, "verdict": 3 / 4, "step_on_wrong": 1 / 3, "right_on_right": 1.0, "off_grammar": 1 / 4,
                   "mode_step_on_wrong": 2 / 3}  # always "step 2" would be right on 2 of the 3 wrong chains


def test_first_token_scores_compare_all_against_step(tok):
    model = tiny(tok, seed=1).eval()
    prompts, comps = ["3 +4\n", "2 *3 -1\n"], ["3+4=7\n#### 7", "2*3=6\n6-1=5\n#### 5"]
    s = verdict.first_token_scores(model, tok, prompts, comps)
    a, st = verdict.verdict_ids(tok, "a", "s")
    for i in range(2):
        ids = torch.tensor([tok(verdict.verifier_prompt(prompts[i], comps[i]), add_special_tokens=False)["input_ids"]])
        z = model(input_ids=ids).logits[0, -1]
        assert s[i].item() == pytest.approx(torch.sigmoid(z[a] - z[st]).item(), abs=1e-5)


def test_cot_scores_read_the_verdict_after_each_check(tok):
    model = tiny(tok, seed=2).eval()
    prompts, comps = ["3 +4\n", "2 *3 -1\n"], ["3+4=7\n#### 7", "2*3=6\n6-1=5\n#### 5"]
    s, checks = verdict.cot_verdict_samples(model, tok, prompts, comps, 3, max_check_tokens=6,
                                            generator=torch.Generator().manual_seed(0))
    assert s.shape == (2, 3) and len(checks) == 6 and all(c.endswith("\n") and c.count("\n") == 1 for c in checks)
    y, n = verdict.verdict_ids(tok)
    for i in range(2):
        for j in range(3):  # p(Y) over {Y, N} after problem + solution + question + the j-th check, unpadded
            text = verdict.verifier_prompt(prompts[i], comps[i]) + checks[3 * i + j]
            z = model(input_ids=torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])).logits[0, -1]
            assert s[i, j].item() == pytest.approx(torch.sigmoid(z[y] - z[n]).item(), abs=1e-5)
    mean = verdict.cot_verdict_scores(model, tok, prompts, comps, 3, max_check_tokens=6,
                                      generator=torch.Generator().manual_seed(0))
    assert torch.allclose(mean, s.mean(-1))  # the same draws, averaged


def test_genrm_cot_is_its_own_zoo_step():
    from minirlhf import zoo

    steps = list(zoo.BUILD_STEPS)
    assert "genrm-cot" in steps and steps.index("genrm-cot") > steps.index("arith-sft-full")  # after its backbone


# --- pairwise judging ---------------------------------------------------------------------------------

def test_both_orders_average_and_position_bias_by_hand():
    p_ab, p_ba = torch.tensor([0.9, 0.6, 0.3]), torch.tensor([0.3, 0.7, 0.6])
    assert pairwise.both_orders(p_ab, p_ba).tolist() == pytest.approx([0.8, 0.45, 0.35])
    b = pairwise.position_bias(p_ab, p_ba)
    assert b["position_bias"] == pytest.approx((0.2 + 0.3 + 0.1) / 3)
    assert b["order_flips"] == pytest.approx(1 / 3)  # only the second pair flips (0.6 vs 0.3)
    assert b["first_slot"] == pytest.approx((0.6 + 0.65 + 0.45) / 3)


def fake_judge(true_margin, bias=0.0, length_coef=0.0):
    """p(first wins) = sigmoid(q(first) - q(second) + bias + length_coef (len first - len second))."""
    def prob(prompts, first, second):
        return torch.tensor([1 / (1 + math.exp(-(true_margin(a) - true_margin(b) + bias
                                                  + length_coef * (len(a) - len(b))))) for a, b in zip(first, second)])
    return prob


def test_both_orders_removes_a_known_position_bias():
    q = lambda s: s.count("+") * 1.0  # noqa: E731  quality = number of '+'
    a, b = ["++", "+", "+++", ""], ["+", "+++", "+", "++"]
    prompts = [""] * 4
    biased = pairwise.judge_both_orders(fake_judge(q, bias=1.5), prompts, a, b)
    fair = pairwise.judge_both_orders(fake_judge(q), prompts, a, b)
    assert torch.allclose(biased["p"], fair["p"], atol=0.15)  # the bias mostly cancels ...
    pb = pairwise.position_bias(biased["p_ab"], biased["p_ba"])  # ... and was there:
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert pb["first_slot"] == pytest.approx(sum(sig(d + 1.5) + sig(-d + 1.5) for d in (1, -2, 2, -2)) / 8)
    assert pb["order_flips"] == 0.25  # the only pair with |margin| < bias (1 < 1.5) flips with the order
    assert pb["position_bias"] > 0.3
    assert pairwise.position_bias(fair["p_ab"], fair["p_ba"])["position_bias"] == pytest.approx(0.0, abs=1e-6)
    assert (fair["p"] > 0.5).tolist() == [True, False, True, False]


def test_length_bias_sign():
    q = lambda s: 0.0  # noqa: E731
    a, b = ["x" * n for n in (1, 5, 3, 8)], ["x" * n for n in (4, 2, 6, 1)]
    la, lb = torch.tensor([len(s) for s in a]), torch.tensor([len(s) for s in b])
    long_lover = pairwise.judge_both_orders(fake_judge(q, length_coef=0.3), [""] * 4, a, b)["p"]
    short_lover = pairwise.judge_both_orders(fake_judge(q, length_coef=-0.3), [""] * 4, a, b)["p"]
    assert pairwise.length_bias(long_lover, la, lb) > 0.9
    assert pairwise.length_bias(short_lover, la, lb) < -0.9
    assert pairwise.pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 6.0])) == pytest.approx(1.0)


def test_group_scores_from_pairs_rank_like_the_judge():
    q = lambda s: float(len(s))  # noqa: E731
    comps = ["aa", "a", "aaaa", "aaa", "b", "bbb"]
    s = pairwise.group_scores_from_pairs(fake_judge(q, bias=2.0), ["p"] * 6, comps, k=3)
    assert s[2] > s[0] > s[1] and s[3] > s[4]  # groups: (aa, a, aaaa), (aaa, b, bbb)
    assert sum(s[:3]) == pytest.approx(3 / 2)  # win probabilities of a round robin sum to k/2 ... (k-1) * k/2 / (k-1)
    with pytest.raises(ValueError, match="groups"):
        pairwise.group_scores_from_pairs(fake_judge(q), ["p"] * 5, comps[:5], k=3)


def test_pairwise_rows_are_labelled_by_gold_in_both_slots():
    pairs = [{"prompt": "the film was", "chosen": " awful .", "rejected": " great ."}] * 40
    rows = pairwise.pairwise_rows(pairs, reviews.gold_reward, seed=0)
    assert len(rows) == 40
    for r in rows:  # gold prefers "great" whatever the noisy label said and wherever it is shown
        first_great = r["prompt"].index("great") < r["prompt"].index("awful")
        assert r["completion"] == ("A" if first_great else "B")
    assert 5 < sum(r["completion"] == "A" for r in rows) < 35
    assert pairwise.gold_agreement(torch.tensor([0.9, 0.2, 0.7]), torch.tensor([1.0, 0.0, 0.0]),
                                   torch.tensor([0.0, 1.0, 1.0])) == pytest.approx(2 / 3)


def test_pointwise_agreement_compares_the_grades_of_both_answers(monkeypatch):
    pairs = [{"prompt": "p", "chosen": " great .", "rejected": " awful ."},   # gold: chosen better
             {"prompt": "p", "chosen": " awful .", "rejected": " great ."},   # gold: rejected better
             {"prompt": "p", "chosen": " good .", "rejected": " bad ."}]      # gold: chosen better
    grades = {" great .": 0.9, " awful .": 0.2, " good .": 0.3, " bad .": 0.6}  # a judge wrong on the third pair
    monkeypatch.setattr(pairwise, "pointwise_probs", lambda m, tok, ps, cs: torch.tensor([grades[c] for c in cs]))
    agreement = pairwise.pointwise_agreement_fn(None, pairs, reviews.gold_reward)
    assert agreement(model=None) == pytest.approx(2 / 3)


# --- rubric rewards ---------------------------------------------------------------------------------

TEXTS = ["the film was great .", "the film was great and great, and it was very good and fun, but the plot was really nice .",
         "the movie is dull", "it was not bad, but the acting felt very slow ."]


def test_gold_rubric_equals_gold_reward():
    r = rubric.rubric_reward(rubric.GOLD_RUBRIC, TEXTS)
    assert r == pytest.approx([reviews.gold_reward(t) for t in TEXTS], abs=1e-12)
    scorer = rubric.RubricScorer()
    assert scorer(["the film was"], [" great ."]) == pytest.approx([reviews.gold_reward(TEXTS[0])])


def test_rubric_reward_is_the_weighted_sum_of_its_criteria():
    w = (0.5, 2.0, -1.0, 3.0, 0.25)
    rub = tuple(rubric.Criterion(c.name, c.question, c.judge, wi) for c, wi in zip(rubric.CHECKLIST, w))
    C = rubric.criteria_scores(rub, TEXTS)
    assert C[0].tolist() == [1.0, 1.0, 1.0, 1.0, 1.0]      # "great": positive (2 >= 2), clean, short, fluent
    assert C[2].tolist() == [0.0, 0.0, 1.0, 1.0, 0.0]      # "dull" without the final " .": not fluent
    by_hand = [0.7 + sum(wi * ci for wi, ci in zip(w, row)) for row in C.tolist()]
    assert rubric.rubric_reward(rub, TEXTS, bias=0.7) == pytest.approx(by_hand)


def test_fit_weights_recovers_a_linear_target():
    texts = [p + c for p, c in (reviews.sample_review(__import__("random").Random(i)) for i in range(300))]
    texts = [t if i % 3 else t[:-2] for i, t in enumerate(texts)]  # every third without its " .": not fluent
    C = rubric.criteria_scores(rubric.CHECKLIST, texts)
    true_w = torch.tensor([1.0, 0.5, 0.8, 0.3, 2.0], dtype=torch.float64)
    target = (0.2 + C @ true_w).tolist()
    fitted, bias = rubric.fit_weights(rubric.CHECKLIST, texts, target, ridge=1e-9)
    assert [c.weight for c in fitted] == pytest.approx(true_w.tolist(), abs=1e-4)
    assert bias == pytest.approx(0.2, abs=1e-4)


# --- the online DPO loop ------------------------------------------------------------------------------

def test_best_worst_pairs_follow_the_judge():
    prompts = ["p1"] * 3 + ["p2"] * 3 + ["p3"] * 3
    comps = [" a", " bbb", " cc", " x", " y", " z", " same", " same", " same"]
    scores = [0.1, 0.9, 0.5, 2.0, 2.0, -1.0, 1.0, 1.0, 1.0]
    rows = online_dpo.best_worst_pairs(prompts, comps, scores, k=3)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [("p1", " bbb", " a"), ("p2", " x", " z")]
    with pytest.raises(ValueError, match="multiple of k"):
        online_dpo.best_worst_pairs(prompts[:8], comps[:8], scores[:8], k=3)


def test_online_loop_trains_on_the_judges_pairs(tok, monkeypatch):
    """A fake judge (longer is better): every DPO pair the loop builds has the longer response chosen,
    and the loop logs its agreement with a gold that agrees (1.0) or disagrees (0.0)."""
    policy, ref = tiny(tok, 0), tiny(tok, 0).eval()
    seen = []
    real = online_dpo.train_dpo

    def spy(policy, tokenizer, rows, cfg, ref_model=None):
        seen.append(rows)
        return real(policy, tokenizer, rows, cfg, ref_model=ref_model)

    monkeypatch.setattr(online_dpo, "train_dpo", spy)
    judge = lambda ps, cs: [float(len(c)) for c in cs]  # noqa: E731
    gold = lambda ps, cs: [-float(len(c)) for c in cs]  # noqa: E731  gold prefers short
    cfg = online_dpo.OnlineDPOConfig(iterations=2, prompts_per_iteration=6, k=3, max_new_tokens=8, epochs=1.0)
    log = online_dpo.online_dpo(policy, ref, tok, ["the film was", "it is", "the plot felt"] * 4, judge, cfg,
                                gold_fn=gold, eval_prompts=["it is"] * 2)
    assert len(seen) == 2 and all(len(rows) >= 1 for rows in seen)
    for rows in seen:
        for r in rows:
            assert len(r["chosen"]) > len(r["rejected"])
    assert [r["iteration"] for r in log.rows] == [1, 2]
    assert all(r["judge_gold_agreement"] == 0.0 for r in log.rows)
    assert all("eval/kl" in r and "eval/gold" in r for r in log.rows)


def test_self_judge_scores_with_a_frozen_snapshot_of_the_policy(tok):
    """Self-rewarding: the judge is the policy itself, read through a copy in eval mode (no gradient
    reaches the policy), and each call sees the policy as it is at that moment."""
    policy = tiny(tok, 0).train()
    seen = []

    def question(model, tokenizer, prompts, completions):
        seen.append(model)
        assert model is not policy and not model.training
        w = model.lm_head.weight if hasattr(model, "lm_head") else next(model.parameters())
        return [w.sum().item() + len(c) for c in completions]

    judge = online_dpo.self_judge(policy, tok, question)
    first = judge(["p", "p"], [" a", " bbb"])
    assert first[1] - first[0] == pytest.approx(2.0) and policy.training
    with torch.no_grad():
        for prm_ in policy.parameters():
            prm_.add_(1.0)
    second = judge(["p", "p"], [" a", " bbb"])
    assert second[0] != pytest.approx(first[0])        # the next call reads the updated policy
    assert len(seen) == 2 and seen[0] is not seen[1]


def test_pointwise_probs_are_the_restricted_verdict_after_good(tok):
    model = tiny(tok, 1).eval()
    prompts, comps = ["the film was", "it is"], [" good .", " bad bad ."]
    p = pairwise.pointwise_probs(model, tok, prompts, comps)
    y, n = verdict.verdict_ids(tok)
    for i in range(2):
        ids = torch.tensor([tok(prompts[i] + comps[i] + pairwise.POINT_QUESTION, add_special_tokens=False)["input_ids"]])
        z = model(input_ids=ids).logits[0, -1]
        assert p[i].item() == pytest.approx(torch.sigmoid(z[y] - z[n]).item(), abs=1e-5)


def test_value_at_kl_interpolates_on_the_last_crossing():
    assert rubric.value_at_kl([0.0, 1.0, 3.0], [0.0, 2.0, 6.0], 2.0) == pytest.approx(4.0)
    assert rubric.value_at_kl([0.0, 1.0, 3.0], [0.0, 2.0, 6.0], 0.5) == pytest.approx(1.0)
    assert rubric.value_at_kl([0.0, 1.0, 3.0], [0.0, 2.0, 6.0], 3.0) == pytest.approx(6.0)
    assert math.isnan(rubric.value_at_kl([0.0, 1.0, 3.0], [0.0, 2.0, 6.0], 5.0))  # never reached
    # KL goes 0 -> 2 -> 1 -> 3: KL 1.5 is crossed three times; the last crossing (1 -> 3) is read: 10 + 0.25 * 10
    assert rubric.value_at_kl([0.0, 2.0, 1.0, 3.0], [0.0, 4.0, 10.0, 20.0], 1.5) == pytest.approx(12.5)
    with pytest.raises(ValueError, match="one of each"):
        rubric.value_at_kl([0.0, 1.0], [0.0], 0.5)


def test_gap_at_kl_by_hand():
    # at KL 1.5: proxy 4 (gain 3, /sd 2 = 1.5), gold 1 (gain 1, /sd 0.5 = 2) -> gap 1.5 - 2 = -0.5
    kls, proxy, gold = [0.0, 1.0, 2.0], [1.0, 3.0, 5.0], [0.0, 1.0, 1.0]
    assert rubric.gap_at_kl(kls, proxy, gold, 1.5, proxy_sd=2.0, gold_sd=0.5) == pytest.approx(-0.5)
    # a proxy that rises while gold falls: a positive gap (over-optimisation)
    assert rubric.gap_at_kl(kls, proxy, [0.0, -1.0, -2.0], 2.0, 1.0, 1.0) == pytest.approx(4.0 + 2.0)


def test_online_config_rejects_k_below_2():
    from minirlhf.errors import ConfigError
    with pytest.raises(ConfigError, match="--k"):
        online_dpo.OnlineDPOConfig(k=1).validate()


# --- the command line: bad flags are one line, before anything loads --------------------------------

@pytest.mark.parametrize("argv, message", [
    (["judge", "--kind", "nope"], "--kind must be one of pairwise, genrm, genrm-cot, got 'nope'"),
    (["judge", "--samples", "0"], "--samples must be >= 1, got 0"),
    (["judge", "--kind", "genrm-cot", "--checks", "-1"], "--checks must be >= 0 and finite, got -1"),
    (["dpo", "--online", "--k", "1"], "--k must be >= 2"),
    (["dpo", "--online", "--dataset", "mine.jsonl"], "--online samples its own responses"),
])
def test_judge_cli_errors_are_one_line(argv, message, capsys, monkeypatch, tmp_path):
    from minirlhf import cli
    import minirlhf.models
    import minirlhf.zoo

    monkeypatch.chdir(tmp_path)

    def boom(*a, **k):
        raise AssertionError("loaded something before the flags were checked")

    for mod, name in ((minirlhf.models, "load_model"), (minirlhf.models, "load_tokenizer"), (minirlhf.zoo, "load_split")):
        monkeypatch.setattr(mod, name, boom)
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_judge_cli_genrm_cot_ranks_with_written_checks(capsys, monkeypatch, tmp_path):
    """`minirlhf judge --kind genrm-cot`: the shipped CoT verifier writes checks, p(Y) after them is averaged;
    the summary has the ranking metrics, each a probability-like number in [0, 1]."""
    import json
    from minirlhf import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["judge", "--kind", "genrm-cot", "--prompts", "3", "--samples", "4", "--checks", "2",
                     "--name", "cot", "--quiet"]) == 0
    summary = json.loads((tmp_path / "runs" / "cot" / "summary.json").read_text())
    assert summary["model"] == "arith-genrm-cot"
    for key in ("within_prompt_trace_auc", "trace@1", "trace@4", "oracle@4"):
        assert 0.0 <= summary[key] <= 1.0, (key, summary)
    assert summary["trace@4"] <= summary["oracle@4"]  # a pick can never beat the oracle
