"""ODIN's two-head reward model: the loss by hand, where each term's gradient goes, the saved model."""
import math

import pytest
import torch

from minirlhf.models import ScalarHeadModel
from minirlhf.reward_hacking.odin import OdinRewardModel, batch_pearson, odin_loss, odin_step, OdinConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _hand_inputs():
    q_c, q_r = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    l_c, l_r = torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0])
    len_c, len_r = torch.tensor([2.0, 4.0]), torch.tensor([1.0, 3.0])
    w_q, w_l = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])
    return q_c, q_r, l_c, l_r, len_c, len_r, w_q, w_l


def test_odin_loss_by_hand():
    loss, parts = odin_loss(*_hand_inputs(), lambda_length=1.0, lambda_orth=0.5)
    # sums r_Q + r_L: chosen (1, 1), rejected (0, 0) -> BT = -log sigmoid(1) = log(1 + e^-1)
    bt = math.log(1 + math.exp(-1))
    # all responses: q = (1, 0, 0, 0), l = (0, 1, 0, 0), L = (2, 4, 1, 3); centred L = (-.5, 1.5, -1.5, .5), |L_c| = sqrt 5
    # centred q = (.75, -.25, -.25, -.25), |q_c| = sqrt .75: cov sum -0.5; l: cov sum 1.5
    rho_q, rho_l = -0.5 / math.sqrt(0.75 * 5), 1.5 / math.sqrt(0.75 * 5)
    orth = abs(1 * 3 + 2 * -1)
    assert parts["bt"].item() == pytest.approx(bt, abs=1e-6)
    assert parts["corr_quality"].item() == pytest.approx(rho_q, abs=1e-6)
    assert parts["corr_length"].item() == pytest.approx(rho_l, abs=1e-6)
    assert parts["orth"].item() == pytest.approx(orth)
    assert loss.item() == pytest.approx(bt + (abs(rho_q) - rho_l) + 0.5 * orth, abs=1e-6)
    # lambda 0: plain Bradley-Terry on the summed reward
    loss0, _ = odin_loss(*_hand_inputs(), lambda_length=0.0, lambda_orth=0.0)
    assert loss0.item() == pytest.approx(bt, abs=1e-6)


def test_batch_pearson_identities():
    x = torch.tensor([1.0, 2.0, 4.0, 7.0])
    assert batch_pearson(x, 3 * x + 1).item() == pytest.approx(1.0, abs=1e-6)
    assert batch_pearson(x, -x).item() == pytest.approx(-1.0, abs=1e-6)
    assert batch_pearson(torch.ones(4), x).item() == 0.0          # a constant: 0, not nan


def test_each_term_sends_gradient_only_where_it_should():
    ins = [t.clone().requires_grad_(True) for t in _hand_inputs()]
    q_c, q_r, l_c, l_r, len_c, len_r, w_q, w_l = ins
    _, parts = odin_loss(*ins)

    def grads(term):
        return torch.autograd.grad(term, [q_c, q_r, l_c, l_r, w_q, w_l], retain_graph=True, allow_unused=True)

    # the decorrelation term |rho(r_Q, L)|: quality head only, no gradient into the length head
    g = grads(parts["corr_quality"].abs())
    assert g[2] is None and g[3] is None and g[4] is None and g[5] is None
    assert g[0].abs().sum() > 0
    # the correlation term -rho(r_L, L): length head only
    g = grads(-parts["corr_length"])
    assert g[0] is None and g[1] is None and g[2].abs().sum() > 0
    # Bradley-Terry on the sum: the same gradient for both heads' outputs
    g = grads(parts["bt"])
    assert torch.equal(g[0], g[2]) and torch.equal(g[1], g[3]) and g[4] is None
    # |w_Q . w_L| (here w_Q . w_L = 1 > 0): d/dw_Q = w_L, d/dw_L = w_Q
    g = grads(parts["orth"])
    assert torch.equal(g[4], w_l.detach()) and torch.equal(g[5], w_q.detach())
    # a wrong sign would be caught: minimising -rho_l must raise rho(r_L, L)
    g = grads(-parts["corr_length"])
    lc, lr = (l_c - 0.5 * g[2]).detach(), (l_r - 0.5 * g[3]).detach()
    _, after = odin_loss(q_c.detach(), q_r.detach(), lc, lr, len_c, len_r, w_q.detach(), w_l.detach())
    assert after["corr_length"] > parts["corr_length"] + 0.1          # 0.775 -> 0.960


def test_odin_disentangles_length_on_a_linear_toy():
    """Features (length, quality, noise); preferences from quality + 0.5 length. ODIN puts the length
    into r_L and leaves r_Q ordered by quality alone; plain BT on one head would mix them."""
    g = torch.Generator().manual_seed(0)
    n = 2048
    feats = lambda: torch.randn(n, 3, generator=g)                    # (n, 3)
    a, b = feats(), feats()
    true = lambda f: f[:, 1] + 0.5 * f[:, 0]
    chosen_first = true(a) > true(b)
    fc = torch.where(chosen_first[:, None], a, b)
    fr = torch.where(chosen_first[:, None], b, a)
    w_q = (0.1 * torch.randn(3, generator=g)).requires_grad_(True)
    w_l = (0.1 * torch.randn(3, generator=g)).requires_grad_(True)
    opt = torch.optim.Adam([w_q, w_l], lr=0.05)
    for _ in range(300):
        loss, parts = odin_loss(fc @ w_q, fr @ w_q, fc @ w_l, fr @ w_l, fc[:, 0], fr[:, 0], w_q, w_l)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(parts["corr_quality"].item()) < 0.05                   # r_Q no longer sees length
    assert parts["corr_length"].item() > 0.95                         # r_L is length
    q_all = torch.cat([fc, fr]) @ w_q.detach()
    assert batch_pearson(q_all, torch.cat([fc, fr])[:, 1]).item() > 0.95   # r_Q is quality


@pytest.fixture
def tiny_odin(tiny_model):
    torch.manual_seed(0)
    return OdinRewardModel(tiny_model)


def test_quality_reward_does_not_depend_on_the_length_head(tiny_odin, tok):
    from minirlhf.lm import encode_pairs
    batch = encode_pairs(tok, ["the food was", "it was"], [" good .", " really really bad"], add_eos=True)
    q, l = tiny_odin.heads(batch["input_ids"], batch["attention_mask"])        # (B, T) x 2
    assert torch.allclose(q, tiny_odin(batch["input_ids"], batch["attention_mask"]))   # forward is r_Q
    q.sum().backward()
    assert all(p.grad is None for p in tiny_odin.length_head.parameters())      # r_Q: no path to the length head
    assert tiny_odin.head.weight.grad.abs().sum() > 0
    with torch.no_grad():
        tiny_odin.length_head.weight.add_(1.0)
        tiny_odin.length_head.bias.add_(3.0)
    q2, l2 = tiny_odin.heads(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(q2, q.detach()) and not torch.allclose(l2, l.detach())


def test_training_step_gradients_by_term(tiny_odin, tok):
    rows = [{"prompt": "the food was", "chosen": " good .", "rejected": " bad bad bad bad ."},
            {"prompt": "it was", "chosen": " fine and warm .", "rejected": " awful ."},
            {"prompt": "the film was", "chosen": " great .", "rejected": " not good at all , really ."}]
    # only the decorrelation term: gradient into the quality head and the backbone, none into the length head
    cfg = OdinConfig(lambda_length=1.0, lambda_orth=0.0)
    from minirlhf.reward_hacking import odin as odin_mod
    real = odin_mod.odin_loss
    only = lambda name: (lambda *a, **k: (lambda out: (out[1][name].abs() if name == "corr_quality"
                                                      else -out[1][name], out[1]))(real(*a, **k)))
    try:
        odin_mod.odin_loss = only("corr_quality")
        loss, _ = odin_step(tiny_odin, tok, rows, cfg, center_coef=0.0)
        loss.backward()
        assert all(p.grad is None for p in tiny_odin.length_head.parameters())
        assert tiny_odin.head.weight.grad.abs().sum() > 0
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_odin.backbone.parameters())
        tiny_odin.zero_grad(set_to_none=True)
        odin_mod.odin_loss = only("corr_length")
        loss, _ = odin_step(tiny_odin, tok, rows, cfg, center_coef=0.0)
        loss.backward()
        assert tiny_odin.head.weight.grad is None and tiny_odin.length_head.weight.grad.abs().sum() > 0
    finally:
        odin_mod.odin_loss = real
    # the whole loss: both heads learn
    tiny_odin.zero_grad(set_to_none=True)
    loss, metrics = odin_step(tiny_odin, tok, rows, OdinConfig())
    loss.backward()
    assert tiny_odin.head.weight.grad.abs().sum() > 0 and tiny_odin.length_head.weight.grad.abs().sum() > 0
    assert set(metrics) >= {"loss", "loss/bt", "corr_quality", "corr_length", "loss/orth", "accuracy"}


def test_saved_odin_loads_as_the_quality_reward_model(tiny_odin, tok, tmp_path):
    from minirlhf.lm import encode_pairs
    tiny_odin.save_pretrained(tmp_path / "odin")
    tok.save_pretrained(tmp_path / "odin")
    assert (tmp_path / "odin" / "length_head.safetensors").is_file()
    plain = ScalarHeadModel.from_pretrained(tmp_path / "odin").eval()
    batch = encode_pairs(tok, ["the food was"], [" good ."], add_eos=True)
    with torch.no_grad():
        assert torch.allclose(plain(batch["input_ids"], batch["attention_mask"]),
                              tiny_odin.eval()(batch["input_ids"], batch["attention_mask"]), atol=1e-5)
