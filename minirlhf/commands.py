"""What each `minirlhf <method>` subcommand runs: load, train, evaluate, save, summarise.

Each runner takes the parsed flags and the method's config dataclass and returns a summary
dict with the same keys across methods (`gold_reward` or `accuracy`, `kl`, `seconds`), which
is what `minirlhf baselines` puts in one table. The method logic itself lives in the method
files; this module only wires data, models and evaluation around it.

Defaults use the built-in world and the shipped checkpoints; `--model` takes any causal LM by
hub name or local path, `--dataset` any JSON/JSONL/Parquet file in TRL's formats.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from .errors import check_config
from .prm import VerifierConfig
from .utils import MetricsLogger

REVIEW_EVAL_PROMPTS = 128   # held-out review prompts for gold reward and KL
ARITH_EVAL_ROWS = 200       # held-out chains for accuracy


def _common(p: argparse.ArgumentParser, model: str, dataset: str) -> None:
    p.add_argument("--model", default=None, help=f"hub name or local path of a causal LM (default: {model})")
    p.add_argument("--dataset", default=None, help=f"a JSON/JSONL/Parquet file (default: built-in {dataset})")
    p.add_argument("--drop-invalid", action="store_true",
                   help="drop invalid dataset rows (malformed, over --max-length ...; their count is reported "
                        "and goes into summary.json) instead of stopping at the first")
    p.add_argument("--strict-vocab", action="store_true",
                   help="a dataset character the tokenizer does not know (it would become <unk>) is an invalid "
                        "row, not a warning")


def _device(args) -> torch.device:
    from .utils import get_device

    return get_device(getattr(args, "device", None))


def _load(args, name: str):
    """A causal LM on the run's device (trust_remote_code only when the user passed it)."""
    from .models import load_model

    return load_model(name, device=_device(args), trust_remote_code=getattr(args, "trust_remote_code", False))


def _metrics_logger(args, name: str, cfg=None) -> MetricsLogger:
    """The run's log, appended to runs/<name>/metrics.jsonl row by row as it trains, so a killed run
    keeps every row logged before the kill (rank 0 alone writes). A fresh run empties the file;
    `--resume` continues it, and the trainer's `resume_from` drops the rows of the steps done again,
    so the file holds the whole run once. Made right before training, after the models and data
    load, so a run stopped by bad input leaves the log of an earlier run of that name alone."""
    from .cli import run_dir

    return MetricsLogger(run_dir(args.name or name) / "metrics.jsonl", resume=bool(getattr(cfg, "resume", False)))


def _finish(args, name: str, log: MetricsLogger, summary: dict, model=None, tok=None, plot_keys=(),
            x: str = "step") -> dict:
    """Rank 0 plots the run's metrics.jsonl (already written row by row by `log`; a resumed run's
    file holds the rows from before the kill too), saves the model and tokenizer and summary.json."""
    from .cli import plot_metrics, run_dir
    from .utils import dist_info

    if dist_info()[0] != 0:  # under torchrun only rank 0 writes
        return summary
    out = run_dir(args.name or name)
    plot_metrics(MetricsLogger.load(log.path) if log.path else log, list(plot_keys), out / "metrics.png", x=x)
    if model is not None:
        model.save_pretrained(out / "model")
        if tok is not None:
            tok.save_pretrained(out / "model")
    summary["run_dir"] = str(out)
    summary["threads"] = torch.get_num_threads()  # results are bit-reproducible for a seed and this count
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def sequence_kl(policy, ref, tok, prompts: list[str], max_new_tokens: int = 64, gold_fn=None) -> dict:
    """Sequence KL(pi || ref) (summed k1 over one sample per prompt) and, optionally, its gold reward."""
    from .ppo import PPOConfig, evaluate_policy

    m = evaluate_policy(policy, ref, tok, prompts, PPOConfig(max_new_tokens=max_new_tokens), gold_fn=gold_fn)
    out = {"kl": round(m["eval/kl"], 4)}
    if gold_fn is not None:
        out["gold_reward"] = round(m["eval/gold"], 4)
    return out


def _review_eval(policy, ref, tok, max_new_tokens: int = 64) -> dict:
    """Gold reward and sequence KL(pi || ref) of one sample per held-out review prompt."""
    from .worlds import reviews
    from .zoo import load_split

    prompts = [r["prompt"] for r in load_split("reviews", "prompts_test")][:REVIEW_EVAL_PROMPTS]
    return sequence_kl(policy, ref, tok, prompts, max_new_tokens, gold_fn=reviews.gold_rewards)


def _preference_rows(args, tok, split: str = "prefs_train", max_length: int | None = None) -> list[dict]:
    """--dataset's preference rows, checked (rows over `max_length` tokens included), or the built-in split."""
    from . import data
    from .zoo import load_split

    if args.dataset is None:
        return load_split("reviews", split)
    return _load_dataset(args, data.load_preferences, tokenizer=tok, max_length=max_length)


def _load_dataset(args, loader, **kwargs) -> list[dict]:
    """`loader(args.dataset, ...)` (a data.py loader) with --drop-invalid and --strict-vocab: every row
    is checked when the file is read, before any model is loaded. Its notes are printed once on
    stderr and its counts kept for summary.json (`_data_counts`)."""
    import warnings

    from . import data

    report: dict = {}
    with warnings.catch_warnings():  # printed once below, as "[data] ..." lines
        warnings.simplefilter("ignore", data.DataWarning)
        rows = loader(args.dataset, drop_invalid=args.drop_invalid, strict_vocab=args.strict_vocab,
                      report=report, **kwargs)
    _report_dropped(args, report)
    return rows


def _report_dropped(args, report: dict) -> None:
    """Print a load's notes (rows dropped, characters the tokenizer does not know) and keep its counts."""
    from .data import report_lines

    for line in report_lines(report):
        print(f"[data] {line}", file=sys.stderr)
    args.data_counts = {"dataset_rows": report["n_rows"], "dropped_rows": report["n_dropped"],
                        "rows_with_unknown_chars": report["n_unknown"]}


def _data_counts(args) -> dict:
    """{"dataset_rows", "dropped_rows", "rows_with_unknown_chars"} of --dataset for the summary ({} without one)."""
    return getattr(args, "data_counts", {})


# ---------------------------------------------------------------------------------------------
# sft
# ---------------------------------------------------------------------------------------------


def sft_args(p: argparse.ArgumentParser) -> None:
    _common(p, "a new tiny Llama from scratch", "arithmetic; 'reviews' for the other world; a file holds "
            "prompt/completion or messages rows")
    p.add_argument("--eval-every", type=int, default=100, help="evaluate every this many steps (built-in worlds)")


def run_sft(args: argparse.Namespace, cfg) -> dict:
    from .evaluate import eval_arithmetic
    from .models import count_parameters, load_tokenizer
    from .sft import train_sft
    from .zoo import load_split, new_tiny_model

    dataset = args.dataset or "arithmetic"
    tok = load_tokenizer(args.model or "tokenizer", trust_remote_code=args.trust_remote_code)
    if dataset in ("arithmetic", "reviews"):
        rows = load_split(dataset, "train" if dataset == "arithmetic" else "sft")
    else:  # checked before the model is loaded
        from . import data

        rows = _load_dataset(args, data.load_completions, tokenizer=tok, max_length=cfg.max_length)
    model = _load(args, args.model) if args.model else new_tiny_model(tok).to(_device(args))
    eval_fn = None
    if dataset == "arithmetic":
        test = load_split("arithmetic", "test")[:200]
        eval_fn = lambda m: {"test_accuracy": eval_arithmetic(m, tok, test)["accuracy"]}  # noqa: E731
    log = _metrics_logger(args, "sft", cfg)
    t0 = time.time()
    train_sft(model, tok, rows, cfg, eval_fn=eval_fn, eval_every=args.eval_every if eval_fn else 0,
              logger=log, progress=True)
    seconds = time.time() - t0
    summary = {"method": "sft", "model": args.model or "tiny Llama from scratch",
               "parameters": count_parameters(model), "dataset": dataset, "examples": len(rows),
               **_data_counts(args), "steps": cfg.steps, "seconds": round(seconds, 1),
               "final_loss": round(log.series("loss")[-1], 4) if log.series("loss") else None}
    if dataset == "arithmetic":
        for split in ("test", "test_ood"):
            m = eval_arithmetic(model, tok, load_split("arithmetic", split))
            summary[f"{split}/accuracy"] = m["accuracy"]
            summary[f"{split}/trace_accuracy"] = m["trace_accuracy"]
    return _finish(args, "sft", log, summary, model, tok, ["loss", "test_accuracy"])


# ---------------------------------------------------------------------------------------------
# rm
# ---------------------------------------------------------------------------------------------


def rm_args(p):
    _common(p, "review-sft", "reviews prefs_train")


def run_rm(args, cfg) -> dict:
    from .models import ScalarHeadModel, load_tokenizer
    from .reward_model import evaluate_reward_model, train_reward_model
    from .zoo import load_split

    model_name = args.model or "review-sft"
    tok = load_tokenizer(model_name if args.model else "tokenizer")
    rows = _preference_rows(args, tok, max_length=cfg.max_length)  # checked before the model is loaded
    rm = ScalarHeadModel.from_causal_lm(model_name, trust_remote_code=args.trust_remote_code).to(_device(args))
    t0 = time.time()
    log = train_reward_model(rm, tok, rows, cfg, logger=_metrics_logger(args, "rm", cfg), progress=True)
    summary = {"method": "rm", "model": model_name, "pairs": len(rows), **_data_counts(args), "steps": cfg.steps,
               "seconds": round(time.time() - t0, 1)}
    if args.dataset is None:
        ev = evaluate_reward_model(rm, tok, load_split("reviews", "prefs_test"))
        summary.update({k: round(float(v), 4) for k, v in ev.items() if isinstance(v, (int, float))})
    return _finish(args, "rm", log, summary, rm, tok, ["loss", "accuracy"])


# ---------------------------------------------------------------------------------------------
# ppo
# ---------------------------------------------------------------------------------------------


def ppo_args(p):
    _common(p, "review-sft", "reviews prompts")
    p.add_argument("--reward-model", default="review-rm", help="a ScalarHeadModel folder (default review-rm)")


def run_ppo(args, cfg) -> dict:
    from .models import ScalarHeadModel, check_same_vocab, load_tokenizer
    from .ppo import train_ppo
    from .worlds import reviews

    model_name = args.model or "review-sft"
    tok = load_tokenizer(model_name if args.model else "tokenizer")
    rows = _preference_rows(args, tok)  # checked before the models are loaded
    if args.dataset is not None:  # every PPO step samples --batch-size distinct prompts
        from .data import require_rows

        require_rows(len(rows), cfg.batch_size, "--batch-size", args.dataset, "prompts")
    policy, ref = _load(args, model_name), _load(args, model_name).eval()
    rm = ScalarHeadModel.from_pretrained(args.reward_model, trust_remote_code=args.trust_remote_code)
    check_same_vocab(rm, policy, args.reward_model, model_name, tok)  # else an IndexError mid-PPO
    rm = rm.to(_device(args)).eval()
    prompts = [r["prompt"] for r in rows]  # repeats kept: they weight prompts as the data does
    builtin = args.dataset is None
    t0 = time.time()
    log, policy = train_ppo(policy, tok, prompts, rm, cfg, ref_model=ref,
                            gold_fn=reviews.gold_rewards if builtin else None, logger=_metrics_logger(args, "ppo", cfg))
    summary = {"method": f"ppo (beta={cfg.beta})", "model": model_name, **_data_counts(args), "steps": cfg.steps,
               "seconds": round(time.time() - t0, 1)}
    if builtin:
        summary.update(_review_eval(policy, ref, tok, cfg.max_new_tokens))
    return _finish(args, "ppo", log, summary, policy, tok, ["objective/scores", "objective/gold", "objective/kl"])


# ---------------------------------------------------------------------------------------------
# dpo
# ---------------------------------------------------------------------------------------------


def dpo_args(p):
    _common(p, "review-sft", "reviews prefs_train")


def run_dpo(args, cfg) -> dict:
    from .dpo import train_dpo
    from .models import load_tokenizer

    model_name = args.model or "review-sft"
    tok = load_tokenizer(model_name if args.model else "tokenizer")
    rows = _preference_rows(args, tok, max_length=cfg.max_length)  # checked before the models are loaded
    policy, ref = _load(args, model_name), _load(args, model_name).eval()
    t0 = time.time()
    log = train_dpo(policy, tok, rows, cfg, ref_model=ref, logger=_metrics_logger(args, "dpo", cfg))
    summary = {"method": f"{cfg.loss_type} (beta={cfg.beta})", "model": model_name, **_data_counts(args),
               "steps": cfg.steps,
               "seconds": round(time.time() - t0, 1)}
    if args.dataset is None:
        summary.update(_review_eval(policy.eval(), ref, tok))
    return _finish(args, "dpo", log, summary, policy, tok, ["loss", "rewards/margins", "logps/chosen"])


# ---------------------------------------------------------------------------------------------
# grpo
# ---------------------------------------------------------------------------------------------


def grpo_args(p):
    _common(p, "arith-sft", "arithmetic train; a file holds a prompt (or question) and an answer whose final "
            "answer ('#### N', '\\boxed{N}', 'The answer is N' or a number) grades the completions")
    p.add_argument("--prompt-field", default=None,
                   help="--dataset field holding the prompt (default: prompt, else question)")
    p.add_argument("--answer-field", default="answer", help="--dataset field holding the gold answer (default: answer)")
    p.add_argument("--reward", default="answer", choices=("answer", "trace"),
                   help="built-in world: answer (the final answer is right) or trace (every step too; "
                        "the reward that lifts held-out accuracy in notebook 05)")


def run_grpo(args, cfg) -> dict:
    from . import grpo
    from .evaluate import eval_arithmetic
    from .models import load_tokenizer
    from .worlds import arithmetic
    from .zoo import load_split

    model_name = args.model or "arith-sft"
    tok = load_tokenizer(model_name if args.model else "tokenizer")
    # the variant's paper preset, then what the YAML preset and the flags set
    cfg = grpo.preset(cfg.variant, **{k: getattr(cfg, k) for k in args.given_fields if k != "variant"})
    if args.dataset is None:
        prompts = [r["prompt"] for r in load_split("arithmetic", "train")]
        reward_fns = [arithmetic.arithmetic_trace_reward if args.reward == "trace" else arithmetic.arithmetic_reward]
    else:  # checked before the model is loaded; a row whose gold answer does not parse is a bad row
        from . import data

        rows = _load_dataset(args, data.load_prompts_with_answers, tokenizer=tok, prompt_field=args.prompt_field,
                             answer_field=args.answer_field)
        gold = {r["prompt"]: r["gold"] for r in rows}
        prompts = list(gold)  # each distinct prompt once
        data.require_rows(len(prompts), cfg.prompts_per_step, "--prompts-per-step", args.dataset, "distinct prompts")
        reward_fns = [arithmetic.numeric_answer_reward(gold)]
    policy = _load(args, model_name)
    test = load_split("arithmetic", "test")[:ARITH_EVAL_ROWS]
    before = eval_arithmetic(policy, tok, test)["accuracy"] if args.dataset is None else None
    t0 = time.time()
    log = grpo.train_grpo(policy, tok, prompts, reward_fns, cfg, logger=_metrics_logger(args, "grpo", cfg))
    summary = {"method": cfg.variant, "model": model_name, **_data_counts(args), "steps": cfg.steps,
               "seconds": round(time.time() - t0, 1)}
    if args.dataset is None:
        summary["reward"] = args.reward
    if args.dataset is None:
        ood = load_split("arithmetic", "test_ood")[:ARITH_EVAL_ROWS]
        summary.update({"accuracy_before": before, "accuracy": eval_arithmetic(policy, tok, test)["accuracy"],
                        "accuracy_ood": eval_arithmetic(policy, tok, ood)["accuracy"],
                        **sequence_kl(policy, _load(args, model_name).eval(), tok, [r["prompt"] for r in test])})
    return _finish(args, "grpo", log, summary, policy, tok, ["reward/mean", "entropy", "completion_length/mean"])



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
        from .prm import AGGREGATIONS

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
    from .lm import generate
    from .zoo import load_split

    prompts = [r["prompt"] for r in load_split("arithmetic", split)[:n_prompts] for _ in range(per_prompt)]
    completions, _ = generate(policy, tok, prompts, cfg.max_new_tokens, temperature=1.0, generator=g,
                              batch_size=512)
    return prompts, completions


def _verifier_rows(cfg: VerifierRunConfig, policy, tok, prompts, completions, g) -> list[dict]:
    """Training rows of the verifier: TRL PRM rows with step labels, or outcome-labelled solutions."""
    from . import prm

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
    from . import prm

    if cfg.kind == "orm":
        return prm.orm_scores(verifier, tok, prompts, completions)
    if cfg.kind == "implicit":
        rewards, mask = prm.implicit_prm_step_scores(verifier, ref, tok, prompts, completions, cfg.beta)
        return prm.aggregate_steps(torch.sigmoid(rewards), mask, cfg.aggregation)
    return prm.aggregate_steps(*prm.prm_step_scores(verifier, tok, prompts, completions), cfg.aggregation)


def _auc_or_none(scores, labels) -> float | None:
    """ROC AUC, or None when the labels hold a single class."""
    from .prm import auc

    labels = torch.as_tensor(labels).bool()
    return round(auc(scores, labels), 4) if 0 < int(labels.sum()) < labels.numel() else None


def _best_of_n_report(verifier, cfg: VerifierRunConfig, policy, ref, tok, g) -> dict:
    """Answer and whole-trace accuracy of the verifier's pick of N, against N = 1, majority vote
    and the oracle (is any of the N right), on held-out test prompts."""
    from . import prm
    from .worlds.arithmetic import check_chain, extract_answer

    P, N = cfg.n_eval_prompts, cfg.best_of
    prompts, completions = _sample_solutions(policy, tok, "test", P, N, cfg, g)
    results = [check_chain(p, c) for p, c in zip(prompts, completions)]
    answer = torch.tensor([r.answer_correct for r in results]).view(P, N)  # (P, N)
    trace = torch.tensor([r.trace_correct for r in results]).view(P, N)
    scores = _verifier_scores(verifier, cfg, ref, tok, prompts, completions).view(P, N)
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
    from . import prm
    from .models import ScalarHeadModel, check_same_vocab, load_model, load_tokenizer
    from .utils import set_seed

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
                             logger=_metrics_logger(args, "prm"))
    method = {"prm": f"PRM ({cfg.labels} labels, {cfg.aggregation})", "orm": "ORM",
              "implicit": f"implicit PRM ({cfg.aggregation})"}[cfg.kind]
    summary = {"method": method, "model": model_name, "backbone": backbone_name,
               "train_solutions": len(rows), "steps": cfg.steps, "seconds": round(time.time() - t0, 1),
               "best_of": cfg.best_of}
    # 3. best-of-N on held-out prompts
    summary.update(_best_of_n_report(verifier, cfg, policy, ref, tok, g))
    return _finish(args, "prm", log, summary, verifier, tok, ["loss", "val"])


# ---------------------------------------------------------------------------------------------
# diffusion: one RL method on a shipped diffusion / flow model, reward before and after
# ---------------------------------------------------------------------------------------------


@dataclass
class DiffusionRunConfig:
    """`minirlhf diffusion`: which method, on which world; the method's other settings are its defaults."""

    method: str = "ddpo"
    """ddpo (DDPO_IS), ddpo_sf (REINFORCE), draft (DRaFT-1, reward backprop), diffusion_dpo, flow_grpo,
    mix_grpo (Flow-GRPO with MixGRPO's sliding SDE window: 4 of 20 steps)."""
    world: str = "points"
    """points (reward: land in the upper box) or digits (reward: a proxy classifier's log p(label);
    a second, gold classifier judges)."""
    iterations: int = 30
    """Sampling rounds (DDPO, Flow-GRPO) or optimizer steps (DRaFT, Diffusion-DPO)."""
    lr: float | None = None
    """AdamW learning rate (None: the method's recipe)."""
    pairs_per_label: int = 64
    """Diffusion-DPO: preference pairs sampled from the base model per label."""
    eval_per_label: int = 64
    """Samples per label for the reward / KL evaluation (the same noise before and after)."""
    eval_every: int = 5
    """Evaluate every this many iterations (0: only before and after)."""
    seed: int = 0
    """Seed of labels, noise and pairs."""

    def validate(self) -> None:
        check_config(self, at_least_1=("iterations", "pairs_per_label", "eval_per_label"), positive=("lr",),
                     non_negative=("eval_every",), choices={"method": DIFFUSION_METHODS, "world": ("points", "digits")})


# method: (model kind, config class, recipe: the settings notebook 07 uses on the points world)
DIFFUSION_METHODS = {
    "ddpo": ("ddpm", "DDPOConfig", {"lr": 3e-4}),
    "ddpo_sf": ("ddpm", "DDPOConfig", {"lr": 3e-4, "importance_sampling": False}),
    "draft": ("ddpm", "DRaFTConfig", {}),
    "diffusion_dpo": ("ddpm", "DiffusionDPOConfig", {}),
    "flow_grpo": ("flow", "FlowGRPOConfig", {}),
    "mix_grpo": ("flow", "FlowGRPOConfig", {"sde_window": 4, "window_shift_every": 6, "window_stride": 3}),
    # notebook 12's methods that aim at p* = p_base exp(r / beta) / Z (beta = 1), with the memoryless flow SDE
    "adjoint_matching": ("flow", "AdjointMatchingConfig", {"lr": 2e-3}),
    "dpok": ("flow", "DDPOConfig", {"lr": 1e-3, "eta": 2 ** 0.5, "kl_coef": 1.0, "normalize_advantages": False}),
    "reward_weighted_fm": ("flow", "RewardWeightedConfig", {}),
}


EXACT_TARGET_METHODS = ("adjoint_matching", "dpok", "reward_weighted_fm")


def diffusion_args(p):
    p.add_argument("--model", default=None, help="a diffusion checkpoint name or folder (default: "
                   "diffusion-<world>-ddpm, or -flow for flow_grpo)")


def _diffusion_rewards(world: str) -> tuple[dict, str, object]:
    """(rewards to evaluate, the task reward's name, the gold classifier or None) of a world."""
    from .diffusion import load_diffusion_model
    from .diffusion.rewards import box_distance_reward, box_reward, classifier_logprob_reward

    if world == "points":
        return {"box": box_reward, "distance": box_distance_reward}, "box", None
    if world != "digits":
        raise ValueError(f"world={world!r}: expected points or digits")
    proxy, gold = (load_diffusion_model(f"diffusion-digits-{k}-clf").requires_grad_(False) for k in ("proxy", "gold"))
    return {"proxy": classifier_logprob_reward(proxy), "gold": classifier_logprob_reward(gold)}, "proxy", gold


def run_diffusion(args, cfg: DiffusionRunConfig) -> dict:
    from . import diffusion
    from .diffusion.models import save_net
    from .diffusion.rewards import box_distance_reward

    kind, config_name, recipe = DIFFUSION_METHODS[cfg.method]
    model_name = args.model or f"diffusion-{cfg.world}-{kind}"
    torch.manual_seed(cfg.seed)
    policy = diffusion.load_diffusion_model(model_name)
    ref = diffusion.frozen_copy(policy)
    rewards, task, gold_clf = _diffusion_rewards(cfg.world)
    # the training reward: the task's; the differentiable distance for DRaFT and the DPO pairs on points
    reward_fn = rewards[task]
    if cfg.world == "points" and cfg.method in ("draft", "diffusion_dpo", *EXACT_TARGET_METHODS):
        reward_fn = box_distance_reward

    def evaluate(net, iteration: int = 0) -> dict:
        return diffusion.evaluate_policy(net, ref, rewards, per_label=cfg.eval_per_label, gold_classifier=gold_clf)

    config_cls = getattr(diffusion, config_name)
    steps_field = "steps" if cfg.method == "diffusion_dpo" else "iterations"
    method_cfg = config_cls(**{**recipe, steps_field: cfg.iterations, "seed": cfg.seed,
                               **({"lr": cfg.lr} if cfg.lr is not None else {})})
    before = evaluate(policy)
    t0 = time.time()
    log, hooks = _metrics_logger(args, "diffusion"), dict(eval_fn=evaluate, eval_every=cfg.eval_every)
    if cfg.method in ("ddpo", "ddpo_sf", "dpok"):
        diffusion.train_ddpo(policy, reward_fn, method_cfg, logger=log, ref=ref, **hooks)
    elif cfg.method == "adjoint_matching":
        diffusion.train_adjoint_matching(policy, reward_fn, method_cfg, ref=ref, logger=log, **hooks)
    elif cfg.method == "reward_weighted_fm":
        diffusion.train_reward_weighted(policy, reward_fn, method_cfg, logger=log, **hooks)
    elif cfg.method == "draft":
        diffusion.train_draft(policy, reward_fn, method_cfg, logger=log, **hooks)
    elif cfg.method in ("flow_grpo", "mix_grpo"):
        diffusion.train_flow_grpo(policy, reward_fn, method_cfg, ref=ref, logger=log, **hooks)
    else:  # offline: pairs sampled once from the base model, ordered by the reward
        pairs = diffusion.make_preference_pairs(ref, reward_fn, cfg.pairs_per_label,
                                                generator=torch.Generator().manual_seed(cfg.seed))
        diffusion.train_diffusion_dpo(policy, pairs, method_cfg, ref=ref, logger=log, **hooks)
    seconds = time.time() - t0
    after = evaluate(policy)
    summary = {"method": cfg.method, "model": model_name, "world": cfg.world, "iterations": cfg.iterations,
               "config": asdict(method_cfg), "reward_name": task, "reward_before": round(before[f"reward/{task}"], 4),
               "reward": round(after[f"reward/{task}"], 4), "kl": round(after["kl"], 4),
               "eval_before": before, "eval": after, "seconds": round(seconds, 1)}
    if cfg.world == "points" and cfg.method in EXACT_TARGET_METHODS:  # the exact optimum is known: how far?
        from .diffusion.adjoint import MEMORYLESS
        from .diffusion.target import distance_report
        beta = getattr(method_cfg, "beta", None) or method_cfg.kl_coef
        summary.update(distance_report(policy, reward_fn, beta, MEMORYLESS["flow"], seed=cfg.seed))
        summary["distance_to_target_before"] = distance_report(ref, reward_fn, beta, MEMORYLESS["flow"],
                                                               seed=cfg.seed)["distance_to_target"]
    out = _finish(args, "diffusion", log, summary, plot_keys=[f"reward/{task}", "kl", "loss"], x="iteration")
    save_net(policy, Path(out["run_dir"]) / "model", {k: v for k, v in summary.items() if k != "run_dir"})
    return out


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
    from .models import load_tokenizer
    from .reward_hacking.rm_bench import evaluate_rm_bench, format_table, load_reward_scorer, load_rm_bench

    model_name = args.model or "review-rm"
    tok = load_tokenizer(model_name, trust_remote_code=args.trust_remote_code)
    if args.dataset is None:
        rows = load_rm_bench(None)
    else:  # checked before the model is loaded
        rows = _load_dataset(args, load_rm_bench, tokenizer=tok, max_length=cfg.max_length)
    scorer = load_reward_scorer(model_name, tok, args.trust_remote_code, cfg.batch_size, _device(args))
    t0 = time.time()
    result = evaluate_rm_bench(scorer, rows)
    print(format_table(result))
    summary = {"method": "rm-bench", "model": model_name, "dataset": args.dataset or "data/reviews/rm_bench.jsonl",
               "pairs": len(rows), **_data_counts(args), "accuracy": round(result["overall"]["accuracy"], 4),
               "mean_over_subsets": round(result["mean_over_subsets"], 4),
               "subsets": {k: {m: round(v, 4) if isinstance(v, float) else v for m, v in s.items()}
                           for k, s in result["subsets"].items()},
               "seconds": round(time.time() - t0, 1)}
    return _finish(args, "rm-bench", MetricsLogger(), summary)
