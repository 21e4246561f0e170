"""Direct preference optimisation (DPO) and its close relatives, one option apart.

DPO (Rafailov et al., 2023) skips the reward model and the RL loop: the KL-regularised RLHF
objective has a closed-form optimum pi*(y|x) ∝ pi_ref(y|x) exp(r(x,y)/beta), so the reward is
implicitly r(x,y) = beta log pi(y|x)/pi_ref(y|x) (+ a term in x only), and the Bradley-Terry
likelihood of the preference pairs becomes a loss on the policy itself (Eq. 7):

    h = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)]
    L_DPO = - log sigmoid(beta * h)

Every variant below is a different function of the same log-probs (`DPOConfig.loss_type`):

    "dpo"    -log sigmoid(beta h)                                  Rafailov et al. 2023, Eq. 7
    "cdpo"   -(1-eps) log sigmoid(beta h) - eps log sigmoid(-beta h)   Mitchell 2023, the cDPO note
    "ipo"    (h - 1/(2 tau))^2, tau = beta                          Azar et al. 2023, Eq. 17
    "hinge"  relu(1 - beta h)                                       SLiC (Zhao et al. 2023), as in RSO
    "simpo"  -log sigmoid(beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma)  Meng et al. 2024, Eq. 6
    "orpo"   NLL(y_w) - lambda log sigmoid(log odds(y_w) - log odds(y_l))   Hong et al. 2024, Eq. 6-7
    "kto"    lambda_y - v(x,y), v from sigmoid(beta (r - z0))       Ethayarajh et al. 2024 (KTO loss)

SimPO and ORPO need no reference model. `rpo_alpha > 0` adds an SFT term alpha * NLL(y_w)/|y_w|
to any of them (RPO: Pang et al. 2024; Liu et al. 2024), which counters "likelihood
displacement": DPO only needs the *margin* to grow, and on its own it often lowers the
log-prob of the chosen response too (see notebooks/04_dpo.ipynb).

Departures from the papers, all small:
* KTO is run on the paired data (chosen = desirable, rejected = undesirable) and its reference
  point z0 is the batch mean of the policy/reference log-ratio, clamped at 0 and detached (the
  paper uses mismatched pairs (x_i, y_j) of the micro-batch; TRL's "kto_pair" did as we do).
* The reference log-probs are by default computed once for the whole dataset before training
  (`precompute_reference_logps`), so the reference model can be freed; `precompute_ref=False`
  computes them on the fly, which gives the same numbers (a test pins it).

Run: `train_dpo(policy, tokenizer, rows, DPOConfig(beta=0.1))` with rows holding
"prompt", "chosen", "rejected" (TRL's format).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor

from . import accumulate
from .checkpoint import checkpoint_due, resume_from, save_checkpoint
from .data import encode_preference_batch  # (2B, T): the B chosen rows, then the B rejected rows
from .errors import ConfigError, check_checkpointing, check_config
from .lm import first_completion_column, token_logprobs
from .progress import ProgressBar
from .rl import masked_sum
from .utils import MetricsLogger, dist_info, set_seed, wrap_ddp

LOSS_TYPES = ("dpo", "cdpo", "ipo", "hinge", "simpo", "orpo", "kto")
REFERENCE_FREE = ("simpo", "orpo")


@dataclass
class DPOConfig:
    """DPO and its variants. Defaults fit the built-in reviews world on a laptop CPU."""

    loss_type: str = "dpo"
    """One of LOSS_TYPES: dpo, cdpo, ipo, hinge, simpo, orpo, kto."""
    beta: float = 0.1
    """Strength of the implicit KL penalty (DPO's beta; IPO's tau; SimPO's beta; ORPO's lambda)."""
    label_smoothing: float = 0.0
    """cDPO's eps: the assumed probability that a label is flipped (0 recovers DPO exactly)."""
    simpo_gamma: float = 0.5
    """SimPO's target reward margin gamma (Eq. 6)."""
    kto_desirable_weight: float = 1.0
    """KTO's lambda_D, the weight of desirable (chosen) responses."""
    kto_undesirable_weight: float = 1.0
    """KTO's lambda_U, the weight of undesirable (rejected) responses."""
    rpo_alpha: float = 0.0
    """Weight of the SFT term alpha * NLL(chosen)/|chosen| (RPO); 0 turns it off."""
    lr: float = 2e-4
    """Learning rate of AdamW, constant after warm-up (5e-4 already over-optimises the 0.2M-param
    review model: see notebooks/04_dpo.ipynb)."""
    warmup_steps: int = 10
    """Linear warm-up steps."""
    batch_size: int = 16
    """Preference pairs per optimizer step (the forward pass sees 2x as many sequences)."""
    steps: int = 150
    """Optimizer steps."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    max_length: int = 256
    """Longest prompt + response in tokens; a longer row is an error, never truncated silently."""
    micro_batch_size: int = 0
    """Pairs per forward/backward pass (0: the whole batch); gradients accumulate to the full batch's
    exactly (accumulate.py). KTO's reference point z0 is then each micro-batch's mean."""
    precompute_ref: bool = True
    """Compute reference log-probs for the whole dataset once, then free the reference model."""
    ref_batch_size: int = 128
    """Pairs per forward pass when precomputing reference log-probs."""
    seed: int = 0
    """Seed for data order."""
    log_every: int = 10
    """Log metrics every this many steps."""
    eval_every: int = 0
    """Run eval_fn every this many steps (0: only at the end, if eval_fn is given)."""
    checkpoint_dir: str | None = None
    """Folder for the resumable checkpoint (None: no checkpoints)."""
    checkpoint_every: int = 0
    """Write the checkpoint every this many steps (0: never)."""
    resume: bool = False
    """Continue from `checkpoint_dir` if a checkpoint is there."""

    def validate(self) -> None:
        """Raise ConfigError naming the flag of the first field out of range (before anything loads)."""
        check_config(self, at_least_1=("batch_size", "steps", "max_length", "ref_batch_size", "log_every"),
                     positive=("lr",), choices={"loss_type": LOSS_TYPES},
                     non_negative=("beta", "simpo_gamma", "kto_desirable_weight", "kto_undesirable_weight",
                                   "rpo_alpha", "warmup_steps", "max_grad_norm", "eval_every", "micro_batch_size"))
        check_config(self, fractions=("label_smoothing",))
        if self.beta == 0 and self.loss_type != "orpo":
            raise ConfigError(f"--beta must be > 0 for --loss-type {self.loss_type}, got 0")
        if self.label_smoothing >= 0.5:
            raise ConfigError(f"--label-smoothing must be < 0.5 (0.5 ignores the labels), got {self.label_smoothing}")
        check_checkpointing(self)


# ---------------------------------------------------------------------------------------------
# The losses: pure functions of sequence log-probs. All inputs (B,), outputs (B,) per pair.
# ---------------------------------------------------------------------------------------------


def logratio_margin(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor,
                    ref_rejected: Tensor) -> Tensor:
    """h = log pi(y_w)/pi_ref(y_w) - log pi(y_l)/pi_ref(y_l). All (B,) summed log-probs -> (B,)."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def dpo_loss(h: Tensor, beta: float) -> Tensor:
    """-log sigmoid(beta h). h: (B,) -> (B,).  Rafailov et al. 2023, Eq. 7."""
    return -F.logsigmoid(beta * h)  # Eq. 7 of the DPO paper


def cdpo_loss(h: Tensor, beta: float, eps: float) -> Tensor:
    """Conservative DPO: the label is flipped with probability eps. h: (B,) -> (B,).  Mitchell 2023."""
    return -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)  # cDPO (Mitchell 2023)


def ipo_loss(h: Tensor, tau: float) -> Tensor:
    """(h - 1/(2 tau))^2: regress the margin to a finite target. h: (B,) -> (B,).  Azar et al. 2023."""
    return (h - 1 / (2 * tau)) ** 2  # Eq. 17 of the IPO paper


def hinge_loss(h: Tensor, beta: float) -> Tensor:
    """relu(1 - beta h): no gradient once the margin passes 1/beta. h: (B,) -> (B,).  SLiC / RSO."""
    return torch.relu(1 - beta * h)  # SLiC-HF calibration loss on the log-ratio margin (as RSO, TRL)


def simpo_loss(chosen_avg_logps: Tensor, rejected_avg_logps: Tensor, beta: float,
               gamma: float) -> Tensor:
    """Reference-free, length-normalised DPO with a target margin. (B,) avg log-probs -> (B,).

    The implicit reward is beta * mean token log-prob, so a long and a short response with the
    same average log-prob get the same reward.  Meng et al. 2024.
    """
    return -F.logsigmoid(beta * chosen_avg_logps - beta * rejected_avg_logps - gamma)  # SimPO Eq. 6


def log_odds(avg_logps: Tensor) -> Tensor:
    """log odds(y) = log P/(1-P) with P = exp(mean token log-prob), ORPO Eq. 4. (B,) -> (B,)."""
    return avg_logps - torch.log1p(-torch.exp(avg_logps).clamp(max=1 - 1e-6))


def orpo_odds_ratio_loss(chosen_avg_logps: Tensor, rejected_avg_logps: Tensor, lam: float) -> Tensor:
    """lambda * L_OR = -lambda log sigmoid(log odds(y_w) - log odds(y_l)). (B,) -> (B,).

    ORPO's full loss adds the SFT term NLL(y_w) (Eq. 6); `train_dpo` adds it.  Hong et al. 2024.
    """
    return -lam * F.logsigmoid(log_odds(chosen_avg_logps) - log_odds(rejected_avg_logps))  # ORPO Eq. 7


def kto_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, z0: Tensor, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> Tensor:
    """KTO on unpaired examples: desirable (chosen) and undesirable (rejected) rows separately.

    r = log pi(y)/pi_ref(y); v = lambda_D sigmoid(beta (r - z0)) if desirable,
    lambda_U sigmoid(beta (z0 - r)) if undesirable; loss = lambda_y - v.   Ethayarajh et al. 2024
    chosen_logratios: (B_D,), rejected_logratios: (B_U,), z0: scalar (detached) -> (B_D + B_U,).
    """
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (chosen_logratios - z0)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - rejected_logratios)))
    return torch.cat([desirable, undesirable])


def nll_loss(chosen_logps: Tensor, chosen_lengths: Tensor) -> Tensor:
    """Length-normalised negative log-likelihood of the chosen response: RPO's SFT term. (B,) -> (B,)."""
    return -chosen_logps / chosen_lengths.clamp(min=1)


def margin_losses(h: Tensor, beta: float = 0.1, eps: float = 0.1, simpo_beta: float = 2.0,
                  simpo_gamma: float = 1.0, orpo_lambda: float = 0.1) -> dict[str, Tensor]:
    """Each loss of the family as a function of one margin, for a picture. h: (K,) -> {name: (K,)}.

    Calls the loss functions above, so the picture is the code that trains. The margin h is:
    * dpo, cdpo, ipo (tau = beta), hinge: the log-ratio margin h of `logratio_margin`;
    * kto: the same h split evenly, log-ratios +h/2 (chosen) and -h/2 (rejected), reference
      point z0 = 0; the loss is the sum of the pair's two terms;
    * simpo: the difference of mean token log-probs (a length-normalised margin, no reference);
    * orpo: the difference of log odds (the odds-ratio term only; the NLL term has no margin).
    """
    zero = torch.zeros_like(h)
    return {
        "dpo": dpo_loss(h, beta),
        "cdpo": cdpo_loss(h, beta, eps),
        "ipo": ipo_loss(h, beta),
        "hinge": hinge_loss(h, beta),
        "kto": reduce(kto_loss(h / 2, -h / 2, torch.zeros(()), beta), "(pair k) -> k", "sum", pair=2),  # (2K,) -> (K,)
        "simpo": simpo_loss(h, zero, simpo_beta, simpo_gamma),
        # mean log-probs whose log odds are h and 0: log_odds(logsigmoid(x)) = x
        "orpo": orpo_odds_ratio_loss(F.logsigmoid(h), F.logsigmoid(zero), orpo_lambda),
    }


def margin_gradient_weights(h: Tensor, **kwargs) -> dict[str, Tensor]:
    """d loss / d margin of every loss in `margin_losses` (autograd), same margins. (K,) -> {name: (K,)}.

    The gradient of a pair's loss with respect to the weights is this weight times
    d margin / d weights, so it says how hard each pair is pushed: DPO's is -beta sigmoid(-beta h)
    (fades as h grows), IPO's is 2 (h - 1/(2 tau)) (reverses past the target), the hinge's is
    -beta until beta h = 1, then 0.
    """
    h = h.detach().double().requires_grad_(True)
    out = {}
    for name, loss in margin_losses(h, **kwargs).items():
        (grad,) = torch.autograd.grad(loss.sum(), h)  # each loss is elementwise in h, so this is dL_k/dh_k
        out[name] = grad
    return out


def implicit_rewards(cfg: DPOConfig, logps: dict[str, Tensor], ref: dict[str, Tensor] | None
                     ) -> tuple[Tensor, Tensor]:
    """The implicit rewards of chosen and rejected, (B,) each: beta log pi/pi_ref (DPO Eq. 5, the
    partition function aside), or beta * mean token log-prob for the reference-free losses."""
    if cfg.loss_type in REFERENCE_FREE:
        return (cfg.beta * logps["chosen"] / logps["chosen_len"].clamp(min=1),
                cfg.beta * logps["rejected"] / logps["rejected_len"].clamp(min=1))
    return cfg.beta * (logps["chosen"] - ref["chosen"]), cfg.beta * (logps["rejected"] - ref["rejected"])


def preference_loss(cfg: DPOConfig, logps: dict[str, Tensor], ref: dict[str, Tensor] | None
                    ) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss of `cfg.loss_type` (mean over the batch) and the metrics every variant logs.

    logps: "chosen", "rejected" summed log-probs (B,), "chosen_len", "rejected_len" token counts (B,).
    ref: the same two log-probs under the reference (None for simpo/orpo).
    Rewards are the implicit rewards: beta log pi/pi_ref, or beta * mean token log-prob if
    the method has no reference.
    """
    lt = cfg.loss_type
    avg_c = logps["chosen"] / logps["chosen_len"].clamp(min=1)  # (B,)
    avg_r = logps["rejected"] / logps["rejected_len"].clamp(min=1)  # (B,)
    reward_c, reward_r = implicit_rewards(cfg, logps, ref)  # (B,), (B,)
    if lt not in REFERENCE_FREE:
        h = logratio_margin(logps["chosen"], logps["rejected"], ref["chosen"], ref["rejected"])  # (B,)
    if lt == "dpo":
        losses = dpo_loss(h, cfg.beta)
    elif lt == "cdpo":
        losses = cdpo_loss(h, cfg.beta, cfg.label_smoothing)
    elif lt == "ipo":
        losses = ipo_loss(h, cfg.beta)
    elif lt == "hinge":
        losses = hinge_loss(h, cfg.beta)
    elif lt == "simpo":
        losses = simpo_loss(avg_c, avg_r, cfg.beta, cfg.simpo_gamma)
    elif lt == "orpo":
        losses = orpo_odds_ratio_loss(avg_c, avg_r, cfg.beta) + nll_loss(logps["chosen"], logps["chosen_len"])
    elif lt == "kto":
        r_c, r_r = logps["chosen"] - ref["chosen"], logps["rejected"] - ref["rejected"]
        z0 = torch.cat([r_c, r_r]).mean().clamp(min=0).detach()  # reference point (see module docstring)
        losses = kto_loss(r_c, r_r, z0, cfg.beta, cfg.kto_desirable_weight, cfg.kto_undesirable_weight)
    else:
        raise ValueError(f"loss_type={lt!r}: expected one of {LOSS_TYPES}")
    loss = losses.mean()
    if cfg.rpo_alpha > 0:
        loss = loss + cfg.rpo_alpha * nll_loss(logps["chosen"], logps["chosen_len"]).mean()  # RPO: L_DPO + alpha L_NLL
    metrics = {
        "rewards/chosen": reward_c.mean().detach(),
        "rewards/rejected": reward_r.mean().detach(),
        "rewards/margins": (reward_c - reward_r).mean().detach(),
        "rewards/accuracies": (reward_c > reward_r).float().mean(),
        "logps/chosen": logps["chosen"].mean().detach(),
        "logps/rejected": logps["rejected"].mean().detach(),
    }
    return loss, metrics


# ---------------------------------------------------------------------------------------------
# Batches and log-probs
# ---------------------------------------------------------------------------------------------


def validate_preference_rows(rows: list[dict]) -> None:
    """Raise a ValueError naming the row and field if a row is not prompt/chosen/rejected text."""
    if not rows:
        raise ValueError("no preference rows given")
    for i, r in enumerate(rows):
        for field in ("prompt", "chosen", "rejected"):
            if not isinstance(r.get(field), str):
                raise ValueError(f"row {i}: field {field!r} must be a string, got {type(r.get(field)).__name__}")
        if not r["chosen"] or not r["rejected"]:
            raise ValueError(f"row {i}: empty 'chosen' or 'rejected' response")


def preference_logps(model, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """One forward pass over the stacked batch (2B, T) -> summed log-probs and lengths, (B,) each."""
    # chosen and rejected share their prompt: it goes through the model once per pair (lm.lm_logits; same numbers)
    logps = token_logprobs(model, batch["input_ids"], batch["attention_mask"],
                           prompt_length=first_completion_column(batch["completion_mask"]))  # (2B, T)
    mask = batch["completion_mask"]
    seq = masked_sum(logps, mask, dim=-1)  # (2B,)
    lengths = mask.sum(-1).to(seq.dtype)  # (2B,) response tokens, EOS included
    chosen, rejected = rearrange(seq, "(pair b) -> pair b", pair=2)  # (B,) each: chosen rows come first
    chosen_len, rejected_len = rearrange(lengths, "(pair b) -> pair b", pair=2)
    return {"chosen": chosen, "rejected": rejected, "chosen_len": chosen_len, "rejected_len": rejected_len}


@torch.no_grad()
def precompute_reference_logps(ref_model, tokenizer, rows: list[dict], batch_size: int = 128,
                               max_length: int | None = None, progress: bool = False) -> list[dict]:
    """Copies of the rows with "ref_chosen_logps" and "ref_rejected_logps" (floats) added.

    One pass over the dataset, so the reference model can be deleted before training
    (`progress=True`: a progress bar over the batches).
    """
    was_training = ref_model.training
    ref_model.eval()
    device = next(ref_model.parameters()).device
    out = []
    for i in ProgressBar(range(0, len(rows), batch_size), "dpo reference log-probs", enabled=progress):
        chunk = rows[i:i + batch_size]
        batch = {k: v.to(device) for k, v in encode_preference_batch(tokenizer, chunk, max_length).items()}
        lp = preference_logps(ref_model, batch)
        for r, c, rj in zip(chunk, lp["chosen"].tolist(), lp["rejected"].tolist()):
            out.append({**r, "ref_chosen_logps": c, "ref_rejected_logps": rj})
    ref_model.train(was_training)
    return out


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def train_dpo(policy, tokenizer, rows: list[dict], cfg: DPOConfig = DPOConfig(), ref_model=None,
              eval_fn: Callable[[object], dict] | None = None,
              logger: MetricsLogger | None = None, progress: bool = False) -> MetricsLogger:
    """Train `policy` in place on prompt/chosen/rejected rows; returns the log.

    The reference is `ref_model`, or a frozen copy of `policy` as it is now when None. Rows that
    already carry "ref_chosen_logps"/"ref_rejected_logps" (from `precompute_reference_logps`)
    need no reference model at all. `eval_fn(policy) -> dict` runs every `cfg.eval_every` steps.
    `progress=True` shows progress bars (the reference pass, then training: loss, margin, accuracy)
    and, every `cfg.eval_every` steps and at the end, the implicit rewards of a few pairs.

    Under `torchrun` each rank takes its share of every batch of pairs and DDP averages the
    gradients; each rank's mean loss is weighted by its share, so N processes make the update
    of one (KTO's reference point z0 is then the mean over the rank's share). Logged metrics are
    rank 0's share. With `cfg.checkpoint_dir` the run can be killed and resumed (`cfg.resume`)
    to the same weights; the reference is always built from `policy` as passed in (the start).
    """
    cfg.validate()  # a bad value stops here, before any work
    validate_preference_rows(rows)
    g = set_seed(cfg.seed)
    logger = logger or MetricsLogger()
    device = next(policy.parameters()).device
    rank, world = dist_info()
    t0 = time.time()

    # 1. the reference: none (SimPO, ORPO), precomputed once for the whole dataset, or on the fly
    needs_ref = cfg.loss_type not in REFERENCE_FREE
    has_ref_fields = all("ref_chosen_logps" in r for r in rows)
    if needs_ref and not has_ref_fields:
        ref_model = ref_model if ref_model is not None else copy.deepcopy(policy)
        ref_model.eval().requires_grad_(False)
        if cfg.precompute_ref:
            rows = precompute_reference_logps(ref_model, tokenizer, rows, cfg.ref_batch_size, cfg.max_length,
                                              progress=progress)
            ref_model = None  # freed: nothing below needs it
            has_ref_fields = True

    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    policy.train()
    order, cursor = torch.randperm(len(rows), generator=g), 0
    start, extra = resume_from(cfg, policy, opt, logger)  # after the reference: it copies the start
    if start:
        order, cursor = extra["order"], extra["cursor"]
        g.set_state(extra["generator"])
    ddp_policy = wrap_ddp(policy)
    bar = ProgressBar(range(start, cfg.steps), cfg.loss_type, {"loss": "loss", "rewards/margins": "margin",
                      "rewards/accuracies": "acc", "logps/chosen": "logp_chosen"}, logger, enabled=progress)
    for step in bar:
        # 2. a batch of pairs (reshuffled at every epoch), this rank's share of it,
        #    chosen stacked above rejected: (2B, T)
        if cursor + cfg.batch_size > len(rows):
            order, cursor = torch.randperm(len(rows), generator=g), 0
        full = [rows[i] for i in order[cursor: cursor + cfg.batch_size].tolist()]
        cursor += cfg.batch_size
        chunk = full[rank::world]  # all of it on one process
        seen = []  # each micro-batch's (log-probs, reference log-probs), detached, for the progress bar

        def micro_loss(mb: slice):
            part = chunk[mb]  # the whole chunk unless cfg.micro_batch_size splits it
            batch = {k: v.to(device) for k, v in encode_preference_batch(tokenizer, part, cfg.max_length).items()}
            # 3. policy log-probs, one forward pass over chosen and rejected together
            logps = preference_logps(ddp_policy, batch)  # each (B,)
            # 4. reference log-probs: read from the rows, or one no-grad pass
            ref = None
            if needs_ref and has_ref_fields:
                ref = {"chosen": torch.tensor([r["ref_chosen_logps"] for r in part], device=device),
                       "rejected": torch.tensor([r["ref_rejected_logps"] for r in part], device=device)}
            elif needs_ref:
                with torch.no_grad():
                    ref = preference_logps(ref_model, batch)
            # 5. the loss of the chosen variant (+ the RPO term)
            loss, metrics = preference_loss(cfg, logps, ref)
            if world > 1:  # DDP averages over ranks: weight each rank's mean by its share of the batch
                loss = loss * len(chunk) * world / len(full)
            seen.append(({k: v.detach() for k, v in logps.items()}, ref))
            return loss, metrics

        # 6. the update: each micro-batch's mean loss weighted by its share of the pairs, so the
        #    accumulated gradient is the whole chunk's (accumulate.py); checked finite before backward
        lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss, metrics = accumulate.backward(micro_loss, torch.ones(len(chunk), 1), cfg.micro_batch_size,
                                            per_token=False, name=f"{cfg.loss_type} loss")
        logps = {k: torch.cat([lp[k] for lp, _ in seen]) for k in seen[0][0]}
        ref = None if seen[0][1] is None else {k: torch.cat([r[k] for _, r in seen]) for k in seen[0][1]}
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        opt.step()
        if rank == 0 and checkpoint_due(cfg, step + 1):
            save_checkpoint(cfg.checkpoint_dir, policy, opt, step + 1,
                            {"order": order, "cursor": cursor, "generator": g.get_state()})

        # 7. logging and evaluation
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            logger.log({"step": step, "loss": loss.item(), **{k: float(v) for k, v in metrics.items()},
                        "grad_norm": grad_norm.item(), "lr": lr, "time": time.time() - t0})
        last = step == cfg.steps - 1
        if bar.enabled and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last):
            reward_c, reward_r = implicit_rewards(cfg, logps, ref)  # what the policy now prefers
            bar.samples({"prompt": [r["prompt"] for r in chunk], "chosen": [r["chosen"] for r in chunk],
                         "rejected": [r["rejected"] for r in chunk], "r(chosen)": reward_c.tolist(),
                         "r(rejected)": reward_r.tolist()}, title=f"{cfg.loss_type} step {step}")
        if eval_fn is not None and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last):
            policy.eval()
            metrics = eval_fn(policy)
            bar.show(metrics)
            logger.log({"step": step, **metrics, "time": time.time() - t0})
            policy.train()
    policy.eval()
    return logger
