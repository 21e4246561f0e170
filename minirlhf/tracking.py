"""Metrics where users already look: TensorBoard and Weights & Biases (offline), beside
metrics.jsonl and metrics.png.

    minirlhf ppo --report-to tensorboard          # then: tensorboard --logdir runs/ppo/tensorboard
    minirlhf dpo --report-to tensorboard,wandb    # W&B offline (wandb sync runs/dpo/wandb/offline-run-*)

Each writer is a listener of the run's MetricsLogger (utils.py): every row the trainer logs is
written as it comes. Tags follow what TRL users see (the Hugging Face Trainer's `rewrite_logs`):
a training metric `objective/kl` becomes `train/objective/kl`, an evaluation metric keeps its
`eval/` prefix (`eval_x` becomes `eval/x`, `test_x` becomes `test/x`), and the x axis is the row's
`step` (or `iteration` for the diffusion trainers). Timing and counters are not plotted.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

REPORT_TO = ("none", "tensorboard", "wandb")
"""What `--report-to` accepts (comma-separated, like TRL's `report_to` list)."""
STEP_KEYS = ("step", "iteration", "iter")
"""Row keys that hold the x axis (the first one present), not a metric."""
NOT_PLOTTED = STEP_KEYS + ("time", "epoch")


def parse_report_to(value: str | None) -> list[str]:
    """'tensorboard,wandb' -> ["tensorboard", "wandb"]; None, '' or 'none' -> []. A name not in
    REPORT_TO, or a package that is not installed, is a ConfigError saying how to install it."""
    names = [v.strip().lower() for v in (value or "").split(",") if v.strip()]
    for name in names:
        if name not in REPORT_TO:
            raise ConfigError(f"unknown {name!r}: expected {', '.join(REPORT_TO)} (comma-separated)", "--report-to")
    names = [n for n in names if n != "none"]
    if "tensorboard" in names:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (needs the tensorboard package)
        except ImportError:
            raise ConfigError("the tensorboard package is not installed: pip install tensorboard "
                              "(or pip install -e '.[tracking]')", "--report-to tensorboard") from None
    if "wandb" in names:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("the wandb package is not installed: pip install wandb", "--report-to wandb") from None
    return list(dict.fromkeys(names))


def tag(key: str) -> str:
    """A metric's TensorBoard / W&B name, as the Hugging Face Trainer (and so TRL) writes it:
    'loss' -> 'train/loss', 'objective/kl' -> 'train/objective/kl', 'eval/gold' -> 'eval/gold',
    'eval_loss' -> 'eval/loss', 'test_accuracy' -> 'test/accuracy'."""
    if key.startswith(("train/", "eval/", "test/")):
        return key
    for prefix in ("eval_", "test_"):
        if key.startswith(prefix):
            return f"{prefix[:-1]}/{key[len(prefix):]}"
    return f"train/{key}"


def scalars(row: Mapping[str, Any]) -> tuple[int | None, dict[str, float]]:
    """(the row's step or None, {tag: value} of its finite numbers, counters and time left out)."""
    step = next((row[k] for k in STEP_KEYS if isinstance(row.get(k), (int, float))), None)
    out = {tag(k): float(v) for k, v in row.items()
           if k not in NOT_PLOTTED and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    return (int(step) if step is not None else None), out


class TensorBoardWriter:
    """Writes each logged row to `log_dir` with torch.utils.tensorboard.SummaryWriter. A fresh run
    empties the folder's old event files (as metrics.jsonl is emptied); a resumed run adds to them."""

    def __init__(self, log_dir: str | Path, resume: bool = False):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        if not resume and self.log_dir.exists():
            shutil.rmtree(self.log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.n_rows = 0

    def __call__(self, row: Mapping[str, Any]) -> None:
        step, values = scalars(row)
        step = self.n_rows if step is None else step
        for name, v in values.items():
            self.writer.add_scalar(name, v, global_step=step)
        self.n_rows += 1

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class WandbWriter:
    """Logs each row to a Weights & Biases run in offline mode (nothing leaves the machine; upload
    later with `wandb sync`). The run lives under `run_dir/wandb/`."""

    def __init__(self, run_dir: str | Path, name: str, config: dict | None = None):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project="minirlhf", name=name, dir=str(run_dir), mode="offline",
                              config=config or {})
        # as the Hugging Face Trainer does: every metric is plotted against train/global_step
        self.run.define_metric("train/global_step")
        self.run.define_metric("*", step_metric="train/global_step", step_sync=True)
        self.n_rows = 0

    def __call__(self, row: Mapping[str, Any]) -> None:
        step, values = scalars(row)
        if values:
            self.run.log({**values, "train/global_step": self.n_rows if step is None else step})
        self.n_rows += 1

    def close(self) -> None:
        self.run.finish()


def attach(logger, report_to: list[str], run_dir: str | Path, name: str, config: dict | None = None,
           resume: bool = False) -> None:
    """Add a writer to `logger` for each of `report_to` (parsed by `parse_report_to`)."""
    for target in report_to:
        if target == "tensorboard":
            logger.listeners.append(TensorBoardWriter(Path(run_dir) / "tensorboard", resume=resume))
        elif target == "wandb":
            logger.listeners.append(WandbWriter(run_dir, name, config))
