"""Extracting the final answer from a model's response: the last \\boxed{} after the thinking
block, else an explicit final-answer line ("The final answer is X", "Answer: X", "#### X"), and
in lenient mode "the answer is X" or the last number standing as a number. Only the response's
own turn counts, a truncated or unfinished response gives nothing, and the prose around an
answer is dropped. See `extract_answer` for the rules.
"""

from __future__ import annotations

import re

from ponder.rewards.math_normalize import _MATH_WORD, _braced
from ponder.rewards.math_settings import DEFAULT_SETTINGS, GraderSettings

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
_LIST_SEP = re.compile(r"\s*(?:,|,?\s*\b(?:and|or)\b)\s*")
# A side of an equation that is plain arithmetic on numbers ("27 + 82", "3 \\times 4", "\\frac{6}{2}").
_ARITHMETIC = re.compile(r"(?:[\d\s.,+\-*/^(){}\[\]×÷·]|\\(?:times|cdot|div|d?frac|tfrac|left|right)(?![A-Za-z]))+")
# What a box holds when the response copied the instruction rather than answered.
_PLACEHOLDER = re.compile(r"(?:(?:your|the)\s+)?(?:final\s+)?(?:answer(?:\s+here)?)?")
_WRAPPED_TEXT = re.compile(r"\\(?:text|mathrm|textbf)\s*\{([^{}]*)\}")
# Where a clause ends: a sentence end, a comma or semicolon before a space, a line break.
_CLAUSE_END = re.compile(r"[.!?,;](?=\s)|\n")


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


def _right_side(answer: str | None) -> str | None:
    """The result of an answer line that shows its working: "27 + 82 = 194" -> 194. Only when
    every side before the last is plain arithmetic on numbers: "x = 4" (a labelled answer, which
    the comparison reads) and "f(2) = 5" stay whole."""
    if answer is None or "=" not in answer:
        return answer
    sides = [part.strip() for part in re.split(r"(?<![<>!\\])=", answer)]
    if len(sides) > 1 and sides[-1] and all(_ARITHMETIC.fullmatch(side) and re.search(r"\d", side)
                                             for side in sides[:-1]):
        return sides[-1]
    return answer


def _after_marker(text: str, marker: re.Pattern) -> str | None:
    """What follows the last marker on the last line that has one ("The final answer is 5"); of
    an equation there, its right-hand side ("The answer is 27 + 82 = 194" -> 194)."""
    for line in reversed(text.splitlines()):
        found = list(marker.finditer(line))
        if found:
            return _right_side(_answer_phrase(line[found[-1].end():]))
    return None


def _holds_nothing(box: str) -> bool:
    """Is a box's content no answer: empty, or the instruction's placeholder copied
    (\\boxed{}, \\boxed{ }, \\boxed{answer}, \\boxed{\\text{your final answer}})?"""
    inner = _WRAPPED_TEXT.sub(r"\1", box.replace("$", "")).strip().lower()
    return _PLACEHOLDER.fullmatch(inner) is not None


def _without_clauses(text: str, boxes: list[re.Match]) -> str:
    """`text` without each clause that holds one of `boxes`: from the previous sentence end, comma,
    semicolon, line break or digit to the box's end and the full stop after it. "48 + 23 = 71. The
    answer is within \\boxed{}." -> "48 + 23 = 71. " and "... = 71 so \\boxed{}" -> "... = 71"
    (whose last number is then the answer)."""
    kept, done = [], 0
    for box in boxes:
        start = max((m.end() for m in _CLAUSE_END.finditer(text, 0, box.start())), default=0)
        start += max((i + 1 for i, c in enumerate(text[start:box.start()]) if c.isdigit()), default=0)
        stop = box.end()
        rest = text[stop:]
        brace = len(rest) - len(rest.lstrip())
        if rest[brace:brace + 1] == "{":
            stop += brace + len(_braced(text, stop + brace)) + 2
        stop += re.match(r"[ \t]*[.!?]?", text[stop:]).end()
        kept.append(text[done:max(start, done)])
        done = max(stop, done)
    return "".join(kept) + text[done:]


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
    found = [(m, _box_at(text, m.end())) for m in _BOX.finditer(text)]
    if found and found[-1][1] is None:    # a box that never closes: the response was cut
        return None
    boxes = [b.strip() for _, b in found if b is not None and not _holds_nothing(b)]
    if boxes:
        return boxes
    # No box holds an answer: read the response as if it had none, without the clauses that
    # hold the empty boxes ("The answer is within \\boxed{}.", an echo of the instruction).
    text = _without_clauses(text, [m for m, b in found if b is not None])
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
    A box that holds nothing (\\boxed{}, or the instruction's placeholder copied: "The answer is
    within \\boxed{}.") is no answer: with no other box, extraction goes on as if there were none,
    without the clause that held it. An answer line that shows its working ("The answer is
    27 + 82 = 194") answers with its right-hand side (194).
    """
    answers = extract_answers(text, mode, truncated, settings)
    return answers[-1] if answers else None
