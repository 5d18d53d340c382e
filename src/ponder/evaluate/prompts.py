"""How a problem is asked and how its answer is read: one place for `generate`, `eval`,
inference-time scaling and every trainer, so that the accuracy a run reports during training is
the accuracy `ponder eval` reports on the same checkpoint.

Asking (build_prompt), per kind of problem:
  * code (HumanEval): the function header itself, for the model to continue;
  * synthetic families: the task's own prompt, as the model was trained on it;
  * math and your own records: the problem, a blank line, then `instruction` (MATH_INSTRUCTION
    unless you give another; "" for none).
  The text is then wrapped in the checkpoint's chat template when `chat` is True, or when it is
  None (the default), the tokenizer ships a template and the problem is asked in words (math and
  your own records): an instruct model asked without its template often ends its turn at once.
  Synthetic prompts and code headers stay as they are unless `chat` is True.
Reading (grade): synthetic families use their exact check (the last \\boxed{} holds the gold
integer); math uses ponder.rewards.math with `extract` "lenient" (the default: a box, else an
answer line, else the last number) or "strict" (a box or an answer line only); code runs its
tests in the sandbox. A truncated completion committed to no answer and is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from ponder.tasks import FAMILIES, Problem, family
from ponder.tasks.synthetic import boxed_answer

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
EXTRACT_MODES = ("lenient", "strict")


def uses_chat(tokenizer, chat: bool | None, kind: str = "math") -> bool:
    """Whether a prompt of this kind is wrapped in the chat template (see the module docstring)."""
    if chat is None:
        asked_in_words = kind not in FAMILIES and kind != "code"
        return asked_in_words and getattr(tokenizer, "chat_template", None) is not None
    return chat


def build_prompt(problem: Problem, tokenizer, *, chat: bool | None = None, instruction: str | None = None,
                 enable_thinking: bool = True) -> str:
    """The text the model is asked to continue for `problem` (see the module docstring)."""
    text, instructed = problem.prompt, False
    if problem.kind not in FAMILIES and problem.kind != "code":
        instruction = MATH_INSTRUCTION if instruction is None else instruction
        if instruction:
            text, instructed = f"{text}\n\n{instruction}", True
    if uses_chat(tokenizer, chat, problem.kind):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             enable_thinking=enable_thinking)
    return text + "\n" if instructed else text  # the model answers on a line of its own


def check_context(problems, tokenizer, context: int | None, what: str, source: str = "", **ask) -> None:
    """Refuse, when the data loads, a problem whose prompt (asked as `ask` says: build_prompt's
    options) is longer than the model's `context`, naming it, rather than when a batch draws it."""
    if context is None:
        return
    for problem in problems:
        length = len(tokenizer.encode(build_prompt(problem, tokenizer, **ask)))
        if length > context:
            where = f" in {source}" if source else ""
            raise ValueError(f"{what} problem {problem.id}{where}: its prompt is {length} tokens, longer than the "
                             f"model's context of {context} positions (max_position_embeddings in its config.json)")


@dataclass
class Grade:
    pred: str | None  # the extracted answer (None: nothing extracted, or code)
    correct: bool
    reason: str = ""


def grade(problem: Problem, prompt: str, text: str, truncated: bool = False, extract: str = "lenient") -> Grade:
    """Grade one completion of `problem` (see the module docstring)."""
    if extract not in EXTRACT_MODES:
        raise ValueError(f"extract must be one of {EXTRACT_MODES}, not {extract!r}")
    if problem.kind == "code":
        from ponder.rewards.code import code_accuracy

        score = code_accuracy(prompt, text, problem)
        return Grade(None, bool(score) and score >= 1.0, "passed" if score else "failed")
    if truncated:
        return Grade(None, False, "truncated")
    if problem.kind in FAMILIES:
        pred = boxed_answer(text)
        ok = family(problem.kind).check(text, problem)
        return Grade(pred, ok, "correct" if ok else ("no \\boxed{} answer" if pred is None else "wrong answer"))
    from ponder.rewards.math import grade as grade_math

    result = grade_math(problem.answer, text, extract=extract)
    return Grade(result.pred, result.correct, result.reason)
