"""`minirlhf eval`: any model on a dataset, with confidence intervals, as JSON and a table.

    minirlhf eval --model Qwen/Qwen2.5-0.5B-Instruct --dataset gsm8k_test.jsonl --chat-template \\
                  --n-samples 16 --k 1,4,16 --out runs/eval/qwen.json
    minirlhf eval --model runs/dpo/model --dataset prefs_test.jsonl --reward-model my-rm \\
                  --reference Qwen/Qwen2.5-0.5B-Instruct

Two kinds of data (`--task auto` tells them apart by the first row's fields):
* verifiable answers (a prompt or question, and an answer with a final "#### N", "\\boxed{N}" ...):
  greedy accuracy and, with `--n-samples n`, the unbiased pass@k for each k of `--k`
  (evaluate.eval_answers);
* preferences (prompt / chosen / rejected): the accuracy of `--reward-model` on the pairs, and with
  `--reference` the win rate of `--model` against it on the pairs' prompts, judged by that reward
  model (evaluate.reward_accuracy, evaluate.win_rate).

Every number comes with its standard error and 95% interval over prompts. Flags, paths and the
dataset's rows are checked before any model is loaded; mistakes are one-line errors.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, check_config
from .common import add_data_args, data_counts, load_lm, load_rows, run_device
from .options import add_chat_args, apply_chat

TASKS = ("auto", "answers", "preferences")


@dataclass
class EvalConfig:
    """What `minirlhf eval` measures, and with how many samples."""

    task: str = "auto"
    """answers (verifiable final answers), preferences (chosen/rejected pairs), or auto: from the first row."""
    greedy: bool = True
    """Answers: greedy (temperature 0) accuracy, one completion per prompt."""
    n_samples: int = 0
    """Answers: completions sampled per prompt for pass@k (0: none)."""
    k: str = "1"
    """Answers: comma-separated k of pass@k, each <= n_samples ("1,4,16")."""
    temperature: float = 1.0
    """Sampling temperature for pass@k and for the win rate's completions."""
    max_new_tokens: int = 512
    """Longest completion in tokens."""
    batch_size: int = 64
    """Sequences generated (or scored) at a time."""
    limit: int = 0
    """Evaluate the first this many rows only (0: all)."""
    seed: int = 0
    """Seed of the sampling generator."""

    def ks(self) -> tuple[int, ...]:
        try:
            ks = tuple(int(x) for x in self.k.split(",") if x.strip())
        except ValueError:
            raise ConfigError(f"--k must be comma-separated integers such as 1,4,16, got {self.k!r}") from None
        if not ks or min(ks) < 1:
            raise ConfigError(f"--k must be integers >= 1, got {self.k!r}")
        return ks

    def validate(self) -> None:
        """Raise ConfigError naming the flag of the first field out of range (before anything loads)."""
        check_config(self, at_least_1=("max_new_tokens", "batch_size"), positive=("temperature",),
                     non_negative=("n_samples", "limit"), choices={"task": TASKS})
        ks = self.ks()
        if self.n_samples and max(ks) > self.n_samples:
            raise ConfigError(f"--k {max(ks)} needs --n-samples >= {max(ks)}, got {self.n_samples}")


def eval_args(p: argparse.ArgumentParser) -> None:
    add_data_args(p, "none: required", "none: required")
    p.add_argument("--prompt-field", default=None, help="answers: the prompt field (default: prompt, else question)")
    p.add_argument("--answer-field", default="answer", help="answers: the field holding the gold answer")
    p.add_argument("--reward-model", default=None,
                   help="preferences: a scalar reward model (minirlhf folder, or a HF sequence classifier)")
    p.add_argument("--reference", default=None, help="preferences: the model --model's win rate is measured against")
    p.add_argument("--out", default=None, help="write the results as JSON to this file")
    add_chat_args(p)


def detect_task(path: str) -> str:
    """answers or preferences, from the first row's fields (a DataError for a file that is no dataset)."""
    from ..data_files import read_rows

    rows = read_rows(path)
    first = next((r for r in rows if isinstance(r, dict)), None)
    if first is None:
        raise ConfigError(f"cannot tell the task from {path}: no row is an object; pass --task")
    return "preferences" if {"chosen", "rejected"} <= set(first) else "answers"


def _check_paths(args, cfg: EvalConfig) -> str:
    """Every flag that names a file or a model, checked before anything loads; returns the task."""
    from ..models import check_model_folder, is_local_path

    if not args.model:
        raise ConfigError("--model is required (a hub name or a local folder)", "minirlhf eval")
    if not args.dataset:
        raise ConfigError("--dataset is required (a JSON/JSONL/Parquet file)", "minirlhf eval")
    for flag in ("model", "reference", "reward_model"):
        name = getattr(args, flag)
        if name and is_local_path(name) and Path(name).exists():
            check_model_folder(name)
        elif name and is_local_path(name):
            raise ConfigError(f"no such model folder: {name}", f"--{flag.replace('_', '-')}")
    if args.out and Path(args.out).is_dir():
        raise ConfigError(f"{args.out} is a directory; give a file name such as {args.out.rstrip('/')}/eval.json",
                          "--out")
    task = detect_task(args.dataset) if cfg.task == "auto" else cfg.task
    if task == "preferences" and not args.reward_model:
        raise ConfigError("preference data is judged by a reward model: pass --reward-model", "minirlhf eval")
    if args.reference and task != "preferences":
        raise ConfigError("--reference (a win rate) needs preference data and --reward-model", "minirlhf eval")
    return task


def format_table(result: dict) -> str:
    """The results as a Markdown table: metric, value, 95% interval, n."""
    lines = ["| metric | value | 95% CI | n |", "|---|---|---|---|"]
    for key, v in result.items():
        if isinstance(v, dict) and {"value", "lo", "hi", "n"} <= set(v):
            lines.append(f"| {key} | {v['value']:.4f} | {v['lo']:.4f}..{v['hi']:.4f} | {v['n']} |")
    return "\n".join(lines)


def run_eval(args: argparse.Namespace, cfg: EvalConfig) -> dict:
    from .. import data
    from ..evaluate import eval_answers, reward_accuracy, win_rate
    from ..models import load_tokenizer

    task = _check_paths(args, cfg)
    tok = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    if task == "answers":  # checked (rows named) before the model is loaded
        rows = load_rows(args, data.load_prompts_with_answers, tokenizer=tok, prompt_field=args.prompt_field,
                         answer_field=args.answer_field)
    else:
        rows = load_rows(args, data.load_preferences, tokenizer=tok)
    rows = rows[:cfg.limit] if cfg.limit else rows
    rows = apply_chat(args, tok, rows)
    t0 = time.time()
    result: dict = {"task": task, "model": args.model, "dataset": args.dataset, **data_counts(args)}
    if task == "answers":
        model = load_lm(args, args.model)
        result.update(eval_answers(model, tok, rows, n_samples=cfg.n_samples, ks=cfg.ks(),
                                   temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                   batch_size=cfg.batch_size, seed=cfg.seed, greedy=cfg.greedy))
    else:
        from ..reward_hacking.rm_bench import load_reward_scorer

        scorer = load_reward_scorer(args.reward_model, trust_remote_code=args.trust_remote_code,
                                    batch_size=cfg.batch_size, device=run_device(args))
        result["reward_model"] = args.reward_model
        result.update({f"rm_{k}": v for k, v in reward_accuracy(scorer, rows).items()})
        if args.reference:
            ref_tok = load_tokenizer(args.reference, trust_remote_code=args.trust_remote_code)
            prompts = list(dict.fromkeys(r["prompt"] for r in rows))  # each distinct prompt once
            result["reference"] = args.reference
            result.update(win_rate(load_lm(args, args.model), load_lm(args, args.reference), tok, scorer, prompts,
                                   cfg.max_new_tokens, cfg.temperature, cfg.batch_size, cfg.seed, ref_tok))
    result["seconds"] = round(time.time() - t0, 1)
    print(format_table(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
        result["out"] = args.out
    return result
