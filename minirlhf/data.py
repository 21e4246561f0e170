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

Validation happens once, here, when the file is read (before any model is loaded), and every
error is a `DataError` naming the source, the row and the field: a bad row is an error, or (with
`drop_invalid=True`) it is dropped and counted, never silently. Rows are numbered from 0 in file
order (in JSON Lines, blank lines are not rows); a line that is not JSON is named by its line
number, counted from 1 as editors do. Bad rows include:

* a field missing, of the wrong type, empty; chosen identical to rejected; invalid messages;
* bytes that are not UTF-8: JSON is always read with Python's json module, with
  `errors="surrogateescape"` keeping each bad byte as a lone surrogate for `check_utf8` to name;
* a line of JSON Lines that is not JSON, or a row that is not an object;
* given `max_length`: prompt + completion + EOS over `max_length` tokens, counted as the trainers
  encode it (`lm.encode_pairs`), so no row fails mid-training;
* with `strict_vocab=True`: a character the tokenizer does not know (it would become <unk>);
  without it such rows are kept and counted, and one warning gives a few examples.

Whole files that cannot be data stop with one line too: a missing path (`DataFileNotFound`), a
directory, an empty or whitespace-only file, a Git LFS pointer, a .parquet file that is not
Parquet, a JSON document that is not a list of row objects, a file with no rows left (reading the
file: `data_files.py`).

    rows = load_preferences("prefs.jsonl", tokenizer)       # JSON / JSONL / Parquet
    batch = encode_preference_batch(tokenizer, rows[:8])     # 2B rows: chosen first, then rejected
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from typing import Any, Callable

from torch import Tensor

from .data_files import (LFS_POINTER, PARQUET_MAGIC, SUFFIXES, SURROGATE, _BadLine, _rows_from_source,  # noqa: F401
                         _where, check_utf8, read_rows)
from .errors import ConfigError, DataError, DataFileNotFound  # noqa: F401
from .lm import encode_pairs, needs_eos
from .worlds.arithmetic import extract_numeric_answer

ASSISTANT_TURN = "\n\nAssistant:"  # where HH-RLHF conversations hand over to the model
ROLES = ("system", "user", "assistant", "tool")


class DataWarning(UserWarning):
    """A dataset problem that does not stop the load: rows dropped, characters the tokenizer does not know."""


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


def not_an_object(row: Any, source: str, index: int) -> DataError:
    """The error for a row that is a list, a string or a number instead of an object (a dict)."""
    return DataError(f"{source or 'data'}: row {index} is a {type(row).__name__}, expected a dict "
                     '(a JSON object such as {"prompt": ..., ...})')


def check_messages(messages: Any, source: str, index: int, field: str) -> list[dict]:
    """A list of {"role", "content"} dicts with string values and a known role, or DataError."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{_where(source, index, field)}: expected a non-empty list of messages, "
                         f"got {type(messages).__name__}")
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{_where(source, index, field)}: message {j} must be a dict with "
                             f"'role' and 'content', got {m!r:.80}")
        if m["role"] not in ROLES or not isinstance(m["content"], str):
            raise DataError(f"{_where(source, index, field)}: message {j} has role {m['role']!r} "
                             f"(expected one of {ROLES}) and content of type {type(m['content']).__name__}")
    return messages


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    """Messages -> text with the tokenizer's chat template (never tokenised here)."""
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        raise DataError("conversational rows need a tokenizer with a chat template")
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

    Extra fields (e.g. "margin", gold scores) are kept. Raises DataError naming the source,
    row index and field for: a missing field, a wrong type, an empty or identical
    chosen/rejected, invalid messages.
    """
    if not isinstance(row, dict):
        raise not_an_object(row, source, index)
    for field in ("chosen", "rejected"):
        if field not in row or row[field] is None:
            raise DataError(f"{_where(source, index, field)}: missing")
    prompt, chosen, rejected = row.get("prompt"), row["chosen"], row["rejected"]
    if isinstance(chosen, list) or isinstance(rejected, list) or isinstance(prompt, list):
        # conversational: the prompt is messages (or, if absent, all but the last turn)
        msgs = {f: check_messages(row[f], source, index, f) for f in ("chosen", "rejected")
                if isinstance(row[f], list)}
        for f in ("chosen", "rejected"):
            if f not in msgs:
                raise DataError(f"{_where(source, index, f)}: expected a list of messages like the "
                                 f"other fields, got {type(row[f]).__name__}")
        if prompt is None:  # implicit prompt in conversational form: shared leading messages
            if msgs["chosen"][:-1] != msgs["rejected"][:-1]:
                raise DataError(f"{_where(source, index, 'chosen')}: without a prompt, chosen and "
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
                raise DataError(f"{_where(source, index, f)}: expected a string or a list of "
                                 f"messages, got {type(row[f]).__name__}")
        if prompt is None:  # implicit prompt: whole conversations with a shared beginning
            if chosen == rejected:
                raise DataError(f"{_where(source, index, 'rejected')}: identical to 'chosen'")
            p, c, r = split_implicit_prompt(chosen, rejected)
            out = {"prompt": p, "chosen": c, "rejected": r}
        else:
            out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    for f in ("chosen", "rejected"):
        if not out[f].strip():
            raise DataError(f"{_where(source, index, f)}: empty")
    if out["chosen"] == out["rejected"]:
        raise DataError(f"{_where(source, index, 'rejected')}: identical to 'chosen'")
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
        raise not_an_object(row, source, index)
    if "messages" in row and prompt_field not in row:
        msgs = check_messages(row["messages"], source, index, "messages")
        if msgs[-1]["role"] != "assistant":
            raise DataError(f"{_where(source, index, 'messages')}: the last message must be the "
                             f"assistant's reply, got role {msgs[-1]['role']!r}")
        prompt_msgs = msgs[:-1]
        out = {"prompt": render_chat(tokenizer, prompt_msgs, add_generation_prompt=True),
               "completion": _render_completion(tokenizer, prompt_msgs, msgs[-1:])}
    else:
        out = {}
        for f, name in ((prompt_field, "prompt"), (completion_field, "completion")):
            if f not in row or row[f] is None:
                raise DataError(f"{_where(source, index, f)}: missing")
            if not isinstance(row[f], str):
                raise DataError(f"{_where(source, index, f)}: expected a string, got {type(row[f]).__name__}")
            out[name] = row[f]
    if not out["completion"].strip():
        raise DataError(f"{_where(source, index, completion_field)}: empty")
    extra = {k: v for k, v in row.items() if k not in (prompt_field, completion_field, "messages")}
    return {**out, **extra}


# ---------------------------------------------------------------------------------------------
# Verifiable-reward rows (GRPO on real data)
# ---------------------------------------------------------------------------------------------


def normalize_answer_row(row: dict, index: int, source: str = "", prompt_field: str | None = None,
                         answer_field: str = "answer") -> dict:
    """One row of a question and its gradable answer -> {"prompt": str, "answer": str, "gold": Fraction}.

    The prompt is `prompt_field` (None: "prompt", else "question" as in GSM8K). The gold answer is
    the final answer of `answer_field`: a solution ending in "#### 18" (GSM8K), "\\boxed{18}",
    "The answer is 18", or a number. A row whose gold answer cannot be parsed is a bad row: every
    reward against it would be wrong. Extra fields are kept.
    """
    if not isinstance(row, dict):
        raise not_an_object(row, source, index)
    if prompt_field is None and "prompt" not in row and "question" not in row:
        raise DataError(f"{_where(source, index, 'prompt')}: missing (and no 'question'; --prompt-field "
                        "names another field)")
    prompt_field = prompt_field or ("prompt" if "prompt" in row else "question")
    for f in (prompt_field, answer_field):
        if row.get(f) is None:
            raise DataError(f"{_where(source, index, f)}: missing")
    prompt, answer = row[prompt_field], row[answer_field]
    if not isinstance(prompt, str):
        raise DataError(f"{_where(source, index, prompt_field)}: expected a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise DataError(f"{_where(source, index, prompt_field)}: empty")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):  # a JSON number: 18, 0.5, 1e-05
        gold, answer = (Fraction(str(answer)) if math.isfinite(answer) else None), str(answer)
    elif isinstance(answer, str):
        gold = extract_numeric_answer(answer)
    else:
        raise DataError(f"{_where(source, index, answer_field)}: expected a string or a number, "
                        f"got {type(answer).__name__}")
    if gold is None:
        raise DataError(f"{_where(source, index, answer_field)}: no final answer in {answer[-40:]!r}; expected "
                        "'#### <number>', '\\boxed{<number>}', 'The answer is <number>' or a number")
    extra = {k: v for k, v in row.items() if k not in (prompt_field, answer_field)}
    return {**extra, "prompt": prompt, "answer": answer, "gold": gold}


# ---------------------------------------------------------------------------------------------
# Checks that need the tokenizer: length, unknown characters
# ---------------------------------------------------------------------------------------------


def _file_field(raw: Any, key: str, aliases: dict[str, str]) -> str:
    """The field of the file's row that the normalised `key` came from, for error messages: the
    renamed field (`prompt_field` ...), else "messages" (a conversation), "question" (GSM8K) or
    "chosen" (an HH-style implicit prompt is the start of both conversations)."""
    name = aliases.get(key) or key
    if isinstance(raw, dict):
        return next((f for f in (name, "messages", "question", "chosen") if f in raw), name)
    return name


def _length_errors(tokenizer, rows: dict[int, dict], max_length: int, completion_keys: tuple[str, ...],
                   source: str, field: Callable[[int, str], str]) -> dict[int, DataError]:
    """{row: error} for the rows whose prompt + completion (+ EOS) is over `max_length` tokens, counted
    as `lm.encode_pairs` encodes them (no EOS added to a text that ends with it). One batched
    tokenizer call per key."""
    index = list(rows)
    if not index:
        return {}

    def n_tokens(key: str) -> list[int]:
        return [len(ids) for ids in tokenizer([rows[i][key] for i in index], add_special_tokens=False,
                                                  return_attention_mask=False)["input_ids"]]

    n_prompt, errors = n_tokens("prompt"), {}
    for key in completion_keys:
        for i, n_p, n_c in zip(index, n_prompt, n_tokens(key)):
            eos = needs_eos(tokenizer, rows[i][key])
            if n_p + n_c + eos > max_length and i not in errors:
                errors[i] = DataError(f"{_where(source, i, field(i, key))}: prompt + {key}{' + EOS' if eos else ''} is "
                                      f"{n_p + n_c + eos} tokens, longer than max_length={max_length} (--max-length)")
    return errors


def unknown_characters(tokenizer, rows: dict[int, dict], keys: tuple[str, ...]) -> dict[int, tuple[str, str]]:
    """{row: (key, character)} for the rows whose text holds a character the tokenizer turns into its
    unk token, with the first such character.

    Each distinct character is encoded once, alone, so this stays fast on any dataset (a set of
    characters, one batched call, one set test per field). A tokenizer without an unk token (byte-level
    BPE) knows every character; one with byte fallback never emits it, so nothing is found.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not rows:
        return {}
    chars: set[str] = set()
    for r in rows.values():
        for key in keys:
            chars.update(r[key])
    chars_list = sorted(chars)
    encoded = tokenizer(chars_list, add_special_tokens=False)["input_ids"] if chars_list else []
    unknown = {ch for ch, ids in zip(chars_list, encoded) if unk in ids}
    if not unknown:
        return {}
    found = {}
    for i, r in rows.items():
        key = next((k for k in keys if not unknown.isdisjoint(r[k])), None)
        if key is not None:
            found[i] = (key, next(ch for ch in r[key] if ch in unknown))
    return found


# ---------------------------------------------------------------------------------------------
# Loading: read, normalise, check, then raise the first bad row or drop and count them
# ---------------------------------------------------------------------------------------------


def _load(source, normalize: Callable[[Any, int, str], dict], text_keys: tuple[str, ...], tokenizer,
          drop_invalid: bool, report: dict | None, max_length: int | None = None, strict_vocab: bool = False,
          aliases: dict[str, str] | None = None) -> list[dict]:
    """Every row of `source`, normalised and checked; the first bad row (in file order) is raised,
    or with `drop_invalid` every bad row is dropped and counted.

    text_keys: the normalised string fields, the prompt first, then the completions (those
    `max_length` applies to). With a tokenizer: over-long rows are bad rows; rows with characters
    it does not know are counted (bad rows with `strict_vocab`). The counts go into `report`
    (source, n_rows, n_dropped, errors, n_unknown, unknown_examples, unk_token) and each note
    (`report_lines`) is warned once as a DataWarning.
    """
    raw, name = _rows_from_source(source)
    if not raw:
        raise DataError(f"{name} holds no rows")
    good: dict[int, dict] = {}
    bad: dict[int, DataError] = {}
    for i, row in enumerate(raw):
        try:
            if isinstance(row, _BadLine):
                raise row.error
            check_utf8(row, name, i)
            good[i] = normalize(row, i, name)
        except DataError as e:
            bad[i] = e
    unknown: dict[int, tuple[str, str]] = {}
    if tokenizer is not None:
        field = lambda i, key: _file_field(raw[i], key, aliases or {})  # noqa: E731
        if max_length is not None:
            for i, e in _length_errors(tokenizer, good, max_length, text_keys[1:], name, field).items():
                bad.setdefault(i, e)
        unknown = unknown_characters(tokenizer, good, text_keys)
        if strict_vocab:
            for i, (key, ch) in unknown.items():
                bad.setdefault(i, DataError(
                    f"{_where(name, i, field(i, key))}: character {ch!r} (U+{ord(ch):04X}) is not in the "
                    f"tokenizer's vocabulary, it would become {tokenizer.unk_token} (--strict-vocab)"))
    if bad and not drop_invalid:
        raise bad[min(bad)]
    rows = [r for i, r in good.items() if i not in bad]
    unknown = {i: u for i, u in unknown.items() if i not in bad}
    examples: dict[str, int] = {}  # character -> first row, three of them
    for i, (_, ch) in unknown.items():
        if len(examples) < 3:
            examples.setdefault(ch, i)
    info = {"source": name, "n_rows": len(raw), "n_kept": len(rows), "n_dropped": len(bad),
            "errors": [str(bad[i]) for i in sorted(bad)], "n_unknown": len(unknown),
            "unknown_examples": list(examples.items()), "unk_token": getattr(tokenizer, "unk_token", None)}
    if report is not None:
        report.update(info)
    if not rows:
        raise DataError(f"{name}: all {len(raw):,} rows are invalid; first: {info['errors'][0]}")
    for line in report_lines(info):
        warnings.warn(line, DataWarning, stacklevel=3)
    return rows


def report_lines(report: dict) -> list[str]:
    """The notes of a load, one line each (what the command line prints after "[data] "): how many
    invalid rows were dropped, and how many rows hold characters the tokenizer does not know."""
    lines = []
    if report.get("n_dropped"):
        lines.append(f"{report['source']}: dropped {report['n_dropped']:,} of {report['n_rows']:,} invalid rows; "
                     f"first: {report['errors'][0]}")
    if report.get("n_unknown"):
        examples = ", ".join(f"{ch!r} row {i}" for ch, i in report["unknown_examples"])
        lines.append(f"{report['source']}: {report['n_unknown']:,} of {report['n_kept']:,} rows have characters "
                     f"the tokenizer does not know (e.g. {examples}); they become {report['unk_token']}; "
                     "--strict-vocab makes this an error")
    return lines


def load_preferences(source, tokenizer=None, drop_invalid: bool = False, report: dict | None = None,
                     max_length: int | None = None, strict_vocab: bool = False) -> list[dict]:
    """Preference rows from a file, a Dataset or a list -> validated {"prompt","chosen","rejected"} dicts.

    With a tokenizer and `max_length` (the trainer's), a row whose prompt + chosen + EOS or
    prompt + rejected + EOS is longer is a bad row. With `drop_invalid=True`, bad rows are dropped
    with a warning giving the count, and the counts and messages are written into `report` (a dict
    you pass in) if given. `strict_vocab`: a character the tokenizer does not know is a bad row.
    """
    return _load(source, lambda r, i, name: normalize_preference_row(r, i, tokenizer, name),
                 ("prompt", "chosen", "rejected"), tokenizer, drop_invalid, report, max_length, strict_vocab)


def load_completions(source, tokenizer=None, drop_invalid: bool = False, max_length: int | None = None,
                     prompt_field: str = "prompt", completion_field: str = "completion",
                     report: dict | None = None, strict_vocab: bool = False) -> list[dict]:
    """SFT rows -> validated {"prompt", "completion"} dicts; a row over `max_length` tokens
    (prompt + completion + EOS) is a bad row. The rest as `load_preferences`."""
    if max_length is not None and tokenizer is None:
        raise ValueError("max_length needs a tokenizer to count tokens")
    return _load(source, lambda r, i, name: normalize_completion_row(r, i, tokenizer, name, prompt_field,
                                                                      completion_field),
                 ("prompt", "completion"), tokenizer, drop_invalid, report, max_length, strict_vocab,
                 aliases={"prompt": prompt_field, "completion": completion_field})


def load_prompts_with_answers(source, tokenizer=None, prompt_field: str | None = None, answer_field: str = "answer",
                              drop_invalid: bool = False, report: dict | None = None,
                              strict_vocab: bool = False) -> list[dict]:
    """Rows for RL on verifiable rewards (GRPO on GSM8K) -> {"prompt", "answer", "gold"} dicts,
    `gold` the exact final answer (`normalize_answer_row`). A prompt that appears twice with two
    different answers is a bad row (the second one). The rest as `load_preferences`; only prompts
    are tokenized, so there is no length check.
    """
    seen: dict[str, tuple[int, Fraction]] = {}

    def normalize(row, i: int, name: str) -> dict:
        out = normalize_answer_row(row, i, name, prompt_field, answer_field)
        j, gold = seen.setdefault(out["prompt"], (i, out["gold"]))
        if gold != out["gold"]:
            raise DataError(f"{_where(name, i, answer_field)}: answer {out['gold']}, but row {j} has the same "
                            f"prompt with answer {gold}")
        return out

    return _load(source, normalize, ("prompt",), tokenizer, drop_invalid, report, strict_vocab=strict_vocab,
                 aliases={"prompt": prompt_field, "answer": answer_field})


def require_rows(n_rows: int, needed: int, flag: str, source: str, what: str = "rows") -> None:
    """ConfigError when a dataset has fewer rows than one step takes (GRPO: --prompts-per-step)."""
    if n_rows < needed:
        raise ConfigError(f"{flag} {needed} is more than the {n_rows:,} {what} in {source}: "
                          f"lower {flag} to at most {n_rows:,}, or add rows")


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
