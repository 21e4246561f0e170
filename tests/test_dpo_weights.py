"""The loss-vs-margin curves of notebook 04's picture: hand-computed gradient weights."""
import math

import torch

from minirlhf import dpo

H = torch.tensor([-10.0, -1.0, 0.0, 2.5, 9.0, 30.0], dtype=torch.float64)  # (K,) margins
BETA = 0.1


def sig(x):
    return 1 / (1 + torch.exp(-x))


def test_every_loss_is_drawn_from_the_package_functions():
    losses = dpo.margin_losses(H, beta=BETA)
    assert set(losses) == {"dpo", "cdpo", "ipo", "hinge", "kto", "simpo", "orpo"}
    assert torch.allclose(losses["dpo"], dpo.dpo_loss(H, BETA))
    assert math.isclose(losses["dpo"][2].item(), math.log(2), rel_tol=1e-12)  # h = 0: log 2
    assert torch.allclose(losses["ipo"], (H - 1 / (2 * BETA)) ** 2)
    assert torch.allclose(losses["kto"], 2 * (1 - sig(BETA * H / 2)))  # z0 = 0, both terms
    assert torch.allclose(losses["simpo"], -torch.nn.functional.logsigmoid(2.0 * H - 1.0))
    # ORPO: the margin is the log-odds difference, so the loss is -lambda log sigmoid(h)
    assert torch.allclose(losses["orpo"], -0.1 * torch.nn.functional.logsigmoid(H), atol=1e-6)


def test_gradient_weights_hand_computed():
    w = dpo.margin_gradient_weights(H, beta=BETA, eps=0.1)
    assert torch.allclose(w["dpo"], -BETA * sig(-BETA * H))                             # fades as h grows
    assert torch.allclose(w["cdpo"], -0.9 * BETA * sig(-BETA * H) + 0.1 * BETA * sig(BETA * H))
    assert torch.allclose(w["ipo"], 2 * (H - 1 / (2 * BETA)))                           # reverses past h = 5
    assert torch.allclose(w["hinge"], torch.where(BETA * H < 1, -BETA, 0.0).double())  # 0 past beta h = 1
    s = sig(BETA * H / 2)
    assert torch.allclose(w["kto"], -BETA * s * (1 - s))                                 # fades at both ends
    assert torch.allclose(w["simpo"], -2.0 * sig(-(2.0 * H - 1.0)))


def test_signs_every_loss_pushes_a_wrong_pair_towards_a_larger_margin():
    w = dpo.margin_gradient_weights(torch.tensor([-1.0]))
    assert all(v.item() < 0 for v in w.values()), w   # gradient descent raises h
    eps0 = dpo.margin_gradient_weights(H, eps=0.0)
    assert torch.equal(eps0["cdpo"], eps0["dpo"])     # no label smoothing: DPO exactly
