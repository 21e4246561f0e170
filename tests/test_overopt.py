"""The over-optimisation laws of Gao et al. (2023): forms, peaks, and least-squares fits."""

import math

import pytest
import torch

from minirlhf.reward_hacking.overopt import bon_law, fit_bon_law, fit_rl_law, rl_law


def test_laws_by_hand():
    d = torch.tensor([0.0, 1.0, 2.0, math.e])
    assert torch.allclose(bon_law(d, 1.0, 0.25), torch.tensor([0.0, 0.75, 1.0, math.e * (1 - 0.25 * math.e)]))
    assert torch.allclose(rl_law(d, 1.0, 0.5), torch.tensor([0.0, 1.0, 2 * (1 - 0.5 * math.log(2)), math.e * 0.5],
                                                            dtype=torch.float64))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bon_fit_recovers_alpha_beta_from_noisy_curve(seed):
    g = torch.Generator().manual_seed(seed)
    d = torch.sqrt(torch.log(torch.arange(1, 257.0)) - (torch.arange(1, 257.0) - 1) / torch.arange(1, 257.0))
    r = bon_law(d, 1.3, 0.35) + 0.02 * torch.randn(len(d), generator=g)
    fit = fit_bon_law(d, r)
    assert fit["alpha"] == pytest.approx(1.3, abs=0.03) and fit["beta"] == pytest.approx(0.35, abs=0.02)
    assert fit["r2"] > 0.9  # noise 0.02 against a curve whose spread is ~0.1
    assert fit["d_peak"] == pytest.approx(fit["alpha"] / (2 * fit["beta"]))
    assert fit["r_peak"] == pytest.approx(bon_law(torch.tensor(fit["d_peak"]), fit["alpha"], fit["beta"]).item())


@pytest.mark.parametrize("seed", [0, 1])
def test_rl_fit_recovers_alpha_beta_and_peak(seed):
    g = torch.Generator().manual_seed(seed)
    d = torch.linspace(0.05, 8.0, 80, dtype=torch.float64)
    r = rl_law(d, 1.0, 0.4) + 0.02 * torch.randn(len(d), generator=g, dtype=torch.float64)
    fit = fit_rl_law(d, r)
    assert fit["alpha"] == pytest.approx(1.0, abs=0.03) and fit["beta"] == pytest.approx(0.4, abs=0.02)
    assert fit["r2"] > 0.98
    # the peak is where the fitted curve is highest on a fine grid
    grid = torch.linspace(0.01, 20, 20000, dtype=torch.float64)
    curve = rl_law(grid, fit["alpha"], fit["beta"])
    assert fit["d_peak"] == pytest.approx(grid[curve.argmax()].item(), rel=1e-2)
    assert fit["r_peak"] == pytest.approx(curve.max().item(), rel=1e-4)


def test_noise_free_fits_are_exact_and_no_turn_means_no_peak():
    d = torch.linspace(0.1, 3, 30, dtype=torch.float64)
    fit = fit_bon_law(d, bon_law(d, 0.8, 0.1))
    assert (fit["alpha"], fit["beta"], fit["r2"]) == pytest.approx((0.8, 0.1, 1.0), abs=1e-9)
    rising = fit_bon_law(d, 0.5 * d + 0.1 * d ** 2)  # never turns: beta < 0
    assert rising["beta"] < 0 and math.isinf(rising["d_peak"]) and math.isinf(rising["r_peak"])


def test_measure_bon_overoptimisation_smoke():
    from minirlhf.reward_hacking.overopt import OveroptConfig, measure_bon_overoptimisation

    cfg = OveroptConfig(fractions=(0.01,), rm_steps=2, n_prompts=2, pool=4, max_new_tokens=16, n_bootstrap=3)
    out = measure_bon_overoptimisation(cfg, progress=False)
    p = out["proxies"]["0.01"]
    assert p["pairs"] == 100 and len(p["curve"]["gold"]) == 4 and p["curve"]["d"][0] == 0.0
    assert all(k in p for k in ("alpha", "beta", "r2", "d_peak", "r_peak", "alpha_se"))
