"""What the verifier and the meta-verifier read and write, their true labels and their rewards.

Both are tiny decoders with the generator's own character vocabulary, so every string here is
spelled in it (digits, * + = , / < > and the think/boxed frame).

  verifier       reads  ``47*86=<think>47*80=3760,47*6=292,3760+292=4052</think>\\boxed{4052}/``
                 writes ``<think>47*6=292</think>\\boxed{0}``
                 the analysis (in the think block) quotes the first issue: the first wrong step as
                 written, a skipped step by its expected left-hand side (``47*6=``), or the wrong
                 final answer; empty when there is none. The score is 1, 1/2 or 0
                 (ponder.rewards.process.true_score: right answer through right steps, right
                 answer with a wrong step, wrong answer).
  meta-verifier  reads  the verifier's input, its analysis, then ``/``
                 writes ``<think></think>\\boxed{1}`` when the analysis is true (the issue it
                 quotes is one the step checker marks wrong, or it quotes none and there is
                 none), ``\\boxed{0}`` when it invents an issue or misses every one.

Rewards (DeepSeekMath-V2's): verifier  format x (1 - |predicted score - true score|), times the
meta-verifier's score of its analysis in the meta variant; meta-verifier  format x (1 - |m' - m|).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ponder.rewards.process import StepVerdict, first_issue, true_score

END = "/"  # closes what a verifier reads: the generator never writes it after its answer
SCORES = {"0": 0.0, "1/2": 0.5, "1": 1.0}
SCORE_TEXT = {v: k for k, v in SCORES.items()}
_OUTPUT = re.compile(r"^<think>(.*?)</think>\\boxed\{(0|1/2|1)\}$", re.DOTALL)
_META = re.compile(r"^<think></think>\\boxed\{([01])\}$")


@dataclass(frozen=True)
class Analysis:
    issue: str  # the quoted issue; "" claims there is none
    score: float  # 0, 0.5 or 1


def verifier_prompt(problem_prompt: str, solution: str) -> str:
    return f"{problem_prompt}{solution}{END}"


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


def meta_prompt(problem_prompt: str, solution: str, analysis: str) -> str:
    return f"{verifier_prompt(problem_prompt, solution)}{analysis}{END}"


def meta_target(real: bool) -> str:
    return f"<think></think>\\boxed{{{int(real)}}}"


def parse_meta(text: str) -> float | None:
    m = _META.match(text.strip())
    return None if m is None else float(m[1])


def meta_reward(text: str, real: bool) -> float:
    """format x (1 - |m' - m|): 1 for the right verdict, 0 for the wrong one or a malformed output."""
    m = parse_meta(text)
    return 0.0 if m is None else 1.0 - abs(m - float(real))
