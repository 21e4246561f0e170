"""Flags for real models, shared by the runners of sft, rm, ppo, dpo, grpo and eval.

* `--chat-template`, `--instruction`, `--system`: questions go through the tokenizer's chat template
  with an instruction that says how to give the final answer (prompting.py).
* `--lora-r`, `--lora-alpha`, `--lora-dropout`, `--lora-target-modules`, `--gradient-checkpointing`,
  `--bf16`: fitting a 0.5B-1.5B model on one GPU (scaling.py).

A YAML `--preset` may set any of these by name (`lora_r: 16`); a flag on the command line wins.
"""

from __future__ import annotations

import argparse

from ..scaling import ScaleOptions


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def add_chat_args(p: argparse.ArgumentParser) -> None:
    """--chat-template, --instruction, --system."""
    from ..prompting import DEFAULT_INSTRUCTION

    p.add_argument("--chat-template", type=_bool, nargs="?", const=True, default=None, metavar="BOOL",
                   help="send each question through the tokenizer's chat template as a user turn with "
                        "--instruction (default: off; the GPU presets turn it on)")
    p.add_argument("--instruction", default=None,
                   help=f"with --chat-template: appended to each question (default: {DEFAULT_INSTRUCTION!r}; "
                        "'' for none)")
    p.add_argument("--system", default=None, help="with --chat-template: a system message (default: none)")


def chat_settings(args) -> dict | None:
    """{"instruction", "system"} for prompting.chat_rows, or None without --chat-template."""
    from ..prompting import DEFAULT_INSTRUCTION

    if not getattr(args, "chat_template", None):
        return None
    instruction = DEFAULT_INSTRUCTION if args.instruction is None else args.instruction
    return {"instruction": instruction or None, "system": args.system or None}


def apply_chat(args, tok, rows: list[dict]) -> list[dict]:
    """`rows` in the chat format when --chat-template is on (a DataError if the tokenizer has no
    template), else unchanged."""
    from ..errors import DataError
    from ..prompting import chat_rows

    settings = chat_settings(args)
    if settings is None:
        return rows
    if getattr(tok, "chat_template", None) is None:
        raise DataError(f"--chat-template: the tokenizer of {getattr(args, 'model', None) or 'the model'} "
                        "has no chat template")
    return chat_rows(tok, rows, **settings)


def check_lengths(args, tok, rows: list[dict], max_length: int) -> list[dict]:
    """SFT rows after the chat template: a row over `max_length` tokens (prompt + completion, + EOS unless
    the rendered turn ends with it) is a DataError naming --dataset and the row, or dropped and counted
    with --drop-invalid (the count goes into the summary)."""
    from ..data import load_completions
    from ..errors import DataError
    from .common import report_dropped

    report: dict = {}
    try:
        kept = load_completions(rows, tok, drop_invalid=args.drop_invalid, max_length=max_length, report=report)
    except DataError as e:
        raise DataError(str(e).replace("rows: ", f"{args.dataset} (with --chat-template): ", 1)) from None
    if report.get("n_dropped"):
        report["source"] = f"{args.dataset} (with --chat-template)"
        report_dropped(args, report)
    return kept


def add_scale_args(p: argparse.ArgumentParser) -> None:
    """The ScaleOptions fields as flags (None: the default, so a preset can set them)."""
    d = ScaleOptions()
    p.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default 0: full fine-tuning); needs peft")
    p.add_argument("--lora-alpha", type=float, default=None, help=f"LoRA alpha, the update is scaled by alpha/r "
                   f"(default {d.lora_alpha:g})")
    p.add_argument("--lora-dropout", type=float, default=None, help=f"LoRA dropout (default {d.lora_dropout:g})")
    p.add_argument("--lora-target-modules", default=None,
                   help=f"comma-separated module names, or all-linear (default {d.lora_target_modules})")
    p.add_argument("--gradient-checkpointing", type=_bool, nargs="?", const=True, default=None, metavar="BOOL",
                   help="recompute activations in the backward pass (less memory, ~1/3 more compute)")
    p.add_argument("--bf16", type=_bool, nargs="?", const=True, default=None, metavar="BOOL",
                   help="bfloat16 autocast in the forward pass (CUDA only; an error on a CPU)")


def scale_options(args) -> ScaleOptions:
    """ScaleOptions from the flags, checked against the run's device (before any model loads)."""
    from .common import run_device

    d = ScaleOptions()
    opts = ScaleOptions(**{f: (getattr(args, f, None) if getattr(args, f, None) is not None else getattr(d, f))
                           for f in d.__dataclass_fields__})
    opts.validate(run_device(args))
    return opts


def load_policy(args, name: str, opts: ScaleOptions):
    """The trained model: loaded on the run's device, then checkpointing, LoRA and autocast applied."""
    from ..scaling import prepare_policy
    from .common import load_lm

    return prepare_policy(load_lm(args, name), opts)


def load_reference(args, name: str, policy, opts: ScaleOptions):
    """The frozen reference: the policy's base with its adapters off (LoRA), else a second load."""
    from ..scaling import reference_for
    from .common import load_lm

    return reference_for(policy, opts, lambda: load_lm(args, name))


def scale_summary(policy, opts: ScaleOptions) -> dict:
    """What the summary records of the options: trainable parameters and the switches that are on."""
    from ..scaling import trainable_parameters

    out = {"trainable_parameters": trainable_parameters(policy)}
    if opts.lora_r:
        out["lora_r"] = opts.lora_r
    if opts.gradient_checkpointing:
        out["gradient_checkpointing"] = True
    if opts.bf16:
        out["bf16"] = True
    return out
