"""Online / self-rewarding DPO around the loop (issue 17, items 4 and 6): every `--judge` kind, the guards
(a KL blow-up, a falling held-out agreement) and the retrained judging skill, on tiny models and fake judges."""

import pytest
import torch

from minirlhf.commands import judges as judge_commands
from minirlhf.errors import ConfigError
from minirlhf.judges import online_dpo, pairwise
from minirlhf.zoo import new_tiny_model

PROMPTS = ["the film was", "it is", "the plot felt"] * 4


def tiny(tok, seed=0):
    torch.manual_seed(seed)
    return new_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def small_cfg(**kw):
    return online_dpo.OnlineDPOConfig(**{"iterations": 3, "prompts_per_iteration": 4, "k": 3, "max_new_tokens": 6,
                                         "epochs": 1.0, **kw})


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


# --- guards -------------------------------------------------------------------------------------------

def test_guard_reasons_by_hand():
    cfg = small_cfg(max_kl=10.0, min_held_out_agreement=0.6)
    assert online_dpo.guard_reasons({"eval/kl": 9.9, "judge/held_out_agreement": 0.6}, cfg) == []
    assert online_dpo.guard_reasons({"eval/kl": 10.1, "judge/held_out_agreement": 0.59}, cfg) == [
        "KL 10.1 > 10", "held-out agreement 0.590 < 0.6"]
    assert online_dpo.guard_reasons({"eval/kl": 1e6}, small_cfg()) == []          # guards off by default
    assert online_dpo.guard_reasons({}, cfg) == []                                # nothing measured, nothing trips


def fake_kl(kls):
    """sequence_kl replaced by a scripted KL per call (a synthetic blow-up)."""
    calls = iter(kls)
    return lambda *a, **k: {"kl": next(calls), "gold_reward": 0.0}


def test_kl_guard_undoes_the_blown_up_round_and_stops(tok, monkeypatch):
    monkeypatch.setattr(online_dpo, "sequence_kl", fake_kl([1.0, 500.0, 2.0]))
    policy, ref = tiny(tok), tiny(tok).eval()
    after = []
    log = online_dpo.online_dpo(policy, ref, tok, PROMPTS, lambda ps, cs: [float(len(c)) for c in cs],
                                small_cfg(max_kl=50.0), eval_prompts=["it is"],
                                on_iteration=lambda t, m: after.append(weights(m)))
    assert [r["iteration"] for r in log.rows] == [1, 2]           # round 3 never runs
    assert "guard" not in log.rows[0] and log.rows[1]["guard"] == "KL 500.0 > 50"
    assert log.rows[1]["guard/rolled_back"] == 1.0
    assert len(after) == 1 and same(weights(policy), after[0])    # the policy is back at its round-1 weights
    assert [r["iteration"] for r in online_dpo.kept_rows(log.rows)] == [1]


def test_kl_guard_flag_only_logs_and_goes_on(tok, monkeypatch):
    monkeypatch.setattr(online_dpo, "sequence_kl", fake_kl([1.0, 500.0, 2.0]))
    policy, ref = tiny(tok), tiny(tok).eval()
    after = []
    log = online_dpo.online_dpo(policy, ref, tok, PROMPTS, lambda ps, cs: [float(len(c)) for c in cs],
                                small_cfg(max_kl=50.0, guard_action="flag"), eval_prompts=["it is"],
                                on_iteration=lambda t, m: after.append(weights(m)))
    assert [r.get("guard/tripped", 0.0) for r in log.rows] == [0.0, 1.0, 0.0]
    assert not any("guard/rolled_back" in r for r in log.rows) and len(online_dpo.kept_rows(log.rows)) == 3
    assert not same(after[1], after[0])                            # round 2's update was kept


def test_held_out_guard_stops_when_the_judge_gets_worse(tok):
    seen = iter([0.7, 0.55, 0.9])
    policy, ref = tiny(tok), tiny(tok).eval()
    before = weights(policy)
    log = online_dpo.online_dpo(policy, ref, tok, PROMPTS, lambda ps, cs: [float(len(c)) for c in cs],
                                small_cfg(min_held_out_agreement=0.6), held_out_fn=lambda m: next(seen))
    assert [r["judge/held_out_agreement"] for r in log.rows] == [0.7, 0.55]
    assert log.rows[-1]["guard"] == "held-out agreement 0.550 < 0.6" and log.rows[-1]["guard/rolled_back"] == 1.0
    assert not same(weights(policy), before)                       # round 1 kept, round 2 undone


def test_guards_need_what_they_measure(tok):
    policy, ref = tiny(tok), tiny(tok).eval()
    judge = lambda ps, cs: [0.0] * len(cs)  # noqa: E731
    with pytest.raises(ConfigError, match="held_out_fn"):
        online_dpo.online_dpo(policy, ref, tok, PROMPTS, judge, small_cfg(min_held_out_agreement=0.6))
    with pytest.raises(ConfigError, match="eval_prompts"):
        online_dpo.online_dpo(policy, ref, tok, PROMPTS, judge, small_cfg(max_kl=5.0))
    with pytest.raises(ConfigError, match="judge_rows"):
        online_dpo.online_dpo(policy, ref, tok, PROMPTS, judge, small_cfg(judge_refresh_steps=2))
    with pytest.raises(ConfigError, match="--guard-action"):
        small_cfg(guard_action="warn").validate()


# --- retraining the judging skill each round ----------------------------------------------------------

def test_judge_refresh_runs_sft_on_the_judging_rows_after_each_dpo(tok, monkeypatch):
    calls = []
    real_dpo, real_sft = online_dpo.train_dpo, online_dpo.train_sft

    def spy_dpo(*a, **k):
        calls.append("dpo")
        return real_dpo(*a, **k)

    def spy_sft(model, tokenizer, rows, cfg):
        calls.append(("sft", len(rows), cfg.steps, cfg.seed))
        return real_sft(model, tokenizer, rows, cfg)

    monkeypatch.setattr(online_dpo, "train_dpo", spy_dpo)
    monkeypatch.setattr(online_dpo, "train_sft", spy_sft)
    rows = [{"prompt": "it is good .\nGood? ", "completion": "Y"},
            {"prompt": "it is bad bad .\nGood? ", "completion": "N"}]
    policy, ref = tiny(tok), tiny(tok).eval()
    log = online_dpo.online_dpo(policy, ref, tok, PROMPTS, lambda ps, cs: [float(len(c)) for c in cs],
                                small_cfg(judge_refresh_steps=2), judge_rows=rows)
    assert calls == ["dpo", ("sft", 2, 2, 100), "dpo", ("sft", 2, 2, 101), "dpo", ("sft", 2, 2, 102)]
    assert all(r["judge_refresh_loss"] > 0 for r in log.rows)


def test_judge_refresh_teaches_the_verdict(tok):
    """Enough refresh steps on one judging row and the self-judge's p('Y') for it rises (a wrong sign: it falls)."""
    rows = [{"prompt": "it is good ." + pairwise.POINT_QUESTION, "completion": "Y"}]
    policy, ref = tiny(tok, 3), tiny(tok, 3).eval()
    p0 = pairwise.pointwise_probs(policy, tok, ["it is"], [" good ."]).item()
    cfg = small_cfg(iterations=1, judge_refresh_steps=30)
    cfg.judge_refresh.lr = 1e-2
    online_dpo.online_dpo(policy, ref, tok, PROMPTS, lambda ps, cs: [float(len(c)) for c in cs], cfg, judge_rows=rows)
    assert pairwise.pointwise_probs(policy, tok, ["it is"], [" good ."]).item() > max(0.9, p0 + 0.2)


# --- every --judge kind --------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, parsed", [
    ("review-rm", ("reward-model", "review-rm")), ("review-judge", ("pairwise", "review-judge")),
    ("pointwise:review-judge", ("pointwise", "review-judge")), ("pairwise:my/judge", ("pairwise", "my/judge")),
    ("reward-model:my/rm", ("reward-model", "my/rm")), ("self", ("self", None)), ("rubric", ("rubric", None)),
    ("gold", ("gold", None)), ("review-rm-s1", ("reward-model", "review-rm-s1")),
])
def test_parse_judge(spec, parsed):
    assert judge_commands.parse_judge(spec) == parsed


@pytest.mark.parametrize("spec", ["nope", "pointwise:", "listwise:review-judge"])
def test_parse_judge_refuses_unknown_kinds(spec):
    with pytest.raises(ConfigError, match="--judge"):
        judge_commands.parse_judge(spec)


def test_pointwise_and_pairwise_judges_from_a_folder(tok, tmp_path):
    """`pointwise:FOLDER` scores each response by that model's p('Y' | ... "Good? "); `pairwise:FOLDER` by the
    round robin of its both-orders verdicts; the online loop's pairs follow the pointwise ranking."""
    model = tiny(tok, 5).eval()
    model.save_pretrained(tmp_path / "j")
    tok.save_pretrained(tmp_path / "j")
    ps, cs = ["it is"] * 3, [" good .", " bad .", " fun and good ."]
    point = judge_commands.make_judge(f"pointwise:{tmp_path / 'j'}", tok, 3)(ps, cs)
    assert point == pytest.approx(pairwise.pointwise_probs(model, tok, ps, cs).tolist(), abs=1e-6)
    pair = judge_commands.make_judge(f"pairwise:{tmp_path / 'j'}", tok, 3)(ps, cs)
    want = pairwise.group_scores_from_pairs(lambda p, a, b: pairwise.pairwise_probs(model, tok, p, a, b), ps, cs, 3)
    assert pair == pytest.approx(want, abs=1e-6)
    rows = online_dpo.best_worst_pairs(ps, cs, point, 3)
    best, worst = max(range(3), key=lambda i: point[i]), min(range(3), key=lambda i: point[i])
    assert [(r["chosen"], r["rejected"]) for r in rows] == [(cs[best], cs[worst])]


def test_self_judge_from_the_command_line_needs_the_policy(tok):
    with pytest.raises(ConfigError, match="policy"):
        judge_commands.make_judge("self", tok)
    policy = tiny(tok, 2)
    scores = judge_commands.make_judge("self", tok, policy=policy)(["it is"] * 2, [" good .", " bad ."])
    assert scores == pytest.approx(pairwise.pointwise_probs(policy, tok, ["it is"] * 2, [" good .", " bad ."]).tolist())


@pytest.mark.parametrize("argv, message", [
    (["dpo", "--online", "--judge", "listwise:review-judge"], "--judge 'listwise:review-judge'"),
    (["dpo", "--online", "--judge", "nope"], "--judge must be one of"),
    (["dpo", "--online", "--max-kl", "-1"], "--max-kl must be >= 0"),
    (["dpo", "--online", "--guard-action", "warn"], "--guard-action must be one of stop, flag"),
    (["dpo", "--online", "--judge", "self", "--min-held-out-agreement", "1.5"], "--min-held-out-agreement"),
    (["dpo", "--online", "--judge", "review-rm", "--judge-refresh-steps", "5"], "use them with --judge self"),
])
def test_online_cli_errors_are_one_line_before_loading(argv, message, capsys, monkeypatch, tmp_path):
    from minirlhf import cli
    import minirlhf.models
    import minirlhf.zoo

    monkeypatch.chdir(tmp_path)

    def boom(*a, **k):
        raise AssertionError("loaded something before the flags were checked")

    for mod, name in ((minirlhf.models, "load_model"), (minirlhf.models, "load_tokenizer"),
                      (minirlhf.zoo, "load_split")):
        monkeypatch.setattr(mod, name, boom)
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_online_cli_bad_judge_folder_is_one_line(capsys, monkeypatch, tmp_path):
    from minirlhf import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    assert cli.main(["dpo", "--online", "--judge", f"pointwise:{tmp_path / 'missing'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model folder not found" in err[0], err
    assert cli.main(["dpo", "--online", "--judge", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no config.json" in err[0], err


def test_baselines_have_the_judge_rows():
    from minirlhf import baselines
    review, arith = baselines._review_rows(0), baselines._arith_rows(0)
    for name in ("online DPO (review-rm judge, 3 rounds)", "online DPO (review-judge pairwise, 3 rounds)",
                 "online DPO (review-judge pointwise, 3 rounds)", "self-rewarding DPO (review-self, 3 rounds)",
                 "self-rewarding DPO, judge retrained + KL guard 25"):
        assert name in review
    assert "best-of-16 (arith-genrm-cot, 8 checks averaged)" in arith


def test_judge_cli_pairwise_reports_the_pointwise_agreement(monkeypatch, tmp_path):
    """`minirlhf judge --kind pairwise` also reads the judge's pointwise grades ('Good? ' -> p('Y')), compared per pair:
    the same number as computing it by hand on the same held-out pairs."""
    import json
    from minirlhf import cli
    from minirlhf.models import load_model, load_tokenizer
    from minirlhf.worlds import reviews
    from minirlhf.zoo import load_split

    monkeypatch.chdir(tmp_path)
    assert cli.main(["judge", "--kind", "pairwise", "--pairs", "30", "--name", "pj", "--quiet"]) == 0
    summary = json.loads((tmp_path / "runs" / "pj" / "summary.json").read_text())
    rows = load_split("reviews", "prefs_test")[:30]
    model, tok = load_model("review-judge").eval(), load_tokenizer()
    ps, a, b = [r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows]
    pa, pb = pairwise.pointwise_probs(model, tok, ps, a), pairwise.pointwise_probs(model, tok, ps, b)
    ga = torch.tensor([reviews.gold_reward(p + x) for p, x in zip(ps, a)])
    gb = torch.tensor([reviews.gold_reward(p + x) for p, x in zip(ps, b)])
    keep = ga != gb
    by_hand = ((pa > pb)[keep] == (ga > gb)[keep]).double().mean().item()
    assert summary["gold_agreement_pointwise"] == pytest.approx(by_hand, abs=1e-4)


def test_online_cli_self_judge_with_guards_runs(monkeypatch, tmp_path):
    """`minirlhf dpo --online --judge self`: review-self judges its own samples, the held-out agreement is logged each
    round, the judging rows are retrained; a held-out floor of 0.99 trips on round 1, which is undone (none kept)."""
    import json
    from minirlhf import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["dpo", "--online", "--judge", "self", "--iterations", "2", "--prompts-per-iteration", "4",
                     "--judge-refresh-steps", "1", "--min-held-out-agreement", "0.99", "--name", "sr", "--quiet"]) == 0
    summary = json.loads((tmp_path / "runs" / "sr" / "summary.json").read_text())
    assert summary["model"] == "review-self" and summary["iterations"] == 0 and summary["kl"] == 0.0
    assert summary["guard"].startswith("held-out agreement ") and len(summary["held_out_agreement"]) == 1
    assert 0.5 < summary["held_out_agreement"][0] < 1.0


def test_baselines_guarded_self_rewarding_row_passes_what_the_guards_need(monkeypatch):
    """The guarded baselines row hands the loop its KL prompts, held-out check and judging rows (a guard without
    them is a ConfigError), starts from review-self, and judges with the policy itself."""
    from minirlhf import baselines
    import minirlhf.judges.online_dpo as od

    class Done(Exception):
        pass

    seen = {}

    def spy(policy, ref, tok, prompts, judge, cfg, **kw):
        seen.update(policy=policy, judge=judge, cfg=cfg, **kw)
        raise Done

    monkeypatch.setattr(od, "online_dpo", spy)
    with pytest.raises(Done):
        baselines._review_rows(0)["self-rewarding DPO, judge retrained + KL guard 25"]()
    cfg = seen["cfg"]
    assert cfg.max_kl == 25.0 and cfg.judge_refresh_steps == 20 and cfg.seed == 0
    assert len(seen["eval_prompts"]) > 0 and len(seen["judge_rows"]) > 1000 and callable(seen["held_out_fn"])
    ps, cs = ["it is"] * 2, [" good .", " bad ."]
    from minirlhf.models import load_tokenizer
    by_hand = pairwise.pointwise_probs(seen["policy"], load_tokenizer(), ps, cs).tolist()  # the policy judges itself
    assert seen["judge"](ps, cs) == pytest.approx(by_hand, abs=1e-6)
