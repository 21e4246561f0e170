"""Hand-checked values for minirlhf.stats (standard errors, bootstrap intervals)."""
import math

import pytest
import torch

from minirlhf.stats import bootstrap_mean, mean_se, paired_bootstrap


def test_mean_se_hand_computed():
    # x = 1, 2, 3, 4: mean 2.5, sample sd sqrt(5/3), se sqrt(5/3)/2
    e = mean_se([1.0, 2.0, 3.0, 4.0])
    assert e.value == pytest.approx(2.5)
    assert e.se == pytest.approx(math.sqrt(5 / 3) / 2)
    assert e.lo == pytest.approx(2.5 - 1.96 * e.se) and e.hi == pytest.approx(2.5 + 1.96 * e.se)
    assert e.n == 4


def test_bootstrap_matches_normal_theory_and_is_seeded():
    x = torch.randn(400, generator=torch.Generator().manual_seed(1))
    b, m = bootstrap_mean(x, n_boot=4000, seed=3), mean_se(x)
    assert b.value == pytest.approx(m.value)
    assert b.se == pytest.approx(m.se, rel=0.1)          # bootstrap se ~ s / sqrt(n)
    assert b.lo == pytest.approx(m.lo, abs=0.3 * m.se) and b.hi == pytest.approx(m.hi, abs=0.3 * m.se)
    assert bootstrap_mean(x, seed=3) == bootstrap_mean(x, seed=3)


def test_paired_bootstrap_removes_shared_spread():
    g = torch.Generator().manual_seed(0)
    item = 5.0 * torch.randn(200, generator=g)          # large item effect shared by both methods
    a = item + 0.3 + 0.1 * torch.randn(200, generator=g)
    b = item + 0.1 * torch.randn(200, generator=g)
    d = paired_bootstrap(a, b)
    assert d.lo > 0.2 and d.hi < 0.4                     # the 0.3 gap is resolved when paired
    unpaired = mean_se(a).lo - mean_se(b).hi             # ...and lost when not
    assert unpaired < 0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="equal lengths"):
        paired_bootstrap([1, 2], [1])
    with pytest.raises(ValueError, match="empty"):
        mean_se([])
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_mean([1.0, float("nan")])
