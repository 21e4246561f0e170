"""Reward-hacking defences by hand: ensemble aggregations, WARM, length control, the monitor."""
import pytest
import torch

from minirlhf.reward_hacking.defences import (EnsembleReward, ensemble_reward, first_flag, hacking_flags,
                                              length_penalised, pearson, warm_average)

S = torch.tensor([[1.0, 0.0, 2.0],
                  [3.0, 0.0, -2.0]])    # (K=2, B=3)


def test_ensemble_aggregations_by_hand():
    assert ensemble_reward(S, "mean").tolist() == [2.0, 0.0, 0.0]
    assert ensemble_reward(S, "worst").tolist() == [1.0, 0.0, -2.0]
    # population variances: (1,3) -> 1; (0,0) -> 0; (2,-2) -> 4
    assert ensemble_reward(S, "uwo", lam=0.5).tolist() == [2.0 - 0.5, 0.0, 0.0 - 2.0]
    assert ensemble_reward(S, "mean_minus_std", lam=1.0).tolist() == [1.0, 0.0, -2.0]
    # one member: every method is that member
    for m in ("mean", "worst", "uwo", "mean_minus_std"):
        assert ensemble_reward(S[:1], m).tolist() == S[0].tolist()


def test_ensemble_reward_wraps_functions_and_validates():
    f1 = lambda p, c: [1.0, 5.0]
    f2 = lambda p, c: [3.0, 1.0]
    assert EnsembleReward([f1, f2], "worst")(["a", "b"], ["x", "y"]) == [1.0, 1.0]
    assert EnsembleReward([f1, f2], "mean")(["a", "b"], ["x", "y"]) == [2.0, 3.0]
    with pytest.raises(ValueError, match="method must be one of"):
        EnsembleReward([f1], "median")
    with pytest.raises(ValueError, match="lam must be >= 0"):
        ensemble_reward(S, "uwo", lam=-1)
    with pytest.raises(ValueError, match=r"\(K, B\)"):
        ensemble_reward(torch.zeros(3), "mean")


def test_warm_average_is_the_mean_of_state_dicts():
    torch.manual_seed(0)
    nets = [torch.nn.Linear(4, 2) for _ in range(3)]
    sds = [n.state_dict() for n in nets]
    avg = warm_average(sds)
    for k in sds[0]:
        assert torch.allclose(avg[k], torch.stack([sd[k] for sd in sds]).mean(0), atol=1e-7)
    # weights: all on one model gives that model back; a loadable state dict
    one = warm_average(sds, [0.0, 1.0, 0.0])
    assert all(torch.equal(one[k], sds[1][k]) for k in one)
    torch.nn.Linear(4, 2).load_state_dict(avg)


def test_warm_average_refuses_mismatched_models():
    a, b = torch.nn.Linear(4, 2).state_dict(), torch.nn.Linear(4, 3).state_dict()
    with pytest.raises(ValueError, match="different shapes"):
        warm_average([a, b])
    with pytest.raises(ValueError, match="different keys"):
        warm_average([a, {"weight": a["weight"]}])
    with pytest.raises(ValueError, match="summing to 1"):
        warm_average([a, a], [0.7, 0.7])
    ia, ib = {"ids": torch.tensor([0, 1])}, {"ids": torch.tensor([0, 2])}
    with pytest.raises(ValueError, match="integer buffer"):
        warm_average([ia, ib])


def test_length_penalty_and_correlation():
    base = lambda p, c: [1.0] * len(c)
    r = length_penalised(base, alpha=0.1, center=2.0)(["p"] * 3, ["ab", "abcd", ""])
    assert r == pytest.approx([1.0, 0.8, 1.2])
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0
    # hand value: x = (0, 1, 2), y = (0, 0, 3): cov = 3, |x| = sqrt 2, |y| = sqrt 6 -> 3 / sqrt 12
    assert pearson([0, 1, 2], [0, 0, 3]) == pytest.approx(3 / 12 ** 0.5)


def test_monitor_fires_only_when_proxy_rises_and_the_independent_signal_falls():
    proxy = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    both_up = [0.0, 0.4, 0.8, 1.0, 1.1, 1.2]
    turn = [0.0, 0.4, 0.8, 0.7, 0.3, 0.0]
    assert not any(hacking_flags(proxy, both_up))
    flags = hacking_flags(proxy, turn, window=2)
    assert flags == [False, False, False, False, True, True]
    assert first_flag(flags) == 4 and first_flag([False]) is None
    # margins: a fall of 0.1 over the window is not enough when min_fall = 0.2
    assert hacking_flags(proxy, turn, window=1, min_fall=0.2) == [False, False, False, False, True, True]
    assert hacking_flags(proxy, turn, window=1, min_fall=0.5) == [False] * 6
    flat_proxy = [1.0] * 6
    assert not any(hacking_flags(flat_proxy, turn))
    with pytest.raises(ValueError, match="equal lengths"):
        hacking_flags([1.0], [1.0, 2.0])


def test_monitor_on_a_rising_warning_sign():
    # direction="rises": the independent signal (an ensemble's spread) should stay low; it fires when it grows
    proxy = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    spread = [0.10, 0.10, 0.12, 0.30, 0.50, 0.50]
    # window 1: rises 0, 0.02, 0.18, 0.20, 0 -> with min_fall 0.05 fires at 3 and 4 only
    assert hacking_flags(proxy, spread, window=1, min_fall=0.05, direction="rises") == \
        [False, False, False, True, True, False]
    # the same series read as "falls" never fires (it never falls), and a falling spread never fires "rises"
    assert not any(hacking_flags(proxy, spread, window=1, min_fall=0.05))
    assert not any(hacking_flags(proxy, spread[::-1], window=1, direction="rises"))
    # the proxy must still rise: a flat proxy with a rising spread is not hacking
    assert not any(hacking_flags([1.0] * 6, spread, window=1, direction="rises"))
    with pytest.raises(ValueError, match="direction"):
        hacking_flags(proxy, spread, direction="up")


def test_ensemble_spread_by_hand():
    # members score (1, 3), (3, 3), (2, 3): per-sample std (unbiased=False) = sqrt(2/3) and 0
    ens = EnsembleReward([lambda p, c: [1.0, 3.0], lambda p, c: [3.0, 3.0], lambda p, c: [2.0, 3.0]])
    assert ens.spread(["a", "b"], ["x", "y"]) == pytest.approx([(2 / 3) ** 0.5, 0.0])


def test_defence_bench_pieces_by_hand():
    from minirlhf.errors import ConfigError
    from minirlhf.reward_hacking.defence_bench import DefenceBenchConfig, fit_length_slope, per_prompt_bon

    # slope of y = 2 x + 1 is 2
    assert fit_length_slope(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0.0, 1.0, 2.0])) == pytest.approx(2.0)
    # one prompt, pool of 2: N=1 is the mean gold, N=2 is the gold of the sample the selector ranks higher
    sel, gold = torch.tensor([[0.0, 1.0], [5.0, 1.0]]), torch.tensor([[10.0, 20.0], [1.0, 3.0]])
    c = per_prompt_bon(sel, gold, [1, 2])
    assert c.tolist() == [[15.0, 20.0], [2.0, 1.0]]
    with pytest.raises(ConfigError, match="--pool must be >= 2"):
        DefenceBenchConfig(pool=1).validate()
    with pytest.raises(ConfigError, match="--uwo-lambda"):
        DefenceBenchConfig(uwo_lambda=-1.0).validate()


def test_hacking_monitor_flags_rows_as_they_are_logged(tmp_path, capsys):
    import json
    from minirlhf.reward_hacking.defences import HackingMonitor
    from minirlhf.utils import MetricsLogger

    mon = HackingMonitor(MetricsLogger(tmp_path / "m.jsonl"), window=1, min_fall=0.05)
    mon.log({"step": 0, "loss": 1.0})                               # not an evaluation row: untouched
    for step, (p, g) in enumerate([(0.0, 0.0), (0.5, 0.3), (1.0, 0.32), (1.5, 0.1), (2.0, -0.2)], start=1):
        mon.log({"step": step, "eval/scores": p, "eval/gold": g})
    assert mon.series("hacking/flag") == [0, 0, 0, 1, 1]            # fires when gold falls by > 0.05
    assert mon.first_flag_step == 4
    out = capsys.readouterr().out
    assert out.count("possible reward hacking") == 1 and "step 4" in out
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r.get("hacking/flag") for r in rows] == [None, 0, 0, 0, 1, 1]   # written to the file as it goes


def test_two_monitors_on_two_signals_keep_separate_flags():
    from minirlhf.reward_hacking.defences import HackingMonitor

    on_gold = HackingMonitor(window=1, min_fall=0.05, warn=False)
    on_held = HackingMonitor(on_gold, independent_key="eval/heldout", window=1, min_fall=0.05, warn=False,
                             flag_key="hacking/flag_heldout")
    # the held-out reward model falls at step 2, gold only at step 3
    for step, (p, g, h) in enumerate([(0.0, 0.0, 0.0), (0.5, 0.3, 0.4), (1.0, 0.35, 0.2), (1.5, 0.1, 0.1)]):
        on_held.log({"step": step, "eval/scores": p, "eval/gold": g, "eval/heldout": h})
    assert on_held.series("hacking/flag_heldout") == [0, 0, 1, 1]
    assert on_held.series("hacking/flag") == [0, 0, 0, 1]
    assert (on_held.first_flag_step, on_gold.first_flag_step) == (2, 3)


def test_hacking_monitor_rises_mode_on_the_spread():
    from minirlhf.reward_hacking.defences import HackingMonitor

    mon = HackingMonitor(independent_key="eval/spread", window=1, min_fall=0.05, warn=False, direction="rises")
    for step, (p, sp) in enumerate([(0.0, 0.2), (0.5, 0.21), (1.0, 0.4), (1.5, 0.3)]):
        mon.log({"step": step, "eval/scores": p, "eval/spread": sp})
    assert mon.series("hacking/flag") == [0, 0, 1, 0]      # spread +0.19 at step 2; falls at step 3
    assert mon.first_flag_step == 2
    with pytest.raises(ValueError, match="direction"):
        HackingMonitor(direction="down")
