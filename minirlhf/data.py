"""Dataset formats users bring -> validated rows of strings -> padded tensors.

Every method here trains on rows of plain strings, in the formats TRL users know:

    completions (SFT):   {"prompt": str, "completion": str}
                         {"messages": [{"role": ..., "content": ...}, ...]}        conversational
    preferences:         {"prompt": str, "chosen": str, "rejected": str}            explicit prompt
                         {"prompt": [msgs], "chosen": [msgs], "rejected": [msgs]}  conversational
                         {"chosen": str, "rejected": str}                           implicit prompt

Implicit prompts are how Anthropic's HH-RLHF data is stored: `chosen` and `rejected` are two
whole conversations that share their beginning, and the prompt is that shared beginning.
Conversations are rendered to text with the tokenizer's chat template, so the same code
serves the built-in character tokenizer and a real instruct model's tokenizer.

Validation happens once, here, and every error names the source, the row and the field:
a bad row is an error, or (with `drop_invalid=True`) it is dropped and counted, never silently.
That includes bytes that are not UTF-8: a file holding them is read with Python's json module
(`errors="surrogateescape"` keeps each bad byte as a lone surrogate), and the row whose field
holds one is invalid like any other bad row.

    rows = load_preferences("prefs.jsonl", tokenizer)       # JSON / JSONL / Parquet via datasets
    batch = encode_preference_batch(tokenizer, rows[:8])     # 2B rows: chosen first, then rejected
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable

from torch import Tensor

from .lm import encode_pairs

ASSISTANT_TURN = "\n\nAssistant:"  # where HH-RLHF conversations hand over to the model
ROLES = ("system", "user", "assistant", "tool")
SURROGATE = re.compile("[\ud800-\udfff]")  # never in valid text; a byte that was not UTF-8 (surrogateescape)


# ---------------------------------------------------------------------------------------------
# Implicit prompts (HH-RLHF style)
# ---------------------------------------------------------------------------------------------


def split_implicit_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Two whole conversations with a shared beginning -> (prompt, chosen, rejected).

    The prompt ends at the last "\\n\\nAssistant:" turn marker inside the common prefix, so the
    completions are the final assistant replies (what TRL's `extract_prompt` does for HH).
    Without such a marker the split is at the longest common prefix, moved back to the last
    whitespace so no word is cut in half. Raises ValueError if the two texts are identical.
    """
    if chosen == rejected:
        raise ValueError("chosen and rejected are identical: there is nothing to prefer")
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    common = chosen[:n]
    cut = common.rfind(ASSISTANT_TURN)
    if cut >= 0:
        cut += len(ASSISTANT_TURN)
    else:
        # back off to the last whitespace of the common prefix, so no word is cut in half; the
        # whitespace goes with the completions, as in the built-in data (" great .")
        cut = max((i for i, ch in enumerate(common) if ch.isspace()), default=0)
    return chosen[:cut], chosen[cut:], rejected[cut:]


# ---------------------------------------------------------------------------------------------
# Conversations
# ---------------------------------------------------------------------------------------------


def _where(source: str, index: int, field: str) -> str:
    return f"{source or 'data'}: row {index}, field {field!r}"


def check_messages(messages: Any, source: str, index: int, field: str) -> list[dict]:
    """A list of {"role", "content"} dicts with string values and a known role, or ValueError."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{_where(source, index, field)}: expected a non-empty list of messages, "
                         f"got {type(messages).__name__}")
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"{_where(source, index, field)}: message {j} must be a dict with "
                             f"'role' and 'content', got {m!r:.80}")
        if m["role"] not in ROLES or not isinstance(m["content"], str):
            raise ValueError(f"{_where(source, index, field)}: message {j} has role {m['role']!r} "
                             f"(expected one of {ROLES}) and content of type {type(m['content']).__name__}")
    return messages


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    """Messages -> text with the tokenizer's chat template (never tokenised here)."""
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("conversational rows need a tokenizer with a chat template")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _render_completion(tokenizer, prompt_msgs: list[dict], reply: list[dict]) -> str:
    """The text a reply adds after the prompt rendered with a generation prompt."""
    prompt_text = render_chat(tokenizer, prompt_msgs, add_generation_prompt=True)
    full = render_chat(tokenizer, prompt_msgs + reply, add_generation_prompt=False)
    if not full.startswith(prompt_text):
        # templates that render the last turn differently: fall back to the reply alone
        return render_chat(tokenizer, reply, add_generation_prompt=False)
    return full[len(prompt_text):]


# ---------------------------------------------------------------------------------------------
# Preference rows
# ---------------------------------------------------------------------------------------------


def normalize_preference_row(row: dict, index: int, tokenizer=None, source: str = "") -> dict:
    """One preference row in any supported format -> {"prompt", "chosen", "rejected"} strings.

    Extra fields (e.g. "margin", gold scores) are kept. Raises ValueError naming the source,
    row index and field for: a missing field, a wrong type, an empty or identical
    chosen/rejected, invalid messages.
    """
    if not isinstance(row, dict):
        raise ValueError(f"{source or 'data'}: row {index} is a {type(row).__name__}, expected a dict")
    for field in ("chosen", "rejected"):
        if field not in row or row[field] is None:
            raise ValueError(f"{_where(source, index, field)}: missing")
    prompt, chosen, rejected = row.get("prompt"), row["chosen"], row["rejected"]
    if isinstance(chosen, list) or isinstance(rejected, list) or isinstance(prompt, list):
        # conversational: the prompt is messages (or, if absent, all but the last turn)
        msgs = {f: check_messages(row[f], source, index, f) for f in ("chosen", "rejected")
                if isinstance(row[f], list)}
        for f in ("chosen", "rejected"):
            if f not in msgs:
                raise ValueError(f"{_where(source, index, f)}: expected a list of messages like the "
                                 f"other fields, got {type(row[f]).__name__}")
        if prompt is None:  # implicit prompt in conversational form: shared leading messages
            if msgs["chosen"][:-1] != msgs["rejected"][:-1]:
                raise ValueError(f"{_where(source, index, 'chosen')}: without a prompt, chosen and "
                                 "rejected must share all messages but the last")
            prompt_msgs, c_reply, r_reply = msgs["chosen"][:-1], msgs["chosen"][-1:], msgs["rejected"][-1:]
        else:
            prompt_msgs = check_messages(prompt, source, index, "prompt")
            c_reply, r_reply = msgs["chosen"], msgs["rejected"]
        out = {"prompt": render_chat(tokenizer, prompt_msgs, add_generation_prompt=True),
               "chosen": _render_completion(tokenizer, prompt_msgs, c_reply),
               "rejected": _render_completion(tokenizer, prompt_msgs, r_reply)}
    else:
        for f in ("chosen", "rejected") + (("prompt",) if prompt is not None else ()):
            if not isinstance(row[f], str):
                raise ValueError(f"{_where(source, index, f)}: expected a string or a list of "
                                 f"messages, got {type(row[f]).__name__}")
        if prompt is None:  # implicit prompt: whole conversations with a shared beginning
            if chosen == rejected:
                raise ValueError(f"{_where(source, index, 'rejected')}: identical to 'chosen'")
            p, c, r = split_implicit_prompt(chosen, rejected)
            out = {"prompt": p, "chosen": c, "rejected": r}
        else:
            out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    for f in ("chosen", "rejected"):
        if not out[f].strip():
            raise ValueError(f"{_where(source, index, f)}: empty")
    if out["chosen"] == out["rejected"]:
        raise ValueError(f"{_where(source, index, 'rejected')}: identical to 'chosen'")
    extra = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected")}
    return {**out, **extra}


# ---------------------------------------------------------------------------------------------
# Completion (SFT) rows
# ---------------------------------------------------------------------------------------------


def normalize_completion_row(row: dict, index: int, tokenizer=None, source: str = "",
                             prompt_field: str = "prompt", completion_field: str = "completion") -> dict:
    """One SFT row -> {"prompt", "completion"} strings.

    Either two string fields (renamed from `prompt_field`/`completion_field`, e.g. GSM8K's
    "question"/"answer"), or a "messages" conversation ending in an assistant turn: the prompt
    is every earlier message rendered with the generation prompt, the completion the last reply.
    """
    if not isinstance(row, dict):
        raise ValueError(f"{source or 'data'}: row {index} is a {type(row).__name__}, expected a dict")
    if "messages" in row and prompt_field not in row:
        msgs = check_messages(row["messages"], source, index, "messages")
        if msgs[-1]["role"] != "assistant":
            raise ValueError(f"{_where(source, index, 'messages')}: the last message must be the "
                             f"assistant's reply, got role {msgs[-1]['role']!r}")
        prompt_msgs = msgs[:-1]
        out = {"prompt": render_chat(tokenizer, prompt_msgs, add_generation_prompt=True),
               "completion": _render_completion(tokenizer, prompt_msgs, msgs[-1:])}
    else:
        out = {}
        for f, name in ((prompt_field, "prompt"), (completion_field, "completion")):
            if f not in row or row[f] is None:
                raise ValueError(f"{_where(source, index, f)}: missing")
            if not isinstance(row[f], str):
                raise ValueError(f"{_where(source, index, f)}: expected a string, got {type(row[f]).__name__}")
            out[name] = row[f]
    if not out["completion"].strip():
        raise ValueError(f"{_where(source, index, completion_field)}: empty")
    extra = {k: v for k, v in row.items() if k not in (prompt_field, completion_field, "messages")}
    return {**out, **extra}


def check_max_length(tokenizer, rows: list[dict], max_length: int, fields: tuple[str, ...] = ("completion",),
                     source: str = "") -> None:
    """Raise ValueError naming the first row whose prompt + field (+ EOS) is over `max_length` tokens."""
    for i, r in enumerate(rows):
        n_prompt = len(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"])
        for f in fields:
            n = n_prompt + len(tokenizer(r[f], add_special_tokens=False)["input_ids"]) + 1  # + EOS
            if n > max_length:
                raise ValueError(f"{_where(source, i, f)}: prompt + {f} + EOS is {n} tokens, "
                                 f"longer than max_length={max_length}")


# ---------------------------------------------------------------------------------------------
# Text that is not UTF-8
# ---------------------------------------------------------------------------------------------


def _first_surrogate(value: Any) -> tuple[str, int] | None:
    """(the string, the position) of the first lone surrogate in a string or nested list/dict."""
    if isinstance(value, str):
        m = SURROGATE.search(value)
        return (m.group(), m.start()) if m else None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return next((hit for v in items if (hit := _first_surrogate(v)) is not None), None)


def check_utf8(row: Any, source: str, index: int) -> None:
    """ValueError naming the field whose text holds a byte that was not UTF-8 (or a lone surrogate)."""
    if not isinstance(row, dict):
        return
    for field, value in row.items():
        hit = _first_surrogate(value)
        if hit is not None:
            ch, pos = hit
            what = (f"byte 0x{ord(ch) - 0xDC00:02x}" if 0xDC80 <= ord(ch) <= 0xDCFF  # surrogateescape's range
                    else f"lone surrogate U+{ord(ch):04X}")
            raise ValueError(f"{_where(source, index, field)}: not valid UTF-8 text ({what} at character {pos})")


def _json_rows_keeping_bad_bytes(raw: bytes, path: Path) -> list:
    """JSON (a list of rows) or JSON Lines, decoded with errors="surrogateescape": each byte that is
    not UTF-8 becomes a lone surrogate, left for `check_utf8` to report with its row and field."""
    text = raw.decode("utf-8", errors="surrogateescape")
    if text.lstrip().startswith("["):
        return json.loads(text)
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {line_no} (row {len(rows)}) is not valid JSON: {e}") from None
    return rows


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _rows_from_source(source) -> tuple[list[dict], str]:
    """A path (JSON/JSONL/Parquet), a `datasets.Dataset` or a list of dicts -> (rows, name)."""
    if isinstance(source, (str, os.PathLike)):
        from datasets import load_dataset

        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        suffix = path.suffix.lower()
        kind = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(suffix)
        if kind is None:
            raise ValueError(f"{path}: unsupported file type {suffix!r} (use .json, .jsonl or .parquet)")
        if kind == "json":
            raw = path.read_bytes()
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:  # `datasets` would fail with no row or field: read it ourselves
                return _json_rows_keeping_bad_bytes(raw, path), str(path)
        return load_dataset(kind, data_files=str(path), split="train").to_list(), str(path)
    if hasattr(source, "to_list") and hasattr(source, "column_names"):  # a datasets.Dataset
        return source.to_list(), "dataset"
    if isinstance(source, list):
        return source, "rows"
    raise TypeError(f"expected a path, a datasets.Dataset or a list of dicts, got {type(source).__name__}")


def _normalize_all(rows: list, name: str, fn: Callable[[Any, int], dict], drop_invalid: bool,
                   report: dict | None) -> list[dict]:
    out, errors = [], []
    for i, row in enumerate(rows):
        try:
            check_utf8(row, name, i)
            out.append(fn(row, i))
        except ValueError as e:
            if not drop_invalid:
                raise
            errors.append(str(e))
    if errors:
        warnings.warn(f"{name}: dropped {len(errors)} of {len(rows)} invalid rows; first: {errors[0]}",
                      stacklevel=3)
    if report is not None:
        report.update({"source": name, "n_rows": len(rows), "n_dropped": len(errors), "errors": errors})
    return out


def load_preferences(source, tokenizer=None, drop_invalid: bool = False, report: dict | None = None) -> list[dict]:
    """Preference rows from a file, a Dataset or a list -> validated {"prompt","chosen","rejected"} dicts.

    With `drop_invalid=True`, bad rows are dropped with a warning giving the count, and the
    count and messages are written into `report` (a dict you pass in) if given.
    """
    rows, name = _rows_from_source(source)
    return _normalize_all(rows, name, lambda r, i: normalize_preference_row(r, i, tokenizer, name),
                          drop_invalid, report)


def load_completions(source, tokenizer=None, drop_invalid: bool = False, max_length: int | None = None,
                     prompt_field: str = "prompt", completion_field: str = "completion",
                     report: dict | None = None) -> list[dict]:
    """SFT rows -> validated {"prompt", "completion"} dicts; a row over `max_length` tokens is an error."""
    rows, name = _rows_from_source(source)
    out = _normalize_all(rows, name, lambda r, i: normalize_completion_row(
        r, i, tokenizer, name, prompt_field, completion_field), drop_invalid, report)
    if max_length is not None:
        if tokenizer is None:
            raise ValueError("max_length needs a tokenizer to count tokens")
        check_max_length(tokenizer, out, max_length, ("completion",), name)
    return out


# ---------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------


def encode_preference_batch(tokenizer, rows: list[dict], max_length: int | None = None) -> dict[str, Tensor]:
    """Preference rows -> the lm.py batch layout with 2B rows: chosen (0..B-1), then rejected (B..2B-1).

    One padded batch keeps both halves the same width, so a single forward pass scores both.
    """
    prompts = [r["prompt"] for r in rows]
    completions = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    return encode_pairs(tokenizer, prompts + prompts, completions, add_eos=True, max_length=max_length)
