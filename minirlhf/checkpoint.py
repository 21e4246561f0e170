"""Training state that survives a kill: atomic checkpoints and exact resume.

A checkpoint is a folder holding everything needed to continue as if nothing happened:

    model.safetensors    the weights (safetensors: no pickle, safe to load from anyone)
    trainer_state.pt     optimizer state, step, data-order state and every RNG state, loaded
                         with `torch.load(weights_only=True)` (tensors and plain Python only)

It is written to a temporary folder `.<name>-XXXXXXXX` first and moved into place with
`os.replace`, so a kill during the write leaves the previous checkpoint intact: there is never a
half-written one. A folder cannot replace another in one call, so the swap takes two: the previous
checkpoint moves to `<name>.old`, then the new one to `<name>`; a kill between the two leaves
`<name>.old` only, and `resume_from` resumes from it. Temporary folders left by a kill are removed
at the next save or resume. On CPU a resumed run reaches bit-identical weights and metrics
(tests/test_checkpoint.py; every crash point: tests/test_errors_io.py).

Resuming never starts fresh in silence: `--resume` with no checkpoint, or with one that is missing
a file or holds a truncated one, is a `CheckpointError` naming the folder or file, and the
checkpoint is left as it is.

Every trainer that checkpoints (SFT, reward model, DPO, GRPO) has the same three config fields,
`checkpoint_dir`, `checkpoint_every` and `resume`, and the same two hooks in its loop:
`resume_from(cfg, model, opt)` once before the first step, `checkpoint_due(cfg, steps_done)`
after each update. What a trainer puts in `extra` is its data order: the permutation, the
cursor into it and its torch.Generator state (GRPO adds its lr scheduler).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model as load_safetensors_model
from safetensors.torch import save_model as save_safetensors_model

from .errors import CheckpointError
from .utils import dist_info, exception_line

FILES = ("model.safetensors", "trainer_state.pt")


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


def _old(path: Path) -> Path:
    """Where save_checkpoint keeps the previous checkpoint while it moves the new one in."""
    return path.with_name(path.name + ".old")


def remove_stale_temps(path: str | os.PathLike) -> None:
    """Remove the temporary folders a killed save of checkpoint `path` left beside it
    (`.<name>-` and mkdtemp's 8 characters: not another checkpoint's, such as `.<name>-2-...`)."""
    path = Path(path)
    stale = re.compile(rf"\.{re.escape(path.name)}-[a-z0-9_]{{8}}")
    if path.parent.is_dir():
        for tmp in path.parent.iterdir():
            if tmp.is_dir() and stale.fullmatch(tmp.name):
                shutil.rmtree(tmp, ignore_errors=True)


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    step: int, extra: dict[str, Any] | None = None) -> Path:
    """Atomically write the checkpoint folder `path` (replacing an older one).

    At every instant a complete checkpoint is on disk: `path`, or `path.old` for the moment
    between the two renames of the swap (`find_checkpoint` looks there).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        save_safetensors_model(model, str(tmp / "model.safetensors"))  # handles tied embeddings
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "rng": rng_state(), "extra": extra or {}},
                   tmp / "trainer_state.pt")
    except BaseException:  # disk full, Ctrl-C: no temporary folder left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = _old(path)
    if path.exists():  # swap: path -> path.old, new -> path, then delete path.old
        if old.exists():  # a leftover of an earlier swap: `path` is complete, so it is not needed
            shutil.rmtree(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)
    return path


def find_checkpoint(path: str | os.PathLike) -> Path | None:
    """The checkpoint folder to resume from: `path`, or `path.old` when a kill came between the
    two renames of a save (so `path` is absent); None when there is neither (or only empty folders)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path} is a file, not a checkpoint folder")
    for candidate in (path, _old(path)):
        if candidate.is_dir() and any(candidate.iterdir()):
            return candidate
    return None


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> tuple[int, dict[str, Any]]:
    """Restore weights, optimizer and RNG states in place; returns (step, extra).

    A missing, truncated or unreadable file, or weights or optimizer state of another model, is a
    CheckpointError naming the file; nothing on disk is changed.
    """
    path = Path(path)
    keep = f"it was left as it is: restore it, or move {path} away and start without --resume"
    for name in FILES:
        if not (path / name).is_file():
            raise CheckpointError(f"incomplete checkpoint: {path / name} is missing; {keep}")

    def unreadable(name: str, e: BaseException) -> CheckpointError:
        return CheckpointError(f"corrupt checkpoint: {path / name} cannot be read ({exception_line(e)}); {keep}")

    try:  # read before anything is changed
        state = torch.load(path / "trainer_state.pt", weights_only=True)
        step, rng, extra = state["step"], state["rng"], state["extra"]
    except Exception as e:  # truncated zip, EOF, unpickling refused, a key missing
        raise unreadable("trainer_state.pt", e) from e
    try:
        load_safetensors_model(model, str(path / "model.safetensors"))
    except RuntimeError as e:  # missing/unexpected keys or shapes: another model's weights
        raise CheckpointError(f"checkpoint {path} does not match this run's model ({exception_line(e)}): "
                              "was it saved with another --model or method?") from e
    except Exception as e:  # SafetensorError: a truncated or corrupt file
        raise unreadable("model.safetensors", e) from e
    if optimizer is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {path} does not match this run's optimizer ({exception_line(e)})") from e
    set_rng_state(rng)
    return step, extra


def resume_from(cfg: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                logger: Any = None, step_offset: int = 0) -> tuple[int, dict[str, Any]]:
    """(steps done, extra) restored from `cfg.checkpoint_dir` when `cfg.resume` is set;
    (0, {}) when it is not (a fresh start).

    With `cfg.resume`, no checkpoint there (nor its `.old`) is a CheckpointError, never a silent
    fresh start; an incomplete or corrupt one too (`load_checkpoint`). `logger` (a MetricsLogger)
    then forgets the rows of the steps that are done again: rows with step >= steps done +
    `step_offset` (0 when rows are numbered by the update's index, as in SFT, the reward model, DPO
    and PPO; 1 when by steps done, as in GRPO).

    Call it after anything that copies the starting weights (a reference model), so the copy is
    of the start and not of the checkpoint.
    """
    if not cfg.checkpoint_dir:  # (--resume without it is refused by the config's validate)
        return 0, {}
    path, rank0 = Path(cfg.checkpoint_dir), dist_info()[0] == 0
    if rank0:
        remove_stale_temps(path)
    found = find_checkpoint(path)
    if not cfg.resume:
        if found is not None and rank0:
            print(f"[checkpoint] {found} holds a checkpoint; starting fresh, so the first save replaces it "
                  "(add --resume to continue it)", file=sys.stderr)
        return 0, {}
    if found is None:
        raise CheckpointError(f"--resume: no checkpoint in {path} (nothing to resume); drop --resume to start fresh")
    if found != path and rank0:
        print(f"[checkpoint] resuming from {found}: the save after it was interrupted", file=sys.stderr)
    step, extra = load_checkpoint(found, model, optimizer)
    if logger is not None:
        logger.drop_from_step(step + step_offset)
    return step, extra


def checkpoint_due(cfg: Any, steps_done: int) -> bool:
    """True when `cfg` asks for a checkpoint after `steps_done` optimizer steps."""
    return bool(cfg.checkpoint_dir and cfg.checkpoint_every and steps_done % cfg.checkpoint_every == 0)
