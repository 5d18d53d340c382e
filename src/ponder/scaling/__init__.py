"""Inference-time scaling: strategies that spend more compute at inference, without changing
the weights (self-consistency, weighted voting, best-of-N with a scorer, self-refinement, the
thinking-length dials), and the accuracy-vs-tokens curve that says what each buys per token.

    from ponder.scaling import run_strategy, LoglikScorer
    choices = run_strategy("majority", model, tokenizer, problems, n=8)
    accuracy = sum(c.correct for c in choices) / len(choices)

Command line: `ponder eval ... --strategy NAME` (ponder.scaling.command) and
`ponder scale-curve` (ponder.scaling.curve).
"""

from ponder.scaling.candidates import Candidate, fill_logliks, generate_candidates
from ponder.evaluate.metrics import subset_mean
from ponder.scaling.curve import best_of_k, main, scale_curve
from ponder.scaling.scorers import JudgeScorer, LoglikScorer, OracleScorer, Scores, parse_verdict
from ponder.scaling.strategies import (STRATEGIES, Choice, best_of_n, majority_vote, refine, run_strategy,
                                       weighted_winner)
from ponder.scaling.command import main as eval_main

__all__ = ["Candidate", "Choice", "JudgeScorer", "LoglikScorer", "OracleScorer", "STRATEGIES", "Scores",
           "best_of_k", "best_of_n", "eval_main", "fill_logliks", "generate_candidates", "main",
           "majority_vote", "parse_verdict", "refine", "run_strategy", "scale_curve", "subset_mean",
           "weighted_winner"]
