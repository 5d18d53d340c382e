"""The symbolic half of the math grader: parse two cleaned LaTeX answers with latex2sympy2_extended
and decide whether they are the same mathematical object.

This module runs inside a killable worker process (see `ponder.rewards.worker_pool`), so nothing
here needs its own timeout. The rules are exact by design:
- numbers whose value is rational are compared as exact rationals (1/2^99 != 1/2^98);
- other closed numbers are compared by evaluating their *difference* with adaptive precision
  (sympy evalf, up to 400 digits): a difference evalf resolves to 30 significant digits is real,
  however small (1 != 2^{1/2^{1000}}); one it cannot tell from zero at 400 digits counts as zero
  when it is also below 1e-100 relative to the values (sqrt(2)+sqrt(3) == sqrt(5+2 sqrt(6)));
- an undefined value (1/0, 0/0: sympy's zoo and nan) equals nothing, itself included;
- expressions with variables must agree at several random points (a fast rejection) and then be
  proven equal by simplify, or agree at every point to 1e-100 relative (documented in README);
- a decimal in the answer equals a non-terminating gold number when it is that number rounded or
  truncated to the places shown (setting rounded_decimals, see ponder.rewards.math_compare.rounded_equal);
- a tuple is never a set, an interval never a list, x > 5 never x < 5; equations are equal when
  one is a nonzero constant multiple of the other.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import struct
import sys
from fractions import Fraction
from functools import lru_cache

import sympy as sp
from sympy.core.evalf import PrecisionExhausted
from sympy.core.relational import Relational

from latex2sympy2_extended.latex2sympy2 import latex2sympy
from latex2sympy2_extended.math_normalization import NormalizationConfig, normalize_latex
from latex2sympy2_extended.sets import FiniteSet

from ponder.rewards.math_compare import rounded_equal
from ponder.rewards.math_normalize import enclosed, split_top_level

# units=False on purpose: math-verify's unit stripper deletes single letters such as a trailing
# "c" or "s" (so "x + c" would become "x +"); ponder strips units itself, in text form only.
_NORMALIZE = NormalizationConfig(basic_latex=True, units=False, malformed_operators=True,
                                 nits=False, boxed="none", equations=False)
_MAXN = 400                     # digits evalf may use to resolve a cancelling difference
_REL = sp.Float(10) ** -100     # a difference this small relative to the values counts as zero
_POINTS = 3                     # random points for comparing expressions with variables
_DECIMAL = re.compile(r"(?<![\d.])(\d*)\.(\d+)(?![\d.])")
_MEMORY_LIMIT = 2 << 30        # bytes of address space for a worker process


def _exact_decimals(latex: str) -> str:
    """Write decimals as fractions so that 0.1 is exactly 1/10 (latex2sympy makes Floats)."""
    def frac(m: re.Match) -> str:
        whole, digits = m.group(1) or "0", m.group(2)
        return "(\\frac{%d}{%d})" % (int(whole + digits), 10 ** len(digits))
    return _DECIMAL.sub(frac, latex)


@lru_cache(maxsize=4096)
def parse(latex: str):
    """Cleaned LaTeX answer -> sympy object (Expr, Relational, Set, Tuple or Matrix)."""
    text = _exact_decimals(normalize_latex(latex, _NORMALIZE))
    complex_ = bool(re.search(r"(?<![a-zA-Z\\])i(?![a-zA-Z])", text))
    obj = _parse_structure(text, not complex_)
    if complex_:
        def to_i(e):
            return e.xreplace({s: sp.I for s in e.free_symbols if s.name == "i"})
        obj = obj.applyfunc(to_i) if isinstance(obj, sp.MatrixBase) else to_i(obj)
    return obj


def _parse_structure(text: str, real: bool):
    """Unions, lists, tuples, intervals and sets are split here and their members parsed one by
    one: one small parse per member is much faster than the grammar's ambiguous list rules, and
    the bracket rules are ponder's own: {..} and bare lists are sets, (a, b) with real a < b is an
    open interval, [a, b] (a <= b) and half-open pairs are intervals, other (...) are tuples."""
    pieces = [p.strip() for p in re.split(r"\\cup", text)]
    if len(pieces) > 1 and all(pieces):
        members = [_parse_structure(p, real) for p in pieces]
        if all(isinstance(m, sp.Set) for m in members):
            return sp.Union(*members)
        return latex2sympy(text, is_real=real, normalization_config=None)
    brackets, inner = "", text.strip()
    if enclosed(inner):   # (1,2),(3,4) is a bare list of two tuples, not one bracket pair
        brackets, inner = ("{}", inner[2:-2]) if inner.startswith("\\{") else (inner[0] + inner[-1], inner[1:-1])
    parts = split_top_level(inner) if "," in inner and "matrix" not in inner else [inner]
    if len(parts) < 2 or not all(parts):
        return latex2sympy(text, is_real=real, normalization_config=None)
    items = [latex2sympy(p, is_real=real, normalization_config=None) for p in parts]
    if brackets in ("{}", ""):
        flat = []
        for item in items:   # 1 \pm \sqrt{2}, 3 is a set of three members
            flat.extend(item.args if isinstance(item, sp.FiniteSet) else [item])
        return FiniteSet(*flat)
    if len(items) == 2 and all(isinstance(x, sp.Expr) and x.is_extended_real for x in items):
        a, b = items
        if (a < b) == sp.true or (brackets != "()" and (a <= b) == sp.true):
            return sp.Interval(a, b, left_open=brackets[0] == "(", right_open=brackets[1] == ")")
    if brackets == "()":
        return sp.Tuple(*items)
    return latex2sympy(text, is_real=real, normalization_config=None)


def _is_rational_valued(e) -> bool:
    """True when e is built from integers with + - * / integer powers and factorials only."""
    if isinstance(e, (sp.Integer, sp.Rational)):
        return True
    if isinstance(e, (sp.Add, sp.Mul)):
        return all(_is_rational_valued(a) for a in e.args)
    if isinstance(e, sp.Pow):
        return _is_rational_valued(e.base) and isinstance(e.exp, sp.Integer) or (
            _is_rational_valued(e.base) and _is_rational_valued(e.exp) and e.exp.doit().is_Integer)
    if isinstance(e, (sp.factorial, sp.binomial)):
        return all(_is_rational_valued(a) for a in e.args)
    if isinstance(e, sp.UnevaluatedExpr):
        return _is_rational_valued(e.args[0])
    return False


def _numbers_equal(a: sp.Expr, b: sp.Expr) -> bool:
    if _is_rational_valued(a) and _is_rational_valued(b):
        return a.doit() == b.doit()
    if a.has(sp.oo, -sp.oo, sp.zoo, sp.nan) or b.has(sp.oo, -sp.oo, sp.zoo, sp.nan):
        return a.doit() == b.doit()
    try:   # strict: raises unless the difference is resolved to 30 significant digits
        diff = (a - b).evalf(30, maxn=_MAXN, strict=True)
        return diff == 0
    except PrecisionExhausted:   # no digit of the difference within 400: judged by its size
        diff = (a - b).evalf(30, maxn=_MAXN)
    if diff == 0:
        return True
    scale = max(abs(a.evalf(15)), abs(b.evalf(15)))
    if not diff.is_number or not scale.is_number:
        return False
    return bool(abs(diff) <= _REL * scale)


def _random_points(symbols, rng: random.Random):
    return [{s: sp.Rational(rng.choice([-1, 1]) * rng.randint(2, 97), rng.randint(2, 31))
             for s in symbols} for _ in range(_POINTS)]


def _expressions_equal(a: sp.Expr, b: sp.Expr) -> bool:
    symbols = sorted(a.free_symbols | b.free_symbols, key=lambda s: s.name)
    if not symbols:
        return _numbers_equal(a, b)
    if a == b:
        return True
    diff = a - b
    rng = random.Random(0)
    agreed = 0
    for point in _random_points(symbols, rng):
        try:
            va, vb = a.xreplace(point), b.xreplace(point)
            d = (va - vb).evalf(30, maxn=_MAXN)
            scale = max(abs(va.evalf(15)), abs(vb.evalf(15)))
        except (TypeError, ValueError, ZeroDivisionError):
            continue
        if not (d.is_number and scale.is_number) or d.has(sp.zoo, sp.nan, sp.oo):
            continue
        if abs(d) > _REL * scale and d != 0:
            return False
        agreed += 1
    if sp.simplify(diff) == 0 or sp.expand(diff) == 0:
        return True
    return agreed == _POINTS


def _relation_key(r: Relational):
    """x > 5 and 5 < x both become (x - 5, ">"); x < 5 becomes (5 - x, ">")."""
    if isinstance(r, (sp.StrictGreaterThan, sp.GreaterThan)):
        return r.lhs - r.rhs, isinstance(r, sp.StrictGreaterThan)
    if isinstance(r, (sp.StrictLessThan, sp.LessThan)):
        return r.rhs - r.lhs, isinstance(r, sp.StrictLessThan)
    return None


def _constant_multiple(f: sp.Expr, h: sp.Expr, positive: bool) -> bool:
    """Is f = c * h for a constant c (c > 0 when `positive`)? Random points reject fast."""
    if f == 0 or h == 0:
        return f == 0 and h == 0
    symbols = sorted(f.free_symbols | h.free_symbols, key=lambda s: s.name)
    ratios = []
    for point in _random_points(symbols, random.Random(1)):
        try:
            hv = h.xreplace(point).evalf(30, maxn=_MAXN)
            if hv == 0 or not hv.is_number:
                continue
            ratios.append((f.xreplace(point) / h.xreplace(point)).evalf(30, maxn=_MAXN))
        except (TypeError, ValueError, ZeroDivisionError):
            continue
    ratios = [r for r in ratios if r.is_number and r.is_finite]
    for r in ratios:
        if r == 0 or (positive and r.is_extended_real and r < 0):
            return False
        if abs(r - ratios[0]) > _REL * abs(ratios[0]):
            return False
    ratio = sp.simplify(f / h)
    if ratio.free_symbols or ratio == 0 or not ratio.is_finite:
        return len(ratios) == _POINTS   # agreed at every point: proportional
    return bool(ratio > 0) if positive else True


def _is_assignment(e) -> bool:
    return isinstance(e, sp.Eq) and isinstance(e.lhs, sp.Symbol) and e.lhs not in _free(e.rhs)


def _free(e):
    return getattr(e, "free_symbols", set())


def _as_set(e):
    """A univariate relation (or chain of them) as the set of reals it describes, else None."""
    if isinstance(e, (Relational, sp.And)) and len(e.free_symbols) == 1:
        try:
            return e.as_set()
        except Exception:
            return None
    return None


def _membership_as_set(e):
    """x \\in [a, b] (parsed as Eq(x, Interval)) is the interval itself."""
    if isinstance(e, sp.Eq) and isinstance(e.lhs, sp.Symbol) and isinstance(e.rhs, sp.Set):
        return e.rhs
    return e


def _match_unordered(xs, ys, settings) -> bool:
    if len(xs) != len(ys):
        return False
    left = list(ys)
    for x in xs:
        for k, y in enumerate(left):
            if same(x, y, settings):
                del left[k]
                break
        else:
            return False
    return True


def same(g, p, settings: dict) -> bool:
    """Is the predicted object p the same mathematical object as the gold g?"""
    g, p = _membership_as_set(g), _membership_as_set(p)
    # Assignments: x = 5 vs 5 compares the value; x = 5 vs y = 5 is handled as equations.
    if _is_assignment(g) and not isinstance(p, Relational):
        return same(g.rhs, p, settings)
    if _is_assignment(p) and not isinstance(g, Relational):
        return same(g, p.rhs, settings)

    g_set, p_set = isinstance(g, sp.Set), isinstance(p, sp.Set)
    if isinstance(g, sp.FiniteSet) and isinstance(p, sp.FiniteSet):
        if settings.get("ordered_lists") and hasattr(g, "_unsorted_args") and hasattr(p, "_unsorted_args"):
            ga, pa = g._unsorted_args, p._unsorted_args
            return len(ga) == len(pa) and all(same(x, y, settings) for x, y in zip(ga, pa))
        return _match_unordered(list(g.args), list(p.args), settings)
    if isinstance(g, sp.FiniteSet) and len(g.args) == 1 and not p_set and not isinstance(p, sp.Tuple):
        return same(g.args[0], p, settings)
    if isinstance(p, sp.FiniteSet) and len(p.args) == 1 and not g_set and not isinstance(g, sp.Tuple):
        return same(g, p.args[0], settings)
    if isinstance(g, sp.Interval) and isinstance(p, sp.Interval):
        return (g.left_open == p.left_open and g.right_open == p.right_open
                and same(g.start, p.start, settings) and same(g.end, p.end, settings))
    if isinstance(g, sp.Union) and isinstance(p, sp.Union):
        return _match_unordered(list(g.args), list(p.args), settings)
    if g_set and not isinstance(g, sp.FiniteSet) and isinstance(p, (Relational, sp.And)):
        ps = _as_set(p)
        return ps is not None and same(g, ps, settings)
    if p_set and not isinstance(p, sp.FiniteSet) and isinstance(g, (Relational, sp.And)):
        gs = _as_set(g)
        return gs is not None and same(gs, p, settings)
    if g_set or p_set:
        return g_set and p_set and bool(g == p)

    if isinstance(g, sp.Tuple) or isinstance(p, sp.Tuple):
        return (isinstance(g, sp.Tuple) and isinstance(p, sp.Tuple) and len(g) == len(p)
                and all(same(x, y, settings) for x, y in zip(g, p)))
    if isinstance(g, sp.MatrixBase) or isinstance(p, sp.MatrixBase):
        return (isinstance(g, sp.MatrixBase) and isinstance(p, sp.MatrixBase) and g.shape == p.shape
                and all(same(x, y, settings) for x, y in zip(g, p)))

    if isinstance(g, sp.And) or isinstance(p, sp.And):
        if isinstance(g, sp.And) and isinstance(p, sp.And):
            gs, ps = _as_set(g), _as_set(p)
            if gs is not None and ps is not None and gs.free_symbols == ps.free_symbols:
                return same(gs, ps, settings)
            return _match_unordered(list(g.args), list(p.args), settings)
        return False
    if isinstance(g, Relational) or isinstance(p, Relational):
        if not (isinstance(g, Relational) and isinstance(p, Relational)):
            return False
        if isinstance(g, sp.Eq) and isinstance(p, sp.Eq):
            return _constant_multiple(g.lhs - g.rhs, p.lhs - p.rhs, positive=False)
        gk, pk = _relation_key(g), _relation_key(p)
        if gk is None or pk is None or gk[1] != pk[1]:
            return False
        return _constant_multiple(gk[0], pk[0], positive=True)

    if isinstance(g, sp.Expr) and isinstance(p, sp.Expr):
        return _expressions_equal(g, p) or _rounded(g, p, settings)
    return bool(g == p)


def _rounded(g: sp.Expr, p: sp.Expr, settings: dict) -> bool:
    """Is p a decimal written in the answer that is the number g rounded or truncated to the
    places shown? Only for a g whose decimal expansion does not terminate."""
    shown = settings.get("shown")
    if not shown or not isinstance(p, sp.Rational) or abs(p) not in shown or g.free_symbols:
        return False
    text = ("-" if p < 0 else "") + shown[abs(p)]
    if _is_rational_valued(g):
        q = g.doit()
        if not isinstance(q, sp.Rational):
            return False
        exact = Fraction(int(q.p), int(q.q))
        if exact.denominator == 1 or 10 ** 400 % exact.denominator == 0:   # terminates: exact
            return False
        return rounded_equal(exact, text, settings.get("rounded_decimals", 0))
    value = g.evalf(len(text) + 20, maxn=_MAXN)
    if not (value.is_number and value.is_extended_real and value.is_finite):
        return False
    return rounded_equal(Fraction(str(value)), text, settings.get("rounded_decimals", 0))


def _undefined(e) -> bool:
    return hasattr(e, "has") and e.has(sp.zoo, sp.nan)


def compare(gold: str, pred: str, settings: dict) -> tuple[bool, str]:
    """Worker entry: (equal?, reason) for two cleaned answers."""
    if gold.lstrip().startswith("\\{") or pred.lstrip().startswith("\\{"):
        settings = {**settings, "ordered_lists": False}   # written as a set: order never matters
    if settings.get("rounded_decimals"):   # the decimals the answer shows, by their exact value
        shown = {sp.Rational(int(w + d), 10 ** len(d)): (w or "0") + "." + d
                 for w, d in _DECIMAL.findall(pred)}
        settings = {**settings, "shown": shown}
    try:
        g = parse(gold)
    except Exception as exc:
        return False, f"gold unparsable: {type(exc).__name__}"
    try:
        p = parse(pred)
    except Exception:
        return False, "answer unparsable"
    if _undefined(g) or _undefined(p):   # 1/0 == 5/0 would accept any division by zero
        return False, "undefined value"
    # one name, one symbol: an answer parsed as complex (it has an i) must meet the gold's real x
    names = {s.name: s for s in _free(g)}
    swap = {s: names[s.name] for s in _free(p) if s.name in names and names[s.name] != s}
    if swap:
        p = p.xreplace(swap)
    try:
        return (True, "equal (symbolic)") if same(g, p, settings) else (False, "not equal")
    except Exception as exc:  # a sympy failure on odd input is a wrong answer, not a crash
        return False, f"comparison failed: {type(exc).__name__}"


def serve() -> None:
    """Worker loop: length-prefixed pickles (gold, pred, settings) in, (ok, reason) out."""
    try:   # a 10^{10^{10}} must fail with MemoryError here, not exhaust the machine
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_LIMIT, _MEMORY_LIMIT))
    except (ImportError, ValueError, OSError):
        pass
    # Keep the protocol channel private: anything a library prints goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    out.write(b"R")
    out.flush()
    while True:
        head = inp.read(4)
        if len(head) < 4:
            return
        gold, pred, settings = pickle.loads(inp.read(struct.unpack("<I", head)[0]))
        body = pickle.dumps(compare(gold, pred, settings))
        out.write(struct.pack("<I", len(body)) + body)
        out.flush()


if __name__ == "__main__":
    serve()
