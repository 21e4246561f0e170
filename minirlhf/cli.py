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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .utils import MetricsLogger


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
        import yaml

        preset = yaml.safe_load(Path(args.preset).read_text()) or {}
        names = {f.name for f in dataclasses.fields(config_cls)}
        unknown = set(preset) - names - {"model", "dataset", "name"}
        if unknown:
            raise SystemExit(f"{args.preset}: unknown fields {sorted(unknown)} for {config_cls.__name__}")
        for key in ("model", "dataset", "name"):
            if key in preset and getattr(args, key, None) is None:
                setattr(args, key, preset.pop(key))
        values.update({k: v for k, v in preset.items() if k in names})
    for f in dataclasses.fields(config_cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    args.given_fields = sorted(values)
    return config_cls(**values)


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
        raise SystemExit(f"minirlhf {cmd_name} runs in one process; under torchrun use sft, rm, dpo or grpo")
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" is now this rank's GPU
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank()


def run_dir(name: str) -> Path:
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


def _register_builtin() -> None:
    from . import baselines, commands
    from .dpo import DPOConfig
    from .grpo import GRPOConfig
    from .ppo import PPOConfig
    from .reward_model import RewardConfig
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
        "prm": Command(commands.VerifierRunConfig, commands.run_prm,
                       "a process (or outcome) reward model on arithmetic, judged by best-of-N", commands.prm_args),
        "diffusion": Command(commands.DiffusionRunConfig, commands.run_diffusion,
                             "RL for a diffusion/flow model (--method ddpo, draft, diffusion_dpo, flow_grpo)",
                             commands.diffusion_args),
        "baselines": Command(baselines.BaselinesConfig, baselines.run_baselines,
                             "every method on the built-in world, one table"),
    }
    for name, cmd in builtin.items():
        COMMANDS.setdefault(name, cmd)


def main(argv: list[str] | None = None) -> int:
    _register_builtin()
    parser = argparse.ArgumentParser(prog="minirlhf", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        p.add_argument("--preset", default=None, help="YAML file of config fields (flags override it)")
        p.add_argument("--name", default=None, help="run name: outputs go to runs/<name>/")
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
        p.add_argument("--trust-remote-code", action="store_true",
                       help="allow a hub model's own Python code (off by default: it runs arbitrary code)")
        if cmd.add_args:
            cmd.add_args(p)
        add_config_args(p, cmd.config_cls)
    args = parser.parse_args(argv)
    cmd = COMMANDS[args.command]
    cfg = build_config(cmd.config_cls, args)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rank = init_distributed(args.command, cmd)
    summary = cmd.run(args, cfg)
    if rank == 0:
        print(json.dumps(summary, indent=2))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
