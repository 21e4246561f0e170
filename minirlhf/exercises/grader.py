"""The grader: run a student's function and the package's own on the same random inputs, and
say what differs in words a student can act on.

An `Exercise` holds the package's implementation (the reference), a generator of random
`Case`s (the inputs, with a one-line note such as "B=4, T=7, beta=0.1"), and the common
`Slip`s: deliberately wrong implementations, each with the sentence that explains it. When
the student's output differs, the grader reports the first element that differs (expected vs
got) and, if the student's outputs equal one slip's outputs on every case, names that slip.
"""

from __future__ import annotations

import importlib.util
import math
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from ..errors import UserError


@dataclass
class Case:
    """One call: positional tensors, keyword settings, and how to describe it."""

    args: tuple
    kwargs: dict = field(default_factory=dict)
    note: str = ""


@dataclass
class Slip:
    """A common mistake: its short name, a wrong implementation, and the explanation."""

    name: str
    fn: Callable
    hint: str


@dataclass
class Exercise:
    """A function a student writes, graded against the package's own implementation."""

    name: str
    """The stub's file name and the function in it."""
    title: str
    """One line: what the function computes."""
    reference: Callable
    """The package's implementation, with the stub's signature: the solution."""
    solution: str
    """Where the solution lives in the package (shown after a pass)."""
    cases: Callable[[torch.Generator], list[Case]]
    """Random inputs, drawn from the generator."""
    slips: list[Slip]
    """Common mistakes the grader recognises."""
    outputs: tuple[str, ...] = ("output",)
    """Names of the outputs (a tuple when there are several)."""
    grad_args: tuple[int, ...] = ()
    """Positions of the inputs a gradient must flow back to (checked on the first case)."""
    atol: float = 1e-5
    rtol: float = 1e-4


@dataclass
class Report:
    """The outcome of grading one function: passed, and the lines that explain it."""

    name: str
    passed: bool
    lines: list[str]

    def __str__(self) -> str:
        return "\n".join(self.lines)


# ---------------------------------------------------------------------------------------------
# Running a function on a case
# ---------------------------------------------------------------------------------------------


def _clone(x):
    return x.detach().clone() if isinstance(x, Tensor) else x


def _call(fn: Callable, case: Case, n_outputs: int, grad_args: tuple[int, ...] = ()):
    """fn on fresh copies of the case's inputs -> (outputs as a tuple, inputs it was given)."""
    args = tuple(_clone(a) for a in case.args)
    for i in grad_args:
        args[i].requires_grad_(True)
    out = fn(*args, **case.kwargs)
    if n_outputs > 1 and isinstance(out, (tuple, list)):
        return tuple(out), args
    return (out,), args


def _same(expected: tuple, got: tuple, atol: float, rtol: float) -> bool:
    """Equal outputs: same count, tensors of the same shape, close values (NaN == NaN, inf == inf)."""
    if len(expected) != len(got):
        return False
    for e, g in zip(expected, got):
        if not isinstance(g, Tensor) or g.shape != e.shape:
            return False
        if not torch.isclose(g.detach().to(e.dtype), e.detach(), atol=atol, rtol=rtol, equal_nan=True).all():
            return False
    return True


def _fmt(v: float) -> str:
    return repr(v) if math.isnan(v) or math.isinf(v) else f"{v:.6g}"


def _difference(name: str, expected: Tensor, got, atol: float, rtol: float) -> str | None:
    """What is wrong with one output, in one sentence (None if nothing)."""
    if not isinstance(got, Tensor):
        return f"`{name}` should be a tensor of shape {tuple(expected.shape)}, got a {type(got).__name__}"
    if got.shape != expected.shape:
        msg = f"`{name}` has shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
        if got.numel() == 1 and expected.numel() > 1:
            msg += " (one number for the whole batch: return one value per row; the trainer takes the mean)"
        elif got.dim() == expected.dim() + 1:
            msg += " (one dimension too many: a sum or a reduction is missing?)"
        elif got.dim() + 1 == expected.dim():
            msg += " (one dimension too few: reduced over a dimension that should stay?)"
        return msg
    g = got.detach().to(expected.dtype)
    close = torch.isclose(g, expected.detach(), atol=atol, rtol=rtol, equal_nan=True)
    if close.all():
        return None
    bad = (~close).nonzero()
    idx = tuple(int(i) for i in bad[0])
    where = f"[{', '.join(map(str, idx))}]" if idx else "(the scalar)"
    e_v, g_v = float(expected.detach()[idx]), float(g[idx])
    msg = (f"element {where} of `{name}` differs: expected {_fmt(e_v)}, got {_fmt(g_v)} "
           f"({len(bad)} of {expected.numel()} elements differ)")
    if not math.isfinite(g_v) and math.isfinite(e_v):
        msg += f"; {_fmt(g_v)} where a finite number belongs: look for log(0), 0/0 or an overflowing exp"
    return msg


def _slips_matching(exercise: Exercise, cases: list[Case], student_outputs: list[tuple]) -> list[Slip]:
    """The slips whose outputs equal the student's on every case."""
    found = []
    for slip in exercise.slips:
        try:
            if all(_same(_call(slip.fn, c, len(exercise.outputs))[0], s, exercise.atol, exercise.rtol)
                   for c, s in zip(cases, student_outputs)):
                found.append(slip)
        except Exception:  # noqa: BLE001 - a slip that cannot run on a case simply does not match
            continue
    return found


# ---------------------------------------------------------------------------------------------
# Grading
# ---------------------------------------------------------------------------------------------


def grade_function(exercise: Exercise, fn: Callable, seed: int = 0) -> Report:
    """Grade `fn` against `exercise.reference` on the exercise's random cases."""
    head = f"{exercise.name}: {exercise.title}"
    cases = exercise.cases(torch.Generator().manual_seed(seed))
    n_out = len(exercise.outputs)
    student_outputs, first_fail = [], None
    for k, case in enumerate(cases):
        where = f"case {k + 1} of {len(cases)} ({case.note})"
        expected, _ = _call(exercise.reference, case, n_out)
        try:
            got, given = _call(fn, case, n_out)
        except NotImplementedError:
            return Report(exercise.name, False, [f"{head}: NOT DONE", "  the stub still raises NotImplementedError: "
                                                 "replace that line with your implementation"])
        except Exception as e:  # noqa: BLE001 - the student's code may raise anything; report it
            tb = traceback.extract_tb(e.__traceback__)[-1]
            return Report(exercise.name, False, [f"{head}: FAIL", f"  {where}: raised {type(e).__name__}: {e}",
                                                 f"  at line {tb.lineno} of {Path(tb.filename).name}: {tb.line}"])
        for a, b in zip(case.args, given):
            if isinstance(a, Tensor) and not torch.equal(a, b.detach()):
                return Report(exercise.name, False, [f"{head}: FAIL", f"  {where}: your function changed one of its "
                                                     "input tensors in place; compute into new tensors instead"])
        if len(got) != n_out:
            return Report(exercise.name, False, [f"{head}: FAIL", f"  {where}: expected {n_out} outputs "
                                                 f"({', '.join(exercise.outputs)}), got {len(got)}"])
        student_outputs.append(got)
        if first_fail is None:
            for name, e, g in zip(exercise.outputs, expected, got):
                diff = _difference(name, e, g, exercise.atol, exercise.rtol)
                if diff:
                    first_fail = f"  {where}: {diff}"
                    break
    if first_fail is not None:
        lines = [f"{head}: FAIL", first_fail]
        slips = _slips_matching(exercise, cases, student_outputs)
        for slip in slips:
            lines.append(f"  looks like a common slip, {slip.name}: {slip.hint}")
        if not slips:
            lines.append("  (no common slip matches: compare each line with the equation in the docstring)")
        return Report(exercise.name, False, lines)
    if exercise.grad_args:  # the values are right; can a loss built on them be trained?
        expected, _ = _call(exercise.reference, cases[0], n_out, exercise.grad_args)
        got, _ = _call(fn, cases[0], n_out, exercise.grad_args)
        if expected[0].requires_grad and not got[0].requires_grad:
            return Report(exercise.name, False, [
                f"{head}: FAIL", "  the values are right, but no gradient flows back to the inputs: "
                f"`{exercise.outputs[0]}` is detached (.item(), .detach(), .tolist(), numpy or torch.no_grad "
                "break the graph)"])
    n = sum(sum(o.numel() for o in out) for out in student_outputs)
    return Report(exercise.name, True, [f"{head}: PASS ({len(cases)} random cases, {n} numbers checked)",
                                        f"  the package's version: {exercise.solution}"])


def load_student_function(path: str | Path, name: str) -> Callable:
    """The function `name` defined in the file at `path` (a UserError if it cannot be read)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    spec = importlib.util.spec_from_file_location(f"minirlhf_student_{name}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - a syntax error or a bad import in the student's file
        raise UserError(f"{path}: could not run the file: {type(e).__name__}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        defined = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                         and getattr(v, "__module__", None) == module.__name__)
        raise UserError(f"{path}: defines no function `{name}` (it defines: {', '.join(defined) or 'nothing'})")
    return fn
