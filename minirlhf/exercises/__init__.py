"""Exercises that grade themselves: write a core function, check it against the package's own.

    minirlhf exercises list                    # the exercises, one line each
    minirlhf exercises init my_exercises/      # copy the stubs there (never overwrites your work)
    minirlhf grade my_exercises/dpo_loss.py    # grade one file (or a folder: every stub in it)
    python -m minirlhf.exercises grade ...     # the same without the `minirlhf` script

Each stub holds one function with its maths in the docstring and a body that raises
NotImplementedError. The grader runs it and the package's implementation on the same random
inputs; a difference is reported as the first element that differs (expected vs got), and when
the student's outputs equal those of a common slip (beta forgotten, chosen and rejected
swapped, mean instead of sum over tokens, missing mask, sign flipped ...), the slip is named.
The solutions are the package itself: each pass names the function to read. docs/exercises.md
lists the exercises with the notebook each belongs to.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ..errors import DataFileNotFound, UserError
from .catalogue import EXERCISES
from .grader import Case, Exercise, Report, Slip, grade_function, load_student_function

__all__ = ["EXERCISES", "Case", "Exercise", "Report", "Slip", "grade_file", "grade_function", "init", "main",
           "stub_path"]

STUBS = Path(__file__).parent / "stubs"


def stub_path(name: str) -> Path:
    """The stub file of exercise `name`."""
    return STUBS / f"{name}.py"


def init(folder: str | Path, force: bool = False) -> list[Path]:
    """Copy every stub into `folder`; an existing file is kept unless `force`. Returns the files written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder (give a folder for the exercise stubs)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{folder}: cannot create the folder ({e.strerror})") from e
    written = []
    for name in EXERCISES:
        dest = folder / f"{name}.py"
        if dest.exists() and not force:
            continue
        shutil.copyfile(stub_path(name), dest)
        written.append(dest)
    return written


def _exercise_of(path: Path, name: str | None) -> str:
    name = name or path.stem
    if name not in EXERCISES:
        raise UserError(f"{path}: no exercise called {name!r} (the file name picks it; --exercise NAME "
                        f"overrides); exercises: {', '.join(EXERCISES)}")
    return name


def grade_file(path: str | Path, exercise: str | None = None, seed: int = 0) -> Report:
    """Grade the function in `path` (the exercise is the file's stem unless `exercise` names it)."""
    path = Path(path)
    name = _exercise_of(path, exercise)
    return grade_function(EXERCISES[name], load_student_function(path, name), seed=seed)


def _files(paths: list[str]) -> list[Path]:
    """The files to grade: each file given, and every exercise file inside each folder given."""
    out = []
    for p in map(Path, paths):
        if not p.exists():
            raise DataFileNotFound(f"{p}: no such file or folder")
        out.extend(sorted(p / f"{n}.py" for n in EXERCISES if (p / f"{n}.py").is_file()) if p.is_dir() else [p])
    return out


# ---------------------------------------------------------------------------------------------
# The command line: `minirlhf grade`, `minirlhf exercises ...`, `python -m minirlhf.exercises ...`
# ---------------------------------------------------------------------------------------------


def add_grade_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="a filled-in stub (its name picks the exercise), "
                   "or a folder: every exercise file in it")
    p.add_argument("--exercise", default=None, help="which exercise (default: the file's name without .py)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")


def run_grade(args: argparse.Namespace) -> int:
    """Print one report per file; 0 if every file passes, 1 otherwise."""
    files = _files(args.files)
    if not files:
        raise UserError(f"no exercise files in {' '.join(args.files)}")
    names = [_exercise_of(f, args.exercise) for f in files]  # an unknown name stops here, before any grading
    reports = []
    for f, name in zip(files, names):
        try:
            reports.append(grade_function(EXERCISES[name], load_student_function(f, name), seed=args.seed))
        except UserError as e:  # a file that does not run: its report says why, the others are still graded
            reports.append(Report(name, False, [f"{name}: FAIL", f"  {e}"]))
    print("\n".join(str(r) for r in reports))
    if len(reports) > 1:
        print(f"{sum(r.passed for r in reports)} of {len(reports)} passed")
    return 0 if all(r.passed for r in reports) else 1


def add_exercises_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, parser_class=type(p))
    sub.add_parser("list", help="the exercises, one line each")
    init_p = sub.add_parser("init", help="copy the stubs into a folder")
    init_p.add_argument("folder")
    init_p.add_argument("--force", action="store_true", help="overwrite files already there")
    add_grade_args(sub.add_parser("grade", help="grade filled-in stubs"))


def run_exercises(args: argparse.Namespace) -> int:
    if args.action == "list":
        for e in EXERCISES.values():
            print(f"{e.name:20s} {e.title}")
        return 0
    if args.action == "init":
        written = init(args.folder, args.force)
        kept = len(EXERCISES) - len(written)
        print(f"wrote {len(written)} stubs to {args.folder}" + (f" (kept {kept} already there)" if kept else ""))
        print(f"fill one in, then: minirlhf grade {Path(args.folder) / 'dpo_loss.py'}")
        return 0
    return run_grade(args)


def main(argv: list[str] | None = None) -> int:
    """`python -m minirlhf.exercises list | init DIR | grade FILE...` (a mistake: one line, exit 1)."""
    import sys

    parser = argparse.ArgumentParser(prog="python -m minirlhf.exercises", description=__doc__.split("\n")[0])
    add_exercises_args(parser)
    try:
        return run_exercises(parser.parse_args(sys.argv[1:] if argv is None else argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
