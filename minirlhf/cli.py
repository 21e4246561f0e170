"""The command line: one subcommand per method, each taking its config dataclass as flags.

    minirlhf sft                                # SFT a tiny model from scratch on the arithmetic world
    minirlhf sft --model Qwen/Qwen2.5-0.5B --dataset my.jsonl --steps 200 --lr 1e-5
    minirlhf sft --preset configs/sft_tiny.yaml --steps 100   # a YAML preset, flags override it
    minirlhf dpo --checkpoint-dir runs/dpo/ckpt --checkpoint-every 20   # killed? the same line + --resume

Every field of the method's config dataclass is a flag (`--batch-size 32`); `--preset` reads a
YAML file of the same fields. Metrics go to `runs/<name>/metrics.jsonl` with a plot beside them,
and the trained model is saved there with `save_pretrained` (safetensors).
Methods register themselves in `COMMANDS` (name -> Command). Under `torchrun` the commands whose
trainers split batches over ranks (sft, rm, dpo) run with DDP, and only rank 0 writes and prints:

    torchrun --standalone --nproc_per_node 2 -m minirlhf dpo --model Qwen/Qwen2.5-0.5B --dataset prefs.jsonl

This file is the top of the command line and imports downwards only: the runners in
`commands/` (one module per family: llm.py, verifiers.py, diffusion.py) and `baselines.py`,
which use `runs.py` (run folders, plots) and `evaluate.py`. `minirlhf grade` and
`minirlhf exercises` hand over to `exercises/` (stubs a student fills in, graded against the package);
`minirlhf site` to `site.py` (the executed notebooks as static HTML pages).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import ConfigError, UserError, debug_enabled
from .runs import plot_metrics, run_dir  # noqa: F401  (their old home; the runners import them from runs.py)


@dataclass
class Command:
    """A subcommand: its config dataclass, what it runs, and a one-line description."""

    config_cls: type
    run: Callable[[argparse.Namespace, Any], dict]
    help: str
    add_args: Callable[[argparse.ArgumentParser], None] | None = None
    distributed: bool = False
    """True if the trainer splits its batches over ranks under torchrun (DDP)."""


COMMANDS: dict[str, Command] = {}


@dataclass
class Tool:
    """A subcommand that trains nothing (grading exercises ...): its flags and what it runs (-> exit code)."""

    run: Callable[[argparse.Namespace], int]
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]


def _tools() -> dict[str, Tool]:
    from . import exercises, site

    return {"grade": Tool(exercises.run_grade, "grade a filled-in exercise stub against the package "
                          "(minirlhf grade my_exercises/dpo_loss.py)", exercises.add_grade_args),
            "exercises": Tool(exercises.run_exercises, "list the exercises, or copy their stubs into a folder "
                              "(minirlhf exercises init my_exercises)", exercises.add_exercises_args),
            "site": Tool(site.run_site, "render the executed notebooks to a static HTML site that opens offline "
                         "(minirlhf site --out site)", site.add_site_args)}


def add_config_args(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One flag per dataclass field, typed from the annotation, help from the field docstring."""
    docs = _field_docs(config_cls)
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        if typ is bool:  # `--resume` alone means true; `--packing false` says no
            parser.add_argument(flag, type=_parse_bool, nargs="?", const=True, default=None, metavar="BOOL",
                                help=docs.get(f.name))
        else:
            base = next((t for t in typing.get_args(typ) if t is not type(None)), typ)  # X | None -> X
            parser.add_argument(flag, type=base if base in (int, float, str) else str, default=None,
                                help=docs.get(f.name))


def build_config(config_cls: type, args: argparse.Namespace):
    """Defaults <- YAML preset <- command-line flags. The names of the fields the preset or the
    flags set are left in `args.given_fields` (for runners that start from another default)."""
    values: dict[str, Any] = {}
    if getattr(args, "preset", None):
        preset = _read_preset(args.preset)
        names = {f.name for f in dataclasses.fields(config_cls)}
        # the command's own flags (model, dataset, name, --lora-r, --instruction ...) may be set too;
        # a flag given on the command line wins (a preset fills only flags left unset, None; switches such as
        # --trust-remote-code stay command-line only)
        flags = set(vars(args)) - names - {"preset", "command", "given_fields"}
        unknown = set(preset) - names - flags
        if unknown:
            raise ConfigError(f"unknown fields {sorted(unknown)} for {config_cls.__name__}", f"--preset {args.preset}")
        for key in sorted(set(preset) & flags):
            value = preset.pop(key)
            if getattr(args, key, None) is None:
                setattr(args, key, value)
        values.update({k: v for k, v in preset.items() if k in names})
    for f in dataclasses.fields(config_cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    args.given_fields = sorted(values)
    try:
        return config_cls(**values)
    except TypeError as e:  # a preset value of the wrong kind (a list where a number goes ...)
        raise ConfigError(str(e), f"--preset {args.preset}") from None


def _read_preset(path: str) -> dict[str, Any]:
    """The YAML preset as a dict, or a ConfigError naming the file."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError("no such file" if not p.exists() else "not a file", f"--preset {path}")
    try:
        preset = yaml.safe_load(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"not valid YAML: {' '.join(str(e).split())}", f"--preset {path}") from None
    if not isinstance(preset, dict):
        raise ConfigError(f"expected a mapping of config fields, got a {type(preset).__name__}", f"--preset {path}")
    return preset


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def _field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field (read from the source), inherited fields included."""
    import ast
    import inspect
    import textwrap

    docs = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def init_distributed(cmd_name: str, cmd: Command) -> int:
    """Under torchrun (WORLD_SIZE > 1), join the process group: NCCL with one GPU a rank, gloo on
    CPU. Returns this process's rank (0 without torchrun); only rank 0 writes and prints."""
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0
    if not cmd.distributed:
        raise ConfigError(f"minirlhf {cmd_name} runs in one process; under torchrun use sft, rm, dpo or grpo")
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" is now this rank's GPU
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank()


def _register_builtin() -> None:
    from . import baselines, commands
    from .dpo import DPOConfig
    from .commands import judges as judge_commands
    from .grpo import GRPOConfig
    from .ppo import PPOConfig
    from .reward_model import RewardConfig
    from .rft import RFTConfig
    from .sft import SFTConfig

    builtin = {
        "sft": Command(SFTConfig, commands.run_sft, "supervised fine-tuning (completion-only loss)", commands.sft_args,
                       distributed=True),
        "rm": Command(RewardConfig, commands.run_rm, "Bradley-Terry reward model", commands.rm_args,
                      distributed=True),
        "ppo": Command(PPOConfig, commands.run_ppo, "PPO against a reward model (InstructGPT-style)",
                       commands.ppo_args),
        "dpo": Command(DPOConfig, commands.run_dpo, "DPO and its variants (--loss-type)", commands.dpo_args,
                       distributed=True),
        "grpo": Command(GRPOConfig, commands.run_grpo, "GRPO and its variants (--variant) on verifiable rewards",
                        commands.grpo_args, distributed=True),
        "rft": Command(RFTConfig, commands.run_rft, "rejection-sampling fine-tuning (sample, keep the correct, SFT) "
                       "on verifiable rewards", commands.rft_args),
        "prm": Command(commands.VerifierRunConfig, commands.run_prm,
                       "a process (or outcome) reward model on arithmetic, judged by best-of-N", commands.prm_args),
        "diffusion": Command(commands.DiffusionRunConfig, commands.run_diffusion,
                             "RL for a diffusion/flow model (--method ddpo, draft, diffusion_dpo, flow_grpo)",
                             commands.diffusion_args),
        "judge": Command(judge_commands.JudgeRunConfig, judge_commands.run_judge,
                         "evaluate (or --train-steps: train) a generative judge: gold agreement, position and "
                         "length bias (pairwise), best-of-N (genrm)", judge_commands.judge_args),
        "rm-bench": Command(commands.RMBenchConfig, commands.run_rm_bench,
                            "a reward model on categorised pairs with a known gold ordering (RewardBench layout)",
                            commands.rm_bench_args),
        "eval": Command(commands.EvalConfig, commands.run_eval,
                        "any model on a dataset: greedy accuracy and pass@k with intervals, or reward-model "
                        "accuracy and win rate (--out file.json)", commands.eval_args),
        "baselines": Command(baselines.BaselinesConfig, baselines.run_baselines,
                             "every method on the built-in world, one table"),
    }
    for name, cmd in builtin.items():
        COMMANDS.setdefault(name, cmd)


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are ConfigErrors: one line and exit 1, like every other user error."""

    def error(self, message: str):
        raise ConfigError(message, self.prog)


# a flag followed by a negative number in any notation (-1e-3, -.5, -2): argparse alone would read
# "-1e-3" as an unknown option, so such pairs are joined as "--flag=-1e-3" first
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$", re.IGNORECASE)


def _join_negative_numbers(argv: list[str]) -> list[str]:
    out: list[str] = []
    for tok in argv:
        if _NEGATIVE_NUMBER.match(tok) and out and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={tok}"
        else:
            out.append(tok)
    return out


def build_parser() -> argparse.ArgumentParser:
    _register_builtin()
    parser = _Parser(prog="minirlhf", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error "
                        "(also MINIRLHF_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        p.add_argument("--preset", default=None, help="YAML file of config fields (flags override it)")
        p.add_argument("--name", default=None, help="run name: outputs go to runs/<name>/")
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
        p.add_argument("--threads", type=int, default=None,
                       help="CPU threads for torch (default: MINIRLHF_THREADS or 1: the tiny models run as fast "
                            "on one, and a run is bit-reproducible for a seed and a thread count)")
        p.add_argument("--trust-remote-code", action="store_true",
                       help="allow a hub model's own Python code (off by default: it runs arbitrary code)")
        p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
        p.add_argument("--quiet", action="store_true",
                       help="no progress bar and no samples while training (for scripts and CI)")
        p.add_argument("--report-to", default=None, metavar="TRACKERS",
                       help="also log the metrics to tensorboard (runs/<name>/tensorboard/) and/or wandb "
                            "(offline), comma-separated, with TRL's metric names (default: none)")
        if cmd.add_args:
            cmd.add_args(p)
        add_config_args(p, cmd.config_cls)
    for name, tool in _tools().items():
        p = sub.add_parser(name, help=tool.help, description=tool.help)
        p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
        tool.add_args(p)
    return parser


def set_determinism(threads: int | None) -> int:
    """Fix the CPU thread count and ask torch for deterministic kernels; returns the thread count.

    Results are bit-reproducible for a seed and a thread count on one machine: the number of
    threads changes the order of floating-point sums. Different CPUs can still differ in the last
    bits, which long RL runs amplify; that is why the notebooks assert with margins (docs/seeds.md).
    """
    n = threads if threads is not None else int(os.environ.get("MINIRLHF_THREADS", "1"))
    if n < 1:
        raise ConfigError(f"--threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return n


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. A user's mistake (UserError) prints `error: ...` on one line and returns 1;
    `--debug` or MINIRLHF_DEBUG=1 re-raises it with its traceback. Other exceptions are bugs and
    keep their traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or debug_enabled()
    where = "minirlhf" + (f" {argv[0]}" if argv and not argv[0].startswith("-") else "")
    try:
        return _main(argv)
    except UserError as e:
        if debug:
            raise
        msg = str(e) if e.where or not isinstance(e, ConfigError) else f"{e} ({where})"
        print(f"error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted; the metrics logged so far and the last checkpoint (if any) are kept "
              f"({where})", file=sys.stderr)
        return 130


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(_join_negative_numbers(argv))
    if args.command not in COMMANDS:  # a tool: it prints its own report and says its exit code
        return _tools()[args.command].run(args)
    cmd = COMMANDS[args.command]
    cfg = build_config(cmd.config_cls, args)
    if hasattr(cfg, "validate"):
        cfg.validate()  # before any data or model is loaded
    from .tracking import parse_report_to

    parse_report_to(args.report_to)  # an unknown tracker or a missing package: one line, before anything loads
    args.threads = set_determinism(args.threads)
    rank = init_distributed(args.command, cmd)
    from .progress import quiet_libraries

    with quiet_libraries(args.quiet):
        summary = cmd.run(args, cfg)
    if rank == 0:
        print(json.dumps(summary, indent=2))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
