"""Step checkers and the process reward on hand-built right and wrong solutions."""

from ponder.rewards.process import (check_steps, first_issue, prefix_credit, process_reward,
                                    right_answer_wrong_step, true_score)
from ponder.tasks import multiply, program, trace


def mul(text: str, a: int = 47, b: int = 86):
    return check_steps(text, multiply.make(a, b))


def test_multiply_right_solution_scores_one():
    p = multiply.make(47, 86)
    text = multiply.sft_text(p, scratchpad=True)
    v = check_steps(text, p)
    assert [s.right for s in v.steps] == [True, True, True] and v.answer_correct
    assert process_reward("", text, p) == 1.0 and true_score(v) == 1.0
    assert right_answer_wrong_step(text, p) is False and first_issue(v) == ""


def test_multiply_wrong_partial_product():
    v = mul("<think>47*80=3760,47*6=292,3760+292=4052</think>\\boxed{4052}")
    assert [s.right for s in v.steps] == [True, False, True]  # the sum of what was written adds up
    assert first_issue(v) == "47*6=292" and not v.answer_correct
    assert prefix_credit(v) == 1 / 4 and true_score(v) == 0.0


def test_multiply_wrong_final_sum_with_right_products():
    v = mul("<think>47*80=3760,47*6=282,3760+282=4052</think>\\boxed{4052}")
    assert [s.right for s in v.steps] == [True, True, False] and prefix_credit(v) == 2 / 4


def test_multiply_right_answer_through_a_wrong_step_is_flagged():
    text = "<think>47*80=3760,47*6=292,3760+282=4042</think>\\boxed{4042}"
    p = multiply.make(47, 86)
    assert right_answer_wrong_step(text, p) is True
    assert true_score(check_steps(text, p)) == 0.5 and process_reward("", text, p) == 1 / 4


def test_multiply_skipped_steps_count_as_wrong():
    v = mul("<think>47*80=3760,3760+282=4042</think>\\boxed{4042}")  # the units product skipped
    assert [s.right for s in v.steps] == [True, False, False] and first_issue(v) == "3760+282=4042"
    assert v.steps[2].skipped
    direct = mul("<think></think>\\boxed{4042}")
    assert all(s.skipped for s in direct.steps) and first_issue(direct) == "47*80="
    assert prefix_credit(direct) == 0.0 and true_score(direct) == 0.5
    short = mul("<think>47*80=3760,47*6=282</think>\\boxed{4042}")
    assert short.steps[2].skipped and first_issue(short) == "3760+282=" and prefix_credit(short) == 2 / 4


def test_multiply_wrong_operands_or_extra_steps_are_wrong():
    assert not mul("<think>47*8=376,47*6=282,376+282=658</think>\\boxed{658}").steps[0].right
    assert mul("<think>80*47=3760,6*47=282,282+3760=4042</think>\\boxed{4042}").steps_right  # either order
    extra = mul("<think>47*80=3760,47*6=282,3760+282=4042,1+1=2</think>\\boxed{4042}")
    assert extra.first_wrong == 3 and prefix_credit(extra) == 3 / 5


def test_multiply_wrong_answer_after_right_steps():
    v = mul("<think>47*80=3760,47*6=282,3760+282=4042</think>\\boxed{4043}")
    assert v.steps_right and not v.answer_correct and prefix_credit(v) == 3 / 4 and true_score(v) == 0.0
    assert first_issue(v) == "4043" and v.issues == ("4043",)


def test_program_steps_carry_the_written_values():
    p = program.make("a=3;b=a+4;a=b*2", "a")
    assert check_steps("<think>a=3,b=7,a=14</think>\\boxed{14}", p).steps_right
    v = check_steps("<think>a=3,b=8,a=16</think>\\boxed{16}", p)
    assert [s.right for s in v.steps] == [True, False, True]  # 16 = 8*2 carries the error, not a new one
    skipped = check_steps("<think>a=3</think>\\boxed{14}", p)
    assert [s.text for s in skipped.steps] == ["a=3", "b=", "a="] and right_answer_wrong_step("<think>a=3</think>\\boxed{14}", p)


def test_trace_steps_are_the_trace_verifiers_frames():
    p = trace.generate("train", 1, seed=0)[0]
    right = trace.sft_text(p, scratchpad=True)
    assert check_steps(right, p).steps_right and process_reward("", right, p) == 1.0
    gold = p.meta["trace"].split(";")
    bad = right.replace(gold[0], gold[0] + "9", 1)
    v = check_steps(bad, p)
    assert v.first_wrong == 0 and not v.steps[0].right


def test_no_checker_for_other_kinds():
    class P:
        kind, answer, meta = "math", "1", {}
    assert check_steps("\\boxed{1}", P()) is None and process_reward("", "\\boxed{1}", P()) is None


def test_step_metrics_over_a_batch():
    from ponder.rewards.process import step_metrics

    p = multiply.make(47, 86)
    texts = [multiply.sft_text(p, True), "<think></think>\\boxed{4042}", "<think></think>\\boxed{1}"]
    m = step_metrics(texts, [p] * 3)
    assert m["right_answer_wrong_step"] == 1 / 3 and m["fully_right"] == 1 / 3 and m["checked"] == 3
    assert step_metrics(["x"], [type("P", (), {"kind": "math", "answer": "1", "meta": {}})()]) == {}
