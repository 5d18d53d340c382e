"""What the verifier and the meta-verifier read and write, their true labels and their rewards.

Both are tiny decoders with the generator's own character vocabulary, so every string here is
spelled in it (digits, * + = , / < > and the think/boxed frame).

  verifier       solves first, then compares. It reads the problem alone, ``47*86=/``, and
                 works it in the generator's own format, ``<think>47*80=3760,47*6=282,
                 3760+282=4042</think>\\boxed{4042}``; its analysis of a solution is then read
                 off its own work by rule (`compared_analysis`) and written
                 ``<think>47*6=292</think>\\boxed{0}``: the first issue quoted (the first step
                 that differs from its own, a skipped step by its left-hand side ``47*6=``, or
                 the wrong final answer; empty when there is none) and a score of 1, 1/2 or 0
                 (ponder.rewards.process.true_score: right answer through right steps, right
                 answer with a wrong step, wrong answer). Why not read the solution and write
                 the analysis in one pass, as DeepSeekMath-V2's verifier does: at this size a
                 verifier shown the solution copies its numbers instead of checking them, and
                 one that writes its verdict after its own work does not learn to compare
                 (scripts/verifier_probe.py, docs/verify.md: 35-38% of held-out scores right,
                 against 95% for this rule on the same work).
  meta-verifier  checks an analysis with work of its own: a second solver, trained apart (another
                 seed), works the problem the same way, and the analysis is real (score 1) when
                 that work, compared with the solution, quotes the same issue; else 0. A
                 meta-verifier that read the problem, the solution and the analysis and wrote
                 its verdict in one pass agreed with the step checker on 10-12% of held-out
                 analyses (docs/verify.md).

Rewards (DeepSeekMath-V2's): verifier  format x (1 - |predicted score - true score|), times the
meta-verifier's score of its analysis in the meta variant (format: its own work has steps and an
answer). The meta-verifier's truth is `issue_is_real` (the step checker's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ponder.rewards.math import extract_answer
from ponder.rewards.process import MISSING_ANSWER, STEP_SEPARATOR, StepVerdict, first_issue, true_score
from ponder.rewards.trace import scratchpad

END = "/"  # closes what a verifier reads: the generator never writes it after its answer
SCORES = {"0": 0.0, "1/2": 0.5, "1": 1.0}
SCORE_TEXT = {v: k for k, v in SCORES.items()}
_OUTPUT = re.compile(r"^<think>(.*?)</think>\\boxed\{(0|1/2|1)\}$", re.DOTALL)


@dataclass(frozen=True)
class Analysis:
    issue: str  # the quoted issue; "" claims there is none
    score: float  # 0, 0.5 or 1


def verifier_prompt(problem_prompt: str, solution: str) -> str:
    return f"{problem_prompt}{solution}{END}"


def work_prompt(problem_prompt: str) -> str:
    """What the verifier reads first: the problem alone, so no solution is in view to copy."""
    return f"{problem_prompt}{END}"


def _steps(solution: str) -> list[str]:
    pad = scratchpad(solution)
    return [s.strip() for s in pad.split(STEP_SEPARATOR) if s.strip()] if pad else []


def compared_analysis(work: str, solution: str) -> str:
    """The analysis of `solution` read off the verifier's own `work` (a solution of the same
    problem): the first step that differs from its own, a step it skipped (by the left-hand side
    of the verifier's step there), an extra step, or else the answer when it differs; scored 0
    when the answer is not the verifier's, 1 when every step is its own too, else 1/2. "" (a
    malformed analysis) when its own work has no steps or no answer: no verdict."""
    own, own_answer = _steps(work), extract_answer(work, mode="strict")
    if not own or own_answer is None:
        return ""
    steps, answer = _steps(solution), extract_answer(solution, mode="strict")
    differing = next((s for s, o in zip(steps, own) if s != o), None)
    if differing is not None:
        issue = differing
    elif len(steps) < len(own):
        issue = own[len(steps)].partition("=")[0] + "="
    elif len(steps) > len(own):
        issue = steps[len(own)]
    else:
        issue = "" if answer == own_answer else answer or MISSING_ANSWER
    score = 0.0 if answer != own_answer else 1.0 if steps == own else 0.5
    return analysis_text(issue, score)


def analysis_text(issue: str, score: float) -> str:
    return f"<think>{issue}</think>\\boxed{{{SCORE_TEXT[score]}}}"


def verifier_target(verdict: StepVerdict) -> str:
    """What a perfect verifier writes for a solution with this step verdict."""
    return analysis_text(first_issue(verdict), true_score(verdict))


def parse_analysis(text: str) -> Analysis | None:
    """The verifier's output read strictly (surrounding whitespace aside); None when malformed."""
    m = _OUTPUT.match(text.strip())
    return None if m is None else Analysis(m[1], SCORES[m[2]])


def issue_is_real(analysis: Analysis, verdict: StepVerdict) -> bool:
    """The meta-verifier's truth: the quoted issue is one the step checker marks wrong, or the
    analysis quotes none and the solution has none."""
    return analysis.issue in verdict.issues if analysis.issue else not verdict.issues


def verifier_reward(text: str, score: float, meta_score: float = 1.0) -> float:
    """format x (1 - |s' - s|) x meta score; 0 for a malformed output."""
    analysis = parse_analysis(text)
    return 0.0 if analysis is None else (1.0 - abs(analysis.score - score)) * meta_score
