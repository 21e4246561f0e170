"""Reward models: learn a scalar reward from pairwise preferences (Bradley-Terry), and best-of-N.

A reward model r_phi(x, y) is a language model with a linear head read at the last token of
prompt + completion + EOS. It is trained on pairs where a labeller preferred y_c over y_r with
the Bradley-Terry likelihood P(y_c > y_r | x) = sigmoid(r(x, y_c) - r(x, y_r)):

    L_BT(phi) = - E[ log sigmoid( r(x, y_c) - r(x, y_r) - m ) ]       (Ouyang et al., 2022, Eq. 1)

with an optional margin m per pair (Llama 2, Touvron et al., 2023, Eq. 2) and an optional
centering term  eta * E[(r(x, y_c) + r(x, y_r))^2]  that pins the reward's free offset near 0
(Eisenstein et al., 2023, "Helping or Herding?"). The BT loss only sees differences, so
without it the mean reward drifts freely.

Best-of-N (Nakano et al., 2021; Gao et al., 2023) samples N completions and keeps the one the
reward model scores highest. It needs no training, its KL from the policy is known in closed
form, KL_BoN = log N - (N - 1) / N, and scoring the pick with the *gold* reward shows
overoptimisation: the proxy keeps rising with N while the gold reward flattens or turns.
`bon_curve` computes the whole curve N = 1..M from one pool of M samples per prompt with the
unbiased estimator of Nakano et al. (2021, App. I) / Gao et al. (2023, App. D).

How this differs from the papers: tiny models trained from the SFT checkpoint in minutes on a
CPU; one pair per row rather than InstructGPT's K-choose-2 comparisons per prompt.

Run:
    python -m minirlhf.zoo --only review-rm        # the shipped checkpoint data/models/review-rm
    rm = ScalarHeadModel.from_pretrained("review-rm"); reward_fn = RewardModelScorer(rm, tok)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from .checkpoint import checkpoint_due, resume_from, save_checkpoint
from .data import encode_preference_batch
from .errors import check_checkpointing, check_config
from .lm import encode_pairs, generate, last_token_index
from .models import MODELS_DIR, ScalarHeadModel, count_parameters, load_tokenizer
from .progress import MAX_ROWS, ProgressBar
from .sft import SFTConfig, lr_at
from .utils import MetricsLogger, check_finite, dist_info, set_seed, wrap_ddp

RewardFn = Callable[[list[str], list[str]], list[float]]


@dataclass
class RewardConfig:
    """Bradley-Terry reward-model training. Defaults fit the reviews world on a laptop CPU."""

    lr: float = 2e-3
    """Peak learning rate of AdamW."""
    batch_size: int = 32
    """Preference pairs per optimizer step (2 * batch_size sequences per forward pass)."""
    steps: int = 600
    """Optimizer steps (600 x 32 pairs is about two epochs of the built-in 10k pairs)."""
    warmup_steps: int = 20
    """Linear warm-up steps before the cosine decay."""
    min_lr_ratio: float = 0.1
    """The cosine schedule decays to lr * min_lr_ratio."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    max_length: int = 256
    """Longest prompt + completion + EOS in tokens; a longer row is an error, never truncated."""
    margin_field: str | None = None
    """Row field holding a per-pair margin m (Llama 2's graded preferences); None: no margin."""
    center_coef: float = 0.01
    """eta of the centering term eta * mean((r_c + r_r)^2); 0 turns it off."""
    seed: int = 0
    """Seed for data order."""
    log_every: int = 25
    """Log training metrics every this many steps."""
    checkpoint_dir: str | None = None
    """Folder for the resumable checkpoint (None: no checkpoints)."""
    checkpoint_every: int = 0
    """Write the checkpoint every this many steps (0: never)."""
    resume: bool = False
    """Continue from `checkpoint_dir` if a checkpoint is there."""

    def validate(self) -> None:
        """Raise ConfigError naming the flag of the first field out of range (before anything loads)."""
        check_config(self, at_least_1=("batch_size", "steps", "max_length", "log_every"), positive=("lr",),
                     non_negative=("warmup_steps", "weight_decay", "max_grad_norm", "center_coef"),
                     fractions=("min_lr_ratio",))
        check_checkpointing(self)


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------


def bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor, margin: Tensor | None = None) -> Tensor:
    """Per-pair Bradley-Terry loss. r_chosen, r_rejected, margin: (B,) -> (B,).

        loss = -log sigmoid(r_c - r_r - m)          (Ouyang et al., 2022, Eq. 1; m: Llama 2, Eq. 2)

    `F.logsigmoid` is exact for large |r_c - r_r|, where log(sigmoid(.)) underflows to -inf.
    """
    diff = r_chosen - r_rejected  # (B,)
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)  # (B,)


def centering_loss(r_chosen: Tensor, r_rejected: Tensor, coef: float) -> Tensor:
    """coef * mean((r_c + r_r)^2): keeps rewards centred on 0 (Eisenstein et al., 2023, Sec. 3)."""
    return coef * ((r_chosen + r_rejected) ** 2).mean()


def reward_at_last_token(values: Tensor, attention_mask: Tensor) -> Tensor:
    """The scalar read at each row's last real token (EOS when it was appended). (B, T) -> (B,).

    Correct under left and right padding and for a row that fills the whole context.
    """
    idx = last_token_index(attention_mask)  # (B,)
    return values.gather(1, idx[:, None]).squeeze(1)  # (B,)


def pairwise_accuracy(r_chosen: Tensor, r_rejected: Tensor) -> Tensor:
    """Fraction of pairs where the chosen completion scores strictly higher. (B,), (B,) -> scalar."""
    return (r_chosen > r_rejected).float().mean()


def kl_best_of_n(n: int | Tensor) -> Tensor:
    """KL(BoN || policy) = log N - (N - 1) / N  (Stiennon et al., 2020, App. G.3; Gao et al., 2023).

    Exact for a continuous reward with no ties; an upper bound otherwise (Beirami et al., 2024).
    """
    n = torch.as_tensor(n, dtype=torch.float64)
    return torch.log(n) - (n - 1) / n


def best_of_n_weights(m: int, n: int) -> Tensor:
    """P(the i-th smallest of m items is the max of a uniform random n-subset), i = 1..m. -> (m,).

        w_i = C(i - 1, n - 1) / C(m, n)          (0 for i < n), computed in log space.
    """
    if not 1 <= n <= m:
        raise ValueError(f"need 1 <= n <= m, got n={n}, m={m}")
    i = torch.arange(1, m + 1, dtype=torch.float64)
    log_comb = lambda a, b: torch.lgamma(a + 1) - torch.lgamma(b + 1) - torch.lgamma(a - b + 1)  # noqa: E731
    valid = i >= n
    f64 = lambda x: torch.tensor(float(x), dtype=torch.float64)  # noqa: E731
    logw = log_comb((i - 1).clamp(min=n - 1), f64(n - 1)) - log_comb(f64(m), f64(n))
    return torch.where(valid, logw.exp(), torch.zeros_like(logw))  # (m,), sums to 1


def bon_curve(select_scores: Tensor, eval_scores: Tensor, ns: list[int] | None = None) -> dict[str, Tensor]:
    """Expected `eval_scores` of the sample picked by argmax `select_scores` among N, for each N.

    select_scores, eval_scores: (P, M), a pool of M samples for each of P prompts. For every N
    it averages over all C(M, N) subsets at once (unbiased, no resampling): sort each row by
    the selection score; the i-th smallest is the pick with probability `best_of_n_weights`.
    Ties in `select_scores` are broken by position (as argmax does). Returns {"n": (K,),
    "value": (K,) mean over prompts, "kl": (K,) KL_BoN}.
    """
    P, M = select_scores.shape
    ns = ns or list(range(1, M + 1))
    # descending stable sort, then flipped: ascending, and among equal scores the earliest
    # index ranks highest, so it is the one picked (as argmax picks the first maximum)
    order = torch.sort(select_scores, dim=1, descending=True, stable=True).indices.flip(1)  # (P, M)
    ranked = eval_scores.double().gather(1, order)  # (P, M)
    values = torch.stack([(ranked @ best_of_n_weights(M, n)).mean() for n in ns])  # (K,)
    return {"n": torch.tensor(ns), "value": values, "kl": kl_best_of_n(torch.tensor(ns))}


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def score_batch(rm: ScalarHeadModel, batch: dict[str, Tensor]) -> Tensor:
    """Rewards of a batch in the lm.py layout. -> (B,)."""
    values = rm(batch["input_ids"], batch["attention_mask"])  # (B, T)
    return reward_at_last_token(values, batch["attention_mask"])  # (B,)


class RewardModelScorer:
    """A trained reward model as a reward function: scorer(prompts, completions) -> list[float].

    Appends EOS to every completion, exactly as training did (the reward is read at the EOS
    token). Rows are scored in batches of `batch_size` without gradients, in eval mode.
    """

    def __init__(self, rm: ScalarHeadModel, tokenizer, batch_size: int = 256, max_length: int | None = None):
        self.rm, self.tokenizer, self.batch_size, self.max_length = rm, tokenizer, batch_size, max_length

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        was_training = self.rm.training
        self.rm.eval()
        device = next(self.rm.parameters()).device
        out = []
        for i in range(0, len(prompts), self.batch_size):
            batch = encode_pairs(self.tokenizer, prompts[i:i + self.batch_size],
                                 completions[i:i + self.batch_size], add_eos=True, max_length=self.max_length)
            batch = {k: v.to(device) for k, v in batch.items()}
            out.append(score_batch(self.rm, batch))
        self.rm.train(was_training)
        rewards = torch.cat(out) if out else torch.zeros(0)
        check_finite("reward model scores", rewards)
        return rewards.tolist()


class EnsembleScorer:
    """Several reward functions combined by "mean" or "min" (worst-case), as in Coste et al. (2023)."""

    def __init__(self, reward_fns: list[RewardFn], reduce: str = "mean"):
        if reduce not in ("mean", "min"):
            raise ValueError(f"reduce must be 'mean' or 'min', got {reduce!r}")
        self.reward_fns, self.reduce = reward_fns, reduce

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        scores = torch.tensor([fn(prompts, completions) for fn in self.reward_fns])  # (K, B)
        return (scores.mean(0) if self.reduce == "mean" else scores.min(0).values).tolist()


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------


def reward_model_step(rm: ScalarHeadModel, tokenizer, rows: list[dict], cfg: RewardConfig) -> tuple[Tensor, dict]:
    """Loss and metrics on one batch of preference rows."""
    device = next(rm.parameters()).device
    batch = encode_preference_batch(tokenizer, rows, max_length=cfg.max_length)  # 2B rows
    batch = {k: v.to(device) for k, v in batch.items()}
    rewards = score_batch(rm, batch)  # (2B,)
    r_c, r_r = rearrange(rewards, "(pair b) -> pair b", pair=2)  # (B,), (B,): chosen rows come first
    margin = None
    if cfg.margin_field is not None:
        margin = torch.tensor([float(r[cfg.margin_field]) for r in rows], device=device)  # (B,)
    bt = bradley_terry_loss(r_c, r_r, margin).mean()
    loss = bt + (centering_loss(r_c, r_r, cfg.center_coef) if cfg.center_coef else 0.0)
    metrics = {"loss": loss.item(), "loss/bt": bt.item(), "accuracy": pairwise_accuracy(r_c, r_r).item(),
               "rewards/chosen": r_c.mean().item(), "rewards/rejected": r_r.mean().item(),
               "rewards/margins": (r_c - r_r).mean().item()}
    return loss, metrics


def train_reward_model(rm: ScalarHeadModel, tokenizer, rows: list[dict], cfg: RewardConfig = RewardConfig(),
                       eval_rows: list[dict] | None = None, eval_every: int = 0,
                       logger: MetricsLogger | None = None, progress: bool = False) -> MetricsLogger:
    """Train `rm` in place on validated {"prompt", "chosen", "rejected"} rows; returns the log.

    Logged: loss, loss/bt, accuracy, rewards/chosen, rewards/rejected, rewards/margins (the
    names TRL uses), grad_norm, lr; every `eval_every` steps, eval/accuracy on `eval_rows`.
    `progress=True` shows a progress bar and, at each evaluation and at the end, the rewards of a
    few training pairs.

    Under `torchrun` each rank takes its share of every batch of pairs and DDP averages the
    gradients; each rank's mean loss is weighted by its share, so N processes make the update
    of one. Logged metrics are rank 0's share. With `cfg.checkpoint_dir` the run can be killed
    and resumed (`cfg.resume`) to the same weights.
    """
    cfg.validate()  # a bad value stops here, before any work
    g = set_seed(cfg.seed)
    logger = logger or MetricsLogger()
    rank, world = dist_info()
    opt = torch.optim.AdamW(rm.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    schedule = SFTConfig(lr=cfg.lr, steps=cfg.steps, warmup_steps=cfg.warmup_steps, min_lr_ratio=cfg.min_lr_ratio)
    rm.train()
    t0 = time.time()
    order, cursor = torch.randperm(len(rows), generator=g), 0
    start, extra = resume_from(cfg, rm, opt, logger)
    if start:
        order, cursor = extra["order"], extra["cursor"]
        g.set_state(extra["generator"])
    ddp_rm = wrap_ddp(rm)
    bar = ProgressBar(range(start, cfg.steps), "reward model",
                      {"loss": "loss", "accuracy": "acc", "rewards/margins": "margin", "eval/accuracy": "eval_acc"},
                      logger, enabled=progress)
    for step in bar:
        # 1. a batch of preference pairs (reshuffled at every epoch); this rank's share of it
        if cursor + cfg.batch_size > len(rows):
            order, cursor = torch.randperm(len(rows), generator=g), 0
        batch_rows = [rows[i] for i in order[cursor: cursor + cfg.batch_size].tolist()]
        cursor += cfg.batch_size
        local_rows = batch_rows[rank::world]
        # 2. rewards of chosen and rejected in one forward pass, Bradley-Terry loss (+ centering)
        loss, metrics = reward_model_step(ddp_rm, tokenizer, local_rows, cfg)
        if world > 1:  # DDP averages over ranks: weight each rank's mean by its share of the batch
            loss = loss * len(local_rows) * world / len(batch_rows)
        check_finite("reward model loss", loss)
        # 3. the update
        lr = lr_at(step, schedule)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(rm.parameters(), cfg.max_grad_norm)
        opt.step()
        if rank == 0 and checkpoint_due(cfg, step + 1):
            save_checkpoint(cfg.checkpoint_dir, rm, opt, step + 1,
                            {"order": order, "cursor": cursor, "generator": g.get_state()})
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            logger.log({"step": step, **metrics, "grad_norm": grad_norm.item(), "lr": lr, "time": time.time() - t0})
        # 4. held-out pairwise accuracy now and then
        if eval_rows is not None and eval_every and ((step + 1) % eval_every == 0 or step == cfg.steps - 1):
            ev = evaluate_reward_model(rm, tokenizer, eval_rows, max_length=cfg.max_length)
            logger.log({"step": step, "eval/accuracy": ev["accuracy"], "time": time.time() - t0})
            rm.train()
        if bar.enabled and ((eval_every and (step + 1) % eval_every == 0) or step == cfg.steps - 1):
            shown = local_rows[:MAX_ROWS]  # how the model scores a few of the pairs it trains on
            score = RewardModelScorer(rm, tokenizer, max_length=cfg.max_length)
            prompts = [r["prompt"] for r in shown]
            bar.samples({"prompt": prompts, "chosen": [r["chosen"] for r in shown],
                         "rejected": [r["rejected"] for r in shown],
                         "r(chosen)": score(prompts, [r["chosen"] for r in shown]),
                         "r(rejected)": score(prompts, [r["rejected"] for r in shown])},
                        title=f"reward model step {step}")
    rm.eval()
    return logger


@torch.no_grad()
def evaluate_reward_model(rm: ScalarHeadModel, tokenizer, rows: list[dict], batch_size: int = 256,
                          n_bins: int = 10, max_length: int | None = None) -> dict:
    """Held-out metrics of a reward model on preference rows.

    accuracy: pairs where r(chosen) > r(rejected) (agreement with the noisy labels).
    gold_accuracy: agreement with the gold ordering, over pairs whose gold rewards differ
        (needs "gold_chosen"/"gold_rejected"). noise_ceiling: mean(max(p, 1 - p)) over
        "p_chosen", the label accuracy of a model that knows the gold reward.
    calibration: predicted P(first > second) = sigmoid(r_1 - r_2) in `n_bins` bins, with each
        pair counted in both orders, against the frequency of the label ("label_freq") and,
        if "p_chosen" is given, the true Bradley-Terry probability ("true_prob"); ece weights
        |predicted - label_freq| by bin size.
    """
    scorer = RewardModelScorer(rm, tokenizer, batch_size, max_length)
    prompts = [r["prompt"] for r in rows]
    r_c = torch.tensor(scorer(prompts, [r["chosen"] for r in rows]))  # (N,)
    r_r = torch.tensor(scorer(prompts, [r["rejected"] for r in rows]))  # (N,)
    out = {"accuracy": pairwise_accuracy(r_c, r_r).item(), "n": len(rows),
           "rewards/chosen": r_c.mean().item(), "rewards/rejected": r_r.mean().item(),
           "rewards/margins": (r_c - r_r).mean().item(), "r_chosen": r_c, "r_rejected": r_r}
    if rows and "gold_chosen" in rows[0]:
        g_c = torch.tensor([r["gold_chosen"] for r in rows])
        g_r = torch.tensor([r["gold_rejected"] for r in rows])
        untied = g_c != g_r
        gold_sign = torch.sign(g_c - g_r)[untied]
        out["gold_accuracy"] = (torch.sign(r_c - r_r)[untied] == gold_sign).float().mean().item()
        out["gold_label_agreement"] = (g_c > g_r).float().mean().item()
    p_true = None
    if rows and "p_chosen" in rows[0]:
        p_true = torch.tensor([r["p_chosen"] for r in rows], dtype=torch.float64)
        out["noise_ceiling"] = torch.maximum(p_true, 1 - p_true).mean().item()
    # calibration, both orders: (sigmoid(d), label 1) and (sigmoid(-d), label 0)
    d = (r_c - r_r).double()
    pred = torch.cat([torch.sigmoid(d), torch.sigmoid(-d)])  # (2N,)
    label = torch.cat([torch.ones_like(d), torch.zeros_like(d)])
    truth = torch.cat([p_true, 1 - p_true]) if p_true is not None else None
    bins = torch.clamp((pred * n_bins).long(), max=n_bins - 1)
    calib = {"predicted": [], "label_freq": [], "true_prob": [], "count": []}
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.sum() == 0:
            continue
        calib["predicted"].append(pred[sel].mean().item())
        calib["label_freq"].append(label[sel].mean().item())
        calib["true_prob"].append(truth[sel].mean().item() if truth is not None else float("nan"))
        calib["count"].append(int(sel.sum()))
        ece += sel.sum().item() / len(pred) * abs(calib["predicted"][-1] - calib["label_freq"][-1])
    out["calibration"], out["ece"] = calib, ece
    return out


# ---------------------------------------------------------------------------------------------
# Best-of-N
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def best_of_n(policy, tokenizer, prompts: list[str], n: int, reward_fn: RewardFn, max_new_tokens: int = 96,
              temperature: float = 1.0, generator: torch.Generator | None = None,
              batch_size: int = 256) -> dict:
    """Sample n completions per prompt from `policy` and keep the one `reward_fn` scores highest.

    Works with any reward function (a reward model, the gold reward, an ensemble). Returns
    {"completions": [P] best picks, "rewards": [P] their scores, "all_completions": P lists of
    n, "all_rewards": (P, n) tensor}.
    """
    was_training = policy.training
    policy.eval()
    repeated = [p for p in prompts for _ in range(n)]  # prompt-major: rows i*n .. i*n+n-1
    completions, _ = generate(policy, tokenizer, repeated, max_new_tokens, temperature,
                              generator=generator, batch_size=batch_size)
    policy.train(was_training)
    scores = rearrange(torch.tensor(reward_fn(repeated, completions), dtype=torch.float64), "(p n) -> p n", n=n)
    check_finite("best-of-n rewards", scores)
    best = scores.argmax(1)  # (P,)
    all_c = [completions[i * n:(i + 1) * n] for i in range(len(prompts))]
    return {"completions": [all_c[i][j] for i, j in enumerate(best.tolist())],
            "rewards": scores.gather(1, best[:, None]).squeeze(1).tolist(),
            "all_completions": all_c, "all_rewards": scores}


# ---------------------------------------------------------------------------------------------
# The shipped checkpoint
# ---------------------------------------------------------------------------------------------

SHIPPED = RewardConfig()


def build_shipped(name: str = "review-rm", cfg: RewardConfig = SHIPPED, base: str = "review-sft") -> dict:
    """Train the shipped reviews reward model from the SFT backbone; write data/models/<name>/."""
    from .zoo import load_split

    torch.manual_seed(cfg.seed)
    tok = load_tokenizer()
    rm = ScalarHeadModel.from_causal_lm(base)
    train, test = load_split("reviews", "prefs_train"), load_split("reviews", "prefs_test")
    t0 = time.time()
    log = train_reward_model(rm, tok, train, cfg, progress=True)
    minutes = (time.time() - t0) / 60
    ev = evaluate_reward_model(rm, tok, test)
    out = MODELS_DIR / name
    rm.save_pretrained(out)
    tok.save_pretrained(out)
    info = {"config": asdict(cfg), "base": base, "parameters": count_parameters(rm),
            "train_minutes": round(minutes, 2), "final_loss": log.series("loss")[-1],
            "metrics": {"prefs_test": {k: round(ev[k], 4) for k in
                                       ("accuracy", "gold_accuracy", "noise_ceiling", "ece",
                                        "rewards/chosen", "rewards/rejected", "rewards/margins")}}}
    (out / "build_info.json").write_text(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    print(json.dumps(build_shipped(), indent=2))
