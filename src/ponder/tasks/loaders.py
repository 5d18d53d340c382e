"""Read task files (JSON, JSONL, gzip of either, parquet) into located records.

Every record comes back with a location string ("file:line" for JSONL, "file: record N" for a
JSON array, "file: row N" for parquet) so that whoever turns records into problems can say
exactly which one was bad. A malformed record is reported in the warning list and skipped; the
rest carry on. A file with no usable record at all is an error naming the file.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

# (location, record) pairs: the location names the file and line/record/row.
Located = list[tuple[str, dict]]


class TaskFileError(ValueError):
    """A task file that cannot be used at all (missing, unreadable, or no usable record)."""


def _format_of(path: Path) -> tuple[str, bool]:
    """(format, gzipped) from the file name: format is json, jsonl or parquet."""
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    if gz:
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext in (".jsonl", ".ndjson"):
        return "jsonl", gz
    if ext == ".json":
        return "json", gz
    if ext in (".parquet", ".pq"):
        if gz:
            raise TaskFileError(f"{path}: gzipped parquet is not supported; parquet compresses itself")
        return "parquet", False
    raise TaskFileError(
        f"{path}: unknown task file type {ext or '(no extension)'!r}; "
        "expected .json, .jsonl, .parquet (optionally .gz for JSON/JSONL)"
    )


def _read_text(path: Path, gz: bool) -> str:
    try:
        if gz:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return f.read()
        return path.read_text(encoding="utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise TaskFileError(f"{path}: cannot read: {e}") from e


def _jsonl_records(path: Path, text: str, warnings: list[str]) -> Located:
    out: Located = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            warnings.append(f"{where}: not valid JSON ({e.msg} at column {e.colno}); skipped")
            continue
        if not isinstance(record, dict):
            warnings.append(f"{where}: expected a JSON object, got {type(record).__name__}; skipped")
            continue
        out.append((where, record))
    return out


def _json_records(path: Path, text: str, warnings: list[str]) -> Located:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":
            # Several top-level values: this is JSON Lines under a .json name.
            return _jsonl_records(path, text, warnings)
        raise TaskFileError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from e
    if isinstance(data, dict):
        # A single object wrapping the list, as some dataset dumps do ({"data": [...]}).
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            return [(f"{path}: record 1", data)]
        data = lists[0]
    if not isinstance(data, list):
        raise TaskFileError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    out: Located = []
    for i, record in enumerate(data, start=1):
        where = f"{path}: record {i}"
        if not isinstance(record, dict):
            warnings.append(f"{where}: expected a JSON object, got {type(record).__name__}; skipped")
            continue
        out.append((where, record))
    return out


def _parquet_records(path: Path) -> Located:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise TaskFileError(
            f"{path}: reading parquet needs pyarrow: pip install pyarrow (or pip install 'ponder[parquet]')"
        ) from e
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several unrelated types for a bad file
        raise TaskFileError(f"{path}: cannot read parquet: {e}") from e
    return [(f"{path}: row {i}", row) for i, row in enumerate(rows, start=1)]


def read_records(path: str | Path) -> tuple[Located, list[str]]:
    """All records of a task file as (location, dict) pairs, plus warnings for skipped ones.

    Raises TaskFileError when the file is missing, of an unknown type, unreadable, or holds
    no record at all.
    """
    path = Path(path)
    if path.is_dir():
        raise TaskFileError(f"{path}: is a folder; pass the task file itself")
    if not path.is_file():
        raise TaskFileError(f"{path}: no such file")
    fmt, gz = _format_of(path)
    warnings: list[str] = []
    if fmt == "parquet":
        records = _parquet_records(path)
    elif fmt == "jsonl":
        records = _jsonl_records(path, _read_text(path, gz), warnings)
    else:
        records = _json_records(path, _read_text(path, gz), warnings)
    if not records:
        detail = f" ({len(warnings)} malformed, first: {warnings[0]})" if warnings else ""
        raise TaskFileError(f"{path}: no usable record{detail}")
    return records, warnings
