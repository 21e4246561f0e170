"""ODIN: a reward model with a quality head and a length head (Chen et al., 2024).

"ODIN: Disentangled Reward Mitigates Hacking in RLHF" (Chen, Zhu, Chen, Soselia, Zhou, Goldstein,
Huang, Shoeybi, Catanzaro; ICML 2024, Sec. 4). Two linear heads read the same backbone feature
h(x, y) at the last token: r_Q = w_Q^T h + b_Q (quality) and r_L = w_L^T h + b_L (length). The
preference is modelled by their sum; two extra losses push length into r_L and out of r_Q:

    L_RM = - E[ log sigmoid( (r_Q + r_L)(x, y_c) - (r_Q + r_L)(x, y_r) ) ]     Bradley-Terry on the sum
    L_L  = |rho(r_Q, L)| - rho(r_L, L)                                        length decorrelation / correlation
    L_O  = |w_Q^T w_L|                                                        orthogonal heads
    L    = L_RM + lambda_L L_L + lambda_O L_O

rho is the Pearson correlation over the batch (chosen and rejected responses together) and L(y)
the response length. At use time (RL, best-of-N) only r_Q is the reward: the length head is
dropped, so a policy gains nothing from length that r_L absorbed during training.

In this module the trained model is an `OdinRewardModel`, a `ScalarHeadModel` whose `head` is the
quality head, so the shipped folder loads with `ScalarHeadModel.from_pretrained` as a plain reward
model reading r_Q only (what PPO, best-of-N and `minirlhf rm-bench` see); the length head is
saved beside it (`length_head.safetensors`) for inspection.

How this differs from the paper: tiny model; L is the completion's length in characters; the
Pearson correlations are over the local batch of 2B responses (the paper gathers a global batch
across GPUs); the BT loss keeps review-rm's centering term on the summed reward.

    python -m minirlhf.zoo --only rm-odin    # data/models/review-rm-odin: 0.3 s/step idle (~3 min); 12 min under load
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ..models import ScalarHeadModel
from ..reward_model import bradley_terry_loss, centering_loss, pairwise_accuracy, reward_at_last_token

ODIN = "review-rm-odin"
LENGTH_HEAD = "length_head.safetensors"


@dataclass
class OdinConfig:
    """ODIN two-head reward-model training (the rest as `reward_model.RewardConfig`)."""

    lambda_length: float = 1.0
    """lambda_L: weight of |rho(r_Q, L)| - rho(r_L, L) (the paper uses 1)."""
    lambda_orth: float = 1.0
    """lambda_O: weight of |w_Q . w_L| (the paper uses 1)."""
    steps: int = 600
    """Optimizer steps (review-rm's 600 x 32 pairs: about two epochs of prefs_train)."""
    lr: float = 2e-3
    """Peak learning rate (review-rm's)."""
    batch_size: int = 32
    """Preference pairs per step; the correlations are over the 2 * batch_size responses."""
    seed: int = 0
    """Seed of the data order and of both heads' initialisation."""


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------


def batch_pearson(x: Tensor, y: Tensor, eps: float = 1e-8) -> Tensor:
    """Differentiable Pearson correlation of two (N,) tensors -> scalar (0 when either is constant)."""
    xc, yc = x - x.mean(), y - y.mean()
    return (xc * yc).sum() / (xc.norm() * yc.norm() + eps)


def odin_loss(q_chosen: Tensor, q_rejected: Tensor, l_chosen: Tensor, l_rejected: Tensor,
              len_chosen: Tensor, len_rejected: Tensor, w_quality: Tensor, w_length: Tensor,
              lambda_length: float = 1.0, lambda_orth: float = 1.0) -> tuple[Tensor, dict]:
    """ODIN's loss (Chen et al., 2024, Sec. 4). q_*, l_*, len_*: (B,); w_*: (H,) head weights -> scalar.

        L = L_RM(r_Q + r_L) + lambda_L (|rho(r_Q, L)| - rho(r_L, L)) + lambda_O |w_Q . w_L|

    Returns (loss, parts) with parts = {"bt", "corr_quality", "corr_length", "orth"} (tensors).
    The decorrelation term depends on r_Q only, the correlation term on r_L only: neither sends
    gradient into the other head (tested).
    """
    bt = bradley_terry_loss(q_chosen + l_chosen, q_rejected + l_rejected).mean()   # L_RM on the sum
    lengths = torch.cat([len_chosen, len_rejected]).to(q_chosen.dtype)              # (2B,)
    rho_q = batch_pearson(torch.cat([q_chosen, q_rejected]), lengths)                # quality vs length
    rho_l = batch_pearson(torch.cat([l_chosen, l_rejected]), lengths)                # length head vs length
    orth = (w_quality * w_length).sum().abs()                                        # |w_Q^T w_L|
    loss = bt + lambda_length * (rho_q.abs() - rho_l) + lambda_orth * orth
    return loss, {"bt": bt, "corr_quality": rho_q, "corr_length": rho_l, "orth": orth}


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class OdinRewardModel(ScalarHeadModel):
    """A ScalarHeadModel (its `head` is the quality head, so `forward` is r_Q) plus a length head."""

    def __init__(self, backbone: nn.Module, head_init_std: float | None = None):
        super().__init__(backbone, head_init_std)
        hidden = backbone.config.hidden_size
        self.length_head = nn.Linear(hidden, 1)
        nn.init.normal_(self.length_head.weight, std=1.0 / (hidden + 1) ** 0.5)
        nn.init.zeros_(self.length_head.bias)

    def heads(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """r_Q and r_L at every token, from one backbone pass. -> (B, T), (B, T)."""
        from ..models import position_ids_from_mask
        hidden = self.backbone.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                          position_ids=position_ids_from_mask(attention_mask)).last_hidden_state
        return self.head(hidden).squeeze(-1).float(), self.length_head(hidden).squeeze(-1).float()  # (B, T) x 2

    def save_pretrained(self, path) -> None:
        """The quality model as a plain reward-model folder, plus length_head.safetensors."""
        from pathlib import Path
        super().save_pretrained(path)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.length_head.state_dict().items()},
                  str(Path(path) / LENGTH_HEAD))


def odin_step(rm: OdinRewardModel, tokenizer, rows: list[dict], cfg: OdinConfig,
              center_coef: float = 0.01) -> tuple[Tensor, dict]:
    """Loss and metrics on one batch of preference rows."""
    from ..data import encode_preference_batch
    batch = encode_preference_batch(tokenizer, rows, max_length=256)                  # 2B rows, chosen first
    q, l = rm.heads(batch["input_ids"], batch["attention_mask"])                       # (2B, T) x 2
    q = reward_at_last_token(q, batch["attention_mask"])                               # (2B,)
    l = reward_at_last_token(l, batch["attention_mask"])                               # (2B,)
    q_c, q_r = q.chunk(2)
    l_c, l_r = l.chunk(2)
    len_c = torch.tensor([float(len(r["chosen"])) for r in rows])                      # (B,) characters
    len_r = torch.tensor([float(len(r["rejected"])) for r in rows])
    loss, parts = odin_loss(q_c, q_r, l_c, l_r, len_c, len_r, rm.head.weight.view(-1), rm.length_head.weight.view(-1),
                            cfg.lambda_length, cfg.lambda_orth)
    if center_coef:
        loss = loss + centering_loss(q_c + l_c, q_r + l_r, center_coef)
    metrics = {"loss": loss.item(), **{f"loss/{k}" if k in ("bt", "orth") else k: v.item() for k, v in parts.items()},
               "accuracy": pairwise_accuracy(q_c + l_c, q_r + l_r).item(),
               "accuracy/quality": pairwise_accuracy(q_c, q_r).item()}
    return loss, metrics


def train_odin(rm: OdinRewardModel, tokenizer, rows: list[dict], cfg: OdinConfig = OdinConfig(),
               progress: bool = False) -> list[dict]:
    """Train `rm` in place with review-rm's optimiser and schedule; returns the logged rows."""
    from ..reward_model import SHIPPED
    from ..sft import SFTConfig, lr_at
    from ..utils import set_seed

    g = set_seed(cfg.seed)
    opt = torch.optim.AdamW(rm.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.95))
    schedule = SFTConfig(lr=cfg.lr, steps=cfg.steps, warmup_steps=SHIPPED.warmup_steps,
                         min_lr_ratio=SHIPPED.min_lr_ratio)
    rm.train()
    order, cursor, log, t0 = torch.randperm(len(rows), generator=g), 0, [], time.time()
    steps = range(cfg.steps)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="ODIN reward model")
    for step in steps:
        if cursor + cfg.batch_size > len(rows):
            order, cursor = torch.randperm(len(rows), generator=g), 0
        batch_rows = [rows[i] for i in order[cursor:cursor + cfg.batch_size].tolist()]
        cursor += cfg.batch_size
        loss, metrics = odin_step(rm, tokenizer, batch_rows, cfg, SHIPPED.center_coef)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, schedule)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rm.parameters(), SHIPPED.max_grad_norm)
        opt.step()
        if step % 25 == 0 or step == cfg.steps - 1:
            log.append({"step": step, **metrics, "time": time.time() - t0})
    rm.eval()
    return log


@torch.no_grad()
def length_correlations(scorer, rows: list[dict]) -> dict:
    """Pearson correlation of a reward function's scores with length on both sides of `rows`,
    and the same for gold (what an unbiased reward would show). -> {"rm", "gold", "n"}."""
    from .defences import pearson
    prompts = [r["prompt"] for r in rows] * 2
    texts = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    lengths = [float(len(t)) for t in texts]
    out = {"rm": pearson(scorer(prompts, texts), lengths), "n": len(texts)}
    if rows and "gold_chosen" in rows[0]:
        out["gold"] = pearson([r["gold_chosen"] for r in rows] + [r["gold_rejected"] for r in rows], lengths)
    return out


def build_odin(cfg: OdinConfig = OdinConfig(), name: str = ODIN) -> dict:
    """Train the ODIN reward model from review-sft (review-rm's start) and write data/models/<name>/."""
    from ..models import MODELS_DIR, count_parameters, load_tokenizer
    from ..reward_model import RewardModelScorer, evaluate_reward_model
    from ..zoo import load_split

    tok = load_tokenizer()
    train, test = load_split("reviews", "prefs_train"), load_split("reviews", "prefs_test")
    torch.manual_seed(cfg.seed)
    rm = OdinRewardModel.from_causal_lm("review-sft")
    t0 = time.time()
    log = train_odin(rm, tok, train, cfg, progress=True)
    minutes = (time.time() - t0) / 60
    ev = evaluate_reward_model(rm, tok, test)                     # the quality head alone (forward = r_Q)
    corr = length_correlations(RewardModelScorer(rm, tok), test)
    out = MODELS_DIR / name
    rm.save_pretrained(out)
    tok.save_pretrained(out)
    info = {"config": asdict(cfg), "base": "review-sft", "parameters": count_parameters(rm),
            "train_minutes": round(minutes, 2), "final": log[-1],
            "metrics": {"prefs_test": {k: round(ev[k], 4) for k in ("accuracy", "gold_accuracy", "noise_ceiling", "ece")},
                        "length_corr_prefs_test": round(corr["rm"], 4),
                        "gold_length_corr_prefs_test": round(corr["gold"], 4)}}
    (out / "build_info.json").write_text(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(json.dumps(build_odin(), indent=2))
