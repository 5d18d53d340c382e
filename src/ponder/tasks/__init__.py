"""Tasks: the problem record, named public test sets read from local files, synthetic families.

    from ponder.tasks import load_task
    problems = load_task("math500", path="data/math500_test.jsonl", limit=50)
    problems = load_task("multiply")            # held-out synthetic problems (split "test")
    problems = load_task("multiply:train", limit=1000)

Named tasks:
  math500    MATH-500 records (problem, answer, subject, level, unique_id) -> kind "math"
  gsm8k      GSM8K records (question, answer with the gold after '####', commas stripped) -> "math"
  humaneval  HumanEval records (task_id, prompt, test, entry_point) -> kind "code", answer ""
  jsonl      your own records: `prompt` or `problem` plus `answer`, or the fields that
             prompt_column / answer_column name (path required) -> "math"
  multiply, program, products, trace   the synthetic families (ponder.tasks.multiply, .program,
             .products: easy and hard products, for the calculator tool; .trace: programs with
             loops, branches and functions, traced by sys.settrace); append
             ":train" or ":test" to pick the split (default: test, the held-out one).
  addition, wordproblems   arithmetic asked in words for instruct models (ponder.tasks.arithmetic:
             "What is 23 + 48?", short word problems) -> kind "math"; ":train" / ":test" as above.

Data files are never shipped. Without `path`, a public set is looked for under its usual file
name in $PONDER_DATA and then ./data; `path` may be the file itself or a folder holding it.
`path` may also be a Hugging Face dataset (a save_to_disk folder, or a hub id already in the
local cache; `split` picks its split), read by ponder.tasks.loaders:

    problems = load_task("jsonl", path="my_dataset", split="train",
                         prompt_column="question", answer_column="solution")

Every field of a record besides the prompt and the answer is kept in `Problem.meta`, where
reward functions find it (a `tolerance` field: `problem.meta["tolerance"]`).
Malformed records are logged (logger "ponder.tasks") with file and line, and skipped.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from ponder.tasks import arithmetic, multiply, products, program, trace
from ponder.tasks.loaders import TaskFileError, is_saved_dataset, read_records
from ponder.tasks.problem import Problem

__all__ = ["Problem", "load_task", "load_file", "family", "FAMILIES", "TaskFileError",
           "DEFAULT_FILES", "SYNTHETIC_SIZE"]

log = logging.getLogger("ponder.tasks")

# Synthetic family modules by name; each exposes generate, sft_text, check, ALPHABET.
FAMILIES = {multiply.NAME: multiply, program.NAME: program, products.NAME: products, trace.NAME: trace}
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
        if isinstance(value, (dict, list)):
            raise ValueError(f"field {name!r} holds a {type(value).__name__}, not text")
        if value is not None:
            return str(value)
    raise ValueError(f"missing field {' or '.join(repr(n) for n in names)}")


def _rest(record: dict, *used: str) -> dict:
    """Every field but the `used` ones: per-problem data that reward functions may read."""
    return {k: v for k, v in record.items() if k not in used}


def _math500(record: dict, index: int) -> Problem:
    return Problem(id=_text(record, "unique_id") if "unique_id" in record else f"math500-{index}",
                   prompt=_text(record, "problem"), answer=_text(record, "answer"), kind="math",
                   meta=_rest(record, "problem", "answer"))


def _gsm8k(record: dict, index: int) -> Problem:
    solution = _text(record, "answer")
    if "####" not in solution:
        raise ValueError("field 'answer' has no '####' before the final answer")
    reasoning, _, gold = solution.rpartition("####")
    gold = gold.strip().replace(",", "")
    if not gold:
        raise ValueError("field 'answer' is empty after '####'")
    return Problem(id=f"gsm8k-{index}", prompt=_text(record, "question"), answer=gold, kind="math",
                   meta={**_rest(record, "question", "answer"), "solution": reasoning.strip()})


def _humaneval(record: dict, index: int) -> Problem:
    return Problem(id=_text(record, "task_id"), prompt=_text(record, "prompt"), answer="", kind="code",
                   meta={**_rest(record, "prompt"), "test": _text(record, "test"),
                         "entry_point": _text(record, "entry_point")})


def _generic(record: dict, index: int, prompt_column: str | None = None, answer_column: str | None = None) -> Problem:
    prompt_names = (prompt_column,) if prompt_column else ("prompt", "problem")
    answer_name = answer_column or "answer"
    prompt_name = next((n for n in prompt_names if record.get(n) is not None), prompt_names[0])
    ident = next((str(record[k]) for k in ("id", "unique_id", "task_id") if record.get(k) is not None),
                 f"item-{index}")
    return Problem(id=ident, prompt=_text(record, *prompt_names), answer=_text(record, answer_name),
                   kind="math", meta=_rest(record, prompt_name, answer_name))


_CONVERTERS = {"math500": _math500, "gsm8k": _gsm8k, "humaneval": _humaneval, "jsonl": _generic}


def load_file(name: str, path: str | Path, split: str | None = None, prompt_column: str | None = None,
              answer_column: str | None = None) -> tuple[list[Problem], list[str]]:
    """Problems of file-backed task `name` from `path` (a file or a Hugging Face dataset), plus a
    warning per skipped record. The column names apply to task "jsonl" (your own records); the
    public sets read their own fields."""
    convert = _CONVERTERS[name]
    if name == "jsonl":
        convert = functools.partial(_generic, prompt_column=prompt_column, answer_column=answer_column)
    records, warnings = read_records(path, split)
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
        if path.is_dir() and filename is not None and not is_saved_dataset(path):
            return path / filename
        return path
    if filename is None:
        raise TaskFileError(f"task {name!r} needs its data: set task_path (eval_path for the held-out task) "
                            "in a training config, or pass --data PATH on the command line")
    env = os.environ.get("PONDER_DATA")
    places = ([Path(env)] if env else []) + [Path("data")]
    for place in places:
        if (place / filename).is_file():
            return place / filename
    looked = ", ".join(str(p.resolve() / filename) for p in places)
    raise TaskFileError(
        f"task {name!r}: no data file {filename} found (looked in {looked}"
        f"{'' if env else '; $PONDER_DATA is not set'}); give its path (JSON, JSONL, .gz, parquet or a "
        "Hugging Face dataset) as task_path / eval_path in a training config, or --data PATH on the command line"
    )


def load_task(name: str, path: str | Path | None = None, limit: int | None = None, *, split: str | None = None,
              prompt_column: str | None = None, answer_column: str | None = None) -> list[Problem]:
    """Problems of a named task; `limit` keeps the first N (synthetic: generates N).

    split: the split of a Hugging Face dataset `path` (None: its only one).
    prompt_column, answer_column: the fields holding prompt and gold answer, for task "jsonl"
    (None: "prompt" or "problem", and "answer"); the public sets read their own fields.
    """
    base, _, suffix = name.partition(":")
    if base in arithmetic.GENERATORS:
        if path is not None or split is not None:
            raise ValueError(f"task {base!r} is generated: it takes no data file, and its split is named in "
                             f"the task ({base}:train or {base}:test)")
        return arithmetic.generate(base, suffix or "test", SYNTHETIC_SIZE if limit is None else limit,
                                   seed=SYNTHETIC_SEED)
    if base in FAMILIES:
        if path is not None or split is not None:
            raise ValueError(f"synthetic task {base!r} is generated: it takes no data file, and its split "
                             f"is named in the task ({base}:train or {base}:test)")
        return family(base).generate(suffix or "test", SYNTHETIC_SIZE if limit is None else limit,
                                     seed=SYNTHETIC_SEED)
    if suffix:
        raise ValueError(f"task {name!r}: only synthetic tasks take a ':split' suffix (a dataset's split: "
                         "task_split / eval_split in a training config, --split on the command line)")
    if base not in _CONVERTERS:
        known = ", ".join([*_CONVERTERS, *FAMILIES, *arithmetic.GENERATORS])
        raise ValueError(f"unknown task {name!r}; known: {known}")
    problems, warnings = load_file(base, _find_data(base, path), split, prompt_column, answer_column)
    for warning in warnings:
        log.warning(warning)
    return problems if limit is None else problems[:limit]
