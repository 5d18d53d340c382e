"""Read task data (JSON, JSONL, gzip of either, parquet, Hugging Face datasets) into located records.

Every record comes back with a location string ("file:line" for JSONL, "file: record N" for a
JSON array, "file: row N" for parquet, "dataset [split]: row N" for a dataset) so that whoever
turns records into problems can say exactly which one was bad. A malformed record is reported
in the warning list and skipped; the rest carry on. A source with no usable record at all is an
error naming it.

A Hugging Face dataset is either a folder written by `save_to_disk` or a hub id ("owner/name")
that `datasets.load_dataset` has cached on this machine before; nothing is ever downloaded.
Both are read through the `datasets` library, an optional dependency (`pip install
'ponder[datasets]'`).
"""

from __future__ import annotations

import gzip
import json
import re
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


# What a hub id looks like ("name" or "owner/name"); anything else that does not exist is a missing file.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_FILE_SUFFIXES = (".json", ".jsonl", ".ndjson", ".gz", ".parquet", ".pq")


def _datasets(where: str):
    try:
        import datasets
    except ImportError as e:
        raise TaskFileError(f"{where}: reading a Hugging Face dataset needs the datasets library: "
                            "pip install datasets (or pip install 'ponder[datasets]')") from e
    return datasets


def is_saved_dataset(path: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` (state.json) or `DatasetDict.save_to_disk`."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _cached_hub_dataset(name: str):
    """The dataset `name` from the local `datasets` cache, with the library held offline for the
    call so that it never reaches the network."""
    datasets = _datasets(name)
    offline = datasets.config.HF_HUB_OFFLINE
    verbosity = datasets.logging.get_verbosity()
    datasets.config.HF_HUB_OFFLINE = True
    datasets.logging.set_verbosity_error()  # it warns that it fell back to the cache, which is the point
    try:
        return datasets.load_dataset(name)
    except ConnectionError as e:  # offline and not cached: the library says it could not reach the hub
        raise TaskFileError(
            f"{name}: no such file or folder, and not a Hugging Face dataset in the local cache "
            f"(ponder downloads nothing: load it once online with datasets.load_dataset({name!r}), "
            "or pass a folder written by save_to_disk)") from e
    except Exception as e:  # several configs cached, a broken cache entry: the library's message says which
        raise TaskFileError(f"{name}: cannot load this cached Hugging Face dataset: {e}") from e
    finally:
        datasets.config.HF_HUB_OFFLINE = offline
        datasets.logging.set_verbosity(verbosity)


def _dataset_records(source: str, data, split: str | None) -> Located:
    """Rows of a Dataset, or of one split of a DatasetDict, as located records."""
    if hasattr(data, "keys"):  # a DatasetDict: one split, named or the only one
        splits = list(data.keys())
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in splits:
            asked = f"no split {split!r}" if split is not None else "several splits"
            raise TaskFileError(f"{source}: {asked}; it has {', '.join(splits)}: choose one with the split "
                                "setting (task_split / eval_split in a training config, --split on the command line)")
        data = data[split]
    elif split is not None and data.split is not None and str(data.split) != split:
        raise TaskFileError(f"{source}: holds only split {str(data.split)!r}, not {split!r}")
    label = f"{source} [{split}]" if split else source
    return [(f"{label}: row {i}", row) for i, row in enumerate(data, start=1)]


def read_records(path: str | Path, split: str | None = None) -> tuple[Located, list[str]]:
    """All records of a task file or Hugging Face dataset as (location, dict) pairs, plus
    warnings for skipped ones. `split` picks a dataset's split (None: its only one).

    Raises TaskFileError when the source is missing, of an unknown type, unreadable, or holds
    no record at all.
    """
    name, path = str(path), Path(path)
    if path.is_file():
        if split is not None:
            raise TaskFileError(f"{path}: a split ({split!r}) applies to a Hugging Face dataset, not to a file")
        return _file_records(path)
    if path.is_dir():
        if not is_saved_dataset(path):
            raise TaskFileError(f"{path}: is a folder, and not one written by datasets' save_to_disk; "
                                "pass the task file itself")
        try:
            data = _datasets(name).load_from_disk(name)
        except Exception as e:  # a damaged folder: the library names what is wrong
            raise TaskFileError(f"{path}: cannot load this saved dataset: {e}") from e
    elif _HUB_ID.fullmatch(name) and not name.lower().endswith(_FILE_SUFFIXES):
        data = _cached_hub_dataset(name)
    else:
        raise TaskFileError(f"{path}: no such file")
    records = _dataset_records(name, data, split)
    if not records:
        raise TaskFileError(f"{name}: no usable record (the dataset is empty)")
    return records, []


def _file_records(path: Path) -> tuple[Located, list[str]]:
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
