"""Reading data files: JSON, JSON Lines and Parquet into raw rows, with one-line errors for files
that cannot be data (a missing path, a folder, an empty file, a Git LFS pointer, a CSV named .parquet,
a JSON document that is not a list of rows) and bytes that are not UTF-8 kept for `check_utf8` to name.

`data.py` normalises and checks the rows this module reads; the split keeps "what is in the file"
apart from "what a row must hold".
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError, DataFileNotFound

SURROGATE = re.compile("[\ud800-\udfff]")  # never in valid text; a byte that was not UTF-8 (surrogateescape)
LFS_POINTER = b"version https://git-lfs"  # how a Git LFS pointer file starts
PARQUET_MAGIC = b"PAR1"  # the first and last 4 bytes of every Parquet file
SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _where(source: str, index: int, field: str) -> str:
    return f"{source or 'data'}: row {index}, field {field!r}"


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
    """DataError naming the field whose text holds a byte that was not UTF-8 (or a lone surrogate)."""
    if not isinstance(row, dict):
        return
    for field, value in row.items():
        hit = _first_surrogate(value)
        if hit is not None:
            ch, pos = hit
            what = (f"byte 0x{ord(ch) - 0xDC00:02x}" if 0xDC80 <= ord(ch) <= 0xDCFF  # surrogateescape's range
                    else f"lone surrogate U+{ord(ch):04X}")
            raise DataError(f"{_where(source, index, field)}: not valid UTF-8 text ({what} at character {pos})")


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------


@dataclass
class _BadLine:
    """A line of JSON Lines that is not JSON: it keeps its row's place and is a bad row like any other."""

    error: DataError


def read_rows(path: str | os.PathLike) -> list:
    """The rows of a JSON, JSON Lines or Parquet file, or a one-line error saying why the file cannot
    be a dataset: DataFileNotFound for a missing path; DataError for a directory, another suffix, an
    empty or whitespace-only file, a Git LFS pointer, a .parquet file that is not Parquet, JSON whose
    top level is not a list of rows. Rows are not checked here (a row may be a list, or a `_BadLine`).
    """
    path = Path(path)
    if not path.exists():
        raise DataFileNotFound(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path} is a directory, expected a .json, .jsonl or .parquet file")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .json, .jsonl or .parquet)")
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        raise DataError(f"{path} is empty (0 bytes)")
    if head.startswith(LFS_POINTER):
        raise DataError(f"{path} is a Git LFS pointer, not the data: fetch the file itself (git lfs pull)")
    return _parquet_rows(path, head) if kind == "parquet" else _json_rows(path.read_bytes(), path)


def _parquet_rows(path: Path, head: bytes) -> list:
    """Rows of a Parquet file (pyarrow), after checking the b"PAR1" magic at both ends."""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 4))
        tail = f.read(4)
    if not head.strip():
        raise DataError(f"{path} holds only whitespace, no rows")
    if not head.startswith(PARQUET_MAGIC) or tail != PARQUET_MAGIC:
        raise DataError(f"{path} is not a Parquet file (no b'PAR1' magic bytes; it starts with {head[:20]!r}): "
                        "a CSV or JSON file named .parquet?")
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({' '.join(str(e).split())})") from None


def _json_rows(raw: bytes, path: Path) -> list:
    """JSON (a list of rows) or JSON Lines (a row a line), decoded with errors="surrogateescape":
    each byte that is not UTF-8 becomes a lone surrogate, left for `check_utf8` to name with its
    row and field. A line of JSON Lines that is not JSON becomes a `_BadLine` in its row's place."""
    text = raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")  # a BOM is not a row
    if not text.strip():
        raise DataError(f"{path} holds only whitespace, no rows")
    if text.lstrip().startswith("["):
        return _json_document(text, path)
    rows: list = []
    for line_no, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 may sit in a string
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if not rows and line.strip() == "{":  # one JSON object over several lines, not JSON Lines
                return _json_document(text, path)
            rows.append(_BadLine(DataError(f"{path}: line {line_no} (row {len(rows)}) is not valid JSON: "
                                           f"{e.msg} at column {e.colno}")))
    if len(rows) == 1 and _rows_key(rows[0]) is not None:  # {"data": [{...}, ...]} on one line
        return _top_level_rows(rows[0], path)
    return rows


def _rows_key(doc: Any) -> str | None:
    """The key of a JSON object that wraps the rows ({"data": [{...}, ...]}), or None: a list of
    objects that are not chat messages (those have a "role")."""
    if not isinstance(doc, dict):
        return None
    return next((k for k, v in doc.items() if isinstance(v, list) and v
                 and all(isinstance(x, dict) and "role" not in x for x in v)), None)


def _json_document(text: str, path: Path) -> list:
    """The rows of one JSON document, which must be a list (of row objects)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    return _top_level_rows(doc, path)


def _top_level_rows(doc: Any, path: Path) -> list:
    """`doc` if it is a list (of rows), else the DataError saying what the top level is instead."""
    if isinstance(doc, list):
        return doc
    keys = f" with keys {list(doc)[:5]}" if isinstance(doc, dict) else ""
    hint = f" (are the rows the list under {key!r}?)" if (key := _rows_key(doc)) is not None else ""
    raise DataError(f"{path}: the top level is a JSON {type(doc).__name__}{keys}{hint}, expected a list of "
                    "row objects ([{...}, ...]) or JSON Lines (one object a line)")


def _rows_from_source(source) -> tuple[list, str]:
    """A path (JSON/JSONL/Parquet), a `datasets.Dataset` or a list of dicts -> (rows, name)."""
    if isinstance(source, (str, os.PathLike)):
        return read_rows(source), str(source)
    if hasattr(source, "to_list") and hasattr(source, "column_names"):  # a datasets.Dataset
        return source.to_list(), "dataset"
    if isinstance(source, list):
        return source, "rows"
    raise TypeError(f"expected a path, a datasets.Dataset or a list of dicts, got {type(source).__name__}")
