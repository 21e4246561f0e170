"""What the method runners share: the data flags, the device, loading a model, reading a user's
dataset file with its rows checked before any model loads, and the reviews-world evaluation.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ..evaluate import REVIEW_EVAL_PROMPTS, sequence_kl


def add_data_args(p: argparse.ArgumentParser, model: str, dataset: str) -> None:
    """--model, --dataset (their defaults named in the help), --drop-invalid, --strict-vocab."""
    p.add_argument("--model", default=None, help=f"hub name or local path of a causal LM (default: {model})")
    p.add_argument("--dataset", default=None, help=f"a JSON/JSONL/Parquet file (default: built-in {dataset})")
    p.add_argument("--drop-invalid", action="store_true",
                   help="drop invalid dataset rows (malformed, over --max-length ...; their count is reported "
                        "and goes into summary.json) instead of stopping at the first")
    p.add_argument("--strict-vocab", action="store_true",
                   help="a dataset character the tokenizer does not know (it would become <unk>) is an invalid "
                        "row, not a warning")


def run_device(args) -> torch.device:
    """--device, or cuda when there is one."""
    from ..utils import get_device

    return get_device(getattr(args, "device", None))


def load_lm(args, name: str):
    """A causal LM on the run's device (trust_remote_code only when the user passed it)."""
    from ..models import load_model

    return load_model(name, device=run_device(args), trust_remote_code=getattr(args, "trust_remote_code", False))


def preference_rows(args, tok, split: str = "prefs_train", max_length: int | None = None) -> list[dict]:
    """--dataset's preference rows, checked (rows over `max_length` tokens included), or the built-in split."""
    from .. import data
    from ..zoo import load_split

    if args.dataset is None:
        return load_split("reviews", split)
    return load_rows(args, data.load_preferences, tokenizer=tok, max_length=max_length)


def load_rows(args, loader, **kwargs) -> list[dict]:
    """`loader(args.dataset, ...)` (a data.py loader) with --drop-invalid and --strict-vocab: every row
    is checked when the file is read, before any model is loaded. Its notes are printed once on
    stderr and its counts kept for summary.json (`data_counts`)."""
    import warnings

    from .. import data

    report: dict = {}
    with warnings.catch_warnings():  # printed once below, as "[data] ..." lines
        warnings.simplefilter("ignore", data.DataWarning)
        rows = loader(args.dataset, drop_invalid=args.drop_invalid, strict_vocab=args.strict_vocab,
                      report=report, **kwargs)
    report_dropped(args, report)
    return rows


def report_dropped(args, report: dict) -> None:
    """Print a load's notes (rows dropped, characters the tokenizer does not know) and keep its counts."""
    from ..data import report_lines

    for line in report_lines(report):
        print(f"[data] {line}", file=sys.stderr)
    args.data_counts = {"dataset_rows": report["n_rows"], "dropped_rows": report["n_dropped"],
                        "rows_with_unknown_chars": report["n_unknown"]}


def data_counts(args) -> dict:
    """{"dataset_rows", "dropped_rows", "rows_with_unknown_chars"} of --dataset for the summary ({} without one)."""
    return getattr(args, "data_counts", {})



def review_eval(policy, ref, tok, max_new_tokens: int = 64) -> dict:
    """Gold reward and sequence KL(pi || ref) of one sample per held-out review prompt."""
    from ..worlds import reviews
    from ..zoo import load_split

    prompts = [r["prompt"] for r in load_split("reviews", "prompts_test")][:REVIEW_EVAL_PROMPTS]
    return sequence_kl(policy, ref, tok, prompts, max_new_tokens, gold_fn=reviews.gold_rewards)
