"""The learned graders: a verifier and a meta-verifier, trained (SFT, then GRPO) and used as rewards.

    judge = Judge(model, tokenizer)                      # greedy reader of any prompt, in batches
    verifier = Verifier(judge)                           # solves each problem, then compares
    texts = verifier.verify([problem, ...], [solution, ...])   # its analyses (ponder.verify.protocol)
    sft_dir = sft(records, base_dir, out, steps=...)     # ponder.sft on {prompt, completion} records
    meta = MetaVerifier(Verifier(...))                   # a second solver that must quote the same issue
    rl_dir = grpo_verifier(items, sft_dir, out, meta=None | meta)    # ponder.rl.train_rl
    reward = VerifierReward(meta)                        # the verifier's GRPO reward

The verifier's GRPO trains its own work: reward format x (1 - |s' - s|), where s' is the score
its work gives the labelled solution and s the step checker's, times the meta-verifier's score
of the analysis in the meta variant.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ponder.tasks.problem import Problem
from ponder.verify.data import Labelled
from ponder.verify.protocol import END, compared_analysis, parse_analysis, verifier_reward, work_prompt

MAX_WORK_TOKENS = 48  # the verifier's own solution: the generator's completion cap


class Judge:
    """Greedy generation from a model, in batches."""

    def __init__(self, model, tokenizer, max_new_tokens: int = MAX_WORK_TOKENS, batch: int = 256):
        from ponder.engine import Engine

        self.model, self.tokenizer = model.eval(), tokenizer
        self.engine = Engine(model, tokenizer)
        self.max_new_tokens, self.batch = max_new_tokens, batch
        self.calls = 0  # texts read so far (the cost of a learned reward)

    @classmethod
    def load(cls, path, **kw) -> "Judge":
        from ponder.models import from_pretrained
        from ponder.tokenizer import Tokenizer

        return cls(from_pretrained(path), Tokenizer.from_pretrained(path), **kw)

    @torch.no_grad()
    def read(self, prompts: list[str]) -> list[str]:
        from ponder.engine import SamplingParams

        params = SamplingParams(temperature=0.0, max_new_tokens=self.max_new_tokens)
        out = []
        for start in range(0, len(prompts), self.batch):
            out += [g[0].text for g in self.engine.generate(prompts[start:start + self.batch], 1, params)]
        self.calls += len(prompts)
        return out


class Verifier:
    """Solve first, then compare: works each distinct problem once (greedy, no solution in view)
    and reads every analysis off that work by rule (ponder.verify.protocol.compared_analysis)."""

    def __init__(self, solver: Judge):
        self.solver = solver

    @classmethod
    def load(cls, path) -> "Verifier":
        return cls(Judge.load(path))

    def works(self, problem_prompts: list[str]) -> dict[str, str]:
        distinct = list(dict.fromkeys(problem_prompts))
        return dict(zip(distinct, self.solver.read([work_prompt(p) for p in distinct])))

    def verify(self, problem_prompts: list[str], solutions: list[str]) -> list[str]:
        works = self.works(problem_prompts)
        return [compared_analysis(works[p], s) for p, s in zip(problem_prompts, solutions)]


class VerifierScorer:
    """Best-of-N by a trained verifier (ponder.scaling's scorer interface): each problem worked
    once, each candidate scored 1, 1/2 or 0 by comparison, 0 where the verifier cannot read it.
    `ponder eval --strategy best-of-n --scorer verifier --judge-model DIR`, DIR a verifier that
    `ponder verify-study` trained (OUT/verifier/grpo/model); it reads the problem as written."""

    name = "verifier"
    label = "best-of-N, learned verifier (it solves, then compares)"
    upper_bound = False

    def __init__(self, verifier: Verifier):
        self.verifier = verifier

    def score(self, problems, prompts, candidates):
        from ponder.scaling.scorers import Scores

        works = self.verifier.works([p.prompt for p in problems])
        encode = self.verifier.solver.tokenizer.encode
        out = []
        for problem, group in zip(problems, candidates):
            work = works[problem.prompt]
            analyses = [parse_analysis(compared_analysis(work, c.text)) for c in group]
            out.append(Scores([a.score if a is not None else 0.0 for a in analyses], generated_tokens=len(encode(work)),
                              detail={"verifier_work": work}))
        return out


class MetaVerifier:
    """Checks the verifier's analyses with work of its own: a second solver (trained apart) works
    each problem once; an analysis scores 1 when that work, compared with the solution, quotes the
    same issue (none included), else 0 (ponder.verify.protocol)."""

    def __init__(self, second: Verifier):
        self.second = second

    def scores(self, problem_prompts: list[str], solutions: list[str], analyses: list[str]) -> list[float]:
        own = [parse_analysis(t) for t in self.second.verify(problem_prompts, solutions)]
        theirs = [parse_analysis(t) for t in analyses]
        return [float(a is not None and b is not None and a.issue == b.issue) for a, b in zip(theirs, own)]


def sft(records: list[dict], base: str | Path, out: str | Path, steps: int, seed: int = 0, lr: float = 1e-3,
        batch_size: int = 64) -> str:
    """ponder.sft on {prompt, completion} records (loss on the completion); returns the model folder."""
    from ponder.sft import SFTConfig, train_sft

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = SFTConfig(model=str(base), data=str(data), output_dir=str(out / "run"), steps=steps, seed=seed, lr=lr,
                    batch_size=batch_size, micro_batch_size=batch_size, warmup_steps=min(10, steps // 10),
                    save_every=0, device="cpu")
    return train_sft(cfg, progress=False)["model_dir"]


class VerifierReward:
    """GRPO reward of the verifier's own work on a labelled solution: format x (1 - |s' - s|) of
    the analysis the work gives it, times the meta-verifier's score of that analysis when a
    meta-verifier is given (the RL prompt is the work prompt; the solution and its true score
    come as columns)."""

    batched = True

    def __init__(self, meta: MetaVerifier | None = None):
        self.meta = meta
        self.__name__ = "verifier_meta" if meta is not None else "verifier_score"
        self.history: list[dict] = []  # per call (one per RL step): mean score reward, mean meta score

    def __call__(self, prompts, completions, score, solution, **_) -> list[float]:
        analyses = [compared_analysis(w, s) for w, s in zip(completions, solution)]
        meta = [1.0] * len(completions)
        if self.meta is not None:
            problems = [p.removesuffix(END) for p in prompts]
            meta = self.meta.scores(problems, list(solution), analyses)
        values = [verifier_reward(a, s, m) for a, s, m in zip(analyses, score, meta)]
        plain = [verifier_reward(a, s) for a, s in zip(analyses, score)]
        self.history.append({"reward": _mean(values), "score_reward": _mean(plain), "meta": _mean(meta)})
        return values


def verifier_problems(items: list[Labelled]) -> list[Problem]:
    """The verifier's RL problems: its work prompt, the problem's answer (so RL's own accuracy
    column reads 'its work reaches the right answer'), and the labelled solution and its true
    score as columns for the reward."""
    return [Problem(id=f"verify-{i}", prompt=work_prompt(x.problem.prompt), answer=x.problem.answer, kind="verify",
                    meta={"score": x.score, "solution": x.solution, "split": "train"})
            for i, x in enumerate(items)]


def grpo_verifier(items: list[Labelled], model_dir: str, out: str | Path, steps: int, meta: MetaVerifier | None = None,
                  seed: int = 0, prompts_per_step: int = 32, group_size: int = 8, lr: float = 1e-4) -> tuple[str, list]:
    """GRPO on the verifier's own work; returns (model folder, per-step reward history)."""
    from ponder.rl import RLConfig, train_rl
    from ponder.tokenizer import Tokenizer

    reward = VerifierReward(meta)
    cfg = RLConfig(model=model_dir, task="verify", eval_task=None, output_dir=str(out), steps=steps, seed=seed,
                   prompts_per_step=prompts_per_step, group_size=group_size, max_new_tokens=MAX_WORK_TOKENS,
                   temperature=1.0, advantage="dr_grpo", loss_type="dapo", lr=lr, schedule="constant",
                   instruction="",  # the verifier reads its prompt as is: a math instruction appended spoils its work
                   micro_batch_size=256, eval_every=0, save_every=0, device="cpu", rollback=False)
    summary = train_rl(cfg, tokenizer=Tokenizer.from_pretrained(model_dir), problems=verifier_problems(items),
                       rewards=[reward], progress=False)
    return summary["model_dir"], reward.history


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")
