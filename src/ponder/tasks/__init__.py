"""Tasks: the problem record, named public test sets read from local files, synthetic families.

    from ponder.tasks import load_task
    problems = load_task("math500", path="data/math500_test.jsonl", limit=50)
    problems = load_task("multiply")            # held-out synthetic problems (split "test")
    problems = load_task("multiply:train", limit=1000)

Named tasks:
  math500    MATH-500 records (problem, answer, subject, level, unique_id) -> kind "math"
  gsm8k      GSM8K records (question, answer with the gold after '####', commas stripped) -> "math"
  humaneval  HumanEval records (task_id, prompt, test, entry_point) -> kind "code", answer ""
  jsonl      any records with `prompt` or `problem` plus `answer` (file required) -> "math"
  multiply, program, trace   the synthetic families (see ponder.tasks.multiply / .program /
             .trace: programs with loops, branches and functions, traced by sys.settrace); append
             ":train" or ":test" to pick the split (default: test, the held-out one).

Data files are never shipped. Without `path`, a public set is looked for under its usual file
name in $PONDER_DATA and then ./data; `path` may be the file itself or a folder holding it.
Malformed records are logged (logger "ponder.tasks") with file and line, and skipped.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ponder.tasks import multiply, program, trace
from ponder.tasks.loaders import TaskFileError, read_records
from ponder.tasks.problem import Problem

__all__ = ["Problem", "load_task", "load_file", "family", "FAMILIES", "TaskFileError",
           "DEFAULT_FILES", "SYNTHETIC_SIZE"]

log = logging.getLogger("ponder.tasks")

# Synthetic family modules by name; each exposes generate, sft_text, check, ALPHABET.
FAMILIES = {multiply.NAME: multiply, program.NAME: program, trace.NAME: trace}
SYNTHETIC_SIZE = 500  # problems load_task gives for a synthetic task when no limit is set
SYNTHETIC_SEED = 0

# The usual file name of each public set, as its publishers distribute it.
DEFAULT_FILES = {
    "math500": "math500_test.jsonl",
    "gsm8k": "gsm8k_test.jsonl",
    "humaneval": "HumanEval.jsonl.gz",
}


def family(name: str):
    """The synthetic family module called `name` (a ValueError lists the known ones)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown synthetic task family {name!r}; known: {', '.join(FAMILIES)}") from None


def _text(record: dict, *names: str) -> str:
    """The first of `names` present in the record, as a string; ValueError names the field."""
    for name in names:
        value = record.get(name)
        if value is not None and not isinstance(value, (dict, list)):
            return str(value)
    raise ValueError(f"missing field {' or '.join(repr(n) for n in names)}")


def _math500(record: dict, index: int) -> Problem:
    meta = {k: record[k] for k in ("subject", "level", "solution") if k in record}
    return Problem(id=_text(record, "unique_id") if "unique_id" in record else f"math500-{index}",
                   prompt=_text(record, "problem"), answer=_text(record, "answer"), kind="math", meta=meta)


def _gsm8k(record: dict, index: int) -> Problem:
    solution = _text(record, "answer")
    if "####" not in solution:
        raise ValueError("field 'answer' has no '####' before the final answer")
    reasoning, _, gold = solution.rpartition("####")
    gold = gold.strip().replace(",", "")
    if not gold:
        raise ValueError("field 'answer' is empty after '####'")
    return Problem(id=f"gsm8k-{index}", prompt=_text(record, "question"), answer=gold, kind="math",
                   meta={"solution": reasoning.strip()})


def _humaneval(record: dict, index: int) -> Problem:
    return Problem(id=_text(record, "task_id"), prompt=_text(record, "prompt"), answer="", kind="code",
                   meta={"test": _text(record, "test"), "entry_point": _text(record, "entry_point")})


def _generic(record: dict, index: int) -> Problem:
    meta = {k: record[k] for k in ("subject", "level", "solution") if k in record}
    ident = next((str(record[k]) for k in ("id", "unique_id", "task_id") if record.get(k) is not None),
                 f"item-{index}")
    return Problem(id=ident, prompt=_text(record, "prompt", "problem"), answer=_text(record, "answer"),
                   kind="math", meta=meta)


_CONVERTERS = {"math500": _math500, "gsm8k": _gsm8k, "humaneval": _humaneval, "jsonl": _generic}


def load_file(name: str, path: str | Path) -> tuple[list[Problem], list[str]]:
    """Problems of file-backed task `name` from `path`, plus a warning per skipped record."""
    convert = _CONVERTERS[name]
    records, warnings = read_records(path)
    problems: list[Problem] = []
    for where, record in records:
        try:
            problems.append(convert(record, len(problems)))
        except ValueError as e:
            warnings.append(f"{where}: {e}; skipped")
    if not problems:
        raise TaskFileError(f"{path}: no usable {name} record (first: {warnings[0]})")
    return problems, warnings


def _find_data(name: str, path: str | Path | None) -> Path:
    filename = DEFAULT_FILES.get(name)
    if path is not None:
        path = Path(path)
        if path.is_dir() and filename is not None:
            return path / filename
        return path
    if filename is None:
        raise TaskFileError(f"task {name!r} needs a data file: pass path= (on the command line, --data PATH)")
    env = os.environ.get("PONDER_DATA")
    places = ([Path(env)] if env else []) + [Path("data")]
    for place in places:
        if (place / filename).is_file():
            return place / filename
    looked = ", ".join(str(p.resolve() / filename) for p in places)
    raise TaskFileError(
        f"task {name!r}: no data file {filename} found (looked in {looked}"
        f"{'' if env else '; $PONDER_DATA is not set'}); pass its path with --data PATH "
        "(JSON, JSONL, .gz or parquet)"
    )


def load_task(name: str, path: str | Path | None = None, limit: int | None = None) -> list[Problem]:
    """Problems of a named task; `limit` keeps the first N (synthetic: generates N)."""
    base, _, split = name.partition(":")
    if base in FAMILIES:
        if path is not None:
            raise ValueError(f"synthetic task {base!r} is generated, it takes no data file")
        return family(base).generate(split or "test", SYNTHETIC_SIZE if limit is None else limit,
                                     seed=SYNTHETIC_SEED)
    if split:
        raise ValueError(f"task {name!r}: only synthetic tasks take a ':split' suffix")
    if base not in _CONVERTERS:
        known = ", ".join([*_CONVERTERS, *FAMILIES])
        raise ValueError(f"unknown task {name!r}; known: {known}")
    problems, warnings = load_file(base, _find_data(base, path))
    for warning in warnings:
        log.warning(warning)
    return problems if limit is None else problems[:limit]
