"""Step checkers and the process reward: grade a scratchpad step by step, not only its answer.

A step checker turns a completion into a `StepVerdict`: one `Step` per step the solution should
hold (right or wrong, quoted as written; a step the solution skipped is a wrong step quoted by
its expected left-hand side, e.g. ``47*6=``), plus whether the final answer is right.

  multiply  ``47*80=3760,47*6=282,3760+282=4042``: three steps, the product by the second
            operand's tens, by its units, and the sum of the two products *as written*. A step is
            right when it has the expected operands (either order) and arithmetic checks its
            result; so a sum of two wrong products that adds up is a right step (the error is
            the product's, counted once), and ``47*8=376`` for ``47*80`` is wrong. Steps past
            the third are wrong; missing ones are skipped (wrong).
  program   ``a=3,b=7,a=14``: one step per assignment, right when it equals the executed one.
  trace     the trace verifier's frames (ponder.rewards.trace), right when equal by position.

The process reward is **credit up to the first wrong step**, with the final answer as the last
step: (steps before the first wrong one) / (steps + 1), and 1 only for a right answer reached
through right steps. Why not the share of right steps: a step after a wrong one builds on a
wrong value, so "right" steps after it are worth little to a reader of the solution, and the
share pays for padding the scratchpad with easy right steps; prefix credit is the standard
PRM reading (a solution is as good as its first error, Lightman et al. 2023) and cannot be
raised by writing more. A direct answer (empty scratchpad) skips every step and earns 0.

    verdict = check_steps(completion, problem)   # StepVerdict, or None for a kind without steps
    rewards = [Reward("process", process_reward, 1.0)]
    right_answer_wrong_step(completion, problem) # True: outcome reward pays for bad reasoning
    step_metrics(completions, problems)          # its rate over a batch (RL steps, evaluations)

`true_score` maps a verdict to the verifier's three grades: 1 (right answer, every step right),
0.5 (right answer, some step wrong or skipped), 0 (wrong answer). Pure functions; no task import.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, replace

from ponder.rewards.math import extract_answer
from ponder.rewards.trace import answer_correct, frames, scratchpad

STEP_SEPARATOR = ","
MISSING_ANSWER = "nobox"  # how an issue list quotes a final answer that was never written
_EQUATION = re.compile(r"^(\d+)([*+])(\d+)=(\d+)$")


@dataclass(frozen=True)
class Step:
    text: str  # as written; for a skipped step, its expected left-hand side and "="
    right: bool
    skipped: bool = False


@dataclass(frozen=True)
class StepVerdict:
    steps: tuple[Step, ...]
    answer_correct: bool
    answer: str | None = None  # the final answer as written (the last \\boxed{}), None without one

    @property
    def first_wrong(self) -> int | None:
        """Index of the first wrong (or skipped) step; None when every step is right."""
        return next((i for i, s in enumerate(self.steps) if not s.right), None)

    @property
    def steps_right(self) -> bool:
        return self.first_wrong is None

    @property
    def issues(self) -> tuple[str, ...]:
        """Every real issue as a verifier would quote it: each wrong or skipped step, then the
        final answer when it is wrong (quoted as written; MISSING_ANSWER when there is none)."""
        wrong = tuple(s.text for s in self.steps if not s.right)
        return wrong + ((self.answer or MISSING_ANSWER,) if not self.answer_correct else ())


def _verdict(steps: list[Step], completion: str, problem) -> StepVerdict:
    return StepVerdict(tuple(steps), answer_correct(completion, problem.answer),
                       extract_answer(completion, mode="strict"))


def _split_steps(pad: str | None) -> list[str]:
    return [s.strip() for s in pad.split(STEP_SEPARATOR)] if pad and pad.strip() else []


def multiply_steps(completion: str, problem) -> StepVerdict:
    """Partial products by the tens and units of the second operand, then their sum (see above)."""
    a, b = problem.meta["a"], problem.meta["b"]
    written = _split_steps(scratchpad(completion))
    plan = [("*", {a, b - b % 10}), ("*", {a, b % 10})]  # operand sets (either order)
    results: list[int | None] = []
    steps = []
    for i in range(max(3, len(written))):
        if i >= 3:  # past the plan: an extra step is a wrong step
            steps.append(Step(written[i], False))
            continue
        if i < 2:
            op, operands = plan[i]
            lhs = f"{a}*{b - b % 10 if i == 0 else b % 10}"
        else:  # the sum of the two products as the solution wrote them
            op = "+"
            p1, p2 = results[0], results[1]
            operands = {p1, p2} if p1 is not None and p2 is not None else None
            lhs = f"{p1}+{p2}" if operands else f"{a * (b - b % 10)}+{a * (b % 10)}"
        if i >= len(written):
            steps.append(Step(f"{lhs}=", False, skipped=True))
            results.append(None)
            continue
        m = _EQUATION.match(written[i])
        if m is None:
            steps.append(Step(written[i], False))
            results.append(None)
            continue
        x, sign, y, z = int(m[1]), m[2], int(m[3]), int(m[4])
        value = x * y if sign == "*" else x + y
        same = sign == op and operands is not None and {x, y} == operands and (x == y) == (len(operands) == 1)
        steps.append(Step(written[i], same and value == z))
        results.append(z)
    return _verdict(steps, completion, problem)


def _value(node: ast.AST, env: dict[str, int]) -> int:
    """+ - * over integers and variables: all a program-family statement holds."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand, env)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
        x, y = _value(node.left, env), _value(node.right, env)
        return x + y if isinstance(node.op, ast.Add) else x - y if isinstance(node.op, ast.Sub) else x * y
    raise ValueError(f"not a program-family expression: {ast.dump(node)}")


def program_steps(completion: str, problem) -> StepVerdict:
    """One step per assignment of meta["program"]: right when it names the assigned variable and
    the value the statement gives on the values the solution wrote so far (an error is counted
    at the step that made it, not again at the steps that carry it)."""
    statements = [s.strip() for s in problem.meta["program"].split(";") if s.strip()]
    written = _split_steps(scratchpad(completion))
    env: dict[str, int] = {}
    steps = []
    for i in range(max(len(statements), len(written))):
        if i >= len(statements):
            steps.append(Step(written[i], False))
            continue
        target, expr = statements[i].split("=", 1)
        if i >= len(written):
            steps.append(Step(f"{target}=", False, skipped=True))
            continue
        name, _, value = written[i].partition("=")
        try:
            expected = _value(ast.parse(expr, mode="eval").body, env)
        except KeyError:  # uses a variable the solution never wrote
            expected = None
        ok = re.fullmatch(r"-?\d+", value) is not None
        steps.append(Step(written[i], ok and name == target and expected == int(value)))
        if ok:
            env[name] = int(value)
    return _verdict(steps, completion, problem)


def trace_steps(completion: str, problem) -> StepVerdict:
    """The trace family: frame i is right when it equals gold frame i (ponder.rewards.trace)."""
    predicted, gold = frames(scratchpad(completion) or ""), frames(problem.meta["trace"])
    steps = [Step(p, i < len(gold) and p == gold[i]) for i, p in enumerate(predicted)]
    steps += [Step(f"{g.split('=')[0]}=" if "=" in g else g, False, skipped=True) for g in gold[len(predicted):]]
    return _verdict(steps, completion, problem)


CHECKERS = {"multiply": multiply_steps, "program": program_steps, "trace": trace_steps}


def check_steps(completion: str, problem) -> StepVerdict | None:
    """The step verdict of a completion, or None for a problem kind without a step checker."""
    checker = CHECKERS.get(getattr(problem, "kind", None))
    if checker is None or (problem.kind == "trace" and not isinstance(problem.meta.get("trace"), str)):
        return None
    return checker(completion, problem)


def prefix_credit(verdict: StepVerdict) -> float:
    """Steps before the first wrong one over steps + 1 (the answer is the last step)."""
    n = len(verdict.steps) + 1
    first = verdict.first_wrong
    if first is None:
        return 1.0 if verdict.answer_correct else (n - 1) / n
    return first / n


def process_reward(prompt: str, completion: str, problem) -> float | None:
    """Credit up to the first wrong step, the answer counted as the last step (module docstring);
    None for a problem kind without a step checker."""
    verdict = check_steps(completion, problem)
    return None if verdict is None else prefix_credit(verdict)


def right_answer_wrong_step(completion: str, problem) -> bool | None:
    """True when the answer is right but some step is wrong or skipped (outcome reward pays for
    bad reasoning); None for a problem kind without a step checker."""
    verdict = check_steps(completion, problem)
    return None if verdict is None else verdict.answer_correct and not verdict.steps_right


def true_score(verdict: StepVerdict) -> float:
    """The verifier's grade: 1 right answer through right steps, 0.5 right answer with a wrong or
    skipped step, 0 wrong answer."""
    if not verdict.answer_correct:
        return 0.0
    return 1.0 if verdict.steps_right else 0.5


def first_issue(verdict: StepVerdict) -> str:
    """What a verifier should quote: the first wrong step (a skipped step by its expected
    left-hand side), else the wrong final answer as written; "" when there is no issue."""
    first = verdict.first_wrong
    if first is not None:
        return verdict.steps[first].text
    return "" if verdict.answer_correct else verdict.issues[-1]


def step_sums(completions, problems, correct=None) -> dict[str, float]:
    """Counts behind step_metrics, to add up over ranks or batches before dividing: checked (the
    completions whose problem has a step checker), right_answer_wrong_step and fully_right (how
    many), process (the sum of prefix credit). `correct`, one bool per completion, replaces the
    checker's reading of the final answer with the run's own grade (evaluation counts a
    truncated completion wrong), so that these figures and the run's accuracy agree."""
    verdicts = []
    for i, (completion, problem) in enumerate(zip(completions, problems)):
        verdict = check_steps(completion, problem)
        if verdict is not None:
            verdicts.append(verdict if correct is None else replace(verdict, answer_correct=bool(correct[i])))
    return {"checked": float(len(verdicts)),
            "right_answer_wrong_step": float(sum(v.answer_correct and not v.steps_right for v in verdicts)),
            "fully_right": float(sum(v.answer_correct and v.steps_right for v in verdicts)),
            "process": float(sum(map(prefix_credit, verdicts)))}


def step_rates(sums: dict[str, float]) -> dict[str, float]:
    """step_sums (possibly added up) as rates over the checked completions; {} when none was."""
    n = sums.get("checked", 0.0)
    if not n:
        return {}
    return {**{k: v / n for k, v in sums.items() if k != "checked"}, "checked": n}


def step_metrics(completions, problems) -> dict[str, float]:
    """Figures a training or evaluation run can report next to accuracy, over the completions
    whose problem has a step checker: right_answer_wrong_step (the rate at which outcome reward
    pays for bad reasoning), fully_right, process (mean reward) and checked (how many); {} when
    none has a checker."""
    return step_rates(step_sums(completions, problems))
