"""The math grader on the classes of cases other projects' grader tests exposed: wrong answers it
must never accept, right answers it must not refuse, and each convention as a setting whose
default and alternative both hold. Cases are written here, one class per test."""

import pytest

from ponder.rewards.math import GraderSettings, equivalent, extract_answer, grade


def _refused(gold, pred, **settings):
    result = grade(gold, pred, settings=GraderSettings(**settings))
    assert not result.correct, (gold, pred, result.reason)


def _accepted(gold, pred, **settings):
    result = grade(gold, pred, settings=GraderSettings(**settings))
    assert result.correct, (gold, pred, result.reason)


# ---------------------------------------------------------------- wrong answers accepted: none

@pytest.mark.parametrize("gold,pred", [
    ("3/0", "7/0"), ("\\frac{4}{0}", "\\frac{9}{0}"), ("-\\frac{1}{0}", "\\frac{1}{0}"),
    ("\\frac{0}{0}", "\\frac{0}{0}+1"), ("11:00", "3:00"), ("2:00", "\\frac{5}{0}"),
    ("\\frac{x}{0}", "\\frac{2x}{0}"), ("(1, \\frac{1}{0})", "(1, \\frac{2}{0})"),
])
def test_division_by_zero_equals_nothing(gold, pred):
    # sympy's complex infinity (and nan) compares equal to itself; an undefined value must not
    _refused(gold, pred)


def test_infinity_still_equals_infinity():
    _accepted("\\infty", "\\infty ")
    _accepted("(-\\infty, 3]", "(-\\infty,3]")
    _refused("\\infty", "-\\infty")


@pytest.mark.parametrize("gold,pred,equal", [
    ("\\cos(60^\\circ)", "\\cos(60)", False),          # degrees are not radians
    ("\\tan 45^{\\circ}", "\\tan 45", False),
    ("\\frac{1}{2}", "\\cos(60^\\circ)", True),
    ("\\frac{\\sqrt{2}}{2}", "\\sin 45^\\circ", True),
    ("1", "\\tan 45°", True),
    ("\\sin x", "\\cos(90^\\circ - x)", True),
    ("2\\sin 10^\\circ", "\\sin 20^\\circ", False),
    ("45", "45^\\circ", True),                        # no trigonometry: an angle in degrees
    ("\\frac{\\pi}{4}", "45^\\circ", False),
])
def test_degrees_inside_trigonometry_are_a_unit(gold, pred, equal):
    assert grade(gold, pred).correct is equal, (gold, pred)


@pytest.mark.parametrize("text,gold", [
    ("Ticket QX7B was drawn.", "7"),
    ("The code word is PLM3R and nothing else", "3"),
    ("we set x2 to zero", "2"),
    ("after 2x steps", "2"),
    ("at the 5th try", "5"),
    ("so we need x^2", "2"),
])
def test_lenient_extraction_takes_only_numbers_that_stand_alone(text, gold):
    assert extract_answer(text, "lenient") is None
    assert not grade(gold, text, extract="lenient").correct


def test_lenient_extraction_still_finds_a_free_standing_number():
    assert extract_answer("Ticket QX7B costs 12 dollars.", "lenient") == "12"
    assert extract_answer("so x = -4.5.", "lenient") == "-4.5"
    assert extract_answer("we get $\\frac{3}{4}$, i.e. 3/4", "lenient") == "3/4"


# ---------------------------------------------------------------- right answers refused: none

@pytest.mark.parametrize("text,answer", [
    ("Final Answer: 18. We found it by adding the two counts.", "18"),
    ("Final Answer: $\\frac{2}{5}$ since two of the five are red", "\\frac{2}{5}"),
    ("The final answer is 250 people in total.", "250"),
    ("Final answer: 14, which is even.", "14"),
    ("Final Answer: The area is 36.", "36"),
    ("Final Answer: $x=3$ because the other root is negative.", "x=3"),
    ("Final Answer: 9 square units", "9"),
    ("Final Answer: $2$ and $-7$", "2, -7"),
])
def test_final_answer_line_with_prose_after(text, answer):
    for mode in ("strict", "lenient"):
        assert extract_answer(text, mode) == answer


@pytest.mark.parametrize("text,gold", [
    ("Final Answer: 6 times pi", "6"),
    ("Final Answer: $6$ times $\\pi$", "6"),
    ("Final Answer: 6 square root of 2", "6"),
    ("Final Answer: $6$ + 1", "6"),
    ("Final Answer: 2 + $\\sqrt{3}$", "\\sqrt{3}"),
    ("Final Answer: 6 squared", "6"),
])
def test_prose_is_cut_only_where_the_math_has_ended(text, gold):
    # cutting "6 times pi" down to 6 would accept a wrong answer
    for mode in ("strict", "lenient"):
        assert not grade(gold, text, extract=mode).correct, text
    assert not grade("6", "6 times pi").correct     # a math word after a number is no unit


@pytest.mark.parametrize("text", [
    "Final Answer: 18<|im_start|>user\nNow solve 3 + 4.<|im_end|>\n<|im_start|>assistant\nFinal Answer: 7",
    "Final Answer: 18<|im_end|>",
    "Final Answer: 18 <|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+5? Answer: 7",
    "Final Answer: 18<｜end▁of▁sentence｜><｜User｜>and 3+4? Final Answer: 7",
    "Final Answer: 18<end_of_turn>\n<start_of_turn>user\nFinal Answer: 7",
    "So \\boxed{18}<|endoftext|>Question: 3+4? \\boxed{7}",
])
def test_answer_ends_at_the_chat_templates_next_turn(text):
    for mode in ("strict", "lenient"):
        assert extract_answer(text, mode) == "18"
        assert grade("18", text, extract=mode).correct


@pytest.mark.parametrize("gold,pred,equal", [
    ("(0,1),(2,5)", "(2,5),(0,1)", True),             # a bare list of solutions: unordered
    ("(0,1),(2,5)", "(0,1), (2,5)", True),
    ("(0,1),(2,5)", "\\{(0,1),(2,5)\\}", True),
    ("(0,1),(2,5)", "(0,1),(5,2)", False),           # each pair is ordered
    ("(0,1),(2,5)", "(0,1)", False),
    ("(0,1),(2,5)", "(0,1),(2,5),(3,3)", False),
    ("(1,-1,2),(0,0,0)", "(0,0,0),(1,-1,2)", True),
])
def test_lists_of_tuples(gold, pred, equal):
    assert grade(gold, pred).correct is equal, (gold, pred)


@pytest.mark.parametrize("gold,pred,equal", [
    ("(4,1)", "(m,n)=(4,1)", True),
    ("(4,1)", "(m, n) = (4, 1)", True),
    ("(4,1)", "(m,n)=(1,4)", False),
    ("(4,1,-2)", "(a,b,c)=(4,1,-2)", True),
    ("(4,1)", "m=4, n=1", True),
    ("(m,n)=(4,1)", "n=1, m=4", True),
    ("(m,n)=(4,1)", "m=1, n=4", False),
])
def test_named_tuples(gold, pred, equal):
    assert grade(gold, pred).correct is equal, (gold, pred)


@pytest.mark.parametrize("gold,pred,equal", [
    ("3x-4", "f(x)=3x-4", True),
    ("3x-4", "g(x) = 3x - 4", True),
    ("x^2+1", "p(x)=(x+i)(x-i)", True),
    ("3x-4", "f(x)=3x+4", False),
    ("f(x)=3x-4", "3x-4", True),
    ("\\frac{x+1}{2}", "f^{-1}(x)=\\frac{x+1}{2}", True),
    ("12", "f(3)=12", True),
])
def test_function_on_the_left(gold, pred, equal):
    assert grade(gold, pred).correct is equal, (gold, pred)


@pytest.mark.parametrize("pred", [
    "40\\textbf{meters}", "40 \\textbf{ meters}", "40\\textnormal{ miles}", "40 \\textit{km}",
    "40\\textsf{ kg}", "40\\texttt{ s}", "40\\textup{ cm}^2", "40\\hbox{ feet}",
])
def test_unit_wrappers(pred):
    _accepted("40", pred)
    _refused("41", pred)


@pytest.mark.parametrize("pred", ["185\\", "185 \\", "185\\\\", "\\frac{3}{4}\\"])
def test_trailing_backslash(pred):
    gold = "185" if pred.startswith("185") else "0.75"
    _accepted(gold, pred)
    _refused("186", pred)


@pytest.mark.parametrize("gold,pred,equal", [
    ("PQ=6, RS=9", "6, 9", True),
    ("PQ=6, RS=9", "RS=9, PQ=6", True),
    ("PQ=6, RS=9", "9, 6", False),                   # labels fix the order of a bare list
    ("PQ=6, RS=9", "PQ=9, RS=6", False),
    ("|PQ|=\\sqrt{5}", "\\sqrt{5}", True),
    ("|PQ|=\\sqrt{5}", "\\sqrt{6}", False),
    ("S_1:S_2=4:9", "4:9", True),
    ("S_1:S_2=4:9", "\\frac{4}{9}", True),
    ("S_1:S_2=4:9", "9:4", False),
    ("\\frac{AM}{MC}=\\frac{3}{7}", "\\frac{3}{7}", True),
    ("\\frac{AM}{MC}=\\frac{3}{7}", "\\frac{7}{3}", False),
    ("[ABC]=24", "24", True),
    ("\\angle BAC=40", "40^\\circ", True),
    ("\\theta=\\frac{\\pi}{6}", "\\frac{\\pi}{6}", True),
    ("a_n=2n+1", "2n+1", True),
    # not labels: an equation's left side is no name
    ("0", "t^2-9=0", False), ("9", "t^2=9", False), ("4", "xy=4", False), ("x=5", "y=5", False),
])
def test_labelled_quantities(gold, pred, equal):
    assert grade(gold, pred).correct is equal, (gold, pred)


# ---------------------------------------------------------------- conventions, each a setting

@pytest.mark.parametrize("gold,pred,equal", [
    ("\\frac{1}{6}", "0.166667", True),               # rounded to the places shown
    ("\\frac{1}{6}", "0.166666", True),               # truncated
    ("\\frac{1}{6}", "0.16666666666666666", True),    # a double as Python prints it
    ("\\frac{5}{7}", "0.7142857142857143", True),
    ("\\frac{1}{6}", "0.166668", False),              # neither
    ("\\frac{1}{6}", "0.1667", False),                # too few significant digits
    ("\\frac{1}{6}", "0.17", False),
    ("-\\frac{2}{9}", "-0.222222", True),
    ("-\\frac{2}{9}", "0.222222", False),
    ("\\frac{400}{3}", "133.333", True),
    ("\\sqrt{3}", "1.732051", True),
    ("\\sqrt{3}", "1.732050", True),
    ("\\sqrt{3}", "1.732052", False),
    ("\\pi", "3.14159265", True),
    ("\\pi", "3.14159266", False),
    ("\\frac{1}{6}, \\frac{5}{6}", "0.833333, 0.166667", True),
    ("\\frac{\\sqrt{3}}{2}, -\\frac{\\sqrt{3}}{2}", "-0.866025, 0.866025", True),
    ("x=\\frac{1}{6}", "0.166667", True),
    # exact golds stay exact: no rounding of integers or terminating decimals
    ("0.125", "0.13", False), ("0.1251", "0.125", False), ("123457", "123456.7", False), ("7", "7.0000001", False),
])
def test_rounded_decimals(gold, pred, equal):
    assert grade(gold, pred).correct is equal, (gold, pred)


def test_rounded_decimals_setting():
    assert equivalent("\\frac{1}{6}", "0.1667", rounded_decimals=4)
    assert not equivalent("\\frac{1}{6}", "0.167", rounded_decimals=4)
    for pred in ("0.166667", "1.732051"):
        gold = "\\frac{1}{6}" if pred.startswith("0") else "\\sqrt{3}"
        assert equivalent(gold, pred) and not equivalent(gold, pred, rounded_decimals=0)
    with pytest.raises(ValueError, match="rounded_decimals"):
        GraderSettings(rounded_decimals=-1)


@pytest.mark.parametrize("gold,text,equal", [
    ("3,-5", "so $x=\\boxed{3}$ or $x=\\boxed{-5}$", True),        # a list gold: the boxes together
    ("3,-5", "roots \\boxed{-5} and \\boxed{3}", True),
    ("\\{3,-5\\}", "roots \\boxed{-5} and \\boxed{3}", True),
    ("3,-5", "roots \\boxed{3} and \\boxed{5}", False),
    ("3,-5", "roots \\boxed{3} and \\boxed{-5} and \\boxed{1}", False),
    ("3,-5", "answer \\boxed{3, -5}, that is \\boxed{-5, 3}", True),  # the list restated
    ("3,-5", "\\boxed{3}, then \\boxed{-5}; so: \\boxed{3} and \\boxed{-5}", True),
    ("3", "either \\boxed{3} or \\boxed{-5}", False),               # a single gold: no hedging
    ("-5", "either \\boxed{3} or \\boxed{-5}", False),
    ("0.5", "\\boxed{\\frac{1}{2}}, i.e. \\boxed{0.5}", True),        # one answer, two forms
    ("(3,-5)", "\\boxed{3} and \\boxed{-5}", False),                # a tuple is written as one
])
def test_several_boxes(gold, text, equal):
    assert grade(gold, text, extract="strict").correct is equal, (gold, text)


def test_several_boxes_setting_last():
    last = GraderSettings(boxes="last")
    assert grade("-5", "either \\boxed{3} or \\boxed{-5}", extract="strict", settings=last).correct
    assert not grade("3,-5", "roots \\boxed{3} and \\boxed{-5}", extract="strict", settings=last).correct
    # a self-correction across two boxes counts only under "last"
    text = "first \\boxed{3}, wait, no: \\boxed{\\frac{1}{2}}"
    assert grade("\\frac{1}{2}", text, extract="strict", settings=last).correct
    assert not grade("\\frac{1}{2}", text, extract="strict").correct
    with pytest.raises(ValueError, match="boxes"):
        GraderSettings(boxes="first")


def test_and_or_between_members_make_a_list():
    assert grade("4,-1", "4 and -1").correct
    assert grade("4,-1", "x=4 \\text{ or } x=-1").correct
    assert grade("4,-1", "x = -1 or x = 4").correct
    assert not grade("4,-1", "4 and 1").correct
    assert not grade("4", "4 or -1").correct
    assert grade("\\text{Alice and Bob}", "Alice and Bob").correct   # text answers keep their words


def test_prose_answers_setting():
    text = "Checking both, the solutions are 4 and -1."
    assert extract_answer(text, "lenient") == "4, -1"
    assert grade("4,-1", text, extract="lenient").correct
    assert not grade("4", text, extract="lenient").correct    # a list is not one of its members
    assert extract_answer(text, "strict") is None               # strict never reads prose
    assert extract_answer("we add 4 and 1 to get 5.", "lenient") == "5"
    off = GraderSettings(prose_answers=False)
    assert extract_answer(text, "lenient", settings=off) == "-1"
    assert not grade("4,-1", text, extract="lenient", settings=off).correct


def test_decimal_comma_setting():
    assert not equivalent("2.5", "2,5")                          # default: 2,5 is a list
    assert equivalent("2, 5", "2,5")
    assert equivalent("2.5", "2,5", decimal_comma=True)
    assert equivalent("-0.75", "$-0{,}75$", decimal_comma=True)
    assert equivalent("2, 5", "2,5", decimal_comma=True)          # a list gold keeps its list
    assert not equivalent("2500", "2,500", decimal_comma=True)    # the comma is a decimal mark
    assert equivalent("2500", "2,500")


def test_percent_setting_in_responses():
    assert grade("15", "Final Answer: 15\\% of the class", extract="strict").correct
    value = GraderSettings(percent="value")
    assert grade("0.15", "Final Answer: 15\\%", extract="strict", settings=value).correct
    assert not grade("15", "Final Answer: 15\\%", extract="strict", settings=value).correct


# ---------------------------------------------------------------- what stays as it was

@pytest.mark.parametrize("gold,pred,equal", [
    ("[1,\\infty)", "[2^{1/2^{1000}},\\infty)", False),   # 1 + 7e-302: a real difference
    ("1", "2^{1/2^{1000}}", False),
    ("1", "1+10^{-150}", False),
    ("\\frac{1}{3^{200}}", "\\frac{1}{3^{200}}+\\frac{1}{3^{201}}", False),
    ("\\sqrt{7}+\\sqrt{2}", "\\sqrt{9+2\\sqrt{14}}", True),  # equal, unprovable by evaluation alone
    ("\\sin^2 2+\\cos^2 2", "1", True),
    ("\\ln 27", "3\\ln 3", True),
])
def test_irrational_values_compare_to_all_digits_evalf_resolves(gold, pred, equal):
    assert grade(gold, pred).correct is equal, (gold, pred)
