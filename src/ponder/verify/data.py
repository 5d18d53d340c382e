"""Labelled solutions for the verifier, right solutions to train its work on, and the wall between
train and test.

Labels come from sampling the generator (several temperatures, several checkpoints) and
grading every sample with the step checker, so the verifier sees the errors a real generator
makes. Only training-split problems may reach training data (`training_records` refuses any
other), and the held-out evaluation draws its solutions from test-split problems and from a
generator checkpoint that made no training sample (`check_separate`).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from ponder.rewards.process import StepVerdict, check_steps, true_score
from ponder.verify.protocol import SCORE_TEXT, verifier_prompt, verifier_target, work_prompt


@dataclass(frozen=True)
class Labelled:
    problem: object  # ponder.tasks.Problem
    solution: str  # the generator's completion text
    source: str  # which checkpoint and temperature wrote it, e.g. "base@1.0"
    verdict: StepVerdict

    @property
    def score(self) -> float:
        return true_score(self.verdict)


def sample(model, tokenizer, problems, source: str, temperatures=(0.7, 1.0, 1.3), n: int = 2,
           seed: int = 0, max_new_tokens: int = 48) -> list[Labelled]:
    """n samples per problem at each temperature, graded by the step checker; duplicates dropped."""
    from ponder.engine import Engine, SamplingParams

    model.eval()
    engine = Engine(model, tokenizer)
    out, seen = [], set()
    for j, temperature in enumerate(temperatures):
        params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed * 100 + j)
        groups = engine.generate([p.prompt for p in problems], n, params)
        for problem, group in zip(problems, groups):
            for c in group:
                if (problem.prompt, c.text) in seen:
                    continue
                seen.add((problem.prompt, c.text))
                out.append(Labelled(problem, c.text, f"{source}@{temperature}", check_steps(c.text, problem)))
    return out


def balance(items: list[Labelled], seed: int = 0, ratio: float = 2.0) -> list[Labelled]:
    """At most `ratio` times as many solutions of any true score as of the rarest one, so a
    verifier cannot score well by always answering the commonest grade."""
    by_score: dict[float, list[Labelled]] = {}
    for item in items:
        by_score.setdefault(item.score, []).append(item)
    cap = int(ratio * min(map(len, by_score.values()))) if by_score else 0
    rng = random.Random(seed)
    kept = [x for group in by_score.values() for x in (rng.sample(group, cap) if len(group) > cap else group)]
    rng.shuffle(kept)
    return kept


def training_records(items: list[Labelled]) -> list[dict]:
    """Verifier SFT records {prompt, completion}; refuses any solution of a non-training problem."""
    bad = [x.problem.id for x in items if x.problem.meta.get("split") != "train"]
    if bad:
        raise ValueError(f"{len(bad)} solutions of non-training problems in verifier training data (first: {bad[0]})")
    return [{"prompt": verifier_prompt(x.problem.prompt, x.solution), "completion": verifier_target(x.verdict)}
            for x in items]


def work_records(problems) -> list[dict]:
    """The verifier's SFT records: a training problem's work prompt and its right solution in the
    generator's format (scratchpad and answer); refuses any non-training problem."""
    from ponder.tasks import multiply

    bad = [p.id for p in problems if p.meta.get("split") != "train"]
    if bad:
        raise ValueError(f"{len(bad)} non-training problems in verifier training data (first: {bad[0]})")
    return [{"prompt": work_prompt(p.prompt), "completion": multiply.sft_text(p, scratchpad=True)} for p in problems]


def check_separate(train: list[Labelled], held_out: list[Labelled]) -> None:
    """Held-out solutions share no problem and no generator checkpoint with the training ones."""
    shared = {x.problem.prompt for x in train} & {x.problem.prompt for x in held_out}
    if shared:
        raise ValueError(f"{len(shared)} held-out problems also in the verifier's training data")
    checkpoints = {x.source.split("@")[0] for x in train} & {x.source.split("@")[0] for x in held_out}
    if checkpoints:
        raise ValueError(f"held-out solutions come from a checkpoint the verifier trained on: {sorted(checkpoints)}")


def describe(items: list[Labelled]) -> dict:
    """Counts by true score and by source: what the verifier was shown."""
    return {"solutions": len(items),
            "by_score": {SCORE_TEXT[k]: v for k, v in sorted(Counter(x.score for x in items).items())},
            "by_source": dict(sorted(Counter(x.source for x in items).items())),
            "scratchpad_share": sum(not x.solution.startswith("<think></think>") for x in items) / max(len(items), 1)}

