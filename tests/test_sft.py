"""SFT: completion-only loss masking, packing, the schedule, and that a few steps lower the loss."""

import math

import torch

from minirlhf.lm import encode_pairs
from minirlhf.sft import SFTConfig, lr_at, pack_batch, sft_loss, train_sft


def test_sft_loss_is_mean_nll_over_mask():
    logps = torch.tensor([[0.0, -1.0, -2.0, -3.0]])
    mask = torch.tensor([[0, 1, 1, 0]])
    assert sft_loss(logps, mask).item() == 1.5


def test_packing_keeps_every_real_token_in_order(tok):
    b = encode_pairs(tok, ["ab", "c"], ["de", "fgh"])
    packed = pack_batch(b, block=5)
    real = b["input_ids"][b["attention_mask"].bool()]
    assert torch.equal(packed["input_ids"].flatten(), real[:10])
    assert packed["completion_mask"].sum() == b["completion_mask"][b["attention_mask"].bool()][:10].sum()


def test_schedule_warmup_and_cosine():
    cfg = SFTConfig(lr=1.0, steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == 0.1 and lr_at(9, cfg) == 1.0
    assert math.isclose(lr_at(10, cfg), 1.0) and math.isclose(lr_at(110, cfg), 0.1)


def test_training_lowers_the_loss_and_is_deterministic(tok, tiny_model):
    rows = [{"prompt": "3 +4\n", "completion": "3+4=7\n#### 7"},
            {"prompt": "2 *3\n", "completion": "2*3=6\n#### 6"}] * 8
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    cfg = SFTConfig(steps=60, batch_size=8, warmup_steps=3, log_every=1)
    log = train_sft(tiny_model, tok, rows, cfg)
    losses = log.series("loss")
    assert losses[-1] < 0.5 * losses[0]
    tiny_model.load_state_dict(state)
    log2 = train_sft(tiny_model, tok, rows, cfg)
    assert log2.series("loss") == losses  # same seed, same run
