"""What a command-line run leaves on disk: `runs/<name>/` with metrics.jsonl, metrics.png,
summary.json and the trained model.

Used by the runners in `commands/` and by `baselines.py`; imports nothing from the command line
above it. The order of a run: `run_dir` -> `metrics_logger` (rows appended while training, and sent to
TensorBoard / W&B with `--report-to`) -> `finish` (plot, save the model, write the summary).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .utils import MetricsLogger


def run_dir(name: str) -> Path:
    """runs/<name>/, created if needed (relative to the working directory)."""
    out = Path("runs") / name
    out.mkdir(parents=True, exist_ok=True)
    return out


def plot_metrics(log: MetricsLogger, keys: list[str], path: Path, x: str = "step") -> None:
    """One small panel per metric, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if log.series(k)]
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, k in zip(axes[0], keys):
        rows = [r for r in log.rows if k in r and x in r]
        ax.plot([r[x] for r in rows], [r[k] for r in rows], marker=".")
        ax.set_title(k)
        ax.set_xlabel(x)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def metrics_logger(args, name: str, cfg=None) -> MetricsLogger:
    """The run's log, appended to runs/<name>/metrics.jsonl row by row as it trains, so a killed run
    keeps every row logged before the kill (rank 0 alone writes). A fresh run empties the file;
    `--resume` continues it, and the trainer's `resume_from` drops the rows of the steps done again,
    so the file holds the whole run once. Made right before training, after the models and data
    load, so a run stopped by bad input leaves the log of an earlier run of that name alone.
    With `--report-to tensorboard` (or wandb) each row also goes to runs/<name>/tensorboard/
    (tracking.py), written by rank 0 alone."""
    import dataclasses

    from .tracking import attach, parse_report_to
    from .utils import dist_info

    resume = bool(getattr(cfg, "resume", False))
    out = run_dir(args.name or name)
    log = MetricsLogger(out / "metrics.jsonl", resume=resume)
    if dist_info()[0] == 0:
        config = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None
        attach(log, parse_report_to(getattr(args, "report_to", None)), out, args.name or name, config, resume)
    return log


def show_progress(args) -> bool:
    """Whether the trainer shows its progress bar and samples: yes, unless `--quiet`."""
    return not getattr(args, "quiet", False)


def finish(args, name: str, log: MetricsLogger, summary: dict, model=None, tok=None, plot_keys=(),
           x: str = "step") -> dict:
    """Rank 0 plots the run's metrics.jsonl (already written row by row by `log`; a resumed run's
    file holds the rows from before the kill too), saves the model and tokenizer and summary.json."""
    from .utils import dist_info  # looked up at call time (tests fake a rank by patching utils)

    log.close()  # flush TensorBoard / W&B (--report-to)
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
