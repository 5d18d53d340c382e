"""Math answer grading: extract the final answer from a response and decide whether it equals the
gold answer, exactly, fast and within a time bound. This module is the public face; the work is
split by what a reader looks for:

- ponder.rewards.math_extract: the final answer of a response (boxes, answer lines, last number);
- ponder.rewards.math_normalize: `clean` (notation without value) and reading numbers and lists;
- ponder.rewards.math_compare: is an answer equal to the gold (labels, the fast path, then sympy
  in ponder.rewards.math_symbolic, in a killable worker process bounded by `timeout_s`);
- ponder.rewards.math_settings: the conventions that are a choice (`GraderSettings`) and
  `describe(settings)`, the string to record next to every result.

Here: `grade` (extract, then compare; several boxes weighed by settings.boxes), `grade_many`, and
the reward `math_accuracy`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ponder.rewards.math_compare import _compare, equivalent, rounded_equal
from ponder.rewards.math_compare import _symbolic  # noqa: F401  (ponder.bench.grade and the tests call it)
from ponder.rewards.math_extract import extract_answer, extract_answers, last_boxed
from ponder.rewards.math_normalize import _fraction  # noqa: F401  (ponder.bench.grade reads numbers with it)
from ponder.rewards.math_normalize import clean, enclosed, split_top_level
from ponder.rewards.math_settings import DEFAULT_SETTINGS, GRADER_VERSION, GraderSettings, describe

__all__ = ["DEFAULT_SETTINGS", "GRADER_VERSION", "Grade", "GraderSettings", "clean", "describe", "enclosed",
           "equivalent", "extract_answer", "extract_answers", "grade", "grade_many", "last_boxed",
           "math_accuracy", "rounded_equal", "split_top_level"]


@dataclass(frozen=True)
class Grade:
    correct: bool
    reason: str
    pred: str | None = None   # the extracted answer (None when nothing was extracted)


def _is_list(g: str) -> bool:
    """A cleaned gold with several members: a bare list, a set, or a \\pm."""
    inner = g[2:-2] if g.startswith("\\{") and enclosed(g) else g
    return "\\pm" in g or (not enclosed(inner) and len(split_top_level(inner)) > 1)


def _grade_boxes(gold: str, boxes: list[str], settings: GraderSettings) -> Grade:
    """Several different boxed answers (setting boxes="all"): right when each equals the gold (the
    same answer restated), or when the gold is a list and the boxes together are that list; a
    single gold with boxes that disagree is wrong -- the response did not commit to one answer."""
    boxes = list(dict.fromkeys(boxes))   # a box restated word for word counts once
    joined = ", ".join(boxes)
    verdicts = [_compare(gold, b, settings) for b in boxes]
    if all(ok for ok, _ in verdicts):
        return Grade(True, verdicts[-1][1], joined)
    g = clean(str(gold), settings)
    if _is_list(g):
        as_set = "\\{" + joined + "\\}" if g.startswith("\\{") else joined
        ok, reason = _compare(gold, as_set, settings)
        return Grade(ok, reason, joined)
    return Grade(False, "boxed answers disagree", joined)


def grade(gold: str, text: str, *, extract: str | None = None, truncated: bool = False,
          settings: GraderSettings | None = None) -> Grade:
    """Grade one answer. extract=None: `text` is the answer itself; "strict"/"lenient": `text` is a
    full response and the answer is extracted first (nothing from a truncated response). Several
    different \\boxed{} answers are weighed by settings.boxes."""
    settings = settings or DEFAULT_SETTINGS
    if extract is None:
        correct, reason = _compare(gold, text, settings)
        return Grade(correct, reason, text)
    answers = extract_answers(text, extract, truncated=truncated, settings=settings)
    if not answers:
        return Grade(False, "truncated" if truncated else "no answer found")
    if settings.boxes == "all" and len(set(answers)) > 1:
        return _grade_boxes(str(gold), answers, settings)
    correct, reason = _compare(gold, answers[-1], settings)
    return Grade(correct, reason, answers[-1])


def grade_many(golds: list[str], texts: list[str], *, extract: str | None = None,
               truncated: list[bool] | None = None, settings: GraderSettings | None = None,
               workers: int | None = None) -> list[Grade]:
    """Grade many answers: the fast path here, symbolic comparisons over `workers` processes."""
    if len(golds) != len(texts):
        raise ValueError(f"grade_many: {len(golds)} gold answers but {len(texts)} answers")
    truncated = truncated or [False] * len(golds)
    workers = workers or os.cpu_count() or 1
    jobs = list(zip(golds, texts, truncated))
    if workers == 1 or len(jobs) < 2:
        return [grade(g, t, extract=extract, truncated=tr, settings=settings) for g, t, tr in jobs]
    with ThreadPoolExecutor(max_workers=workers) as pool:   # threads wait; processes compute
        return list(pool.map(lambda j: grade(j[0], j[1], extract=extract, truncated=j[2],
                                             settings=settings), jobs))


# ---------------------------------------------------------------- reward

def math_accuracy(prompt: str, completion: str, problem, *, truncated: bool = False,
                  settings: GraderSettings | None = None) -> float | None:
    """Reward: 1.0 when the strictly extracted answer equals problem.answer, else 0.0.

    None (not applicable) when the problem has no gold answer or is a code problem. A truncated
    completion scores 0.0: its last boxed expression is not a committed answer.
    """
    gold = getattr(problem, "answer", "") or ""
    if not str(gold).strip() or getattr(problem, "kind", "math") == "code":
        return None
    result = grade(str(gold), completion, extract="strict", truncated=truncated, settings=settings)
    return 1.0 if result.correct else 0.0
