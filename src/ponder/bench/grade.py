"""`ponder bench grade`: ponder's math grader against math-verify on the same MATH-500 pairs.

The pairs are each gold answer against itself, against rewrites that keep its value (expected
equal: $...$, \\text{} around a number, a unit, x = ..., \\dfrac, a terminating decimal, a set or
bare list in reverse order) and against perturbations made deterministically (expected different:
the last integer plus one, the sign flipped, the value doubled, a tuple reversed, open and closed
ends of an interval or tuple swapped). Both graders run on one core, one pair at a time; math-verify is
used directly as its README shows: verify(parse("\\boxed{gold}"), parse("\\boxed{pred}")).
Prints each grader's throughput, their ratio, and every pair they grade differently together with
which of them matches the label the pair was built with. Figures, never pass/fail.
"""

from __future__ import annotations

import json
import re
import sys
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "math500_test.jsonl"
_SIMPLE = re.compile(r"^[^,=<>\[\]\\{}()]*$|^[^,=<>\[\]]*\\(?:frac|sqrt|pi)[^,=<>\[\]]*$")


def _is_single_expression(gold: str) -> bool:
    """No lists, tuples, intervals, relations, matrices or text: a sign or factor applies to it."""
    return bool(_SIMPLE.match(gold)) and "\\text" not in gold and "\\begin" not in gold \
        and "\\pm" not in gold and "_" not in gold and "\\circ" not in gold and "\\$" not in gold


def _as_number(gold: str) -> Fraction | None:
    from ponder.rewards.math import DEFAULT_SETTINGS, _fraction, clean
    return _fraction(clean(gold), DEFAULT_SETTINGS)


def make_pairs(golds: list[str]) -> list[tuple[str, str, bool, str]]:
    """(gold, pred, expected equal?, how the pred was made) for every gold answer."""
    pairs = []
    for gold in golds:
        pairs.append((gold, gold, True, "identical"))
        pairs.append((gold, f"${gold}$", True, "in $...$"))
        number = _as_number(gold)
        plain_number = re.fullmatch(r"-?\d+(\.\d+)?", gold) is not None
        if plain_number:
            pairs.append((gold, f"\\text{{{gold}}}", True, "wrapped in \\text"))
            pairs.append((gold, f"{gold} \\text{{ units}}", True, "with a unit"))
        if "\\frac" in gold:
            pairs.append((gold, gold.replace("\\frac", "\\dfrac"), True, "\\dfrac"))
        if number is not None and number.denominator > 1:
            d = number.denominator
            while d % 2 == 0:
                d //= 2
            while d % 5 == 0:
                d //= 5
            if d == 1:   # terminating decimal: write it out exactly
                exact = Decimal(number.numerator) / Decimal(number.denominator)
                pairs.append((gold, format(exact, "f"), True, "as a decimal"))
        if _is_single_expression(gold):
            pairs.append((gold, f"x = {gold}", True, "x = ..."))
        from ponder.rewards.math import split_top_level
        inner = re.fullmatch(r"(\\\{|\()(.*)(\\\}|\))", gold)
        plain = not re.search(r"\\left|\\!|\\\$|infty|\\cup", gold) \
            and not re.fullmatch(r"\d{1,3}(,\d{3})+", gold)   # 58,500 is a number, not a list
        if inner and plain and "," in inner.group(2):
            members = split_top_level(inner.group(2))
            if len(members) > 1 and len(set(members)) == len(members):
                swapped = inner.group(1) + ", ".join(reversed(members)) + inner.group(3)
                is_set = inner.group(1) == "\\{"
                pairs.append((gold, swapped, is_set, "members reversed"))
        elif plain and "," in gold and not re.search(r"[()\[\]{}]", gold):
            pairs.append((gold, ", ".join(reversed(split_top_level(gold))), True, "list reversed"))
        if re.fullmatch(r"[(\[].*,.*[)\]]", gold) and "\\cup" not in gold and "infty" not in gold:
            flip = {"(": "[", "[": "(", ")": "]", "]": ")"}
            pairs.append((gold, flip[gold[0]] + gold[1:-1] + flip[gold[-1]], False, "brackets flipped"))
        # perturbations: each changes the value
        unit = re.search(r"\\(?:text|mbox)", gold)   # change the value, not the unit's exponent
        ints = list(re.finditer(r"\d+", gold[:unit.start()] if unit else gold))
        if ints:
            m = ints[-1]
            bumped = gold[:m.start()] + str(int(m.group()) + 1) + gold[m.end():]
            pairs.append((gold, bumped, False, "last integer + 1"))
        if _is_single_expression(gold) and number != 0 and gold.strip() != "0":
            flipped = gold[1:].lstrip() if gold.startswith("-") else f"-({gold})"
            pairs.append((gold, flipped, False, "sign flipped"))
            pairs.append((gold, f"2({gold})", False, "doubled"))
    return pairs


def _time(grade_one, pairs) -> tuple[list[bool], float]:
    start = time.perf_counter()
    verdicts = [grade_one(g, p) for g, p, _, _ in pairs]
    return verdicts, time.perf_counter() - start


def main(args) -> int:
    path = Path(args.data) if args.data else DEFAULT_DATA
    if not path.is_file():
        print(f"ponder bench grade: MATH-500 not found at {path} (pass --data)", file=sys.stderr)
        return 2
    golds = [json.loads(line)["answer"] for line in path.open(encoding="utf-8") if line.strip()]
    pairs = make_pairs(golds)

    import os
    from math_verify import parse, verify
    from ponder.rewards.math import DEFAULT_SETTINGS, _symbolic, describe, grade

    if hasattr(os, "sched_setaffinity"):   # one core for both (the ponder worker inherits it)
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    _symbolic.cache_clear()
    grade("\\sqrt{2}", "\\sqrt{3}")        # start ponder's worker outside the timing

    def math_verify_one(gold: str, pred: str) -> bool:
        try:
            return bool(verify(parse("\\boxed{" + gold + "}"), parse("\\boxed{" + pred + "}")))
        except Exception:
            return False

    mv_verdicts, mv_s = _time(math_verify_one, pairs)
    ponder_verdicts, ponder_s = _time(lambda g, p: grade(g, p).correct, pairs)

    differ = []
    for (gold, pred, expected, how), ours, theirs in zip(pairs, ponder_verdicts, mv_verdicts):
        if ours != theirs:
            right = "ponder" if ours == expected else "math-verify"
            differ.append({"gold": gold, "pred": pred, "made": how, "expected": expected,
                           "ponder": ours, "math_verify": theirs, "right": right})
    result = {
        "pairs": len(pairs), "grader": describe(DEFAULT_SETTINGS),
        "ponder_pairs_per_s": len(pairs) / ponder_s, "math_verify_pairs_per_s": len(pairs) / mv_s,
        "ratio": mv_s / ponder_s,
        "ponder_matches_label": sum(v == p[2] for v, p in zip(ponder_verdicts, pairs)),
        "math_verify_matches_label": sum(v == p[2] for v, p in zip(mv_verdicts, pairs)),
        "differences": differ,
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{len(pairs)} pairs from {len(golds)} MATH-500 answers, one core")
    print(f"  ponder       {result['ponder_pairs_per_s']:9.1f} pairs/s   "
          f"matches label {result['ponder_matches_label']}/{len(pairs)}")
    print(f"  math-verify  {result['math_verify_pairs_per_s']:9.1f} pairs/s   "
          f"matches label {result['math_verify_matches_label']}/{len(pairs)}")
    print(f"  ratio        {result['ratio']:9.2f}x")
    print(f"{len(differ)} pairs graded differently "
          f"(ponder right: {sum(d['right'] == 'ponder' for d in differ)}, "
          f"math-verify right: {sum(d['right'] == 'math-verify' for d in differ)}):")
    for d in differ:
        print(f"  [{d['right']} right] {d['made']}: gold {d['gold']!r} vs {d['pred']!r} "
              f"(expected {'equal' if d['expected'] else 'different'}; ponder {d['ponder']}, "
              f"math-verify {d['math_verify']})")
    return 0
