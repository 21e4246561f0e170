"""The mistakes a user can make, as exceptions the command line turns into one line.

    error: --batch-size must be >= 1, got -4 (minirlhf dpo)
    error: row 926, field 'chosen': prompt + chosen + EOS is 301 tokens, over --max-length 256 (hh.jsonl)

Every error a user can cause and fix (a bad flag, a bad file, a bad row, a model folder that is not
one, a checkpoint that is not complete, a reward that is NaN) is a `UserError`: `minirlhf ...` prints
`error: <what> (<where>)` and exits 1; `--debug` or `MINIRLHF_DEBUG=1` shows the traceback as well.
Anything else is a bug in minirlhf and keeps its traceback.

Each class also derives from the built-in exception a Python caller would expect (`ValueError` for
bad values, `FileNotFoundError` for missing paths ...), so library code can `except ValueError`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable


class UserError(Exception):
    """A mistake the user can fix. `what` says what is wrong, `where` where (file, row, field, flag)."""

    def __init__(self, what: str, where: str | None = None):
        self.what, self.where = what, where
        super().__init__(f"{what} ({where})" if where else what)


class ConfigError(UserError, ValueError):
    """A flag or config field out of its range, or flags that contradict each other."""


class DataError(UserError, ValueError):
    """A dataset file or row that cannot be used (malformed, empty, too long, wrong format)."""


class DataFileNotFound(UserError, FileNotFoundError):
    """A dataset (or preset) path that does not exist."""


class ModelLoadError(UserError, OSError):
    """A model or tokenizer that cannot be loaded from what was named (missing, incomplete, unsafe)."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, partial or does not match the run."""


class NonFiniteError(UserError, FloatingPointError):
    """A loss, reward or advantage that is NaN or infinite: the step is stopped before the update."""


def debug_enabled() -> bool:
    """True when tracebacks should be shown (`--debug` sets MINIRLHF_DEBUG=1)."""
    return os.environ.get("MINIRLHF_DEBUG", "").lower() not in ("", "0", "false", "no")


# ---------------------------------------------------------------------------------------------
# Config checks: run before anything is loaded, named by the flag the user typed
# ---------------------------------------------------------------------------------------------


def flag(field: str) -> str:
    """The command-line flag of a config field: batch_size -> --batch-size."""
    return "--" + field.replace("_", "-")


def check_config(cfg: Any, *, at_least_1: Iterable[str] = (), positive: Iterable[str] = (),
                 non_negative: Iterable[str] = (), fractions: Iterable[str] = (),
                 choices: dict[str, Iterable[Any]] | None = None,
                 at_least: dict[str, float] | None = None) -> None:
    """Raise ConfigError naming the flag for the first field out of range.

    at_least_1: counts (steps, batch sizes) that must be >= 1; positive: > 0 (learning rates);
    non_negative: >= 0 (beta, weight decay); fractions: in [0, 1]; choices: one of a set;
    at_least: field -> minimum (e.g. group_size -> 2). `None` values are skipped (unset options).
    Also refuses NaN and infinite floats.
    """
    names = {f.name for f in dataclasses.fields(cfg)}

    def get(name):
        if name not in names:
            raise KeyError(f"{type(cfg).__name__} has no field {name!r}")  # a bug in the caller
        return getattr(cfg, name)

    def fail(name, rule, v):
        raise ConfigError(f"{flag(name)} must be {rule}, got {v!r}")

    for name in names:
        v = getattr(cfg, name)
        if isinstance(v, float) and v != v:
            fail(name, "a number", v)
    for name in at_least_1:
        if (v := get(name)) is not None and v < 1:
            fail(name, ">= 1", v)
    for name, low in (at_least or {}).items():
        if (v := get(name)) is not None and v < low:
            fail(name, f">= {low}", v)
    for name in positive:
        if (v := get(name)) is not None and not (0 < v < float("inf")):
            fail(name, "> 0 and finite", v)
    for name in non_negative:
        if (v := get(name)) is not None and not (0 <= v < float("inf")):
            fail(name, ">= 0 and finite", v)
    for name in fractions:
        if (v := get(name)) is not None and not (0 <= v <= 1):
            fail(name, "in [0, 1]", v)
    for name, allowed in (choices or {}).items():
        allowed = list(allowed)
        if (v := get(name)) not in allowed:
            fail(name, "one of " + ", ".join(map(str, allowed)), v)


def check_checkpointing(cfg: Any) -> None:
    """The three checkpoint fields agree: --resume and --checkpoint-every need --checkpoint-dir."""
    if getattr(cfg, "checkpoint_every", 0) and getattr(cfg, "checkpoint_every") < 0:
        raise ConfigError(f"--checkpoint-every must be >= 0, got {cfg.checkpoint_every}")
    if getattr(cfg, "resume", False) and not getattr(cfg, "checkpoint_dir", None):
        raise ConfigError("--resume needs --checkpoint-dir (the folder to resume from)")
    if getattr(cfg, "checkpoint_every", 0) and not getattr(cfg, "checkpoint_dir", None):
        raise ConfigError("--checkpoint-every needs --checkpoint-dir (where to write checkpoints)")
