"""What a trainer shows while it runs: a one-line progress bar with the numbers that matter, and a
few samples at each evaluation (CleanRL and nanochat print both; STYLE.md item 11).

    bar = ProgressBar(range(start, cfg.steps), "ppo", POSTFIX, logger, enabled=progress)
    for step in bar:                           # a tqdm bar (tqdm.auto: a widget in a notebook)
        ...
        logger.log(row)                        # the bar's postfix shows row's POSTFIX keys
        if evaluating:
            bar.samples({"prompt": ..., "completion": ..., "reward": ..., "gold": ...})

The bar listens to the trainer's `MetricsLogger`: every logged row updates its postfix (the last
value of each key it was given), so a trainer logs once and the bar, metrics.jsonl and any
TensorBoard / W&B writer (tracking.py) all see the same row. Everything goes to stderr, so the
command line's JSON summary on stdout stays clean, and only rank 0 prints under torchrun. With
`enabled=False` (the library default; `--quiet` on the command line) nothing is printed at all.
"""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Iterable, Iterator, Mapping, Sequence

from .utils import MetricsLogger, dist_info

MAX_ROWS = 3
"""Sample rows printed at each evaluation: enough to read, short enough for a notebook."""
CELL_WIDTH = 36
"""Longest text cell of a sample table, in characters (longer ones end in '...')."""


def format_value(v) -> str:
    """A metric as the bar shows it: 3 significant digits, integers as they are."""
    if isinstance(v, bool) or isinstance(v, int):
        return str(int(v))
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3g}"
    return str(v)


def postfix_text(values: Mapping[str, object], keys: Mapping[str, str]) -> str:
    """The bar's postfix: `label=value` for each of `keys` (metric name -> short label) that has a
    value, in the order of `keys`. E.g. {"objective/kl": 0.512} with {"objective/kl": "kl"} -> "kl=0.512"."""
    return ", ".join(f"{label}={format_value(values[k])}" for k, label in keys.items()
                     if values.get(k) is not None)


def _cell(v, width: int = CELL_WIDTH) -> str:
    """One table cell on one line: text with its newlines shown as '\\n', numbers as the bar shows them."""
    if isinstance(v, str):
        s = v.replace("\n", "\\n")
        return s if len(s) <= width else s[:width - 3] + "..."
    if hasattr(v, "item"):  # a 0-d tensor or numpy scalar
        v = v.item()
    return format_value(v)


def sample_table(columns: Mapping[str, Sequence], max_rows: int = MAX_ROWS, title: str | None = None) -> str:
    """A small text table of the first `max_rows` samples: one column per key (all the same length).

    >>> print(sample_table({"prompt": ["2+3="], "completion": ["5"], "reward": [1.0]}))
    prompt | completion | reward
    2+3=   | 5          | 1
    """
    n = min([len(v) for v in columns.values()] + [max_rows])
    rows = [list(columns)] + [[_cell(columns[k][i]) for k in columns] for i in range(n)]
    widths = [max(len(r[j]) for r in rows) for j in range(len(columns))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(([title] if title else []) + lines)


class ProgressBar:
    """Iterate over a trainer's steps with a one-line tqdm bar whose postfix follows `logger`.

    steps: the steps to run (e.g. `range(start, cfg.steps)`); desc: the bar's label;
    keys: metric name -> short label for the postfix, e.g. {"objective/kl": "kl"};
    logger: the run's MetricsLogger (None: no postfix); enabled: False prints nothing.
    """

    def __init__(self, steps: Iterable[int], desc: str, keys: Mapping[str, str] | None = None,
                 logger: MetricsLogger | None = None, enabled: bool = True):
        self.steps, self.desc, self.keys, self.logger = steps, desc, dict(keys or {}), logger
        self.enabled = bool(enabled) and dist_info()[0] == 0  # under torchrun only rank 0 prints
        self.values: dict[str, object] = {}
        self._bar = None

    def __iter__(self) -> Iterator[int]:
        if not self.enabled:
            yield from self.steps
            return
        from tqdm.auto import tqdm

        tty = sys.stderr.isatty()
        # one line: redrawn in place on a terminal; in a log file (CI) a line every 30 s at most
        self._bar = tqdm(self.steps, desc=self.desc, file=sys.stderr, dynamic_ncols=tty,
                         mininterval=0.5 if tty else 30.0, leave=True)
        if self.logger is not None:
            self.logger.listeners.append(self.update)
        try:
            yield from self._bar
        finally:  # also on `break` (early stopping) and on an error
            if self.logger is not None and self.update in self.logger.listeners:
                self.logger.listeners.remove(self.update)
            self._bar.close()

    def update(self, row: Mapping[str, object]) -> None:
        """Take the postfix keys' values from a logged row (the MetricsLogger calls this)."""
        self.values.update({k: row[k] for k in self.keys if k in row})
        if self._bar is not None:
            self._bar.set_postfix_str(postfix_text(self.values, self.keys), refresh=False)

    def show(self, metrics: Mapping[str, object]) -> None:
        """Add an evaluation's numbers (whatever `eval_fn` returned) to the postfix."""
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.keys.update({k: k for k in numbers if k not in self.keys})
        self.update(numbers)

    def samples(self, columns: Mapping[str, Sequence], title: str | None = None) -> None:
        """Print a few samples (`sample_table`) above the bar, if enabled."""
        if not self.enabled:
            return
        text = sample_table(columns, title=title or f"{self.desc} samples")
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)


SAMPLE_TOKENS = 64
"""Longest completion sampled for a table (it is cut to CELL_WIDTH characters anyway)."""


def greedy_completions(model, tokenizer, prompts: list[str], max_new_tokens: int = SAMPLE_TOKENS) -> list[str]:
    """Greedy completions of a few prompts, for a sample table. Greedy decoding draws no random
    numbers, so showing samples never changes a run's results; the model's train/eval mode is kept."""
    import torch

    from .lm import generate

    was_training = model.training
    model.eval()
    with torch.no_grad():
        texts, _ = generate(model, tokenizer, prompts, max_new_tokens, temperature=0.0)
    model.train(was_training)
    return texts


DIFFUSION_POSTFIX = {"reward": "reward", "loss": "loss", "rewards/accuracies": "acc", "objective/kl": "kl",
                     "kl": "eval_kl"}
"""What the diffusion trainers' bars show: their rows' reward, loss, DPO accuracy, KL; `kl` is the
evaluation's path KL to the reference."""


@contextlib.contextmanager
def quiet_libraries(quiet: bool = True):
    """Inside: no progress bars from `datasets` (building a split) or `transformers` (writing weights)
    either, when `quiet` (the command line's --quiet); they are turned back on after."""
    if not quiet:
        yield
        return
    from datasets.utils import logging as ds_logging
    from transformers.utils import logging as tf_logging

    was = ds_logging.is_progress_bar_enabled(), tf_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            ds_logging.enable_progress_bar()
        if was[1]:
            tf_logging.enable_progress_bar()
