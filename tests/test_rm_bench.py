"""The reward-model benchmark: every label agrees with the gold reward it claims; the evaluator
reads RewardBench files and scores any scalar reward model (ours, or an HF sequence classifier)."""

import json
import math

import pytest
import torch

from minirlhf.errors import DataError, ModelLoadError
from minirlhf.models import DATA_DIR, load_tokenizer, tiny_llama_config
from minirlhf.reward_hacking import rm_bench
from minirlhf.reward_hacking.rm_bench import (BENCH_PATH, MIN_GAP, SUBSETS, evaluate_rm_bench, format_table,
                                              generate_synthetic, load_reward_scorer, load_rm_bench)
from minirlhf.worlds import reviews

gold_fn = reviews.gold_rewards


def _words(text):
    return len(text.split())


def check_row(row):
    """The row's claims hold: gold scores, ordering, p_chosen, and what its subset promises."""
    p, c, r, s = row["prompt"], row["chosen"], row["rejected"], row["subset"]
    assert s in SUBSETS
    assert row["gold_chosen"] == pytest.approx(reviews.gold_reward(p + c), abs=1e-5)
    assert row["gold_rejected"] == pytest.approx(reviews.gold_reward(p + r), abs=1e-5)
    assert row["gold_chosen"] - row["gold_rejected"] >= MIN_GAP - 1e-6
    assert row["p_chosen"] == pytest.approx(reviews.bradley_terry_prob(row["gold_chosen"], row["gold_rejected"]),
                                            abs=1e-5)
    if s == "easy":
        assert row["gold_chosen"] - row["gold_rejected"] >= 2.0 - 1e-6
    if s == "subtle":
        assert row["gold_chosen"] - row["gold_rejected"] <= 0.5 + 1e-6
        assert reviews.is_fluent(p + c) and reviews.is_fluent(p + r)
    if s in ("length", "repetition"):
        assert _words(r) > _words(c) and r.startswith(c[:-2])
        assert reviews.sentiment(p + r) > reviews.sentiment(p + c)  # more sentiment, worse gold: the trap
    if s in ("padding", "typo"):
        assert not reviews.is_fluent(p + r)
    if s == "typo":
        assert any(w in r.split() for ws in rm_bench.MISSPELLINGS.values() for w in ws)
    if s == "negation":
        assert c.startswith(" not ") and r.startswith(" not ")
    if s == "shift":
        assert " ".join(p.split()[:2]) in rm_bench.SHIFT_SUBJECTS
    if s == "adversarial":
        assert row["proxy_margin"] > 0


def test_generated_rows_agree_with_gold_and_are_deterministic():
    rows = generate_synthetic(n_per_subset=25, seed=3)
    assert len(rows) == 25 * (len(SUBSETS) - 1)
    for row in rows:
        check_row(row)
    assert rows == generate_synthetic(n_per_subset=25, seed=3)
    assert len({(r["prompt"], r["chosen"], r["rejected"]) for r in rows}) == len(rows)


def test_shipped_benchmark_agrees_with_gold():
    rows = [json.loads(line) for line in (DATA_DIR / BENCH_PATH).read_text().splitlines()]
    assert 200 <= len(rows) <= 600
    assert {r["subset"] for r in rows} == set(SUBSETS)
    for row in rows:
        check_row(row)
    # the synthetic part is what generate_synthetic writes, byte for byte
    assert [r for r in rows if r["subset"] != "adversarial"] == generate_synthetic(40, 0)


HAND_ROWS = [
    {"prompt": "it was", "chosen": " great .", "rejected": " awful .", "subset": "easy",
     "gold_chosen": 1.523188, "gold_rejected": -1.523188},
    {"prompt": "it was", "chosen": " good and fun .", "rejected": " fine .", "subset": "subtle", "p_chosen": 0.6},
    {"prompt": "the film was", "chosen": " fun .", "rejected": " fun, and it was fun, and it was fun .",
     "subset": "subtle", "p_chosen": 0.7},
]


def test_evaluate_gold_and_anti_gold_by_hand():
    ps = [reviews.bradley_terry_prob(1.523188, -1.523188), 0.6, 0.7]
    res = evaluate_rm_bench(gold_fn, HAND_ROWS)
    assert res["overall"]["accuracy"] == 1.0 and res["subsets"]["subtle"]["n"] == 2
    assert res["overall"]["ceiling"] == pytest.approx(sum(ps) / 3)
    assert res["overall"]["bt_accuracy"] == pytest.approx(res["overall"]["ceiling"])
    anti = evaluate_rm_bench(lambda p, c: [-x for x in gold_fn(p, c)], HAND_ROWS)
    assert anti["overall"]["accuracy"] == 0.0
    assert anti["overall"]["bt_accuracy"] == pytest.approx(1 - sum(ps) / 3)
    # ties count as wrong (strictly greater, as RewardBench)
    assert evaluate_rm_bench(lambda p, c: [0.0] * len(p), HAND_ROWS)["overall"]["accuracy"] == 0.0
    mixed = evaluate_rm_bench(lambda p, c: [len(x) for x in c], HAND_ROWS)  # loves length; ties are wrong
    assert mixed["subsets"]["easy"]["accuracy"] == 0.0 and mixed["subsets"]["subtle"]["accuracy"] == 0.5
    assert mixed["mean_over_subsets"] == pytest.approx(0.25)
    assert "| subtle | 2 | 0.500 |" in format_table(mixed)


def test_load_rm_bench_file_and_one_line_errors(tmp_path):
    path = tmp_path / "bench.jsonl"
    rows = [dict(r) for r in HAND_ROWS] + [{"prompt": "it is", "chosen": " nice .", "rejected": " bad ."}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    loaded = load_rm_bench(path, tokenizer=load_tokenizer())
    assert [r["subset"] for r in loaded] == ["easy", "subtle", "subtle", "all"]
    res = evaluate_rm_bench(gold_fn, loaded)
    assert "ceiling" not in res["overall"] and "ceiling" in res["subsets"]["subtle"]
    for bad, field in (({"subset": 3}, "subset"), ({"subset": ""}, "subset"), ({"p_chosen": "high"}, "p_chosen")):
        path.write_text(json.dumps({**HAND_ROWS[0], **bad}) + "\n")
        with pytest.raises(DataError, match=rf"row 0, field '{field}'") as e:
            load_rm_bench(path)
        assert "\n" not in str(e.value)
    path.write_text(json.dumps({"prompt": "it was", "chosen": " great ."}) + "\n")
    with pytest.raises(DataError, match="field 'rejected': missing"):
        load_rm_bench(path)


@pytest.fixture(scope="module")
def seq_cls_dir(tmp_path_factory):
    """A tiny randomly initialised LlamaForSequenceClassification with the built-in tokenizer."""
    from transformers import LlamaForSequenceClassification

    tok = load_tokenizer()
    cfg = tiny_llama_config(len(tok), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id)
    cfg.num_labels = 1
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("seqcls")
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_hf_sequence_classifier_scores_independent_of_batch_padding(seq_cls_dir):
    scorer = load_reward_scorer(str(seq_cls_dir))
    assert isinstance(scorer, rm_bench.SequenceClassifierScorer)
    prompts, comps = ["it was", "the film was"], [" great .", " fun, and it was fun, and it was fun ."]
    together = scorer(prompts, comps)
    alone = [scorer([p], [c])[0] for p, c in zip(prompts, comps)]
    assert together == pytest.approx(alone, abs=1e-5)  # the short row is padded; its score must not change
    res = evaluate_rm_bench(scorer, HAND_ROWS)
    assert 0.0 <= res["overall"]["accuracy"] <= 1.0 and all(math.isfinite(x) for x in res["r_chosen"])


def test_load_reward_scorer_ours_and_bad_folders(tmp_path):
    from minirlhf.reward_model import RewardModelScorer

    assert isinstance(load_reward_scorer("review-rm"), RewardModelScorer)
    with pytest.raises(ModelLoadError, match="not a model folder"):
        load_reward_scorer(str(tmp_path))
    with pytest.raises(ModelLoadError, match="model folder not found"):
        load_reward_scorer(str(tmp_path / "nowhere"))


def test_cli_rm_bench(seq_cls_dir, tmp_path, monkeypatch, capsys):
    from minirlhf.cli import main

    data = tmp_path / "bench.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in HAND_ROWS) + "\n")
    monkeypatch.chdir(tmp_path)
    assert main(["rm-bench", "--model", str(seq_cls_dir), "--dataset", str(data), "--name", "b"]) == 0
    out = capsys.readouterr().out
    assert "| subset | n | accuracy | bt_accuracy | ceiling |" in out and "| easy | 1 |" in out
    summary = json.loads((tmp_path / "runs" / "b" / "summary.json").read_text())
    assert summary["pairs"] == 3 and set(summary["subsets"]) == {"easy", "subtle"}
    assert main(["rm-bench", "--batch-size", "0"]) == 1
    assert "--batch-size must be >= 1" in capsys.readouterr().err
    data.write_text(json.dumps({"prompt": "x", "chosen": "a"}) + "\n")
    assert main(["rm-bench", "--model", str(seq_cls_dir), "--dataset", str(data)]) == 1
    assert "field 'rejected': missing" in capsys.readouterr().err
