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

Before stage 1, labelled answers (`x = 5`, `(p,q) = (3,2)`, `f(x) = 2x+1`, `AB = 4, CD = 5`) are
compared by their values where the other side is unlabelled.

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
from math import floor, gcd

from ponder.rewards.worker_pool import WorkerDied, WorkerPool, WorkerTimeout

GRADER_VERSION = "ponder-math/2"


@dataclass(frozen=True)
class GraderSettings:
    """Grading conventions. Every one of them is a choice; the defaults follow MATH's answers."""

    percent: str = "ignore"          # "ignore": 5\% == 5 (sign dropped); "value": 5\% == 0.05 != 5. A bare 5 never equals 0.05.
    ordered_lists: bool = False      # False: a bare list "1, 2" is an unordered set of solutions; True: order matters. (a,b) tuples are always ordered, \{a,b\} sets never.
    unreduced_fractions: bool = True  # True: \frac{2}{4} == \frac{1}{2}; False: a fraction written with a common factor is wrong.
    thousands_separators: bool = True  # True: 1,000 and 1{,}000 are one thousand; False: they are lists.
    base_subscript_optional: bool = True  # True: 52 == 52_8 (the question names the base); 52_8 != 52_9 always.
    rounded_decimals: int = 6        # a decimal answer equals a non-terminating gold (1/3, \sqrt{2}) when it is the gold rounded or truncated to the places shown, with at least this many significant digits (0.333333 == 1/3, 0.333 != 1/3); 0: never. Integer and terminating golds stay exact.
    boxes: str = "all"               # several different \boxed{} in a response: "all": for a list gold they are the list together, for a single gold each must equal it; "last": only the last box counts.
    prose_answers: bool = True       # lenient extraction with no box or answer line: True: a response ending on a list ("... the roots are 1 and -2.") answers with the list; False: with its last number.
    decimal_comma: bool = False      # True: an answer "3,5" (digits, comma, digits) for a single-number gold is 3.5; False: it is the list 3, 5 (or, with 3 digits after the comma, a thousands separator).
    timeout_s: float = 5.0           # wall-clock bound on one symbolic comparison; past it: incorrect, "timed out".

    def __post_init__(self):
        if self.percent not in ("ignore", "value"):
            raise ValueError(f"GraderSettings.percent must be 'ignore' or 'value', not {self.percent!r}")
        if self.boxes not in ("all", "last"):
            raise ValueError(f"GraderSettings.boxes must be 'all' or 'last', not {self.boxes!r}")
        if not (isinstance(self.rounded_decimals, int) and self.rounded_decimals >= 0):
            raise ValueError(f"GraderSettings.rounded_decimals must be an integer >= 0, not {self.rounded_decimals!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"GraderSettings.timeout_s must be positive, not {self.timeout_s!r}")


DEFAULT_SETTINGS = GraderSettings()


def describe(settings: GraderSettings = DEFAULT_SETTINGS) -> str:
    """The grader's identity to record with results, e.g. 'ponder-math/2 percent=ignore ...'."""
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
# A number standing as a number: not part of a word, a name or a power (AZYUK2A, x2, 2x, 5th, x^2).
_NUMBER = re.compile(r"(?<![\w.^])(?:-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+)(?![\w])")
# Chat-template turn and end tokens (<|im_start|>, <|eot_id|>, DeepSeek's <｜User｜>, Gemma's,
# Llama 2's): a base model that runs on writes the next turn after one, which is not its answer.
_NEXT_TURN = re.compile(r"<[|｜][^<>\n]{1,40}?[|｜]>|<(?:start|end)_of_turn>|</s>|\[INST\]")
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|(?<!\\)\$(.+?)(?<!\\)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]")
_PLAIN_WORDS = re.compile(r"[A-Za-z\s,.:;'*]*")   # prose: no digits, no math
_LEAD_PROSE = re.compile(r"^(?:[A-Za-z']+\s+){1,8}?(?:is|are|equals|was|were)\s*:?\s+")
_CONNECTIVES = {"because", "since", "as", "which", "so", "thus", "hence", "therefore", "where", "when",
                "from", "by", "for", "using", "after", "with"}
# Where prose resumes after an answer: a sentence end, a connective, or two words in a row.
_PROSE_TAIL = re.compile(r"[.!?]\s+(?=\S)|,?\s+(?:" + "|".join(sorted(_CONNECTIVES)) + r")\b"
                         r"|\s[A-Za-z]{2,}[,.]?\s+[A-Za-z]{2,}\b")
# Words that carry value: prose after an answer is dropped, a word after a number is a unit, but
# "4 times pi" is never 4.
_MATH_WORD = re.compile(r"\b(?:times|plus|minus|over|divided|roots?|squared|cubed|power|pi|sqrt|halfs?|halves|"
                        r"thirds?|fourths?|quarters?|hundreds?|thousands?|millions?|billions?|dozens?|factorial)\b",
                        re.IGNORECASE)
_LIST_SEP = re.compile(r"\s*(?:,|,?\s*\b(?:and|or)\b)\s*")


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


def _box_at(text: str, end: int) -> str | None:
    """The content of the box whose command ends at text[end]: {...} (balanced) or \\boxed 5."""
    rest = text[end:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        return _braced(text, end + len(rest) - len(stripped))
    m = re.match(r"\s+([^\s$]+)", rest)   # \boxed 5
    return m.group(1) if m else None


def last_boxed(text: str) -> str | None:
    """The last \\boxed{...} / \\fbox{...} (balanced braces) or \\boxed 5 in text, else None."""
    matches = list(_BOX.finditer(text))
    return _box_at(text, matches[-1].end()) if matches else None


def _depth_at(text: str, pos: int) -> int:
    return text.count("{", 0, pos) - text.count("}", 0, pos)


def _goes_on(tail: str) -> bool:
    """Does the text after an answer continue its math ("+ 1", "times pi", "square root of 3")?"""
    if re.match(r"\s*[-+*/^=\\(\d]", tail):
        return True
    return any(_MATH_WORD.fullmatch(w) for w in re.findall(r"[A-Za-z]+", tail)[:2])


def _answer_phrase(rest: str) -> str | None:
    """The answer in what follows a final-answer marker, without the prose around it:
    "$7$. I hope it is correct." -> 7, "42 apples in total, since ..." -> 42,
    "$1$ and $-2$" -> "1, -2", "The total is 42." -> 42. Prose that goes on with math
    ("4 times pi") is kept, so the answer fails rather than being cut to a wrong one."""
    rest = _HOPE.sub("", rest).strip().strip("*").strip()
    spans = list(_MATH_SPAN.finditer(rest))
    if spans and _PLAIN_WORDS.fullmatch(rest[:spans[0].start()]):
        parts = [spans[0]]
        for b in spans[1:]:   # $1$, $2$ and $3$: one list answer
            if not _LIST_SEP.fullmatch(rest[parts[-1].end():b.start()]):
                break
            parts.append(b)
        if not _goes_on(rest[parts[-1].end():]):
            return ", ".join(next(g for g in m.groups() if g is not None).strip() for m in parts) or None
    rest = re.sub(r"(?<!\\)\$", "", rest).strip()
    lead = _LEAD_PROSE.match(rest)
    if lead:
        rest = rest[lead.end():]
    for cut in _PROSE_TAIL.finditer(rest):
        if cut.start() > 0 and _depth_at(rest, cut.start()) == 0:   # never inside \text{...}
            if not cut.group().startswith(" ") or cut.group().split()[0] in _CONNECTIVES \
                    or not _goes_on(rest[cut.start():]):
                rest = rest[:cut.start()]
            break
    return rest.strip().rstrip(" .,;:").strip() or None


def _after_marker(text: str, marker: re.Pattern) -> str | None:
    """What follows the last marker on the last line that has one ("The final answer is 5")."""
    for line in reversed(text.splitlines()):
        found = list(marker.finditer(line))
        if found:
            return _answer_phrase(line[found[-1].end():])
    return None


def _this_turn(text: str) -> str:
    """text up to the first chat-template turn or end token that follows some text."""
    for m in _NEXT_TURN.finditer(text):
        if _NEXT_TURN.sub("", text[:m.start()]).strip():
            return text[:m.start()]
    return text


def extract_answers(text: str, mode: str = "strict", truncated: bool = False,
                    settings: GraderSettings | None = None) -> list[str] | None:
    """Every final answer a response gives: each \\boxed{} after the thinking block (in order),
    else the one answer `extract_answer` finds; None when there is none. See extract_answer."""
    if mode not in ("strict", "lenient"):
        raise ValueError(f"extract_answer: mode must be 'strict' or 'lenient', not {mode!r}")
    settings = settings or DEFAULT_SETTINGS
    if truncated:
        return None
    text = _this_turn(text)
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    elif "<think>" in text:      # thinking never finished
        return None
    boxes = [_box_at(text, m.end()) for m in _BOX.finditer(text)]
    if boxes:
        if boxes[-1] is None:    # a box that never closes: the response was cut
            return None
        if not boxes[-1].strip():
            return None
        boxes = [b.strip() for b in boxes if b is not None and b.strip()]
        return boxes or None
    final = _after_marker(text, _FINAL)
    if final is not None:
        return [final]
    if mode == "lenient":
        said = _after_marker(text, _ANSWER_IS)
        if said is not None:
            return [said]
        plain = text.replace("$", "")
        numbers = list(_NUMBER.finditer(plain))
        if not numbers:
            return None
        first = len(numbers) - 1
        if settings.prose_answers and re.fullmatch(r"[\s.!?]*", plain[numbers[-1].end():]):
            # "... the integers are 1 and -2.": the list the response ends on
            while first > 0 and _LIST_SEP.fullmatch(plain[numbers[first - 1].end():numbers[first].start()]):
                first -= 1
        return [", ".join(m.group() for m in numbers[first:])]
    return None


def extract_answer(text: str, mode: str = "strict", truncated: bool = False,
                   settings: GraderSettings | None = None) -> str | None:
    """The final answer of a response, or None.

    Only the response's own turn counts: it ends at a chat template's next-turn or end token
    (<|im_start|>, <|eot_id|>, ...). strict (RL rewards): the last \\boxed{...} (also \\boxed 5
    and \\fbox{...}) after the thinking block, else the last explicit final-answer line ("The final
    answer is X", "Answer: X", "#### X"), without the prose around X. lenient (evaluation):
    strict, else "the answer is X", else the last number standing as a number (with
    `prose_answers`, a trailing list "1 and -2"). A truncated response yields None in both modes:
    its last number is not an answer. `grade` also weighs earlier boxes (setting `boxes`).
    """
    answers = extract_answers(text, mode, truncated, settings)
    return answers[-1] if answers else None


# ---------------------------------------------------------------- cleaning

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
