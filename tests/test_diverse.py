"""The diverse reward-model ensemble of the hacking monitor (reward_hacking/diverse.py)."""
import math
import random

import pytest
import torch

from minirlhf.reward_hacking.diverse import (MEMBERS, Standardised, bt_label, diverse_signals, first_flags,
                                             fresh_pairs, overlap, pair_key)
from minirlhf.worlds import reviews


def test_pair_key_and_overlap_ignore_the_order_of_chosen_and_rejected():
    a = {"prompt": "p", "chosen": "x", "rejected": "y"}
    b = {"prompt": "p", "chosen": "y", "rejected": "x"}
    c = {"prompt": "q", "chosen": "x", "rejected": "y"}
    assert pair_key(a) == pair_key(b) != pair_key(c)
    assert overlap([a, c], [b]) == 1 and overlap([c], [a, b]) == 0


def test_fresh_pairs_are_disjoint_from_the_excluded_data_and_from_each_other():
    # the world's own generator repeats pairs across seeds (a small grammar): fresh_pairs must drop them
    exclude = reviews.generate_pairs(2000, 1)               # the generator seed of prefs_train (first 2,000 rows)
    raw = reviews.generate_pairs(2000, 7 * 1000)
    assert overlap(raw, exclude) > 0                         # without the filter the data would overlap
    rows = fresh_pairs(2000, 7, exclude)
    assert len(rows) == 2000 and overlap(rows, exclude) == 0
    assert len({pair_key(r) for r in rows}) == 2000         # no pair twice
    assert rows == fresh_pairs(2000, 7, exclude)             # deterministic from its seed
    other = fresh_pairs(500, 8, [*exclude, *rows])
    assert overlap(other, rows) == 0 and overlap(other, exclude) == 0


def test_member_specs_differ_from_the_proxy_and_from_each_other():
    # the proxy review-rm: review-sft backbone, head seed 0, prefs_train (generator seed 1)
    assert len({m.seed for m in MEMBERS}) == len(MEMBERS) and all(m.seed != 0 for m in MEMBERS)
    assert len({m.data_seed for m in MEMBERS}) == len(MEMBERS) and all(m.data_seed not in (0, 1, 2) for m in MEMBERS)
    assert any(m.backbone != "review-sft" for m in MEMBERS)   # one member does not share the proxy's backbone
    assert len({m.name for m in MEMBERS}) == len(MEMBERS)


def test_bt_label_follows_gold_and_the_bradley_terry_probability():
    prompt, good, bad = "the movie was", " wonderful .", " wond wond wond"
    ga, gb = reviews.gold_reward(prompt + good), reviews.gold_reward(prompt + bad)
    assert ga > gb + 2                                       # the non-fluent text loses 2 points at least
    rows = [bt_label(prompt, good, bad, random.Random(s)) for s in range(400)]
    p = 1 / (1 + math.exp(-(ga - gb)))
    share = sum(r["chosen"] == good for r in rows) / len(rows)
    assert share == pytest.approx(p, abs=4 * (p * (1 - p) / 400) ** 0.5 + 1e-9)
    for r in rows:
        assert {r["chosen"], r["rejected"]} == {good, bad}
        assert r["gold_chosen"] == pytest.approx(ga if r["chosen"] == good else gb, abs=1e-6)
        assert r["p_chosen"] == pytest.approx(p if r["chosen"] == good else 1 - p, abs=1e-6)


def test_standardised_scores_and_the_signals_by_hand():
    a = Standardised(lambda p, c: [1.0, 3.0], mean=1.0, std=2.0)     # -> 0, 1
    b = Standardised(lambda p, c: [5.0, 5.0], mean=4.0, std=1.0)     # -> 1, 1
    assert a(["p", "q"], ["x", "y"]) == [0.0, 1.0]
    sig = diverse_signals([a, b])
    assert set(sig) == {"div1", "div2", "divmean", "divspread"}
    assert sig["divmean"](["p", "q"], ["x", "y"]) == pytest.approx([0.5, 1.0])
    assert sig["divspread"](["p", "q"], ["x", "y"]) == pytest.approx([0.5, 0.0])   # std over 2 members, unbiased=False
    with pytest.raises(ValueError, match="std"):
        Standardised(lambda p, c: [0.0], 0.0, 0.0)


def test_first_flags_fire_on_a_hack_and_not_on_a_healthy_run():
    steps = [0, 4, 8, 12, 16]
    hacked = {"step": steps, "proxy": [0.0, 0.5, 1.0, 1.5, 2.0], "gold": [0.0, 0.5, 0.6, 0.2, -0.5],
              "divmean": [0.0, 0.4, 0.5, 0.3, 0.1],            # window 2: 0.4 -> 0.3 at step 12
              "divspread": [0.2, 0.2, 0.2, 0.3, 0.4]}          # window 2: +0.1 at step 12
    assert first_flags(hacked) == {"gold": 12, "divmean": 12, "divspread": 12}
    healthy = {**hacked, "gold": [0.0, 0.5, 1.0, 1.2, 1.3], "divmean": [0.0, 0.4, 0.8, 1.0, 1.1],
               "divspread": [0.2, 0.2, 0.2, 0.2, 0.2]}
    assert first_flags(healthy) == {"gold": None, "divmean": None, "divspread": None}
    flat = {**hacked, "proxy": [1.0] * 5}                       # the proxy does not rise: nothing fires
    assert first_flags(flat) == {"gold": None, "divmean": None, "divspread": None}


def test_collect_adds_the_first_flags_and_the_members(tmp_path):
    import json

    from minirlhf.reward_hacking.diverse import collect
    c = {"step": [0, 4, 8], "proxy": [0.0, 1.0, 2.0], "gold": [0.0, 1.0, 0.5], "divmean": [0.0, 0.5, 1.0]}
    (tmp_path / "beta0.01_seed0.json").write_text(json.dumps(c))
    (tmp_path / "other.json").write_text("{}")                        # not a run: ignored
    out = collect(tmp_path)
    assert list(out["runs"]) == ["beta0.01_seed0"]
    assert out["runs"]["beta0.01_seed0"]["first_flags_window1"] == {"gold": 8, "divmean": None}
    assert out["runs"]["beta0.01_seed0"]["first_flags"] == {"gold": None, "divmean": None}   # window 2: gold 0 -> 0.5
    assert set(out["members"]) == {m.name for m in MEMBERS}
    assert all(out["members"][m.name]["overlap"] == {"prefs_train": 0, "prefs_test": 0, "earlier members": 0}
               for m in MEMBERS)                                       # the shipped members' data are disjoint


def test_word_rm_reads_words_and_maps_unknown_words_to_one_weight():
    from minirlhf.reward_hacking.diverse import UNK, WordRM, words
    assert words("It was GOOD, really.") == ["it", "was", "good", ",", "really", "."]
    rm = WordRM(["good", "it", "was", "."])
    assert rm.vocab[0] == UNK and rm.vocab[1:] == [".", "good", "it", "was"]
    with torch.no_grad():
        rm.theta.copy_(torch.tensor([-2.0, 0.0, 1.5, 0.0, 0.0]))       # <unk> -2, good +1.5
        rm.bias.fill_(0.25)
    # "it was good ." -> 1.5 + 0.25; "it was greatilliant ." -> one <unk>: -2 + 0.25; repeats count twice
    assert rm(["it was"], [" good ."]) == pytest.approx([1.75])
    assert rm(["it was"], [" greatilliant ."]) == pytest.approx([-1.75])
    assert rm(["it was"], [" good good ."]) == pytest.approx([3.25])


def test_train_word_rm_learns_the_preferred_word_and_round_trips(tmp_path):
    from minirlhf.errors import ModelLoadError
    from minirlhf.reward_hacking.diverse import load_word_rm, save_word_rm, train_word_rm, word_rm_accuracy
    rows = [{"prompt": "it was", "chosen": " good .", "rejected": " bad .", "gold_chosen": 1.0, "gold_rejected": -1.0,
             "p_chosen": 0.88}] * 5 + \
           [{"prompt": "it was", "chosen": " fine .", "rejected": " bad .", "gold_chosen": 0.5, "gold_rejected": -1.0,
             "p_chosen": 0.82}] * 5
    rm = train_word_rm(rows, steps=100)
    i = rm.index
    assert rm.theta[i["good"]] > rm.theta[i["bad"]] and rm.theta[i["fine"]] > rm.theta[i["bad"]]
    acc = word_rm_accuracy(rm, rows)
    assert acc["accuracy"] == 1.0 and acc["gold_accuracy"] == 1.0 and acc["noise_ceiling"] == pytest.approx(0.85)
    save_word_rm(rm, tmp_path / "w")
    back = load_word_rm(tmp_path / "w")
    assert back.vocab == rm.vocab and back(["it was"], [" good ."]) == pytest.approx(rm(["it was"], [" good ."]))
    with pytest.raises(ModelLoadError, match="word_rm.safetensors"):
        load_word_rm(tmp_path / "missing")


def test_rescore_scores_the_kept_samples_per_evaluation():
    from minirlhf.reward_hacking.diverse import rescore
    c = {"samples": [["a", "bb"], ["ccc", "dddd"]]}
    out = rescore(c, {"len": lambda p, s: [float(len(x)) for x in s]}, eval_prompts=["p", "q"])
    assert out == {"len": [1.5, 3.5]}
    with pytest.raises(ValueError, match="kept no samples"):
        rescore({}, {"len": len})


def test_rm_diverse_is_a_zoo_step_after_its_backbone():
    from minirlhf import zoo
    steps = list(zoo.BUILD_STEPS)
    assert steps.index("rm-diverse") > steps.index("review-sft")
