"""Scorers for best-of-N: each gives every candidate of a problem a number (higher is better)
and says what scoring cost in tokens.

  OracleScorer   the task's own verifier (the gold answer / the tests). Not deployable: it
                 knows the answer. Best-of-N with it is an UPPER BOUND (it equals pass@N) and
                 is labelled so wherever it is reported.
  LoglikScorer   the model's own length-normalised log-likelihood of the completion, at
                 temperature 1 (see ponder.scaling.candidates for when it is recomputed).
  JudgeScorer    a model (possibly the same one) asked whether a candidate's final answer is
                 correct; its free-text verdict is read by `parse_verdict`, and a verdict that
                 cannot be read scores `fallback` (0.5 by default: neither yes nor no).

Candidates that did not commit to an answer (truncated, nothing extracted) are not judged;
best-of-N never picks them while another candidate committed (see strategies.best_of_n).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Sequence

from ponder.engine import SamplingParams
from ponder.scaling.candidates import Candidate, fill_logliks
from ponder.tasks import Problem


@dataclass
class Scores:
    """A scorer's verdict on the candidates of one problem."""

    values: list[float]  # one per candidate, higher is better
    generated_tokens: int = 0  # tokens the scorer generated (judge verdicts)
    scored_tokens: int = 0  # tokens run through a model only to score them (log-likelihood)
    detail: dict = field(default_factory=dict)


class OracleScorer:
    """1 for a correct candidate, 0 otherwise: an upper bound, never a strategy to deploy."""

    name = "oracle"
    label = "best-of-N, oracle verifier (UPPER BOUND: it knows the answer)"
    upper_bound = True

    def score(self, problems: Sequence[Problem], prompts: Sequence[str],
              candidates: Sequence[Sequence[Candidate]]) -> list[Scores]:
        return [Scores([1.0 if c.correct else 0.0 for c in cs]) for cs in candidates]


class LoglikScorer:
    """The model's mean log-prob per sampled token at temperature 1."""

    name = "loglik"
    label = "best-of-N, model log-likelihood"
    upper_bound = False

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def score(self, problems: Sequence[Problem], prompts: Sequence[str],
              candidates: Sequence[Sequence[Candidate]]) -> list[Scores]:
        scored = fill_logliks(self.model, self.tokenizer, prompts, candidates)
        return [Scores([c.loglik for c in cs], scored_tokens=s) for cs, s in zip(candidates, scored)]


# ---------------------------------------------------------------- the judge's verdict

_POSITIVE = {"yes", "correct", "right", "true", "valid", "accurate", "accept", "accepted", "pass"}
_NEGATIVE = {"no", "incorrect", "wrong", "false", "invalid", "inaccurate", "reject", "rejected", "fail", "not"}
_WORDS = "|".join(sorted(_POSITIVE | _NEGATIVE, key=len, reverse=True))
# "not correct", "isn't right", "is not valid": a negated positive word is a negative verdict
_NEGATED = re.compile(r"(?:\bnot|n't|\bisnt|\bwasnt|\bnever)\s+(?:" + "|".join(_POSITIVE) + r")\b")
_WORD = re.compile(r"\b(" + _WORDS + r")\b")
_LABELLED = re.compile(r"\b(?:verdict|judg(?:e)?ment|decision|final answer|answer)\s*(?:is)?\s*[:=\-]?\s*\**\s*(" +
                       _WORDS + r")\b")
_NUM = r"(\d+(?:\.\d+)?)"
_SCORE = re.compile(r"\b(?:score|rating|grade)\s*(?:is|of)?\s*[:=]?\s*" + _NUM +
                    r"(?:\s*(?:/|out\s+of)\s*" + _NUM + r")?")
_WHOLE_SCORE = re.compile(r"^" + _NUM + r"(?:\s*(?:/|out\s+of)\s*" + _NUM + r")?$")


def _ratio(num: str, den: str | None) -> float | None:
    x = float(num)
    if den is None:  # an unscaled number only means something as a probability or a 0/1 verdict
        return x if 0 <= x <= 1 else None
    d = float(den)
    return x / d if d > 0 and 0 <= x <= d else None


def _sign(word: str) -> float:
    return 1.0 if word in _POSITIVE else 0.0


def parse_verdict(text: str) -> float | None:
    """A judge's output as a score in [0, 1], or None when no verdict can be read.

    Read in this order (the first rule that applies decides):
      1. only what follows a closed `</think>` counts; unfinished thinking has no verdict;
      2. the first word, if it is a verdict word standing alone ("Yes.", "**Incorrect**",
         "No, because ..."; not "No error here ...");
      3. the last labelled verdict ("Verdict: correct", "Final answer: no");
      4. a labelled score ("Score: 8/10", "rating 4 out of 5", "score: 0.7") or an output that is
         only a score ("7/10", "1", "0");
      5. the last verdict word anywhere, a negated positive ("not correct", "isn't right")
         counting as negative;
      6. otherwise None (garbage, empty, a bare answer such as "3/4").
    Verdict words: yes/correct/right/true/valid/accurate/accept(ed)/pass and
    no/incorrect/wrong/false/invalid/inaccurate/reject(ed)/fail.
    """
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    elif "<think>" in text:
        return None
    t = _NEGATED.sub(" incorrect ", text.lower())
    t = re.sub(r"[*_`#>\"']", " ", t).strip()
    first = re.match(r"[^a-z0-9]*([a-z]+)[ \t]*(?:[.,!:;)\-\n]|$)", t)
    if first and first.group(1) in _POSITIVE | _NEGATIVE - {"not"}:
        return _sign(first.group(1))
    labelled = _LABELLED.findall(t)
    if labelled and labelled[-1] != "not":
        return _sign(labelled[-1])
    for m in (_SCORE.search(t), _WHOLE_SCORE.match(t.rstrip(" ."))):
        if m and (value := _ratio(m.group(1), m.group(2))) is not None:
            return value
    words = [w for w in _WORD.findall(t) if w != "not"]
    return _sign(words[-1]) if words else None


# ---------------------------------------------------------------- the judge

JUDGE_INSTRUCTION = "Is the final answer of this solution correct? Answer with one word: yes or no."


def _visible(text: str) -> str:
    """What a reader of the response sees: the part after the thinking block."""
    return text.rsplit("</think>", 1)[1].strip() if "</think>" in text else text.strip()


class JudgeScorer:
    """Ask a model whether each committed candidate is correct; greedy, `max_new_tokens` per verdict.

    engine / tokenizer: the judge (pass the policy's own for self-judging). Identical candidate
    texts of a problem are judged once.
    """

    name = "judge"
    label = "best-of-N, LLM judge"
    upper_bound = False

    def __init__(self, engine, tokenizer, max_new_tokens: int = 32, fallback: float = 0.5):
        self.engine, self.tokenizer = engine, tokenizer
        self.max_new_tokens, self.fallback = max_new_tokens, fallback

    def prompt(self, problem: Problem, candidate: Candidate) -> str:
        content = f"Problem:\n{problem.prompt}\n\nSolution:\n{_visible(candidate.text)}\n\n{JUDGE_INSTRUCTION}"
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                      add_generation_prompt=True, enable_thinking=False)
        return content + "\nVerdict:"

    def score(self, problems: Sequence[Problem], prompts: Sequence[str],
              candidates: Sequence[Sequence[Candidate]]) -> list[Scores]:
        asks: dict[tuple[int, str], str] = {}  # (problem, candidate text) -> judge prompt
        for i, (problem, cs) in enumerate(zip(problems, candidates)):
            for c in cs:
                if c.committed:
                    asks.setdefault((i, c.text), self.prompt(problem, c))
        keys = list(asks)
        params = SamplingParams(max_new_tokens=self.max_new_tokens, temperature=0.0)
        outputs = self.engine.generate([asks[k] for k in keys], 1, params) if keys else []
        verdicts = {k: out[0] for k, out in zip(keys, outputs)}
        results = []
        for i, cs in enumerate(candidates):
            values, raw, unread, tokens = [], [], 0, 0
            for c in cs:
                if not c.committed:
                    values.append(-math.inf)
                    raw.append(None)
                    continue
                out = verdicts[(i, c.text)]
                verdict = parse_verdict(out.text)
                unread += verdict is None
                values.append(self.fallback if verdict is None else verdict)
                raw.append(out.text)
            tokens = sum(len(verdicts[k].token_ids) for k in keys if k[0] == i)
            results.append(Scores(values, generated_tokens=tokens, detail={"verdicts": raw, "unread": unread}))
        return results
