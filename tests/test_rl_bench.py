"""RL over-optimisation bench: gold at equal KL, early stopping, choosing N by a held-out reward model."""
import math

import pytest
import torch

from minirlhf.reward_hacking.rl_bench import EvalSignals, WithSignals, choose_n_by_held_out, early_stop, gold_at_kl


def test_gold_at_kl_interpolates_by_hand():
    kl, gold = [0.0, 2.0, 4.0], [0.0, 1.0, -1.0]
    out = gold_at_kl(kl, gold, [0.0, 1.0, 3.0, 4.0])
    assert out.tolist() == pytest.approx([0.0, 0.5, 0.0, -1.0])
    assert math.isnan(gold_at_kl(kl, gold, [5.0])[0])                  # never extrapolated
    assert math.isnan(gold_at_kl([1.0, 2.0], [0.0, 1.0], [0.5])[0])


def test_gold_at_kl_uses_the_first_time_a_budget_is_spent():
    # KL dips from 4 to 3 at the third evaluation: the running maximum keeps 4 there, so KL 4 maps to the
    # first point that reached it (gold 2), and the dip's gold is a later point at the same budget
    out = gold_at_kl([0.0, 4.0, 3.0, 6.0], [0.0, 2.0, 5.0, 8.0], [2.0, 4.0, 5.0])
    assert out.tolist() == pytest.approx([1.0, 2.0, 6.5])


def test_early_stop_by_hand():
    assert early_stop([0.0, 1.0, 2.0, 1.5, 1.4, 3.0]) == 2        # two evaluations without a new best: stop, keep 2
    assert early_stop([0.0, 1.0, 2.0, 1.5, 3.0, 2.0, 1.0], patience=3) == 4
    assert early_stop([3.0, 2.0, 1.0]) == 0
    assert early_stop([0.0, 1.0, 2.0, 3.0]) == 3                   # never stalls: the last
    assert early_stop([0.0, 0.05, 0.08, 0.09], min_delta=0.1) == 0
    with pytest.raises(ValueError):
        early_stop([], 2)


def test_choose_n_by_held_out():
    # one prompt, 3 samples; the proxy ranks c > b > a; the held-out RM likes b best.
    proxy = torch.tensor([[0.0, 1.0, 2.0]])
    held = torch.tensor([[0.0, 3.0, 1.0]])
    # E[held of the proxy's pick]: N=1: mean(0,3,1) = 4/3; N=2: pairs {a,b}->b 3, {a,c}->c 1, {b,c}->c 1: 5/3; N=3: c: 1
    assert choose_n_by_held_out(proxy, held, [1, 2, 3]) == 2
    assert choose_n_by_held_out(proxy, proxy, [1, 2, 3]) == 3        # the proxy judging itself never stops


def test_eval_signals_score_only_the_evaluation_prompts():
    calls = []
    sig = EvalSignals(eval_prompts := ["the food was", "it was"], {"heldout": lambda p, c: calls.append(1) or [1.0, 3.0]})
    sig(["the food was", "it was"], [" good .", " bad ."])          # a training batch: equal, not the same list
    assert calls == [] and sig.pending == {}
    gold = sig(eval_prompts, [" good .", " bad bad ."])
    assert len(gold) == 2 and calls == [1]
    assert sig.pending == {"eval/heldout": 2.0, "eval/length": 8.5,   # (7 + 10) / 2 characters
                           "eval/distinct": 1.0}                        # two different samples of two
    sig(eval_prompts, [" good .", " good ."])
    assert sig.pending["eval/distinct"] == 0.5                          # the policy collapsed onto one text

    class Rows:
        rows = []
        def log(self, row):
            self.rows.append(row)
            return row
    inj = WithSignals(Rows(), sig)
    inj.log({"step": 0, "objective/kl": 1.0})
    inj.log({"step": 0, "eval/gold": 0.5})
    assert "eval/heldout" not in inj.rows[0] and inj.rows[1]["eval/heldout"] == 2.0


def test_compare_at_equal_kl_by_hand():
    from minirlhf.reward_hacking.rl_bench import compare_at_equal_kl
    runs = {"single": {"kl": [0.0, 2.0, 4.0], "gold": [0.0, 1.0, 0.0]},
            "defence": {"kl": [0.0, 1.0, 2.0], "gold": [0.0, 1.0, 1.5]}}
    out = compare_at_equal_kl(runs, targets=(1.0, 2.0, 3.0))
    assert out["gold"]["single"] == [0.5, 1.0, 0.5]
    assert out["gold"]["defence"] == [1.0, 1.5, None]          # it never reached KL 3
    assert out["vs_baseline"] == {"defence": [0.5, 0.5, None]}


def test_run_curve_smoke():
    """Two PPO steps from the shipped review-sft: every evaluation row carries KL, proxy, gold, the held-out
    signal and the length, and the summary's fit and early stopping run on them."""
    from minirlhf.reward_hacking.rl_bench import RLBenchConfig, run_curve, summarise_curve
    torch.set_num_threads(1)
    reward = lambda p, c: [float(len(x)) / 10 for x in c]             # a proxy that likes length
    held = lambda p, c: [-float(len(x)) / 10 for x in c]              # a held-out signal that does not
    c = run_curve(reward, RLBenchConfig(steps=2, eval_every=1, eval_prompts=4), {"heldout": held})
    assert c["step"] == [0, 1, 2] and len(c["kl"]) == len(c["gold"]) == len(c["heldout"]) == len(c["length"]) == 3
    assert c["kl"][0] == pytest.approx(0.0, abs=1e-4)                 # the first evaluation is the SFT policy itself
    assert c["heldout"] == pytest.approx([-x / 10 for x in c["length"]], abs=1e-3)
    s = summarise_curve(c)
    assert s["gold_start"] == c["gold"][0] and s["stop_step"] in c["step"]


def test_repetition_rate_by_hand():
    from minirlhf.reward_hacking.rl_bench import repetition_rate
    # 8 words, 5 distinct (the movie was good ,) -> 3 / 8 repeat; no repetition -> 0; empty -> 0
    assert repetition_rate(["p"] * 3, ["the movie was good , the movie was", "it was fine .", ""]) == \
        pytest.approx([3 / 8, 0.0, 0.0])


def test_monitor_first_flags_per_signal_by_hand():
    from minirlhf.reward_hacking.rl_bench import monitor_first_flags
    c = {"step": [0, 4, 8, 12], "proxy": [0.0, 1.0, 2.0, 3.0],
         "gold": [0.0, 1.0, 0.5, 0.0],           # window 1: falls 0.5 at step 8
         "spread": [0.10, 0.10, 0.105, 0.13],    # rises 0.005 (< 0.01) at 8, 0.025 at 12
         "distinct": [1.0, 0.9, 0.9, 0.9]}       # falls 0.1 at step 4
    assert monitor_first_flags(c, window=1) == {"gold": 8, "spread": 12, "distinct": 4}
    c["proxy"] = [0.0, 0.0, 0.0, 0.0]            # the proxy never rises: nothing fires
    assert monitor_first_flags(c, window=1) == {"gold": None, "spread": None, "distinct": None}


def test_pooled_rl_fit_recovers_the_law_from_two_runs():
    import math
    from minirlhf.reward_hacking.overopt import rl_law
    from minirlhf.reward_hacking.rl_bench import pooled_rl_fit
    # two runs on the same law (alpha 1.5, beta 0.8) from different starting golds and KL grids
    runs = []
    for start, kls in ((-0.8, [0.0, 1.0, 3.0, 6.0, 10.0]), (0.2, [0.0, 2.0, 4.0, 8.0, 20.0])):
        d = torch.tensor(kls, dtype=torch.float64).sqrt()
        runs.append({"kl": kls, "gold": (start + rl_law(d, 1.5, 0.8)).tolist()})
    fit = pooled_rl_fit(runs)
    assert fit["points"] == 10 and fit["r2"] == pytest.approx(1.0)
    assert (fit["alpha"], fit["beta"]) == (pytest.approx(1.5), pytest.approx(0.8))
    assert fit["d_peak"] == pytest.approx(math.exp(1.5 / 0.8 - 1))
