"""`ponder grade FILE.jsonl`: grade a JSONL file of math answers or programs.

math: each line holds `gold` and either `pred` (an extracted answer) or `response` (a full model
response, answer extracted with --extract; a `truncated: true` or `finish_reason: "length"` field
marks a cut response). code: see ponder.rewards.code. Each output line repeats the input and adds
`correct`, a short `reason` and `grader` (version and settings). A malformed line is reported on
stderr with its line number and written out as incorrect with the error as its reason; the rest
still grade.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def _read(path: str) -> list[tuple[int, dict | None, str | None, str]]:
    """(line number, record or None, error or None, raw line) for every non-blank line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.append((number, None, f"not valid JSON ({exc.msg} at column {exc.colno})", line))
                continue
            if not isinstance(record, dict):
                rows.append((number, None, "not a JSON object", line))
                continue
            rows.append((number, record, None, line))
    return rows


def _math_error(record: dict) -> str | None:
    if not isinstance(record.get("gold"), (str, int, float)) or isinstance(record.get("gold"), bool):
        return "missing field 'gold' (a string or number)"
    has_pred, has_resp = "pred" in record, "response" in record
    if has_pred == has_resp:
        return "needs exactly one of 'pred' or 'response'"
    value = record["pred"] if has_pred else record["response"]
    if value is not None and not isinstance(value, (str, int, float)):
        return f"field '{'pred' if has_pred else 'response'}' must be a string or number"
    return None


def _grade_math(rows, args) -> tuple[list[dict], str]:
    from ponder.rewards.math import DEFAULT_SETTINGS, describe, grade_many

    grader = describe(DEFAULT_SETTINGS)
    results: list[dict | None] = [None] * len(rows)
    todo = []
    for i, (number, record, error, raw) in enumerate(rows):
        error = error or _math_error(record)
        if error:
            print(f"{args.file}:{number}: {error}", file=sys.stderr)
            base = record if record is not None else {"line": number, "raw": raw.rstrip("\n")}
            results[i] = {**base, "correct": False, "reason": f"line {number}: {error}"}
        else:
            todo.append(i)
    groups = {"pred": [i for i in todo if "pred" in rows[i][1]],
              "response": [i for i in todo if "response" in rows[i][1]]}
    for field, idx in groups.items():
        records = [rows[i][1] for i in idx]
        grades = grade_many(
            [str(r["gold"]) for r in records], [str(r[field] or "") for r in records],
            extract=None if field == "pred" else args.extract,
            truncated=[bool(r.get("truncated")) or r.get("finish_reason") == "length" for r in records],
            workers=args.workers)
        for i, r, g in zip(idx, records, grades):
            out = {**r, "correct": g.correct, "reason": g.reason, "grader": grader}
            if field == "response":
                out["extracted"] = g.pred
            results[i] = out
    return results, grader


def _grade_code(rows, args) -> tuple[list[dict], str]:
    from ponder.rewards.code import grade_records

    results: list[dict | None] = [None] * len(rows)
    good = []
    for i, (number, record, error, raw) in enumerate(rows):
        if error:
            print(f"{args.file}:{number}: {error}", file=sys.stderr)
            results[i] = {"line": number, "raw": raw.rstrip("\n"), "correct": False,
                          "reason": f"line {number}: {error}"}
        else:
            good.append(i)
    while True:   # grade_records checks every record first and names the first bad one
        try:
            graded = grade_records([rows[i][1] for i in good], args.workers)
            break
        except ValueError as exc:
            m = re.match(r"record (\d+): (.*)", str(exc), re.S)
            if not m:
                raise
            i = good.pop(int(m.group(1)))
            number, error = rows[i][0], m.group(2)
            print(f"{args.file}:{number}: {error}", file=sys.stderr)
            results[i] = {**rows[i][1], "correct": False, "reason": f"line {number}: {error}"}
    for i, g in zip(good, graded):
        results[i] = {**rows[i][1], "correct": bool(g.correct), "reason": g.reason,
                      "grader": "ponder.rewards.code"}
    return results, "ponder.rewards.code"


def main(args) -> int:
    if not Path(args.file).is_file():
        print(f"ponder grade: no such file: {args.file}", file=sys.stderr)
        return 2
    rows = _read(args.file)
    results, grader = (_grade_code if args.kind == "code" else _grade_math)(rows, args)
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    try:
        for r in results:
            out.write(json.dumps(r, ensure_ascii=False) + "\n")
    finally:
        if args.out:
            out.close()
    n_ok = sum(r["correct"] for r in results)
    print(f"graded {len(results)} lines: {n_ok} correct ({grader})", file=sys.stderr)
    return 0
