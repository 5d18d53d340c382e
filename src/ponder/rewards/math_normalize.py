"""Normalising math answers before they are compared: `clean` removes notation that carries no
value (``$``, ``\\left``, degree and currency signs, ``\\text{}`` units, thousands separators)
and applies the percent convention, keeping LaTeX; `_number` reads a plain number (integer,
decimal, fraction, mixed number, repeating decimal, or plain arithmetic on them) as an exact
`Fraction`; `split_top_level`, `enclosed` and `_number_list` read lists, tuples, intervals and
sets. `_braced` reads a LaTeX brace group (extraction uses it too).

The underscored names are shared by the grader's own modules (math_extract, math_compare,
math_symbolic), not by its users; ponder.rewards.math is the public face.
"""

from __future__ import annotations

import ast
import re
from fractions import Fraction

from ponder.rewards.math_settings import DEFAULT_SETTINGS, GraderSettings

# Words that carry value: prose after an answer is dropped, a word after a number is a unit, but
# "4 times pi" is never 4.
_MATH_WORD = re.compile(r"\b(?:times|plus|minus|over|divided|roots?|squared|cubed|power|pi|sqrt|halfs?|halves|"
                        r"thirds?|fourths?|quarters?|hundreds?|thousands?|millions?|billions?|dozens?|factorial)\b",
                        re.IGNORECASE)


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


_SPACES = re.compile(r"(?<!\\)\\[,;:!> ]|\\quad|\\qquad|~|\\displaystyle|\\limits")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big)\s*(?=[()\[\]|.]|\\[{}|])")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree|\^\s*\{\s*\}")
_TRIG = re.compile(r"\\(?:operatorname\{)?(?:arc)?(?:sin|cos|tan|cot|sec|csc)h?(?![a-z])")
_CURRENCY = re.compile(r"\\\$|\$|\\text\{\s*\\\$\s*\}|€|£|\\euro|\\pounds")
_PERCENT = re.compile(r"\s*(?:\\%|%|\\text\{\s*\\?%\s*\}|\\text\{\s*percent\s*\}|\s+percent\b)\s*$")
_TEXT_CMD = r"\\(?:text|mbox|hbox|mathrm|textrm|textbf|textit|textnormal|textsf|texttt|textup)"
_TEXT_UNIT = re.compile(r"\s*" + _TEXT_CMD + r"\s*\{[^{}]*\}\s*(?:\^\s*\{?\d\}?)?\s*$")
_WORD_UNIT = re.compile(r"\s+[a-zA-Z]{2,}(?:\s+[a-zA-Z]+)*\s*(?:\^\s*\{?\d\}?)?\s*$")
_WHOLE_TEXT = re.compile(r"^\\(?:text|textbf|textit|textnormal|textsf|textrm|textup|mbox|mathrm|mathbf)\s*\{([^{}]*)\}$")
_PROSE_JOIN = re.compile(r"\s*" + _TEXT_CMD + r"\s*\{\s*(?:and|or)\s*\}\s*|\s+(?:and|or)\s+")
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
    # A degree sign is dropped (30^\circ == 30: the question asks for degrees), except where a
    # trigonometric function is applied: there it is the unit pi/180, so \sin 30^\circ == 1/2.
    s = _DEGREES.sub("\\\\cdot\\\\frac{\\\\pi}{180}" if _TRIG.search(s) else "", s)
    s = _CURRENCY.sub("", s)
    s = re.sub(r"(?:\\\\|\\)\s*$", "", s)   # a trailing backslash or line break: 185\
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
    if m and not _MATH_WORD.search(m.group()) and _fraction(s[:m.start()].strip(), settings) is not None:
        s = s[:m.start()].strip()
    if re.search(r"[\d=\\]", s) and not _WHOLE_TEXT.match(s):
        s = _PROSE_JOIN.sub(", ", s)   # 1 and -2, x = 1 \text{ or } x = -2: lists
    s = s.strip().rstrip(".").strip()
    if explicit_thousands and _THOUSANDS.match(s.replace(" ", "")):
        # 1,000: one number, or (thousands_separators=False) the list 1, 000 -- never both
        s = s.replace(",", "").replace(" ", "") if settings.thousands_separators else s.replace(",", ", ")
    return s



# ---------------------------------------------------------------- numbers and lists

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


def enclosed(s: str) -> bool:
    """Does the bracket opening s -- (, [ or \\{ -- close at its very end? "(1,2)" and "[1,2)" yes;
    "(1,2),(3,4)" (a list of two tuples) no."""
    if not (s[:1] in "([" or s.startswith("\\{")) or s[-1:] not in ")]}":
        return False
    depth = 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i == len(s) - 1
    return False


def _number_list(s: str, settings: GraderSettings):
    """(brackets, [values], [members]) for a tuple, interval, set or bare list of plain numbers,
    else None. brackets is e.g. "(]" or "{}" or "" (bare); a single number is not a list."""
    s = s.strip()
    brackets, inner = "", s
    if enclosed(s):
        brackets, inner = ("{}", s[2:-2]) if s.startswith("\\{") else (s[0] + s[-1], s[1:-1])
    if "," not in inner:
        return None
    parts = split_top_level(inner)
    if brackets and brackets != "{}" and any(not p for p in parts):
        return None
    values = [_number(p, settings) for p in parts]
    if any(v is None for v in values):
        return None
    return brackets, values, parts
