"""Small helpers with no method in them: seeding, devices, metric logging, config printing."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch


def set_seed(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch.Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def get_device(device: str | None = None) -> torch.device:
    """'cuda' if available, else 'cpu', unless a device is named."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def dist_info() -> tuple[int, int]:
    """(rank, world size) under torchrun, (0, 1) otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def wrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """`model` inside DistributedDataParallel under torchrun (it averages gradients over the ranks),
    `model` itself on one process."""
    if dist_info()[1] == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def check_finite(name: str, value: torch.Tensor | float) -> None:
    """Raise a clear error if a loss or reward is NaN or infinite, before it reaches the weights."""
    t = torch.as_tensor(value)
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).sum().item()
        from .errors import NonFiniteError

        raise NonFiniteError(f"{name} is not finite ({bad} of {t.numel()} values are NaN/inf); "
                             "the step was stopped before updating the weights")


class MetricsLogger:
    """Keeps every logged row in memory (`.rows`) and, given a path, appends it to that JSONL file
    as it is logged (open, append, close: a killed run keeps every row logged before the kill).

    A new logger empties its file (a fresh run) unless `resume=True` (a resumed run continues the
    file; `checkpoint.resume_from` then drops the rows of the steps that are done again, so the file
    holds the whole run once). Under torchrun only rank 0 touches the file. Non-finite floats are
    written as null (JSON has no NaN).
    """

    def __init__(self, path: str | os.PathLike | None = None, resume: bool = False):
        self.rows: list[dict[str, Any]] = []
        self.path = Path(path) if path else None
        self.listeners: list[Any] = []
        """Called with every logged row: a progress bar (progress.py), TensorBoard / W&B (tracking.py)."""
        if self._writes():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not resume:
                self.path.write_text("")

    def _writes(self) -> bool:
        """True when this process writes the file: a path was given and this is rank 0."""
        return self.path is not None and dist_info()[0] == 0

    def log(self, row: dict[str, Any]) -> dict[str, Any]:
        row = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in row.items()}
        self.rows.append(row)
        if self._writes():
            with open(self.path, "a") as f:
                f.write(_json_line(row))
        for listener in list(self.listeners):
            listener(row)
        return row

    def close(self) -> None:
        """Flush and close the listeners that write somewhere (TensorBoard, W&B); they are dropped."""
        for listener in self.listeners:
            if hasattr(listener, "close"):
                listener.close()
        self.listeners.clear()

    def series(self, key: str) -> list[Any]:
        return [r[key] for r in self.rows if key in r]

    def drop_from_step(self, step: int) -> None:
        """Forget the rows with a "step" >= `step`, in memory and in the file: on resume, the
        steps after the checkpoint were lost and are logged again. A row cut short by a kill (the
        file's last line, not valid JSON) goes too; the file is rewritten atomically."""
        keep = lambda r: not isinstance(r.get("step"), (int, float)) or r["step"] < step  # noqa: E731
        self.rows[:] = [r for r in self.rows if keep(r)]
        if self._writes() and self.path.exists():
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(_json_line(r) for r in _read_metrics(self.path) if keep(r)))
            os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MetricsLogger":
        """The rows of a metrics file, in a logger that writes nowhere (to plot or summarise a run)."""
        log = cls()
        log.rows = _read_metrics(Path(path)) if Path(path).exists() else []
        return log


def _json_line(row: dict[str, Any]) -> str:
    """One JSONL line; NaN and infinities become null."""
    return json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                       for k, v in row.items()}) + "\n"


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics file, skipping any line that is not valid JSON (cut short by a kill)."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def exception_line(e: BaseException, limit: int = 200) -> str:
    """The informative part of an exception, for a one-line error: the first sentence of its first
    line (or of the first detail under torch's "Error(s) in loading state_dict for X:"), without its
    full stop, cut at `limit` characters."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
    line = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
    line = re.split(r"(?<=\.)\s+(?=[A-Z])", line)[0].rstrip(".")
    return line if len(line) <= limit else line[:limit] + "..."


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
