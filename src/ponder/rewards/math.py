"""Math answer grading: extract the final answer from a response and decide whether it equals the
gold answer, exactly, fast and within a time bound.

Three stages, cheapest first:
1. `clean` removes notation that carries no value (``$``, ``\\left``, degree and currency signs,
   ``\\text{}`` units, thousands separators) and applies the percent convention;
2. the fast path compares plain numbers (integers, decimals, fractions, mixed numbers, repeating
   decimals) as exact `Fraction`s, text answers as normalised text, base-n numerals as digits;
3. everything else goes to `ponder.rewards.math_symbolic` (sympy via latex2sympy2_extended) in a
   killable worker process, so a pathological input costs at most `timeout_s` and yields
   "timed out" -- from any thread, in any process, without SIGALRM.

Conventions that are a choice live in `GraderSettings`; `describe(settings)` is the string to
record next to every result.
"""

from __future__ import annotations

import ast
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from functools import lru_cache
from math import gcd

from ponder.rewards.worker_pool import WorkerDied, WorkerPool, WorkerTimeout

GRADER_VERSION = "ponder-math/1"


@dataclass(frozen=True)
class GraderSettings:
    """Grading conventions. Every one of them is a choice; the defaults follow MATH's answers."""

    percent: str = "ignore"          # "ignore": 5\% == 5 (sign dropped); "value": 5\% == 0.05 != 5. A bare 5 never equals 0.05.
    ordered_lists: bool = False      # False: a bare list "1, 2" is an unordered set of solutions; True: order matters. (a,b) tuples are always ordered, \{a,b\} sets never.
    unreduced_fractions: bool = True  # True: \frac{2}{4} == \frac{1}{2}; False: a fraction written with a common factor is wrong.
    thousands_separators: bool = True  # True: 1,000 and 1{,}000 are one thousand; False: they are lists.
    base_subscript_optional: bool = True  # True: 52 == 52_8 (the question names the base); 52_8 != 52_9 always.
    timeout_s: float = 5.0           # wall-clock bound on one symbolic comparison; past it: incorrect, "timed out".

    def __post_init__(self):
        if self.percent not in ("ignore", "value"):
            raise ValueError(f"GraderSettings.percent must be 'ignore' or 'value', not {self.percent!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"GraderSettings.timeout_s must be positive, not {self.timeout_s!r}")


DEFAULT_SETTINGS = GraderSettings()


def describe(settings: GraderSettings = DEFAULT_SETTINGS) -> str:
    """The grader's identity to record with results, e.g. 'ponder-math/1 percent=ignore ...'."""
    return GRADER_VERSION + " " + " ".join(f"{k}={v}" for k, v in asdict(settings).items())


@dataclass(frozen=True)
class Grade:
    correct: bool
    reason: str
    pred: str | None = None   # the extracted answer (None when nothing was extracted)


# ---------------------------------------------------------------- extraction

_BOX = re.compile(r"\\(?:boxed|fbox)\b")
_FINAL = re.compile(r"final answer(?:\s+is)?\s*[:=]?|^\s*\**answer\**\s*[:=]|####", re.IGNORECASE)
_ANSWER_IS = re.compile(r"answer is\s*[:=]?", re.IGNORECASE)
_HOPE = re.compile(r"\.?\s*I hope it is correct\.?\s*$", re.IGNORECASE)
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def _braced(text: str, start: int) -> str | None:
    """Content of the brace group opening at text[start] == '{', or None if it never closes."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == "\\":          # skip escaped characters such as \{ and \}
            continue
        if c == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif c == "}" and (i == 0 or text[i - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return text[start + 1:i]
    return None


def last_boxed(text: str) -> str | None:
    """The last \\boxed{...} / \\fbox{...} (balanced braces) or \\boxed 5 in text, else None."""
    matches = list(_BOX.finditer(text))
    if not matches:
        return None
    end = matches[-1].end()
    rest = text[end:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        return _braced(text, end + len(rest) - len(stripped))
    m = re.match(r"\s+([^\s$]+)", rest)   # \boxed 5
    return m.group(1) if m else None


def _after_marker(text: str, marker: re.Pattern) -> str | None:
    """What follows the last marker on the last line that has one ("The final answer is 5")."""
    for line in reversed(text.splitlines()):
        found = list(marker.finditer(line))
        if found:
            answer = _HOPE.sub("", line[found[-1].end():]).strip().strip("*").strip().rstrip(" .")
            answer = re.sub(r"^\$+|\$+$", "", answer).strip().rstrip(" .")
            return answer or None
    return None


def extract_answer(text: str, mode: str = "strict", truncated: bool = False) -> str | None:
    """The final answer of a response, or None.

    strict (RL rewards): the last \\boxed{...} (also \\boxed 5 and \\fbox{...}) after the thinking
    block, else the last explicit final-answer line ("The final answer is X", "Answer: X",
    "#### X"). lenient (evaluation): strict, else "the answer is X", else the last number.
    A truncated response yields None in both modes: its last number is not an answer.
    """
    if mode not in ("strict", "lenient"):
        raise ValueError(f"extract_answer: mode must be 'strict' or 'lenient', not {mode!r}")
    if truncated:
        return None
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    elif "<think>" in text:      # thinking never finished
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip() or None
    if _BOX.search(text):        # a box that never closes: the response was cut
        return None
    final = _after_marker(text, _FINAL)
    if final is not None:
        return final
    if mode == "lenient":
        said = _after_marker(text, _ANSWER_IS)
        if said is not None:
            return said
        numbers = _NUMBER.findall(text)
        if numbers:
            return numbers[-1]
    return None


# ---------------------------------------------------------------- cleaning

_SPACES = re.compile(r"(?<!\\)\\[,;:!> ]|\\quad|\\qquad|~|\\displaystyle|\\limits")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big)\s*(?=[()\[\]|.]|\\[{}|])")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree|\^\s*\{\s*\}")
_CURRENCY = re.compile(r"\\\$|\$|\\text\{\s*\\\$\s*\}|€|£|\\euro|\\pounds")
_PERCENT = re.compile(r"\s*(?:\\%|%|\\text\{\s*\\?%\s*\}|\\text\{\s*percent\s*\}|\s+percent\b)\s*$")
_TEXT_UNIT = re.compile(r"\s*\\(?:text|mbox|mathrm|textrm)\s*\{[^{}]*\}\s*(?:\^\s*\{?\d\}?)?\s*$")
_WORD_UNIT = re.compile(r"\s+[a-zA-Z]{2,}(?:\s+[a-zA-Z]+)*\s*(?:\^\s*\{?\d\}?)?\s*$")
_WHOLE_TEXT = re.compile(r"^\\(?:text|textbf|mbox|mathrm|textrm|mathbf)\s*\{([^{}]*)\}$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def clean(answer: str, settings: GraderSettings = DEFAULT_SETTINGS) -> str:
    """Remove notation without value; the result is still LaTeX."""
    s = answer.strip()
    for _ in range(3):   # peel wrappers: $...$, \(...\), \[...\], \boxed{...}
        s = re.sub(r"^\$+(.*?)\$+$", r"\1", s, flags=re.S).strip()
        s = re.sub(r"^\\[(\[](.*)\\[)\]]$", r"\1", s, flags=re.S).strip()
        m = re.match(r"^\\(?:boxed|fbox)\s*\{", s)
        if m and _braced(s, m.end() - 1) is not None and len(_braced(s, m.end() - 1)) == len(s) - m.end() - 1:
            s = s[m.end():-1].strip()
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    # 1{,}000 and 1,\!000 are explicit thousands separators; "1, 234" (comma, space) is a list
    explicit_thousands = bool(re.search(r"\{,\}|,\s*\\!", s)) or not re.search(r",\s", s)
    s = s.replace("\\mathrm{e}", "e").replace("{,}", ",").replace("\u2212", "-")
    s = _SPACES.sub(" ", s)
    s = _LEFT_RIGHT.sub("", s).replace("\\left.", "").replace("\\right.", "")
    s = _DEGREES.sub("", s)
    s = _CURRENCY.sub("", s)
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"(?<=\d)\.$", "", s).rstrip(" .")   # sentence full stop, not a decimal point
    if _PERCENT.search(s):
        s = _PERCENT.sub("", s).strip()
        if settings.percent == "value":
            s = "\\frac{%s}{100}" % s
    m = _WHOLE_TEXT.match(s)
    if m and not re.search(r"[A-Za-z]", m.group(1)):   # \text{5}: a number typeset as text
        s = m.group(1).strip()
    # Units: trailing \text{...} after some math, or plain words after a number.
    while _TEXT_UNIT.search(s) and _TEXT_UNIT.sub("", s).strip():
        s = _TEXT_UNIT.sub("", s).strip()
    m = _WORD_UNIT.search(s)
    if m and _fraction(s[:m.start()].strip(), settings) is not None:
        s = s[:m.start()].strip()
    s = s.strip().rstrip(".").strip()
    if explicit_thousands and _THOUSANDS.match(s.replace(" ", "")):
        # 1,000: one number, or (thousands_separators=False) the list 1, 000 -- never both
        s = s.replace(",", "").replace(" ", "") if settings.thousands_separators else s.replace(",", ", ")
    return s


# ---------------------------------------------------------------- fast path

_INT = r"[+-]?\d+"
_FRAC_FORMS = [
    re.compile(r"^([+-]?)\\frac\{(" + _INT + r")\}\{(" + _INT + r")\}$"),
    re.compile(r"^([+-]?)\\frac(\d)(\d)$"),
    re.compile(r"^([+-]?)\\frac\{(" + _INT + r")\}(\d)$"),
    re.compile(r"^([+-]?)\\frac(\d)\{(" + _INT + r")\}$"),
    re.compile(r"^([+-]?)(" + _INT + r")/(" + _INT + r")$"),
]
_DECIMAL = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)$")
_MIXED = re.compile(r"^([+-]?)(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}$")
_REPEATING = re.compile(r"^([+-]?)(\d*)\.(\d*)\\overline\{(\d+)\}$")
_BASE = re.compile(r"^(\d+)_\{?(\d+)\}?$")


def _fraction(s: str, settings: GraderSettings) -> Fraction | None:
    """A plain number written in s, as an exact Fraction; None if s is anything else."""
    s = s.replace(" ", "")
    if _DECIMAL.match(s):
        return Fraction(s if not s.endswith(".") else s[:-1])
    for form in _FRAC_FORMS:
        m = form.match(s)
        if m:
            num, den = int(m.group(2)), int(m.group(3))
            if den == 0:
                return None
            value = Fraction(num, den)
            return -value if m.group(1) == "-" else value
    m = _MIXED.match(s)
    if m and int(m.group(4)):
        value = int(m.group(2)) + Fraction(int(m.group(3)), int(m.group(4)))
        return -value if m.group(1) == "-" else value
    m = _REPEATING.match(s)
    if m:
        whole, fixed, rep = m.group(2) or "0", m.group(3), m.group(4)
        value = Fraction(int(whole)) + Fraction(int(fixed or "0"), 10 ** len(fixed)) + \
            Fraction(int(rep), (10 ** len(rep) - 1) * 10 ** len(fixed))
        return -value if m.group(1) == "-" else value
    return None


_INNER_FRAC = re.compile(r"\\frac\{([^{}]*)\}\{([^{}]*)\}")
_ARITH_CHARS = re.compile(r"^[0-9.+\-*/() ]+$")


def _arithmetic(s: str) -> Fraction | None:
    """The exact value of plain arithmetic on numbers (2(14), -(326.5), \\frac{3}{4}\\cdot 2, 2^{10}),
    computed with Fractions; None for anything else (variables, radicals, big powers...)."""
    if len(s) > 200 or re.search(r"\d\s*\\frac", s):   # 2\frac{1}{2} is a mixed number, not 2 * 1/2
        return None
    t = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    for _ in range(10):
        t, n = _INNER_FRAC.subn(r"((\1)/(\2))", t)
        if not n:
            break
    t = t.replace("\\cdot", "*").replace("\\times", "*")
    t = re.sub(r"\^\s*\{?\s*(-?\d{1,2})\s*\}?", r"**(\1)", t)
    if not _ARITH_CHARS.match(t):
        return None
    t = re.sub(r"(?<=[\d)])\s*(?=\()|(?<=\))\s*(?=[\d.])", "*", t)   # 2(14), (2)(3)
    try:
        tree = ast.parse(t, mode="eval")
        return _evaluate(tree.body, t)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError):
        return None


def _evaluate(node, source: str) -> Fraction:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return Fraction(ast.get_source_segment(source, node))   # exact: "0.1" is 1/10
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand, source)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        a, b = _evaluate(node.left, source), _evaluate(node.right, source)
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Sub):
            return a - b
        if isinstance(node.op, ast.Mult):
            return a * b
        if isinstance(node.op, ast.Div):
            return a / b
        if isinstance(node.op, ast.Pow) and b.denominator == 1 and abs(b) <= 64 \
                and abs(a.numerator) < 10 ** 12 and a.denominator < 10 ** 12:
            return a ** int(b)
    raise ValueError("not plain arithmetic")


def _number(s: str, settings: GraderSettings) -> Fraction | None:
    value = _fraction(s, settings)
    return value if value is not None else _arithmetic(s)


_OPEN = {"(": ")", "[": "]", "\\{": "\\}"}


def split_top_level(s: str) -> list[str]:
    """s split at the commas outside any brackets or braces."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return [p.strip() for p in parts]


def _number_list(s: str, settings: GraderSettings):
    """(brackets, [values]) for a tuple, interval, set or bare list of plain numbers, else None.
    brackets is e.g. "(]" or "{}" or "" (bare); a single number is not a list."""
    s = s.strip()
    brackets, inner = "", s
    if s.startswith("\\{") and s.endswith("\\}"):
        brackets, inner = "{}", s[2:-2]
    elif s[:1] in "([" and s[-1:] in ")]":
        brackets, inner = s[0] + s[-1], s[1:-1]
    if "," not in inner:
        return None
    parts = split_top_level(inner)
    if brackets and brackets != "{}" and any(not p for p in parts):
        return None
    values = [_number(p, settings) for p in parts]
    if any(v is None for v in values):
        return None
    return brackets, values


def _lists_equal(g, p, settings: GraderSettings) -> bool:
    (gb, gv), (pb, pv) = g, p
    if gb != pb or len(gv) != len(pv):
        return False
    if gb == "{}" or (gb == "" and not settings.ordered_lists):
        return sorted(gv) == sorted(pv)
    return gv == pv


def _unreduced(s: str) -> bool:
    m = re.match(r"^[+-]?\\frac\{[+-]?(\d+)\}\{(\d+)\}$|^[+-]?(\d+)/(\d+)$", s.replace(" ", ""))
    if not m:
        return False
    a, b = (int(x) for x in (m.group(1, 2) if m.group(1) else m.group(3, 4)))
    return gcd(a, b) > 1


def _text(s: str) -> str | None:
    """The words of a text answer (\\text{Evelyn}, (C), east), normalised; None for math."""
    m = _WHOLE_TEXT.match(s)
    inner = m.group(1) if m else s
    if m or re.fullmatch(r"\(?[A-Za-z]*[A-Za-z]{3,}[A-Za-z ]*\)?", s):
        if re.search(r"[A-Za-z]", inner):
            return re.sub(r"[\s().]", "", inner).lower()
    return None


def _choice_or_text(s: str) -> str:
    m = _WHOLE_TEXT.match(s)
    return re.sub(r"[\s().]", "", m.group(1) if m else s).lower()


_ASSIGN = re.compile(r"^([a-zA-Z])\s*=\s*([^=<>]+)$")


def _fast(gold: str, pred: str, settings: GraderSettings) -> tuple[bool, str] | None:
    """A decision without sympy, or None when the symbolic path is needed."""
    if gold == pred:
        return True, "equal"
    gt, pt = _text(gold), _text(pred)
    if gt is not None or pt is not None:
        g = gt if gt is not None else _choice_or_text(gold)
        p = pt if pt is not None else _choice_or_text(pred)
        return (True, "equal (text)") if g == p else (False, "not equal")
    ga, pa = _ASSIGN.match(gold), _ASSIGN.match(pred)
    if ga and pa and ga.group(1) != pa.group(1):
        return None
    g = ga.group(2).strip() if ga else gold
    p = pa.group(2).strip() if pa else pred
    gb, pb = _BASE.match(g.replace(" ", "")), _BASE.match(p.replace(" ", ""))
    if gb or pb:
        if gb and pb:
            return (True, "equal") if gb.groups() == pb.groups() else (False, "not equal")
        digits = (gb or pb).group(1)
        other = (p if gb else g).replace(" ", "")
        if settings.base_subscript_optional and re.fullmatch(r"\d+", other):
            return (True, "equal") if other == digits else (False, "not equal")
        return False, "not equal"
    gf, pf = _number(g, settings), _number(p, settings)
    if gf is not None and pf is not None:
        if gf != pf:
            return False, "not equal"
        if not settings.unreduced_fractions and _unreduced(p):
            return False, "fraction not in lowest terms"
        return True, "equal"
    if (gf is None) != (pf is None) and (gf is not None and _number_list(p, settings) is not None
                                         or pf is not None and _number_list(g, settings) is not None):
        return False, "not equal"
    gl, pl = _number_list(g, settings), _number_list(p, settings)
    if gl is not None and pl is not None:
        return (True, "equal") if _lists_equal(gl, pl, settings) else (False, "not equal")
    if g == p:
        return True, "equal"
    return None


# ---------------------------------------------------------------- symbolic path

_POOL = WorkerPool("ponder.rewards.math_symbolic", size=max(1, os.cpu_count() or 1))


@lru_cache(maxsize=65536)
def _symbolic(gold: str, pred: str, settings: GraderSettings) -> tuple[bool, str]:
    try:
        return _POOL.call((gold, pred, asdict(settings)), settings.timeout_s)
    except WorkerTimeout:
        raise
    except WorkerDied as exc:
        return False, f"grader worker died: {exc}"


def _compare(gold: str, pred: str, settings: GraderSettings) -> tuple[bool, str]:
    g, p = clean(str(gold), settings), clean(str(pred), settings)
    if not g:
        return False, "empty gold answer"
    if not p:
        return False, "empty answer"
    fast = _fast(g, p, settings)
    if fast is not None:
        return fast
    try:
        return _symbolic(g, p, settings)
    except WorkerTimeout:
        return False, "timed out"   # not cached: a later call may have more time


def equivalent(gold: str, pred: str, settings: GraderSettings | None = None, **overrides) -> bool:
    """Is the answer `pred` equal to `gold`? Bounded by settings.timeout_s; never raises on odd input."""
    settings = replace(settings or DEFAULT_SETTINGS, **overrides)
    return _compare(gold, pred, settings)[0]


def grade(gold: str, text: str, *, extract: str | None = None, truncated: bool = False,
          settings: GraderSettings | None = None) -> Grade:
    """Grade one answer. extract=None: `text` is the answer itself; "strict"/"lenient": `text` is a
    full response and the answer is extracted first (nothing from a truncated response)."""
    settings = settings or DEFAULT_SETTINGS
    if extract is not None:
        pred = extract_answer(text, extract, truncated=truncated)
        if pred is None:
            return Grade(False, "truncated" if truncated else "no answer found")
    else:
        pred = text
    correct, reason = _compare(gold, pred, settings)
    return Grade(correct, reason, pred)


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
