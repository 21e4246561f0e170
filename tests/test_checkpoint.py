"""Faults: a killed run resumes to identical results; NaN losses stop before the weights change."""

import pytest
import torch

from minirlhf.sft import SFTConfig, train_sft

ROWS = [{"prompt": f"{a} +{b}\n", "completion": f"{a}+{b}={(a + b) % 10}\n#### {(a + b) % 10}"}
        for a in range(10) for b in range(3)]  # 30 rows: the run crosses epoch boundaries


class Killed(Exception):
    pass


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_after_kill_is_identical(tmp_path, tok, tiny_model):
    init = params(tiny_model)
    cfg = SFTConfig(steps=24, batch_size=8, warmup_steps=2, log_every=1)
    full = train_sft(tiny_model, tok, ROWS, cfg)
    final = params(tiny_model)

    tiny_model.load_state_dict(init)
    ckpt = dict(checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=5)

    def kill_at_13(step):
        if step == 13:  # steps 10..13 are lost, as in a real kill
            raise Killed

    with pytest.raises(Killed):
        train_sft(tiny_model, tok, ROWS, SFTConfig(**{**cfg.__dict__, **ckpt}), on_step=kill_at_13)
    assert (tmp_path / "ckpt" / "model.safetensors").exists()
    assert not list(tmp_path.glob(".ckpt-*"))  # no half-written temporary folder left behind

    # a new process would start from fresh weights; the checkpoint restores everything
    torch.manual_seed(123)
    tiny_model.load_state_dict(init)
    resumed = train_sft(tiny_model, tok, ROWS, SFTConfig(**{**cfg.__dict__, **ckpt, "resume": True}))
    for k, v in params(tiny_model).items():
        assert torch.equal(v, final[k]), k
    assert resumed.series("loss")[-1] == full.series("loss")[-1]
    assert resumed.rows[0]["step"] == 10  # it really resumed


def test_nan_loss_stops_before_the_update(tok, tiny_model):
    before = params(tiny_model)
    with torch.no_grad():
        tiny_model.lm_head.weight[5, 0] = float("nan")  # poisons every logit row
    poisoned = params(tiny_model)
    with pytest.raises(FloatingPointError, match="SFT loss is not finite"):
        train_sft(tiny_model, tok, ROWS, SFTConfig(steps=2, batch_size=4))
    after = params(tiny_model)
    for k in before:  # no optimizer step happened: every weight is exactly as it was
        assert torch.allclose(after[k], poisoned[k], equal_nan=True, rtol=0, atol=0), k
