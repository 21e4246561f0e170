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

import torch

from .utils import MetricsLogger

REVIEW_EVAL_PROMPTS = 128   # held-out review prompts for gold reward and KL
ARITH_EVAL_ROWS = 200       # held-out chains for accuracy


def _common(p: argparse.ArgumentParser, model: str, dataset: str) -> None:
    p.add_argument("--model", default=None, help=f"hub name or local path of a causal LM (default: {model})")
    p.add_argument("--dataset", default=None, help=f"a JSON/JSONL/Parquet file (default: built-in {dataset})")
    p.add_argument("--drop-invalid", action="store_true",
                   help="drop malformed dataset rows (their count is reported) instead of stopping")


def _device(args) -> torch.device:
    from .utils import get_device

    return get_device(getattr(args, "device", None))


def _load(args, name: str):
    """A causal LM on the run's device (trust_remote_code only when the user passed it)."""
    from .models import load_model

    return load_model(name, device=_device(args), trust_remote_code=getattr(args, "trust_remote_code", False))


def _finish(args, name: str, log: MetricsLogger, summary: dict, model=None, tok=None, plot_keys=()) -> dict:
    from .cli import plot_metrics, run_dir

    out = run_dir(args.name or name)
    with open(out / "metrics.jsonl", "w") as f:
        for row in log.rows:
            f.write(json.dumps(row) + "\n")
    plot_metrics(log, list(plot_keys), out / "metrics.png")
    if model is not None:
        model.save_pretrained(out / "model")
        if tok is not None:
            tok.save_pretrained(out / "model")
    summary["run_dir"] = str(out)
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


def _preference_rows(args, tok, split: str = "prefs_train") -> list[dict]:
    from . import data
    from .zoo import load_split

    if args.dataset is None:
        return load_split("reviews", split)
    report: dict = {}
    rows = data.load_preferences(args.dataset, tokenizer=tok, drop_invalid=args.drop_invalid, report=report)
    _report_dropped(report)
    return rows


def _report_dropped(report: dict) -> None:
    if report.get("n_dropped"):
        print(f"[data] {report['source']}: dropped {report['n_dropped']} of {report['n_rows']} invalid rows; "
              f"first: {report['errors'][0]}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# sft
# ---------------------------------------------------------------------------------------------


def sft_args(p: argparse.ArgumentParser) -> None:
    _common(p, "a new tiny Llama from scratch", "arithmetic; 'reviews' for the other world; a file holds "
            "prompt/completion or messages rows")
    p.add_argument("--eval-every", type=int, default=100, help="evaluate every this many steps (built-in worlds)")


def run_sft(args: argparse.Namespace, cfg) -> dict:
    from .cli import plot_metrics, run_dir
    from .evaluate import eval_arithmetic
    from .models import count_parameters, load_tokenizer
    from .sft import train_sft
    from .zoo import load_split, new_tiny_model

    dataset = args.dataset or "arithmetic"
    tok = load_tokenizer(args.model or "tokenizer", trust_remote_code=args.trust_remote_code)
    model = _load(args, args.model) if args.model else new_tiny_model(tok).to(_device(args))
    if dataset in ("arithmetic", "reviews"):
        rows = load_split(dataset, "train" if dataset == "arithmetic" else "sft")
    else:
        from . import data

        report: dict = {}
        rows = data.load_completions(dataset, tokenizer=tok, max_length=cfg.max_length,
                                     drop_invalid=args.drop_invalid, report=report)
        _report_dropped(report)
    eval_fn = None
    if dataset == "arithmetic":
        test = load_split("arithmetic", "test")[:200]
        eval_fn = lambda m: {"test_accuracy": eval_arithmetic(m, tok, test)["accuracy"]}  # noqa: E731
    out = run_dir(args.name or "sft")
    log = MetricsLogger(out / "metrics.jsonl")
    t0 = time.time()
    train_sft(model, tok, rows, cfg, eval_fn=eval_fn, eval_every=args.eval_every if eval_fn else 0,
              logger=log, progress=True)
    seconds = time.time() - t0
    model.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    plot_metrics(log, ["loss", "test_accuracy"], out / "metrics.png")
    summary = {"method": "sft", "model": args.model or "tiny Llama from scratch",
               "parameters": count_parameters(model), "dataset": dataset, "examples": len(rows),
               "steps": cfg.steps, "seconds": round(seconds, 1), "final_loss": round(log.series("loss")[-1], 4)}
    if dataset == "arithmetic":
        for split in ("test", "test_ood"):
            m = eval_arithmetic(model, tok, load_split("arithmetic", split))
            summary[f"{split}/accuracy"] = m["accuracy"]
            summary[f"{split}/trace_accuracy"] = m["trace_accuracy"]
    summary["run_dir"] = str(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


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
    rm = ScalarHeadModel.from_causal_lm(model_name, trust_remote_code=args.trust_remote_code).to(_device(args))
    rows = _preference_rows(args, tok)
    t0 = time.time()
    log = train_reward_model(rm, tok, rows, cfg, progress=True)
    summary = {"method": "rm", "model": model_name, "pairs": len(rows), "steps": cfg.steps,
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
    from .models import ScalarHeadModel, load_tokenizer
    from .ppo import train_ppo
    from .worlds import reviews

    model_name = args.model or "review-sft"
    tok = load_tokenizer(model_name if args.model else "tokenizer")
    policy, ref = _load(args, model_name), _load(args, model_name).eval()
    rm = ScalarHeadModel.from_pretrained(args.reward_model, trust_remote_code=args.trust_remote_code)
    rm = rm.to(_device(args)).eval()
    rows = _preference_rows(args, tok)
    prompts = [r["prompt"] for r in rows]  # repeats kept: they weight prompts as the data does
    builtin = args.dataset is None
    t0 = time.time()
    log, policy = train_ppo(policy, tok, prompts, rm, cfg, ref_model=ref,
                            gold_fn=reviews.gold_rewards if builtin else None)
    summary = {"method": f"ppo (beta={cfg.beta})", "model": model_name, "steps": cfg.steps,
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
    policy, ref = _load(args, model_name), _load(args, model_name).eval()
    rows = _preference_rows(args, tok)
    t0 = time.time()
    log = train_dpo(policy, tok, rows, cfg, ref_model=ref)
    summary = {"method": f"{cfg.loss_type} (beta={cfg.beta})", "model": model_name, "steps": cfg.steps,
               "seconds": round(time.time() - t0, 1)}
    if args.dataset is None:
        summary.update(_review_eval(policy.eval(), ref, tok))
    return _finish(args, "dpo", log, summary, policy, tok, ["loss", "rewards/margins", "logps/chosen"])


# ---------------------------------------------------------------------------------------------
# grpo
# ---------------------------------------------------------------------------------------------


def grpo_args(p):
    p.add_argument("--model", default=None, help="hub name or local path of a causal LM (default: arith-sft)")
    p.add_argument("--dataset", default=None,
                   help="JSON/JSONL/Parquet with a prompt (or question) field and an answer graded by '#### N' "
                        "(default: built-in arithmetic train)")


def run_grpo(args, cfg) -> dict:
    from . import grpo
    from .evaluate import eval_arithmetic
    from .models import load_tokenizer
    from .worlds import arithmetic
    from .zoo import load_split

    model_name = args.model or "arith-sft"
    tok = load_tokenizer(model_name if args.model else "tokenizer")
    policy = _load(args, model_name)
    cfg = grpo.preset(cfg.variant, **{k: v for k, v in vars(cfg).items() if k != "variant"
                                      and getattr(args, k, None) is not None})
    if args.dataset is None:
        prompts = [r["prompt"] for r in load_split("arithmetic", "train")]
        reward_fns = [arithmetic.arithmetic_reward]
    else:
        from datasets import load_dataset

        ds = load_dataset("json" if str(args.dataset).endswith(("json", "jsonl")) else "parquet",
                          data_files=str(args.dataset), split="train").to_list()
        field = "prompt" if "prompt" in ds[0] else "question"
        answers = {r[field]: arithmetic.extract_answer(r["answer"]) for r in ds}
        prompts = list(answers)

        def reward_fns(ps, cs):  # noqa: E306 - the real-data verifiable reward: exact final answer
            return [float(arithmetic.extract_answer(c) == answers[p]) for p, c in zip(ps, cs)]
    test = load_split("arithmetic", "test")[:ARITH_EVAL_ROWS]
    before = eval_arithmetic(policy, tok, test)["accuracy"] if args.dataset is None else None
    t0 = time.time()
    log = grpo.train_grpo(policy, tok, prompts, reward_fns, cfg)
    summary = {"method": cfg.variant, "model": model_name, "steps": cfg.steps, "seconds": round(time.time() - t0, 1)}
    if args.dataset is None:
        ood = load_split("arithmetic", "test_ood")[:ARITH_EVAL_ROWS]
        summary.update({"accuracy_before": before, "accuracy": eval_arithmetic(policy, tok, test)["accuracy"],
                        "accuracy_ood": eval_arithmetic(policy, tok, ood)["accuracy"],
                        **sequence_kl(policy, _load(args, model_name).eval(), tok, [r["prompt"] for r in test])})
    return _finish(args, "grpo", log, summary, policy, tok, ["reward/mean", "entropy", "completion_length/mean"])

