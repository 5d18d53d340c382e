"""Comparing a math answer with the gold answer: `equivalent` and `_compare` (clean both, then
`_decide`). Cheapest first: labelled answers (`x = 5`, `(p,q) = (3,2)`, `AB = 4, CD = 5`) are
compared by their values where the other side is unlabelled; the fast path decides plain
numbers as exact Fractions (and rounded decimals against non-terminating golds), text answers
as normalised text, base-n numerals as digits, and lists of numbers; everything else goes to
ponder.rewards.math_symbolic (sympy via latex2sympy2_extended) in a killable worker process, so
a pathological input costs at most `timeout_s` and yields "timed out" -- from any thread, in
any process, without SIGALRM.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, replace
from fractions import Fraction
from functools import lru_cache
from math import floor, gcd

from ponder.rewards.math_normalize import (_WHOLE_TEXT, _number, _number_list, clean, enclosed,
                                           split_top_level)
from ponder.rewards.math_settings import DEFAULT_SETTINGS, GraderSettings
from ponder.rewards.worker_pool import WorkerDied, WorkerPool, WorkerTimeout

_BASE = re.compile(r"^(\d+)_\{?(\d+)\}?$")


def _terminates(q: Fraction) -> bool:
    d = q.denominator
    for f in (2, 5):
        while d % f == 0:
            d //= f
    return d == 1


_SHOWN = re.compile(r"^([+-]?)(\d*)\.(\d+)$")
_DOUBLE_EPS = Fraction(1, 2 ** 52)


def rounded_equal(exact: Fraction, shown: str, min_digits: int) -> bool:
    """Is the decimal `shown` the value `exact` rounded or truncated to the places it shows, with at
    least `min_digits` significant digits? With 16 or more digits the value's nearest double as
    printed (within 2^-52 relative) also counts. Callers keep terminating golds exact; for an
    irrational gold `exact` is its value to 20 more places than shown."""
    m = _SHOWN.match(shown.replace(" ", ""))
    if not m or min_digits <= 0 or exact == 0:
        return False
    sign, whole, places = m.groups()
    digits = (whole + places).lstrip("0")
    if len(digits) < min_digits or (sign == "-") != (exact < 0):
        return False
    units = int(whole + places)             # the shown value in units of its last place
    scaled = abs(exact) * 10 ** len(places)
    if units in (floor(scaled), floor(scaled + Fraction(1, 2))):
        return True
    return len(digits) >= 16 and abs(units - scaled) <= scaled * _DOUBLE_EPS


def _lists_equal(g, p, settings: GraderSettings) -> bool:
    (gb, gv, _), (pb, pv, pp) = g, p
    if gb != pb or len(gv) != len(pv):
        return False
    ordered = not (gb == "{}" or (gb == "" and not settings.ordered_lists))
    if (gv == pv) if ordered else (sorted(gv) == sorted(pv)):
        return True
    if not settings.rounded_decimals:
        return False

    def same(a: Fraction, i: int) -> bool:
        return a == pv[i] or not _terminates(a) and rounded_equal(a, pp[i], settings.rounded_decimals)
    if ordered:
        return all(same(a, i) for i, a in enumerate(gv))
    left = list(range(len(pv)))
    for a in gv:
        k = next((i for i in left if same(a, i)), None)
        if k is None:
            return False
        left.remove(k)
    return True


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


def _fast(gold: str, pred: str, settings: GraderSettings) -> tuple[bool, str] | None:
    """A decision without sympy, or None when the symbolic path is needed."""
    if gold == pred:
        return True, "equal"
    gt, pt = _text(gold), _text(pred)
    if gt is not None or pt is not None:
        g = gt if gt is not None else _choice_or_text(gold)
        p = pt if pt is not None else _choice_or_text(pred)
        return (True, "equal (text)") if g == p else (False, "not equal")
    g, p = gold, pred
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
            if not _terminates(gf) and rounded_equal(gf, p, settings.rounded_decimals):
                return True, "equal (rounded)"
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
    return None



# ---------------------------------------------------------------- labelled answers

# A label names a quantity: x, V_1, \theta, AB (a segment), |AB|, [ABC] (an area), \angle ABC, a
# ratio V_1:V_2 or \frac{NO}{BO} of such names, f(x), or a tuple of names (p, q).
_SYM = (r"(?:[A-Za-z]|[A-Z]{2,4}|\\(?:alpha|beta|gamma|delta|epsilon|theta|lambda|mu|phi|varphi|psi|rho|"
        r"sigma|tau|omega|Delta|Omega))(?:_\{?[A-Za-z0-9]+\}?)?'*")
_QTY = rf"(?:{_SYM}|\|{_SYM}\||\\overline\{{{_SYM}\}}|\[{_SYM}\]|(?:m\s*)?\\angle\s*{_SYM})"
_LABEL = re.compile(rf"(?:{_QTY}(?:\s*:\s*{_QTY})*|\\frac\{{{_QTY}\}}\{{{_QTY}\}}|{_QTY}\s*/\s*{_QTY}"
                    rf"|[A-Za-z](?:\^\{{-1\}})?'*\s*\(\s*(?:{_SYM}|-?\d+)(?:\s*,\s*(?:{_SYM}|-?\d+))*\s*\)"
                    rf"|\(\s*{_SYM}(?:\s*,\s*{_SYM})+\s*\))")
_RELATION = re.compile(r"[=<>]|\\(?:le|ge|leq|geq|ne|neq|lt|gt|in)(?![a-zA-Z])")


def _one_label(part: str) -> tuple[str, str] | None:
    """(label, value) for "label = value", else None."""
    if part.count("=") != 1:
        return None
    label, value = (x.strip() for x in part.split("="))
    if not value or _RELATION.search(value) or not _LABEL.fullmatch(label):
        return None
    return re.sub(r"\s+", "", label), value


def _labels(s: str) -> list[tuple[str, str]] | None:
    """[(label, value)] for a labelled answer (x = 1, 2 / AB = 4, CD = 5 / (p,q) = (3,2)), else None."""
    whole = _one_label(s)
    if whole is not None:
        label, value = whole
        if label.startswith("(") and value.startswith("(") and enclosed(value):   # (p,q) = (3,2)
            names, values = split_top_level(label[1:-1]), split_top_level(value[1:-1])
            if len(names) == len(values):
                return list(zip(names, values))
        return [whole]
    parts = split_top_level(s)
    pairs = [_one_label(p) for p in parts] if len(parts) > 1 else [None]
    return None if any(p is None for p in pairs) else pairs


def _values(pairs: list[tuple[str, str]]) -> str:
    return ", ".join(v for _, v in pairs)


def _all_equal(pairs: list[tuple[str, str]], settings: GraderSettings) -> tuple[bool, str]:
    for g, p in pairs:
        ok, reason = _decide(g, p, settings)
        if not ok:
            return ok, reason
    return True, "equal (labelled)"


def _compare_labelled(g: str, p: str, settings: GraderSettings) -> tuple[bool, str] | None:
    """Compare labelled answers by their values; None when neither side is labelled, when the
    labels differ (x = 5 vs y = 5: equations) or the other side is an equation or inequality."""
    gl, pl = _labels(g), _labels(p)
    if gl is None and pl is None:
        return None
    if gl is not None and pl is not None:
        gn, pn = [n for n, _ in gl], [n for n, _ in pl]
        if len(set(gn)) == 1 and set(gn) == set(pn):      # x = 1, x = -2: one unknown's solutions
            return _decide(_values(gl), _values(pl), settings)
        if len(set(gn)) == len(gn) and sorted(gn) == sorted(pn):   # named members, any order
            values = dict(pl)
            return _all_equal([(v, values[n]) for n, v in gl], settings)
        return None
    one, other = (gl, p) if gl is not None else (pl, g)
    if _RELATION.search(other):
        return None
    names = [n for n, _ in one]
    if len(set(names)) == 1:
        pair = (_values(one), other)
        return _decide(*(pair if gl is not None else pair[::-1]), settings)
    # named members (AB = 4, CD = 5) against a list or tuple written in the same order
    inner = other[1:-1] if other[:1] == "(" and enclosed(other) else other
    members = split_top_level(inner)
    if len(members) != len(one):
        return False, "not equal"
    pairs = [(v, m) if gl is not None else (m, v) for (_, v), m in zip(one, members)]
    return _all_equal(pairs, settings)


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


# Arithmetic on plain numbers left undone ("60 + 38", "3 \\times 4", "2^3") where the gold is a
# number. It equals the gold symbolically, but a grader that accepts it pays a policy for restating
# the question and leaving the sum to the grader: Gemma 3's zero run learned exactly that, "The
# answer is: 60 + 38", in five steps. A fraction (1/2) and scientific notation (3 \\times 10^5)
# are ways of writing a number, not sums to do.
_PLAIN = r"\(?[+-]?\d+(?:\.\d+)?\)?"
_UNEVALUATED = re.compile(rf"{_PLAIN}(?:\s*(?:\+|-|\*|\^|×|÷|\\times|\\cdot|\\div)\s*{_PLAIN})+")
_SCIENTIFIC = re.compile(r"[+-]?\d+(?:\.\d+)?\s*(?:\*|×|\\times|\\cdot)\s*10\s*\^\s*\{?[+-]?\d+\}?")


def _decide(g: str, p: str, settings: GraderSettings) -> tuple[bool, str]:
    """(equal?, reason) for two cleaned answers: labels, then the fast path, then sympy."""
    if not g:
        return False, "empty gold answer"
    if not p:
        return False, "empty answer"
    if "=" in g or "=" in p:
        labelled = _compare_labelled(g, p, settings)
        if labelled is not None:
            return labelled
    if (_UNEVALUATED.fullmatch(p) and not _SCIENTIFIC.fullmatch(p) and not _UNEVALUATED.fullmatch(g)
            and _number(g, settings) is not None):
        return False, "unevaluated arithmetic"
    fast = _fast(g, p, settings)
    if fast is not None:
        return fast
    try:
        return _symbolic(g, p, settings)
    except WorkerTimeout:
        return False, "timed out"   # not cached: a later call may have more time


_COMMA_DECIMAL = re.compile(r"\s*\$?\s*([+-]?\d+)(?:\{,\}|,)(\d+)\s*\$?\s*")


def _compare(gold: str, pred: str, settings: GraderSettings) -> tuple[bool, str]:
    g = clean(str(gold), settings)
    pred = str(pred)
    if settings.decimal_comma:   # 3,5 is three and a half where the gold is one number
        m = _COMMA_DECIMAL.fullmatch(pred)
        if m and _number(g, settings) is not None:
            pred = f"{m.group(1)}.{m.group(2)}"
    return _decide(g, clean(pred, settings), settings)


def equivalent(gold: str, pred: str, settings: GraderSettings | None = None, **overrides) -> bool:
    """Is the answer `pred` equal to `gold`? Bounded by settings.timeout_s; never raises on odd input."""
    settings = replace(settings or DEFAULT_SETTINGS, **overrides)
    return _compare(gold, pred, settings)[0]
