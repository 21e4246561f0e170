#!/usr/bin/env python
"""Run notebooks under several seeds and tabulate the numbers their asserts compare.

Each notebook 02-07 reads its seed from MINIRLHF_SEED (default 0) and, in each assert cell, prints
one line `ASSERT_VALUES {json}` with the numbers the asserts use, *before* asserting. This script
executes a notebook once per seed (a copy, written under --out; the notebook in notebooks/ is not
touched), lets the asserts fail without stopping the run, and collects:

    notebook, seed, wall seconds, whether every cell ran without error, the first error, and the
    merged ASSERT_VALUES of every assert cell that printed them.

    python scripts/seed_sweep.py notebooks/03_ppo.ipynb --seeds 0 1 2
    python scripts/seed_sweep.py notebooks/0[2-7]*.ipynb --seeds 0 1 2 --jobs 2 --out /tmp/sweep
    python scripts/seed_sweep.py notebooks/*.ipynb --seeds 0 --store   # idle machine: store outputs and times

Each run gets OMP_NUM_THREADS=1 (the notebooks also call torch.set_num_threads(1)), so a seed gives
the same numbers run after run on one machine. Results are appended to <out>/results.jsonl and a
table per notebook is printed (and written to <out>/table.md). --jobs runs that many notebooks at
once; on a 2-core machine use at most 2.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

MARK = "ASSERT_VALUES "


def _outputs_text(nb: dict) -> list[str]:
    texts = []
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            t = out.get("text")
            if t is None:
                t = out.get("data", {}).get("text/plain")
            if t is not None:
                texts.append("".join(t) if isinstance(t, list) else t)
    return texts


def _first_error(nb: dict) -> str | None:
    for i, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"cell {i}: {out.get('ename')}: {str(out.get('evalue'))[:300]}"
    return None


def extract(nb: dict) -> dict:
    """Merge every `ASSERT_VALUES {json}` line printed in the notebook's outputs."""
    values: dict = {}
    for text in _outputs_text(nb):
        for line in text.splitlines():
            if line.startswith(MARK):
                values.update(json.loads(line[len(MARK):]))
    return values


def run_one(notebook: pathlib.Path, seed: int, out: pathlib.Path, timeout: int, figures: bool = False) -> dict:
    import nbformat
    from nbconvert.preprocessors import ExecutePreprocessor

    nb = nbformat.read(notebook, as_version=4)
    env_before = {k: os.environ.get(k) for k in ("MINIRLHF_SEED", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MPLBACKEND",
                                                 "MINIRLHF_WRITE_DOCS")}
    # the kernel inherits this process's environment when it starts
    os.environ.update(MINIRLHF_SEED=str(seed), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                      TOKENIZERS_PARALLELISM="false")
    if figures:  # the kernel's inline backend draws the figures into the outputs
        os.environ.pop("MPLBACKEND", None)
        os.environ["MINIRLHF_WRITE_DOCS"] = "1"  # and a notebook may refresh its figure under docs/ (04: frontier.png)
    else:        # Agg skips them (a sweep does not need them)
        os.environ["MPLBACKEND"] = "Agg"
    ep = ExecutePreprocessor(timeout=timeout, allow_errors=True, kernel_name="python3")
    t0 = time.time()
    try:
        ep.preprocess(nb, {"metadata": {"path": str(notebook.parent.resolve())}})
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    wall = time.time() - t0
    # CPU seconds of the kernel (a child of this process, reaped at shutdown): on a shared machine
    # the wall time depends on the load, the CPU time much less
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = ru.ru_utime + ru.ru_stime
    dest = out / f"{notebook.stem}.seed{seed}.ipynb"
    nbformat.write(nb, dest)
    err = _first_error(nb)
    return {"notebook": notebook.stem, "seed": seed, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "ok": err is None,
            "error": err, "values": extract(nb), "executed": str(dest)}


def run_subprocess(notebook: pathlib.Path, seed: int, out: pathlib.Path, timeout: int, figures: bool = False) -> dict:
    """One run in its own process, so that runs in parallel do not share os.environ."""
    cmd = [sys.executable, __file__, str(notebook), "--seeds", str(seed), "--out", str(out),
           "--timeout", str(timeout), "--single"] + (["--figures"] if figures else [])
    res = subprocess.run(cmd, capture_output=True, text=True)
    for line in res.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"notebook": notebook.stem, "seed": seed, "wall_s": None, "ok": False,
            "error": f"runner failed: {res.stderr[-500:]}", "values": {}, "executed": None}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def table(results: list[dict]) -> str:
    lines = []
    for name in sorted({r["notebook"] for r in results}):
        rows = sorted((r for r in results if r["notebook"] == name), key=lambda r: r["seed"])
        keys = []
        for r in rows:
            keys += [k for k in r["values"] if k not in keys]
        lines.append(f"\n### {name}\n")
        lines.append("| seed | wall s | CPU s | ok | " + " | ".join(keys) + " |")
        lines.append("|---" * (4 + len(keys)) + "|")
        for r in rows:
            lines.append(f"| {r['seed']} | {_fmt(r['wall_s'])} | {_fmt(r.get('cpu_s'))} | {'yes' if r['ok'] else 'NO'} | "
                         + " | ".join(_fmt(r["values"].get(k, "")) for k in keys) + " |")
        for r in rows:
            if r["error"]:
                lines.append(f"\nseed {r['seed']}: {r['error']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="+", type=pathlib.Path)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("/tmp/minirlhf_seed_sweep"))
    ap.add_argument("--jobs", type=int, default=1, help="notebooks run at once (<= cores)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    ap.add_argument("--store", action="store_true",
                    help="write each seed-0 run that had no error back over its notebook (stored outputs); "
                         "run it on an idle machine with --jobs 1 so the times a reader sees are idle times")
    ap.add_argument("--figures", action="store_true", help="draw the figures (implied by --store)")
    ap.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    if args.single:
        r = run_one(args.notebooks[0], args.seeds[0], args.out, args.timeout, args.figures)
        print("RESULT " + json.dumps(r))
        return

    jobs = [(nb, s) for nb in args.notebooks for s in args.seeds]
    results = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        figures = args.figures or args.store
        futures = [pool.submit(run_subprocess, nb, s, args.out, args.timeout, figures) for nb, s in jobs]
        for f in futures:
            r = f.result()
            results.append(r)
            with open(args.out / "results.jsonl", "a") as fh:
                fh.write(json.dumps(r) + "\n")
            print(f"{r['notebook']} seed {r['seed']}: {r['wall_s']}s wall {r.get('cpu_s')}s CPU ok={r['ok']} {json.dumps(r['values'])}"
                  + (f"  [{r['error']}]" if r["error"] else ""), flush=True)
            if args.store and r["seed"] == 0 and r["ok"] and r["executed"]:
                src = next(nb for nb in args.notebooks if nb.stem == r["notebook"])
                shutil.copyfile(r["executed"], src)
                print(f"stored outputs in {src}", flush=True)
    text = table(results)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
