"""Tests for minirlhf.dpo: hand-computed losses, identities, gradient signs, the reference precompute."""

import copy
import math

import pytest
import torch

from minirlhf import dpo
from minirlhf.dpo import DPOConfig
from minirlhf.zoo import new_tiny_model

ROWS = [
    {"prompt": "the film was", "chosen": " great .", "rejected": " dull and slow ."},
    {"prompt": "it is", "chosen": " very good, and the music was fun .", "rejected": " bad ."},
    {"prompt": "the plot felt", "chosen": " fine .", "rejected": " awful, but the ending is okay ."},
    {"prompt": "the music was", "chosen": " wonderful .", "rejected": " boring ."},
]


def sig(x):
    return 1 / (1 + math.exp(-x))


def logsig(x):
    return math.log(sig(x))


def tiny(tok, seed=0):
    torch.manual_seed(seed)
    return new_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


# --- the losses against hand-computed values ------------------------------------------------------

H = torch.tensor([0.7, -1.3, 0.0])


def test_dpo_loss_hand_computed():
    expected = [-logsig(0.5 * h) for h in H.tolist()]
    torch.testing.assert_close(dpo.dpo_loss(H, 0.5), torch.tensor(expected))
    assert dpo.dpo_loss(torch.zeros(1), 0.1).item() == pytest.approx(math.log(2))


def test_logratio_margin_hand_computed():
    h = dpo.logratio_margin(torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-4.0]), torch.tensor([-4.5]))
    assert h.item() == pytest.approx((-3 + 4) - (-5 + 4.5))  # 1.5


def test_cdpo_hand_computed_and_label_smoothing_zero_is_dpo():
    eps, beta = 0.2, 0.5
    expected = [-(1 - eps) * logsig(beta * h) - eps * logsig(-beta * h) for h in H.tolist()]
    torch.testing.assert_close(dpo.cdpo_loss(H, beta, eps), torch.tensor(expected))
    assert torch.equal(dpo.cdpo_loss(H, beta, 0.0), dpo.dpo_loss(H, beta))  # exactly, not approximately


def test_ipo_hand_computed():
    tau = 0.25  # target margin 1/(2 tau) = 2
    torch.testing.assert_close(dpo.ipo_loss(H, tau), torch.tensor([(0.7 - 2) ** 2, (-1.3 - 2) ** 2, 4.0]))
    assert dpo.ipo_loss(torch.tensor([2.0]), tau).item() == 0.0  # minimum at the target, not at infinity


def test_hinge_hand_computed():
    torch.testing.assert_close(dpo.hinge_loss(torch.tensor([0.7, -1.3, 30.0]), 0.1),
                               torch.tensor([1 - 0.07, 1 + 0.13, 0.0]))


def test_simpo_hand_computed():
    c, r = torch.tensor([-0.5]), torch.tensor([-1.5])  # average log-probs
    assert dpo.simpo_loss(c, r, 2.0, 0.5).item() == pytest.approx(-logsig(2.0 * -0.5 - 2.0 * -1.5 - 0.5))


def test_orpo_hand_computed():
    c, r = torch.tensor([-0.2]), torch.tensor([-1.0])
    odds = lambda a: math.log(math.exp(a) / (1 - math.exp(a)))  # noqa: E731
    assert dpo.log_odds(c).item() == pytest.approx(odds(-0.2), rel=1e-5)
    assert dpo.orpo_odds_ratio_loss(c, r, 0.1).item() == pytest.approx(-0.1 * logsig(odds(-0.2) - odds(-1.0)), rel=1e-5)


def test_kto_hand_computed():
    rc, rr, z0 = torch.tensor([1.0, -2.0]), torch.tensor([0.5]), torch.tensor(0.3)
    out = dpo.kto_loss(rc, rr, z0, beta=0.5, desirable_weight=1.0, undesirable_weight=2.0)
    expected = [1 - sig(0.5 * (1.0 - 0.3)), 1 - sig(0.5 * (-2.0 - 0.3)), 2 * (1 - sig(0.5 * (0.3 - 0.5)))]
    torch.testing.assert_close(out, torch.tensor(expected))


def test_nll_is_length_normalised():
    assert dpo.nll_loss(torch.tensor([-6.0]), torch.tensor([3.0])).item() == pytest.approx(2.0)


# --- gradient signs: every variant pushes chosen up relative to rejected ---------------------------


@pytest.mark.parametrize("loss_type", dpo.LOSS_TYPES)
def test_gradient_pushes_chosen_up_and_rejected_down(loss_type):
    cfg = DPOConfig(loss_type=loss_type, beta=0.1, label_smoothing=0.1)  # margins below IPO's target 5
    chosen = torch.tensor([-10.0, -8.0], requires_grad=True)
    rejected = torch.tensor([-9.0, -12.0], requires_grad=True)
    logps = {"chosen": chosen, "rejected": rejected, "chosen_len": torch.tensor([5.0, 4.0]),
             "rejected_len": torch.tensor([6.0, 5.0])}
    ref = {"chosen": torch.tensor([-9.5, -8.5]), "rejected": torch.tensor([-9.5, -11.0])}
    loss, _ = dpo.preference_loss(cfg, logps, ref)
    loss.backward()
    assert (chosen.grad < 0).all(), chosen.grad  # gradient descent raises log pi(y_w)
    assert (rejected.grad > 0).all(), rejected.grad  # ... and lowers log pi(y_l)


def test_ipo_pushes_back_past_its_target_margin():
    h = torch.tensor([1.0, 3.0], requires_grad=True)  # target 1/(2 tau) = 2
    dpo.ipo_loss(h, 0.25).sum().backward()
    assert h.grad[0] < 0 and h.grad[1] > 0  # below the target: raise the margin; above it: lower it


def test_a_few_dpo_steps_raise_the_margin_on_a_real_model(tok):
    policy = tiny(tok)
    log = dpo.train_dpo(policy, tok, ROWS, DPOConfig(steps=15, batch_size=4, lr=3e-3, warmup_steps=1, log_every=1))
    margins = log.series("rewards/margins")
    assert margins[0] == pytest.approx(0.0, abs=1e-5)
    assert margins[-1] > 0.05
    assert log.series("rewards/accuracies")[-1] == 1.0


# --- identities through the real code path ----------------------------------------------------------


def test_dpo_loss_is_log2_at_initialisation(tok):
    policy = tiny(tok)
    log = dpo.train_dpo(policy, tok, ROWS, DPOConfig(steps=1, batch_size=4))  # reference = frozen copy
    first = log.rows[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert first["logps/chosen"] < 0 and first["logps/rejected"] < 0


def test_label_smoothing_zero_recovers_dpo_in_training(tok):
    logs = []
    for cfg in (DPOConfig(loss_type="dpo"), DPOConfig(loss_type="cdpo", label_smoothing=0.0)):
        cfg.steps, cfg.batch_size, cfg.log_every = 3, 4, 1
        logs.append(dpo.train_dpo(tiny(tok), tok, ROWS, cfg).series("loss"))
    assert logs[0] == logs[1]


def test_simpo_reward_is_length_normalised():
    # the same average log-prob (-2 per token) over 3 and 6 tokens: SimPO sees equal rewards, DPO does not
    logps = {"chosen": torch.tensor([-6.0]), "rejected": torch.tensor([-12.0]),
             "chosen_len": torch.tensor([3.0]), "rejected_len": torch.tensor([6.0])}
    loss, m = dpo.preference_loss(DPOConfig(loss_type="simpo", beta=2.0, simpo_gamma=0.5), logps, None)
    assert m["rewards/chosen"].item() == m["rewards/rejected"].item() == -4.0
    assert loss.item() == pytest.approx(-logsig(-0.5))  # only the margin gamma is left
    ref = {"chosen": torch.tensor([0.0]), "rejected": torch.tensor([0.0])}
    _, m_dpo = dpo.preference_loss(DPOConfig(loss_type="dpo", beta=2.0), logps, ref)
    assert m_dpo["rewards/margins"].item() == pytest.approx(12.0)


def test_reference_precompute_equals_on_the_fly(tok):
    ref = tiny(tok, seed=1)
    pre = dpo.precompute_reference_logps(ref, tok, ROWS, batch_size=3)  # batches of 3 and 1: other padding
    batch = dpo.encode_preference_batch(tok, ROWS)
    with torch.no_grad():
        live = dpo.preference_logps(ref, batch)
    torch.testing.assert_close(torch.tensor([r["ref_chosen_logps"] for r in pre]), live["chosen"])
    torch.testing.assert_close(torch.tensor([r["ref_rejected_logps"] for r in pre]), live["rejected"])
    # and training with either gives the same losses
    losses = []
    for precompute in (True, False):
        cfg = DPOConfig(steps=3, batch_size=2, log_every=1, precompute_ref=precompute)
        losses.append(dpo.train_dpo(tiny(tok), tok, ROWS, cfg, ref_model=ref).series("loss"))
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]))


def test_stacked_batch_layout(tok):
    batch = dpo.encode_preference_batch(tok, ROWS)
    assert batch["input_ids"].shape[0] == 2 * len(ROWS)
    lp = dpo.preference_logps(tiny(tok), batch)
    n_chosen = [len(tok(r["chosen"], add_special_tokens=False)["input_ids"]) + 1 for r in ROWS]  # + EOS
    assert lp["chosen_len"].tolist() == n_chosen


@pytest.mark.parametrize("loss_type", ["ipo", "hinge", "simpo", "orpo", "kto"])
def test_every_variant_trains_and_logs(tok, loss_type):
    log = dpo.train_dpo(tiny(tok), tok, ROWS, DPOConfig(loss_type=loss_type, steps=2, batch_size=2, rpo_alpha=0.5))
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected"):
        assert math.isfinite(log.rows[-1][key])


def test_rpo_term_adds_length_normalised_nll(tok):
    policy = tiny(tok)
    base = dpo.train_dpo(copy.deepcopy(policy), tok, ROWS, DPOConfig(steps=1, batch_size=4)).rows[0]
    rpo = dpo.train_dpo(copy.deepcopy(policy), tok, ROWS, DPOConfig(steps=1, batch_size=4, rpo_alpha=2.0)).rows[0]
    batch = dpo.encode_preference_batch(tok, ROWS)
    with torch.no_grad():
        lp = dpo.preference_logps(policy, batch)
    nll = dpo.nll_loss(lp["chosen"], lp["chosen_len"]).mean().item()
    assert rpo["loss"] == pytest.approx(base["loss"] + 2.0 * nll, rel=1e-5)


# --- bad input, NaN, KL helpers ---------------------------------------------------------------------


def test_bad_rows_name_the_row_and_field(tok):
    with pytest.raises(ValueError, match=r"row 1: field 'rejected'"):
        dpo.train_dpo(tiny(tok), tok, [ROWS[0], {"prompt": "it is", "chosen": " good ."}], DPOConfig(steps=1))
    with pytest.raises(ValueError, match="--loss-type must be one of"):
        dpo.train_dpo(tiny(tok), tok, ROWS, DPOConfig(loss_type="nope"))


def test_nan_loss_raises_before_the_update(tok):
    policy = tiny(tok)
    ref = copy.deepcopy(policy)
    with torch.no_grad():
        policy.lm_head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError):
        dpo.train_dpo(policy, tok, ROWS, DPOConfig(steps=1, batch_size=2), ref_model=ref)
