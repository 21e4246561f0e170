"""The verifier runners: `minirlhf prm` (a process or outcome reward model trained on the policy's
own arithmetic samples, judged by best-of-N) and `minirlhf rm-bench` (a reward model on
categorised pairs with a known gold ordering, RewardBench layout).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields

import torch
from einops import rearrange

from ..errors import check_config
from ..prm import VerifierConfig
from ..runs import finish, metrics_logger, show_progress
from ..utils import MetricsLogger
from .common import data_counts, load_rows, run_device


# ---------------------------------------------------------------------------------------------
# prm: a verifier trained on the policy's own arithmetic samples, judged by best-of-N
# ---------------------------------------------------------------------------------------------


@dataclass
class VerifierRunConfig(VerifierConfig):
    """`minirlhf prm`: which verifier, its labels, and the samples it is trained and judged on.
    (CPU only: prm.py keeps its tensors on the CPU.)"""

    kind: str = "prm"
    """prm (a score at every step), orm (one score at the end) or implicit (a causal LM trained on
    outcome labels whose log-ratio to the policy gives step rewards: Yuan et al., 2024)."""
    labels: str = "gold"
    """PRM step labels: gold (the checker, prefix-closed), mc-hard or mc-soft (Math-Shepherd
    Monte-Carlo rollouts from the policy). ORM and implicit PRM use outcome labels."""
    n_train: int = 2000
    """Train prompts, one solution each sampled from the policy at temperature 1, then labelled."""
    mc_rollouts: int = 8
    """Monte-Carlo labels: rollouts per step prefix (Math-Shepherd uses 8)."""
    n_dev: int = 200
    """With eval_every > 0: dev-prompt solutions whose answer AUC picks the best weights."""
    n_eval_prompts: int = 100
    """Held-out test prompts for best-of-N."""
    best_of: int = 16
    """N: solutions sampled per held-out prompt; the verifier picks one."""
    aggregation: str = "min"
    """How step scores become one score per solution: min, product, last or mean (prm.AGGREGATIONS)."""
    max_new_tokens: int = 64
    """Longest sampled solution in tokens."""

    def validate(self) -> None:
        """The training fields' ranges (VerifierConfig) and this command's own."""
        from ..prm import AGGREGATIONS

        super().validate()
        check_config(self, at_least_1=("n_train", "mc_rollouts", "n_dev", "n_eval_prompts", "best_of",
                                       "max_new_tokens"),
                     choices={"kind": ("prm", "orm", "implicit"), "labels": ("gold", "mc-hard", "mc-soft"),
                              "aggregation": AGGREGATIONS})


def prm_args(p):
    p.add_argument("--model", default=None, help="the policy that writes the solutions (default: arith-sft)")
    p.add_argument("--backbone", default=None,
                   help="the verifier's starting weights, and the implicit PRM's reference (default: --model if "
                        "given, else arith-sft-full: a verifier has to know the arithmetic it checks)")


def _sample_solutions(policy, tok, split: str, n_prompts: int, per_prompt: int, cfg, g) -> tuple[list, list]:
    """`per_prompt` solutions at temperature 1 for each of the first `n_prompts` prompts of a split."""
    from ..lm import generate
    from ..zoo import load_split

    prompts = [r["prompt"] for r in load_split("arithmetic", split)[:n_prompts] for _ in range(per_prompt)]
    completions, _ = generate(policy, tok, prompts, cfg.max_new_tokens, temperature=1.0, generator=g,
                              batch_size=512)
    return prompts, completions


def _verifier_rows(cfg: VerifierRunConfig, policy, tok, prompts, completions, g) -> list[dict]:
    """Training rows of the verifier: TRL PRM rows with step labels, or outcome-labelled solutions."""
    from .. import prm

    if cfg.kind != "prm":
        return [{"prompt": p, "completion": c, "label": prm.answer_correct(p, c)} for p, c in zip(prompts, completions)]
    if cfg.labels == "gold":
        return prm.to_prm_rows(prompts, completions)
    if cfg.labels not in ("mc-hard", "mc-soft"):
        raise ValueError(f"labels={cfg.labels!r}: expected gold, mc-hard or mc-soft")
    steps = [prm.split_into_steps(c) for c in completions]
    hard, soft = prm.monte_carlo_labels(prompts, steps, prm.PolicyRollouts(policy, tok, generator=g),
                                        prm.answer_correct, cfg.mc_rollouts)
    return prm.to_prm_rows(prompts, completions, hard if cfg.labels == "mc-hard" else soft)


def _verifier_scores(verifier, cfg: VerifierRunConfig, ref, tok, prompts, completions) -> torch.Tensor:
    """One score per solution, higher = more likely right (`ref`: the implicit PRM's reference). -> (N,)"""
    from .. import prm

    if cfg.kind == "orm":
        return prm.orm_scores(verifier, tok, prompts, completions)
    if cfg.kind == "implicit":
        rewards, mask = prm.implicit_prm_step_scores(verifier, ref, tok, prompts, completions, cfg.beta)
        return prm.aggregate_steps(torch.sigmoid(rewards), mask, cfg.aggregation)
    return prm.aggregate_steps(*prm.prm_step_scores(verifier, tok, prompts, completions), cfg.aggregation)


def _auc_or_none(scores, labels) -> float | None:
    """ROC AUC, or None when the labels hold a single class."""
    from ..prm import auc

    labels = torch.as_tensor(labels).bool()
    return round(auc(scores, labels), 4) if 0 < int(labels.sum()) < labels.numel() else None


def _best_of_n_report(verifier, cfg: VerifierRunConfig, policy, ref, tok, g) -> dict:
    """Answer and whole-trace accuracy of the verifier's pick of N, against N = 1, majority vote
    and the oracle (is any of the N right), on held-out test prompts."""
    from .. import prm
    from ..worlds.arithmetic import check_chain, extract_answer

    P, N = cfg.n_eval_prompts, cfg.best_of
    prompts, completions = _sample_solutions(policy, tok, "test", P, N, cfg, g)
    results = [check_chain(p, c) for p, c in zip(prompts, completions)]
    answer = rearrange(torch.tensor([r.answer_correct for r in results]), "(p n) -> p n", n=N)  # (P, N): N per prompt
    trace = rearrange(torch.tensor([r.trace_correct for r in results]), "(p n) -> p n", n=N)
    scores = rearrange(_verifier_scores(verifier, cfg, ref, tok, prompts, completions), "(p n) -> p n", n=N)
    answers = [[extract_answer(c) for c in completions[i * N:(i + 1) * N]] for i in range(P)]
    out = {"accuracy@1": answer.float().mean().item(), "accuracy": prm.best_of_n(scores, answer).float().mean().item(),
           "trace_accuracy@1": trace.float().mean().item(),
           "trace_accuracy": prm.best_of_n(scores, trace).float().mean().item(),
           "accuracy_majority_vote": sum(prm.majority_vote(answers, answer.tolist())) / P,
           "accuracy_oracle": answer.any(-1).float().mean().item(),
           "answer_auc": _auc_or_none(scores.flatten(), answer.flatten())}
    if cfg.kind == "prm":  # how well it scores steps, against the checker's prefix-closed labels
        step_scores, mask = prm.prm_step_scores(verifier, tok, prompts, completions)
        gold = [y for p, c in zip(prompts, completions) for y in prm.gold_step_labels(p, c)]
        out["step_auc"] = _auc_or_none(step_scores[mask.bool()], gold)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def run_prm(args, cfg: VerifierRunConfig) -> dict:
    from .. import prm
    from ..models import ScalarHeadModel, check_same_vocab, load_model, load_tokenizer
    from ..utils import set_seed

    model_name = args.model or "arith-sft"
    tok = load_tokenizer(model_name if args.model else "tokenizer")
    policy = load_model(model_name, trust_remote_code=args.trust_remote_code).eval()
    g = set_seed(cfg.seed)
    t0 = time.time()
    # 1. solutions to learn from, labelled (the policy's own samples on train prompts)
    prompts, completions = _sample_solutions(policy, tok, "train", cfg.n_train, 1, cfg, g)
    rows = _verifier_rows(cfg, policy, tok, prompts, completions, g)
    # 2. the verifier, from the backbone's weights; early stopping on dev answer AUC if asked
    backbone_name = args.backbone or (args.model or "arith-sft-full")
    backbone = load_model(backbone_name, trust_remote_code=args.trust_remote_code)
    check_same_vocab(backbone, policy, backbone_name, model_name, tok, what="verifier")  # it scores the samples
    verifier = backbone if cfg.kind == "implicit" else ScalarHeadModel(backbone)
    ref = load_model(backbone_name, trust_remote_code=args.trust_remote_code).eval() if cfg.kind == "implicit" else None
    eval_fn = None
    if cfg.eval_every > 0:
        dev_p, dev_c = _sample_solutions(policy, tok, "dev", cfg.n_dev, 1, cfg, g)
        dev_y = [prm.answer_correct(p, c) for p, c in zip(dev_p, dev_c)]
        eval_fn = lambda m: prm.auc(_verifier_scores(m, cfg, ref, tok, dev_p, dev_c), dev_y)  # noqa: E731
    train_cfg = VerifierConfig(**{f.name: getattr(cfg, f.name) for f in fields(VerifierConfig)})
    log = prm.train_verifier(verifier, tok, rows, cfg.kind, train_cfg, ref=ref, eval_fn=eval_fn,
                             logger=metrics_logger(args, "prm"), progress=show_progress(args))
    method = {"prm": f"PRM ({cfg.labels} labels, {cfg.aggregation})", "orm": "ORM",
              "implicit": f"implicit PRM ({cfg.aggregation})"}[cfg.kind]
    summary = {"method": method, "model": model_name, "backbone": backbone_name,
               "train_solutions": len(rows), "steps": cfg.steps, "seconds": round(time.time() - t0, 1),
               "best_of": cfg.best_of}
    # 3. best-of-N on held-out prompts
    summary.update(_best_of_n_report(verifier, cfg, policy, ref, tok, g))
    return finish(args, "prm", log, summary, verifier, tok, ["loss", "val"])


# ---------------------------------------------------------------------------------------------
# rm-bench: a reward model on categorised pairs with a known gold ordering (RewardBench layout)
# ---------------------------------------------------------------------------------------------


@dataclass
class RMBenchConfig:
    """`minirlhf rm-bench`: score a reward model on a RewardBench-format file, per subset."""

    batch_size: int = 64
    """Texts scored per forward pass."""
    max_length: int = 256
    """Longest prompt + completion (+ EOS) in tokens; a longer row is an invalid row."""

    def validate(self) -> None:
        check_config(self, at_least_1=("batch_size", "max_length"))


def rm_bench_args(p):
    p.add_argument("--model", default=None, help="a reward model: a minirlhf reward-model folder or built-in name, or "
                   "a Hugging Face AutoModelForSequenceClassification (one label) by hub name or local path "
                   "(default: review-rm)")
    p.add_argument("--dataset", default=None, help="a JSON/JSONL/Parquet file of prompt/chosen/rejected[/subset] rows "
                   "(default: the built-in data/reviews/rm_bench.jsonl)")
    p.add_argument("--drop-invalid", action="store_true", help="drop invalid rows (counted) instead of stopping")
    p.add_argument("--strict-vocab", action="store_true",
                   help="a character the tokenizer does not know is an invalid row, not a warning")


def run_rm_bench(args, cfg: RMBenchConfig) -> dict:
    from ..models import load_tokenizer
    from ..reward_hacking.rm_bench import evaluate_rm_bench, format_table, load_reward_scorer, load_rm_bench

    model_name = args.model or "review-rm"
    tok = load_tokenizer(model_name, trust_remote_code=args.trust_remote_code)
    if args.dataset is None:
        rows = load_rm_bench(None)
    else:  # checked before the model is loaded
        rows = load_rows(args, load_rm_bench, tokenizer=tok, max_length=cfg.max_length)
    scorer = load_reward_scorer(model_name, tok, args.trust_remote_code, cfg.batch_size, run_device(args))
    t0 = time.time()
    result = evaluate_rm_bench(scorer, rows)
    print(format_table(result))
    summary = {"method": "rm-bench", "model": model_name, "dataset": args.dataset or "data/reviews/rm_bench.jsonl",
               "pairs": len(rows), **data_counts(args), "accuracy": round(result["overall"]["accuracy"], 4),
               "mean_over_subsets": round(result["mean_over_subsets"], 4),
               "subsets": {k: {m: round(v, 4) if isinstance(v, float) else v for m, v in s.items()}
                           for k, s in result["subsets"].items()},
               "seconds": round(time.time() - t0, 1)}
    return finish(args, "rm-bench", MetricsLogger(), summary)
