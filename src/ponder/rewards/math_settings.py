"""The math grader's named settings: every convention that is a choice (percent signs, ordered
lists, unreduced fractions, thousands separators, base subscripts, rounded decimals, several
boxes, prose answers, decimal commas, the time bound) in one frozen `GraderSettings`, and
`describe`, the grader's identity (GRADER_VERSION and the settings) to record with every result.

Bump GRADER_VERSION whenever a change alters any grade, so that results stay comparable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

GRADER_VERSION = "ponder-math/4"  # 4: "60 + 38" is not the answer 98; 3: an empty or copied \boxed{} is no answer; "answer is 27 + 82 = 194" reads 194


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
    """The grader's identity to record with results, e.g. 'ponder-math/4 percent=ignore ...'."""
    return GRADER_VERSION + " " + " ".join(f"{k}={v}" for k, v in asdict(settings).items())
