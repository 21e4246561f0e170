"""Process reward models (PRMs): a score for every reasoning step, where the labels come from, how to use them.

An outcome reward model (ORM) reads one scalar at the end of a completion and is trained on
"was the final answer right". A process reward model reads a scalar at the end of *every step*
and is trained on "is the chain still right after this step" (Lightman et al., 2023, "Let's
Verify Step by Step"). The arithmetic world gives the true label of every step, so here we can
compare the three ways people get step labels against the truth:

* gold labels from the checker (the PRM800K analogue, where humans label each step);
* Monte-Carlo labels (Math-Shepherd, Wang et al., 2024): continue each step prefix with the
  policy N times; hard label = some rollout reaches the right answer, soft label = the fraction;
* no step labels at all: the implicit PRM (Yuan et al., 2024, "Free Process Rewards without
  Process Labels") trains a language model on outcome labels with the reward
  r = beta * log pi/pi_ref, whose increments over each step's tokens are step rewards.

Data format (TRL's PRMTrainer): rows {"prompt": str, "completions": [step, ...], "labels":
[bool, ...]}. Each step is followed by the separator "\\n" and the PRM is read at that token, so
a completion "3+4=7\\n7*2=4\\n#### 4" is the steps ["3+4=7", "7*2=4", "#### 4"].

Which gold label: `step_valid` made prefix-closed (a step is good when it and every step before
it are valid; the answer line is good when the whole trace is `trace_correct`). Not
`step_on_track`: on-track calls "5*0=0" after a wrong "7*2=5" good again, which rewards a hidden
error, the very false positive Monte-Carlo labels suffer from. Prefix-closed, like PRM800K, where
labelling stops at the first wrong step; so the min of the gold labels is exactly trace_correct.

Using a PRM: aggregate step scores (min, product, last, mean) for best-of-N, or turn them into
dense per-token advantages for RL (`prm_rl.py`), as returns-to-go (sum form) or as the minimum of future step
rewards (min form, PURE: Cheng et al., 2025, "Stop Summation"). PURE approximates the min with
a softmin re-weighting of the rewards; we take the exact minimum.

Run: `python -m minirlhf.prm_build` builds the verifiers (data/models/arith-prm-*, arith-orm). Status and
measured numbers (best-of-64 whole-trace correctness: gold PRM 0.55, ORM 0.17, one sample 0.33): docs/prm.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from .errors import check_config
from .lm import decode_completions, encode_pairs, encode_prompts, last_token_index, sample, token_logprobs
from .models import ScalarHeadModel
from .progress import ProgressBar
from .rl import masked_mean
from .utils import MetricsLogger, check_finite, set_seed
from .worlds.arithmetic import check_chain

SEPARATOR = "\n"
AGGREGATIONS = ("min", "product", "last", "mean")

# ---------------------------------------------------------------------------------------------
# 1. Data: completions -> steps -> TRL PRM rows -> tensors with a mask on step boundaries
# ---------------------------------------------------------------------------------------------


def split_into_steps(completion: str) -> list[str]:
    """The text between separators, exactly (a trailing empty piece after a final "\\n" dropped).

    Unlike `arithmetic.split_steps` nothing is stripped, so step k ends at the k-th "\\n" token
    of the completion (or at its last token), which is where the PRM reads and the RL loop
    places step rewards.
    """
    steps = completion.split(SEPARATOR)
    return steps[:-1] if len(steps) > 1 and steps[-1] == "" else steps


def gold_step_labels(prompt: str, completion: str) -> list[bool]:
    """Prefix-closed `step_valid` labels, one per piece of `split_into_steps(completion)`.

    Step k is good iff steps 1..k are all valid; the answer line is good iff the trace is
    `trace_correct`; a blank line or anything after the answer line is a wrong step.
    """
    result = check_chain(prompt, completion)
    labels, ok, k, answered = [], True, 0, False
    for piece in split_into_steps(completion):
        line = piece.strip()
        if answered or not line:
            ok = False
        elif line.startswith("####"):
            ok = ok and result.trace_correct
            answered = True
        else:
            ok = ok and k < len(result.step_valid) and result.step_valid[k]
            k += 1
        labels.append(ok)
    return labels


def to_prm_rows(prompts: list[str], completions: list[str],
                labels: list[list[bool | float]] | None = None) -> list[dict]:
    """Arithmetic samples -> TRL PRM rows {"prompt", "completions", "labels"} (gold labels by default)."""
    rows = []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        steps = split_into_steps(c)
        lab = gold_step_labels(p, c) if labels is None else list(labels[i])
        rows.append(check_prm_row({"prompt": p, "completions": steps, "labels": lab}, i))
    return rows


def check_prm_row(row: dict, index: int) -> dict:
    """Validate one PRM row; a ValueError names the row and the field."""
    for f in ("prompt", "completions", "labels"):
        if f not in row:
            raise ValueError(f"row {index}, field {f!r}: missing")
    if not isinstance(row["prompt"], str):
        raise ValueError(f"row {index}, field 'prompt': expected a string, got {type(row['prompt']).__name__}")
    steps, labels = row["completions"], row["labels"]
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise ValueError(f"row {index}, field 'completions': expected a non-empty list of step strings")
    if any(SEPARATOR in s for s in steps):
        raise ValueError(f"row {index}, field 'completions': a step contains the separator {SEPARATOR!r}")
    if not isinstance(labels, list) or len(labels) != len(steps):
        raise ValueError(f"row {index}, field 'labels': expected {len(steps)} labels (one per step), "
                         f"got {len(labels) if isinstance(labels, list) else type(labels).__name__}")
    if not all(isinstance(x, (bool, int, float)) and 0.0 <= float(x) <= 1.0 for x in labels):
        raise ValueError(f"row {index}, field 'labels': labels must be bools or probabilities in [0, 1]")
    return row


def step_boundary_mask(input_ids: Tensor, completion_mask: Tensor, separator_id: int,
                       eos_id: int | None = None) -> Tensor:
    """1 at the token that ends each step: every separator inside the completion, and the
    completion's last token (its EOS, or the last token of a truncated completion).

    With `eos_id`, an EOS right after a separator closes that separator's step instead of opening
    an empty one: "a\\nb\\n<eos>" has the two steps of `split_into_steps("a\\nb\\n")`, the second
    ending at the EOS, so every completion token still belongs to a step.

    input_ids, completion_mask: (B, T), any padding side -> (B, T) bool.
    """
    comp = completion_mask.bool()
    mask = (input_ids == separator_id) & comp  # (B, T)
    last = last_token_index(completion_mask)  # (B,)
    rows = torch.arange(len(last), device=mask.device)[comp.any(-1)]  # rows with a completion
    last = last[rows]
    if eos_id is not None:
        prev = (last - 1).clamp(min=0)
        after_sep = ((last > 0) & (input_ids[rows, last] == eos_id) & comp[rows, prev]
                     & (input_ids[rows, prev] == separator_id))  # (b,)
        mask[rows[after_sep], prev[after_sep]] = False
    mask[rows, last] = True
    return mask


def gather_steps(values: Tensor, step_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Values at step boundaries, packed to the left: (B, T) -> (B, S) values and (B, S) mask."""
    step_mask = step_mask.bool()
    B = values.shape[0]
    S = max(1, int(step_mask.sum(-1).max()))
    rank = step_mask.long().cumsum(-1) - 1  # (B, T) index of the step a boundary closes
    b, t = step_mask.nonzero(as_tuple=True)
    out = values.new_zeros(B, S)
    out_mask = torch.zeros(B, S, dtype=torch.bool, device=values.device)
    out[b, rank[b, t]] = values[b, t]
    out_mask[b, rank[b, t]] = True
    return out, out_mask


def scatter_steps(step_values: list[list[float]], step_mask: Tensor) -> Tensor:
    """Inverse of gather_steps: per-row lists of step values -> (B, T), placed at the boundaries."""
    out = torch.zeros(step_mask.shape, dtype=torch.float)
    for i, vals in enumerate(step_values):
        pos = step_mask[i].nonzero().squeeze(-1)
        if len(pos) != len(vals):
            raise ValueError(f"row {i}: {len(vals)} step values for {len(pos)} step boundaries")
        out[i, pos] = torch.tensor(vals, dtype=torch.float)
    return out.to(step_mask.device)


def encode_steps(tokenizer, rows: list[dict]) -> dict[str, Tensor]:
    """PRM rows -> the lm.py layout, each step followed by the separator (as TRL does), plus
    `step_mask` (1 on each step's separator) and `labels` (the step's label there, else 0)."""
    completions = ["".join(s + SEPARATOR for s in r["completions"]) for r in rows]
    batch = encode_pairs(tokenizer, [r["prompt"] for r in rows], completions, add_eos=False)
    sep = tokenizer.convert_tokens_to_ids(SEPARATOR)
    batch["step_mask"] = step_boundary_mask(batch["input_ids"], batch["completion_mask"], sep)
    if all("labels" in r for r in rows):
        batch["labels"] = scatter_steps([[float(x) for x in r["labels"]] for r in rows], batch["step_mask"])
    return batch


# ---------------------------------------------------------------------------------------------
# 2. Losses (pure functions)
# ---------------------------------------------------------------------------------------------


def prm_loss(logits: Tensor, labels: Tensor, step_mask: Tensor) -> Tensor:
    """Per-step binary cross-entropy, averaged over steps (Lightman et al., 2023, Sec. 2.4):

        L = - mean_k [ y_k log sigmoid(s_k) + (1 - y_k) log sigmoid(-s_k) ]

    logits, labels, step_mask: (B, T); labels may be soft (Math-Shepherd's soft labels).
    """
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")  # (B, T)
    return masked_mean(bce, step_mask.float())


def orm_loss(logits: Tensor, attention_mask: Tensor, outcome: Tensor) -> Tensor:
    """ORM: BCE on final-answer correctness, read at the last real token (Cobbe et al., 2021).

    logits, attention_mask: (B, T); outcome: (B,) in {0, 1}.
    """
    last = logits.gather(1, last_token_index(attention_mask)[:, None]).squeeze(1)  # (B,)
    return F.binary_cross_entropy_with_logits(last, outcome.float())


def implicit_prm_loss(logp: Tensor, ref_logp: Tensor, completion_mask: Tensor, outcome: Tensor,
                      beta: float) -> Tensor:
    """Implicit PRM, cross-entropy form (Yuan et al., 2024, Eq. 6 with the reward of Eq. 2):

        r(y) = beta * sum_t log pi(y_t|y_<t) / pi_ref(y_t|y_<t)
        L    = - [ l log sigmoid(r) + (1 - l) log sigmoid(-r) ]          l = outcome label

    logp, ref_logp, completion_mask: (B, T); outcome: (B,).
    """
    r = beta * ((logp - ref_logp) * completion_mask).sum(-1)  # (B,)
    return F.binary_cross_entropy_with_logits(r, outcome.float())


def implicit_step_rewards(logp: Tensor, ref_logp: Tensor, completion_mask: Tensor, step_mask: Tensor,
                          beta: float) -> tuple[Tensor, Tensor]:
    """Step rewards of an implicit PRM (Yuan et al., 2024, Eq. 3-4): q_t = beta * sum_{i<=t} log
    pi/pi_ref is a Q-value, and step k's reward is q at its last token minus q at the previous
    step's last token, i.e. beta * the log-ratio summed over the step's tokens.

    They sum to the sequence reward r(y). (B, T) inputs -> (B, S) rewards and (B, S) mask.
    """
    q = torch.cumsum(beta * (logp - ref_logp) * completion_mask, dim=-1)  # (B, T)
    q_steps, mask = gather_steps(q, step_mask)  # (B, S)
    rewards = q_steps - F.pad(q_steps[:, :-1], (1, 0))  # r_k = q_k - q_{k-1}, q_0 = 0
    return rewards * mask, mask


def aggregate_steps(scores: Tensor, mask: Tensor, how: str) -> Tensor:
    """Step probabilities (B, S) -> one score per solution (B,). A row without steps scores 0.

    min (Lightman et al., 2023 use product; min is the PURE / Math-Shepherd choice), product,
    last (the final step's score, close to an ORM), mean.
    """
    mask = mask.bool()
    has = mask.any(-1)
    if how == "min":
        out = scores.masked_fill(~mask, float("inf")).min(-1).values
    elif how == "product":
        out = torch.where(mask, scores, torch.ones_like(scores)).prod(-1)
    elif how == "last":
        out = scores.gather(1, last_token_index(mask.long())[:, None]).squeeze(1)
    elif how == "mean":
        out = masked_mean(scores, mask.float(), dim=-1)
    else:
        raise ValueError(f"unknown aggregation {how!r}; choose one of {AGGREGATIONS}")
    return torch.where(has, out, torch.zeros_like(out))


# ---------------------------------------------------------------------------------------------
# 3. Monte-Carlo step labels (Math-Shepherd)
# ---------------------------------------------------------------------------------------------


def monte_carlo_labels(prompts: list[str], steps: list[list[str]], rollout_fn: Callable,
                       outcome_fn: Callable[[str, str], bool], n_rollouts: int = 8,
                       last_step_is_final: bool = True) -> tuple[list[list[bool]], list[list[float]]]:
    """Math-Shepherd labels (Wang et al., 2024, Eq. 1-2) for each step of each solution.

    For each prefix s_1..s_k, `rollout_fn(contexts, n) -> [[continuation] * n per context]`
    completes `prompt + s_1\\n...s_k\\n` n times; hard label = any completion reaches the right
    answer (`outcome_fn(prompt, full completion)`), soft label = the fraction that do. The
    final step of a finished solution is labelled by its own outcome (nothing is left to roll out).
    Returns (hard, soft), lists of per-step labels.
    """
    contexts, where = [], []
    for i, (p, st) in enumerate(zip(prompts, steps)):
        for k in range(len(st) - (1 if last_step_is_final else 0)):
            contexts.append((p, "".join(s + SEPARATOR for s in st[:k + 1])))
            where.append((i, k))
    continuations = rollout_fn(contexts, n_rollouts) if contexts else []
    soft = [[0.0] * len(st) for st in steps]
    for (i, k), (p, prefix), conts in zip(where, contexts, continuations):
        soft[i][k] = sum(bool(outcome_fn(p, prefix + c)) for c in conts) / len(conts)
    if last_step_is_final:
        for i, (p, st) in enumerate(zip(prompts, steps)):
            soft[i][-1] = float(bool(outcome_fn(p, SEPARATOR.join(st))))
    hard = [[x > 0 for x in row] for row in soft]
    return hard, soft


class PolicyRollouts:
    """A `rollout_fn` for `monte_carlo_labels` that samples from a policy; counts sampled tokens."""

    def __init__(self, model, tokenizer, temperature: float = 1.0, max_new_tokens: int = 64,
                 batch_size: int = 512, generator: torch.Generator | None = None):
        self.model, self.tok, self.temperature = model, tokenizer, temperature
        self.max_new_tokens, self.batch_size, self.generator = max_new_tokens, batch_size, generator
        self.tokens_sampled = 0

    @torch.no_grad()
    def __call__(self, contexts: list[tuple[str, str]], n: int) -> list[list[str]]:
        texts = [p + prefix for p, prefix in contexts for _ in range(n)]  # the prefix is part of the prompt
        out = []
        for i in range(0, len(texts), self.batch_size):
            ids, mask = encode_prompts(self.tok, texts[i:i + self.batch_size])
            roll = sample(self.model, ids, mask, self.max_new_tokens, self.tok.eos_token_id,
                          self.tok.pad_token_id, self.temperature, generator=self.generator)
            self.tokens_sampled += int(roll.completion_mask.sum())
            out += decode_completions(self.tok, roll)
        return [out[j * n:(j + 1) * n] for j in range(len(contexts))]


def answer_correct(prompt: str, completion: str) -> bool:
    return check_chain(prompt, completion).answer_correct


# ---------------------------------------------------------------------------------------------
# 4. Scoring with a verifier
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def prm_step_scores(prm: ScalarHeadModel, tokenizer, prompts: list[str], completions: list[str],
                    batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """P(step is good) for each step of each completion -> (N, S) probabilities, (N, S) mask."""
    rows = [{"prompt": p, "completions": split_into_steps(c)} for p, c in zip(prompts, completions)]
    outs = []
    for i in range(0, len(rows), batch_size):
        batch = encode_steps(tokenizer, rows[i:i + batch_size])
        logits = prm(batch["input_ids"], batch["attention_mask"])  # (b, T)
        outs.append(gather_steps(torch.sigmoid(logits), batch["step_mask"]))
    return _cat_padded(outs)


@torch.no_grad()
def orm_scores(orm: ScalarHeadModel, tokenizer, prompts: list[str], completions: list[str],
               batch_size: int = 512) -> Tensor:
    """P(final answer right) read at the last token (the EOS) -> (N,)."""
    out = []
    for i in range(0, len(prompts), batch_size):
        batch = encode_pairs(tokenizer, prompts[i:i + batch_size], completions[i:i + batch_size])
        logits = orm(batch["input_ids"], batch["attention_mask"])  # (b, T)
        out.append(torch.sigmoid(logits.gather(1, last_token_index(batch["attention_mask"])[:, None])[:, 0]))
    return torch.cat(out)


@torch.no_grad()
def implicit_prm_step_scores(policy, ref, tokenizer, prompts: list[str], completions: list[str],
                             beta: float, batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """Implicit-PRM step rewards (N, S) and mask; sigmoid(reward) is used as the step probability."""
    outs = []
    sep = tokenizer.convert_tokens_to_ids(SEPARATOR)
    for i in range(0, len(prompts), batch_size):
        b = encode_pairs(tokenizer, prompts[i:i + batch_size], completions[i:i + batch_size])
        logp = token_logprobs(policy, b["input_ids"], b["attention_mask"])
        ref_logp = token_logprobs(ref, b["input_ids"], b["attention_mask"])
        step_mask = step_boundary_mask(b["input_ids"], b["completion_mask"], sep, tokenizer.eos_token_id)
        outs.append(implicit_step_rewards(logp, ref_logp, b["completion_mask"].float(), step_mask, beta))
    return _cat_padded(outs)


def _cat_padded(parts: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    S = max(v.shape[1] for v, _ in parts)
    return (torch.cat([F.pad(v, (0, S - v.shape[1])) for v, _ in parts]),
            torch.cat([F.pad(m, (0, S - m.shape[1])) for _, m in parts]))


def best_of_n(scores: Tensor, correct: Tensor) -> Tensor:
    """Pick the highest-scoring of N samples per prompt (first on ties) -> is it correct? (P, N) -> (P,)."""
    return correct.gather(1, scores.argmax(-1, keepdim=True)).squeeze(1)


def best_of_n_curve(scores: Tensor, correct: Tensor, ns: list[int], n_perms: int = 4, seed: int = 0,
                    pick: Callable[[Tensor, Tensor], Tensor] = best_of_n) -> list[float]:
    """Best-of-N accuracy for each N from M samples per prompt: the mean over disjoint groups of N
    in `n_perms` random orders (so N = 1 averages all M samples). scores, correct: (P, M)."""
    g = torch.Generator().manual_seed(seed)
    P, M = scores.shape
    out = []
    for n in ns:
        hits = []
        for _ in range(n_perms):
            perm = rearrange(torch.randperm(M, generator=g)[: (M // n) * n], "(m n) -> m n", n=n)  # (M // n, n)
            for chunk in perm:
                hits.append(pick(scores[:, chunk], correct[:, chunk]).float().mean())
        out.append(torch.stack(hits).mean().item())
    return out


def best_of_n_per_prompt(scores: Tensor, correct: Tensor, ns: list[int], n_perms: int = 4, seed: int = 0,
                         pick: Callable[[Tensor, Tensor], Tensor] = best_of_n) -> Tensor:
    """`best_of_n_curve` before the mean over prompts: (P, M) -> (P, len(ns)), entry [p, j] the
    fraction of prompt p's disjoint groups of ns[j] (in `n_perms` random orders) whose pick is correct.
    The same seed draws the same groups, so `.mean(0)` is `best_of_n_curve`; the spread over prompts
    gives error bars."""
    g = torch.Generator().manual_seed(seed)
    P, M = scores.shape
    cols = []
    for n in ns:
        hits = []
        for _ in range(n_perms):
            perm = rearrange(torch.randperm(M, generator=g)[: (M // n) * n], "(m n) -> m n", n=n)  # (M // n, n)
            for chunk in perm:
                hits.append(pick(scores[:, chunk], correct[:, chunk]).float())  # (P,)
        cols.append(torch.stack(hits, 1).mean(1))  # (P,)
    return torch.stack(cols, 1)  # (P, len(ns))


def majority_vote(answers: list[list[str | None]], correct: list[list[bool]]) -> list[bool]:
    """Self-consistency (Wang et al., 2023): the most frequent answer wins; report the first
    sample giving it (so the same function scores answer accuracy and trace correctness)."""
    out = []
    for ans, cor in zip(answers, correct):
        counts: dict = {}
        for a in ans:
            if a is not None:
                counts[a] = counts.get(a, 0) + 1
        if not counts:
            out.append(False)
            continue
        top = max(counts, key=lambda a: (counts[a], -ans.index(a)))
        out.append(bool(cor[ans.index(top)]))
    return out


# ---------------------------------------------------------------------------------------------
# 5. Training the verifiers (PRM, ORM, implicit PRM)
# ---------------------------------------------------------------------------------------------


@dataclass
class VerifierConfig:
    """Training a PRM / ORM / implicit PRM on labelled samples (laptop-CPU defaults)."""

    lr: float = 1e-3
    """AdamW learning rate."""
    batch_size: int = 64
    """Solutions per step."""
    steps: int = 200
    """Optimizer steps."""
    beta: float = 0.2
    """Implicit PRM only: reward scale in r = beta * log pi/pi_ref."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    seed: int = 0
    """Seed for the data order."""
    log_every: int = 50
    """Log every this many steps."""
    eval_every: int = 0
    """With an `eval_fn`: score the model every this many steps and keep the best (early stopping)."""

    def validate(self) -> None:
        """Raise ConfigError naming the flag of the first field out of range (before anything loads)."""
        check_config(self, at_least_1=("batch_size", "steps", "log_every"), positive=("lr",),
                     non_negative=("beta", "max_grad_norm", "eval_every"))


def train_verifier(model, tokenizer, rows: list[dict], kind: str, cfg: VerifierConfig = VerifierConfig(),
                   ref=None, eval_fn: Callable | None = None, logger: MetricsLogger | None = None,
                   progress: bool = False) -> MetricsLogger:
    """Train in place. kind "prm": PRM rows; "orm": rows {"prompt", "completion", "label"} read at
    the last token; "implicit": the same rows, `model` a causal LM and `ref` its frozen copy.
    `eval_fn(model) -> float` (higher is better, e.g. held-out AUC) is logged as "val" every
    `cfg.eval_every` steps and at the end; the best weights seen are restored (early stopping).
    Rows go to `logger` (a new MetricsLogger when None), which is returned; `progress=True` shows a
    progress bar with the loss and the held-out score."""
    cfg.validate()  # a bad value stops here, before any work
    if kind not in ("prm", "orm", "implicit"):
        raise ValueError(f"unknown verifier kind {kind!r}")
    if kind == "implicit" and ref is None:
        raise ValueError("the implicit PRM needs a reference model `ref`")
    g, log = set_seed(cfg.seed), logger or MetricsLogger()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95))
    model.train()
    order, cursor, best = torch.randperm(len(rows), generator=g), 0, None
    for step in ProgressBar(range(cfg.steps), f"{kind} verifier", {"loss": "loss", "val": "val"}, log,
                            enabled=progress):
        # 1. a batch of labelled solutions
        if cursor + cfg.batch_size > len(rows):
            order, cursor = torch.randperm(len(rows), generator=g), 0
        batch_rows = [rows[i] for i in order[cursor:cursor + cfg.batch_size].tolist()]
        cursor += cfg.batch_size
        # 2. the loss
        if kind == "prm":
            b = encode_steps(tokenizer, batch_rows)
            logits = model(b["input_ids"], b["attention_mask"])  # (B, T)
            loss = prm_loss(logits, b["labels"], b["step_mask"])
        else:
            b = encode_pairs(tokenizer, [r["prompt"] for r in batch_rows], [r["completion"] for r in batch_rows])
            y = torch.tensor([float(r["label"]) for r in batch_rows])  # (B,)
            if kind == "orm":
                loss = orm_loss(model(b["input_ids"], b["attention_mask"]), b["attention_mask"], y)
            else:
                logp = token_logprobs(model, b["input_ids"], b["attention_mask"])  # (B, T)
                with torch.no_grad():
                    ref_logp = token_logprobs(ref, b["input_ids"], b["attention_mask"])
                loss = implicit_prm_loss(logp, ref_logp, b["completion_mask"].float(), y, cfg.beta)
        check_finite(f"{kind} loss", loss)
        # 3. the update
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            log.log({"step": step, "loss": loss.item()})
        # 4. early stopping on a held-out score
        if eval_fn is not None and cfg.eval_every > 0 and ((step + 1) % cfg.eval_every == 0 or step == cfg.steps - 1):
            model.eval()
            val = float(eval_fn(model))
            model.train()
            log.log({"step": step + 1, "val": val})
            if best is None or val > best[0]:
                best = (val, {k: v.detach().clone() for k, v in model.state_dict().items()})
    if best is not None:
        model.load_state_dict(best[1])
    model.eval()
    return log


# ---------------------------------------------------------------------------------------------
# 6. Ranking metrics: how well a verifier orders solutions (pooled, within a prompt, per step)
# ---------------------------------------------------------------------------------------------


def auc(scores: list[float] | Tensor, labels: list[bool] | Tensor) -> float:
    """ROC AUC = P(score of a random positive > score of a random negative), ties count 1/2
    (the Mann-Whitney U statistic divided by n_pos * n_neg)."""
    s, y = torch.as_tensor(scores, dtype=torch.float64).flatten(), torch.as_tensor(labels).bool().flatten()
    if s.shape != y.shape:
        raise ValueError(f"auc: {s.numel()} scores but {y.numel()} labels")
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("auc needs at least one positive and one negative label")
    diff = pos[:, None] - neg[None, :]  # (n_pos, n_neg)
    return ((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean()).item()


def within_prompt_auc(scores: Tensor, labels: Tensor) -> float:
    """Mean AUC over prompts of how a verifier ranks one prompt's samples: what best-of-N uses.

    scores, labels: (P, M), M samples per prompt; prompts whose samples are all right or all wrong
    are skipped. A verifier that only knows prompt difficulty scores 0.5 here, however high its
    AUC pooled over prompts.
    """
    aucs = [auc(s, y) for s, y in zip(scores, labels.bool()) if 0 < int(y.sum()) < len(y)]
    if not aucs:
        raise ValueError("within_prompt_auc: no prompt has both right and wrong samples")
    return sum(aucs) / len(aucs)


def step_auc(prm: ScalarHeadModel, tokenizer, prompts: list[str], completions: list[str]) -> float:
    """Held-out step-level AUC of a PRM against the gold (prefix-closed) step labels."""
    scores, mask = prm_step_scores(prm, tokenizer, prompts, completions)
    labels = [gold_step_labels(p, c) for p, c in zip(prompts, completions)]
    return auc(scores[mask.bool()], [y for row in labels for y in row])
