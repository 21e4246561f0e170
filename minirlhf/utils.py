"""Small helpers with no method in them: seeding, devices, metric logging, config printing."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
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
    """Keeps every logged row in memory (`.rows`) and optionally appends it to a JSONL file."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.rows: list[dict[str, Any]] = []
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, row: dict[str, Any]) -> dict[str, Any]:
        row = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in row.items()}
        self.rows.append(row)
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                    for k, v in row.items()}) + "\n")
        return row

    def series(self, key: str) -> list[Any]:
        return [r[key] for r in self.rows if key in r]


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
