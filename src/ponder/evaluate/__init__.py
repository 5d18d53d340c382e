"""Evaluation: metrics (pass@k, maj@k over equivalence clusters), the harness that generates
and grades, and the `ponder eval` command.

    from ponder.evaluate import evaluate
    result = evaluate(model, tokenizer, load_task("multiply"), n=8, k_values=(1, 4, 8))
    result.metrics["greedy"]["accuracy"], result.metrics["sampled"]["pass@1"]
"""

from ponder.evaluate.harness import EvalResult, evaluate, markdown
from ponder.evaluate.prompts import build_prompt, grade
from ponder.evaluate.metrics import maj_at_k, pass_at_k
from ponder.evaluate.command import main, write_result

__all__ = ["EvalResult", "build_prompt", "evaluate", "grade", "maj_at_k", "main", "markdown", "pass_at_k",
           "write_result"]
