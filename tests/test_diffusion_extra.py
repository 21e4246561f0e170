"""Tests for minirlhf.diffusion.diagnostics: mode shares, histogram distances, the uncorrected-noise control."""

import math

import torch

from minirlhf.diffusion.diagnostics import (histogram_2d, histogram_tv, mode_shares, modes_covered,
                                            sample_flow_uncorrected)
from minirlhf.diffusion.models import load_diffusion_model
from minirlhf.diffusion.samplers import sample
from minirlhf.diffusion.worlds import mode_centres, sample_points


def test_mode_shares_hand_values():
    c = mode_centres()
    x = torch.cat([c[0].repeat(6, 1), c[3].repeat(3, 1), c[5][None] + 0.1])  # 6 at mode 0, 3 at mode 3, 1 near mode 5
    s = mode_shares(x)
    assert torch.allclose(s, torch.tensor([0.6, 0, 0, 0.3, 0, 0.1, 0, 0]))
    assert modes_covered(x, min_share=0.05) == 3
    assert modes_covered(x, min_share=0.2) == 2


def test_data_covers_all_modes_and_upper_half_collapses():
    x, _, modes = sample_points(4000, generator=torch.Generator().manual_seed(0))
    s = mode_shares(x)
    assert modes_covered(x, 0.1) == 8 and abs(s.sum().item() - 1) < 1e-6
    upper = x[modes < 4]  # label k's upper mode is k: a box-reward maximiser keeps only these
    assert modes_covered(upper, 0.025) == 4 and mode_shares(upper)[4:].sum() == 0


def test_histogram_is_normalised_and_tv_hand_values():
    x = torch.tensor([[-1.0, -1.0], [1.0, 1.0]])
    h = histogram_2d(x, bins=4, lim=2.0, smooth=0)
    assert abs(h.sum().item() - 1) < 1e-6 and h[1, 1] == 0.5 and h[3, 3] == 0.5  # bins of width 1 from -2
    y = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    assert abs(histogram_tv(x, y, bins=4, lim=2.0, smooth=0) - 0.5) < 1e-6  # half the mass moved
    assert histogram_tv(x, x, bins=4, lim=2.0, smooth=1.0) == 0
    assert abs(histogram_2d(x, bins=8, lim=2.0, smooth=1.0).sum().item() - 1) < 1e-6


def test_tv_two_sample_floor_shrinks_with_n_and_detects_a_shift():
    g = torch.Generator().manual_seed(0)
    small = histogram_tv(torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g))
    large = histogram_tv(torch.randn(8000, 2, generator=g), torch.randn(8000, 2, generator=g))
    shifted = histogram_tv(torch.randn(8000, 2, generator=g), torch.randn(8000, 2, generator=g) + 0.5)
    assert large < small / 2 and shifted > 5 * large


def test_uncorrected_noise_is_the_ode_at_zero_noise_and_blurs_the_modes():
    net = load_diffusion_model("diffusion-points-flow")
    labels = torch.arange(4).repeat_interleave(8)
    with torch.no_grad():
        ode = sample(net, labels, 10, 0.0, generator=torch.Generator().manual_seed(0)).samples
    unc0 = sample_flow_uncorrected(net, labels, 10, 0.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ode, unc0, atol=1e-5)  # a = 0: no noise, no correction, the same Euler ODE
    labels = torch.arange(4).repeat_interleave(500)
    with torch.no_grad():
        sde = sample(net, labels, 20, 0.7, generator=torch.Generator().manual_seed(1)).samples
    unc = sample_flow_uncorrected(net, labels, 20, 0.7, generator=torch.Generator().manual_seed(2))
    radius = lambda x: (x.norm(dim=1) - 2.0).abs().mean().item()  # the modes sit on the circle of radius 2
    assert radius(unc) > 1.5 * radius(sde), (radius(unc), radius(sde))
    assert not math.isnan(radius(unc))
