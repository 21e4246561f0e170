"""Faults: a killed run resumes to identical results; NaN losses stop before the weights change."""

from dataclasses import replace

import pytest
import torch

from minirlhf import grpo
from minirlhf.dpo import DPOConfig, train_dpo
from minirlhf.models import ScalarHeadModel
from minirlhf.ppo import PPOConfig, train_ppo
from minirlhf.reward_model import RewardConfig, train_reward_model
from minirlhf.sft import SFTConfig, train_sft
from minirlhf.utils import MetricsLogger

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
    assert max((final[k] - init[k]).abs().max().item() for k in init) > 1e-3  # training moved the weights

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


class KillAt(MetricsLogger):
    """A logger that kills the run when it logs `step`: the steps after the last checkpoint are lost."""

    def __init__(self, step):
        super().__init__()
        self.kill_step = step

    def log(self, row):
        if row.get("step") == self.kill_step:
            raise Killed
        return super().log(row)


def check_resume(tmp_path, model, train, cfg, kill_at: int, every: int):
    """Run `train(cfg, logger)` on `model` uninterrupted; then from the same start with checkpoints
    every `every` steps, killed at step `kill_at`; then resumed from fresh weights. The resumed
    weights must equal the uninterrupted ones bit for bit. Returns both logs."""
    init = params(model)
    full = train(cfg, MetricsLogger())
    final = params(model)
    moved = max((final[k] - init[k]).abs().max().item() for k in init)
    assert moved > 1e-4, moved  # training changed the weights: resuming to them is not resuming to the start
    ckpt = dict(checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=every)
    model.load_state_dict(init)
    with pytest.raises(Killed):
        train(replace(cfg, **ckpt), KillAt(kill_at))
    torch.manual_seed(123)  # a new process: other RNG states, the starting weights
    model.load_state_dict(init)
    resumed = train(replace(cfg, **ckpt, resume=True), MetricsLogger())
    for k, v in params(model).items():
        assert torch.equal(v, final[k]), k
    return full, resumed


PAIRS = [{"prompt": f"{a} +{b}\n", "chosen": f"{(a + b) % 10}", "rejected": f"{(a + b + 1) % 10}"}
         for a in range(5) for b in range(3)]  # 15 pairs: batches of 4 cross epoch boundaries


def test_dpo_resume_after_kill_is_identical(tmp_path, tok, tiny_model):
    cfg = DPOConfig(steps=10, batch_size=4, warmup_steps=3, log_every=1)
    full, resumed = check_resume(tmp_path, tiny_model, lambda c, log: train_dpo(tiny_model, tok, PAIRS, c, logger=log),
                                 cfg, kill_at=7, every=3)
    assert resumed.rows[0]["step"] == 6  # steps 6 and 7 were lost and done again
    assert resumed.series("loss")[-1] == full.series("loss")[-1]
    assert resumed.series("rewards/margins")[-1] == full.series("rewards/margins")[-1]


def test_reward_model_resume_after_kill_is_identical(tmp_path, tok, tiny_model):
    rm = ScalarHeadModel(tiny_model)
    cfg = RewardConfig(steps=10, batch_size=4, warmup_steps=2, log_every=1)
    full, resumed = check_resume(tmp_path, rm, lambda c, log: train_reward_model(rm, tok, PAIRS, c, logger=log),
                                 cfg, kill_at=5, every=4)
    assert resumed.rows[0]["step"] == 4
    assert resumed.series("loss")[-1] == full.series("loss")[-1]


def test_grpo_resume_after_kill_is_identical(tmp_path, tok, tiny_model):
    prompts = [r["prompt"] for r in ROWS]

    def ones(prompts, completions):  # a dense toy reward, so groups have non-zero advantages
        return [c.count("1") / 4 for c in completions]

    # beta > 0 (a reference copied from the start), mu = 2 (the clip acts), warm-up across the kill
    cfg = grpo.preset("grpo", steps=6, prompts_per_step=2, group_size=4, max_new_tokens=8, mu=2,
                      warmup_steps=4, eval_every=0)
    full, resumed = check_resume(tmp_path, tiny_model,
                                 lambda c, log: grpo.train_grpo(tiny_model, tok, prompts, ones, c, logger=log),
                                 cfg, kill_at=5, every=2)
    assert resumed.rows[0]["step"] == 5  # GRPO counts steps from 1: steps 1-4 were kept
    assert resumed.series("loss")[-1] == full.series("loss")[-1]
    assert resumed.series("reward/mean") == full.series("reward/mean")[4:]


def test_ppo_resume_after_kill_is_identical(tmp_path, tok, tiny_model):
    prompts = [r["prompt"] for r in ROWS]

    def ones(prompts, completions):  # a dense toy reward
        return [c.count("1") / 4 for c in completions]

    # adaptive KL (its coefficient is carried across the kill), score normalisation, 2 epochs x 2 minibatches
    cfg = PPOConfig(steps=6, batch_size=4, mini_batch_size=2, ppo_epochs=2, max_new_tokens=8, norm_samples=8,
                    adaptive_kl=True, target_kl=0.01, kl_horizon=100, value_init="sft", eval_every=0)
    full, resumed = check_resume(tmp_path, tiny_model,
                                 lambda c, log: train_ppo(tiny_model, tok, prompts, ones, c, logger=log)[0],
                                 cfg, kill_at=5, every=2)
    assert resumed.rows[0]["step"] == 4  # steps 4 and 5 were lost and done again
    assert resumed.series("objective/kl_coef") == full.series("objective/kl_coef")[4:]
    assert resumed.series("loss/policy")[-1] == full.series("loss/policy")[-1]


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
