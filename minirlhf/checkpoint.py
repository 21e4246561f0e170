"""Training state that survives a kill: atomic checkpoints and exact resume.

A checkpoint is a folder holding everything needed to continue as if nothing happened:

    model.safetensors    the weights (safetensors: no pickle, safe to load from anyone)
    trainer_state.pt     optimizer state, step, data-order state and every RNG state, loaded
                         with `torch.load(weights_only=True)` (tensors and plain Python only)

It is written to a temporary folder first and moved into place with `os.replace`, so a kill
during the write leaves the previous checkpoint intact: there is never a half-written one.
On CPU a resumed run reaches bit-identical weights and metrics (tests/test_checkpoint.py).

Every trainer that checkpoints (SFT, reward model, DPO, GRPO) has the same three config fields,
`checkpoint_dir`, `checkpoint_every` and `resume`, and the same two hooks in its loop:
`resume_from(cfg, model, opt)` once before the first step, `checkpoint_due(cfg, steps_done)`
after each update. What a trainer puts in `extra` is its data order: the permutation, the
cursor into it and its torch.Generator state (GRPO adds its lr scheduler).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model as load_safetensors_model
from safetensors.torch import save_model as save_safetensors_model


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and plain Python (weights_only-loadable)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {"python": [py_version, list(py_state), py_gauss],
             "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    v, s, gauss = state["python"]
    random.setstate((v, tuple(s), gauss))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    step: int, extra: dict[str, Any] | None = None) -> Path:
    """Atomically write the checkpoint folder `path` (replacing an older one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    save_safetensors_model(model, str(tmp / "model.safetensors"))  # handles tied embeddings
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "rng": rng_state(), "extra": extra or {}},
               tmp / "trainer_state.pt")
    if path.exists():  # swap: old -> .old, new -> path, then delete .old
        old = path.with_name(path.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> tuple[int, dict[str, Any]]:
    """Restore weights, optimizer and RNG states in place; returns (step, extra)."""
    path = Path(path)
    load_safetensors_model(model, str(path / "model.safetensors"))
    state = torch.load(path / "trainer_state.pt", weights_only=True)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return state["step"], state["extra"]


def resume_from(cfg: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, dict[str, Any]]:
    """(steps done, extra) restored from `cfg.checkpoint_dir` when `cfg.resume` is set and a
    checkpoint is there; (0, {}) otherwise (a fresh start).

    Call it after anything that copies the starting weights (a reference model), so the copy is
    of the start and not of the checkpoint.
    """
    if not (cfg.resume and cfg.checkpoint_dir and (Path(cfg.checkpoint_dir) / "trainer_state.pt").exists()):
        return 0, {}
    return load_checkpoint(cfg.checkpoint_dir, model, optimizer)


def checkpoint_due(cfg: Any, steps_done: int) -> bool:
    """True when `cfg` asks for a checkpoint after `steps_done` optimizer steps."""
    return bool(cfg.checkpoint_dir and cfg.checkpoint_every and steps_done % cfg.checkpoint_every == 0)
