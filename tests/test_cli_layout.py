"""The command line's layout: every module imports only downwards (no cycle anywhere in the
package, lazy imports inside functions included), each command-line module imports on its own
in a fresh interpreter, the old import paths still work, and the moved evaluation gives the
numbers it gave before."""

import ast
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "minirlhf"

COMMAND_LINE = ["minirlhf.cli", "minirlhf.commands", "minirlhf.commands.common", "minirlhf.commands.llm",
                "minirlhf.commands.verifiers", "minirlhf.commands.diffusion", "minirlhf.baselines", "minirlhf.runs",
                "minirlhf.evaluate", "minirlhf.exercises", "minirlhf.exercises.catalogue"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_edges() -> dict[str, set[str]]:
    """module -> the package modules it imports, read from the source (imports inside functions too)."""
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                targets = [base] + [f"{base}.{a.name}" for a in node.names]  # `from . import x`: x may be a module
            else:
                continue
            edges[mod].update(t for t in targets if t in modules and t != mod)
    return edges


def import_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_package():
    edges = import_edges()
    assert "minirlhf.commands.llm" in edges["minirlhf.cli"] or "minirlhf.commands" in edges["minirlhf.cli"]
    assert import_cycles(edges) == [], "modules that import each other (move what they share below both)"


def test_nothing_below_the_command_line_imports_it():
    edges = import_edges()
    importers = sorted(m for m, targets in edges.items() if "minirlhf.cli" in targets)
    assert importers == ["minirlhf.__main__"]
    below = ["minirlhf.runs", "minirlhf.evaluate", "minirlhf.commands.common"]
    for mod in below:  # the shared helpers know nothing of the runners above them
        assert not any(t.startswith(("minirlhf.commands", "minirlhf.baselines", "minirlhf.cli")) and t != mod
                       for t in edges[mod]), mod
    assert "minirlhf.ppo" not in edges["minirlhf.evaluate"]  # the DPO command's KL no longer goes through ppo.py


@pytest.mark.parametrize("module", COMMAND_LINE)
def test_each_command_line_module_imports_alone(module):
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_old_import_paths_still_work():
    from minirlhf import cli, commands, evaluate, ppo

    for name in ("run_sft", "run_rm", "run_ppo", "run_dpo", "run_grpo", "run_prm", "run_diffusion", "run_rm_bench",
                 "sft_args", "rm_args", "ppo_args", "dpo_args", "grpo_args", "prm_args", "diffusion_args",
                 "rm_bench_args", "VerifierRunConfig", "DiffusionRunConfig", "RMBenchConfig", "DIFFUSION_METHODS",
                 "EXACT_TARGET_METHODS", "REVIEW_EVAL_PROMPTS", "ARITH_EVAL_ROWS", "sequence_kl", "_review_eval",
                 "_common", "_device", "_load", "_load_dataset", "_metrics_logger", "_finish", "_preference_rows",
                 "_report_dropped", "_data_counts"):
        assert hasattr(commands, name), name
    for name in ("run_dir", "plot_metrics", "main", "COMMANDS", "build_config", "_register_builtin"):
        assert hasattr(cli, name), name
    assert callable(evaluate.eval_arithmetic) and callable(evaluate.eval_reviews)
    assert callable(ppo.evaluate_policy)


def test_sequence_kl_gives_what_ppo_evaluate_policy_gave(tok, tiny_model):
    """evaluate.sequence_kl replaced the DPO/GRPO commands' detour through ppo.evaluate_policy: same numbers."""
    from minirlhf.evaluate import sequence_kl
    from minirlhf.ppo import PPOConfig, evaluate_policy

    policy = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prompts = ["3+4=", "12-5=", "7*2="]
    gold = lambda ps, cs: [float(len(c)) for c in cs]  # noqa: E731
    old = evaluate_policy(policy, tiny_model, tok, prompts, PPOConfig(max_new_tokens=12), gold_fn=gold)
    new = sequence_kl(policy, tiny_model, tok, prompts, max_new_tokens=12, gold_fn=gold)
    assert new == {"kl": round(old["eval/kl"], 4), "gold_reward": round(old["eval/gold"], 4)}
    assert new["kl"] != 0.0
