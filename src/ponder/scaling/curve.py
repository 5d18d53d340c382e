"""`ponder scale-curve`: accuracy against generated tokens per problem for the sampling-based
strategies at N = 1, 2, 4, ..., all from one pool of samples.

Each problem is sampled max(N) times once (plus one greedy completion, the baseline). For each
smaller N the strategies are evaluated on N-subsets of that pool, drawn without replacement:
  pass@N              exact (metrics.pass_at_k): best-of-N with an oracle verifier, the CEILING
                      of every selection strategy, not a strategy one can run;
  best-of-N (loglik)  exact: with candidates ranked by score (ties: earliest sample; uncommitted
                      ones last), the r-th ranked wins a subset with probability
                      C(max N - 1 - r, N - 1) / C(max N, N); the same for a scorer given
                      (`--verifier DIR`: a trained verifier, ponder.verify), whose own tokens
                      (it works each problem once) are added to its line's cost;
  majority and        the mean over all N-subsets when there are at most `draws` of them, else
  weighted majority   over `draws` seeded random ones.
Each subset is voted on as a run with only those N samples would vote: a tie goes to the
cluster that appears first *within the subset* (metrics.maj_at_k's rule; metrics.subset_mean
does the averaging for both).
Tokens per problem at N: N times the mean generated tokens of a sample -- the exact expected
cost of a random N-subset. Clusters are computed once over the whole pool.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from ponder.engine import Engine, SamplingParams
from ponder.evaluate import metrics as M
from ponder.evaluate.harness import DEFAULT_MAX_NEW_TOKENS, grader_info
from ponder.evaluate.prompts import build_prompt
from ponder.progress import ProgressBar
from ponder.scaling.candidates import Candidate, fill_logliks, generate_candidates, logprobs_are_the_models
from ponder.scaling.strategies import answer_equivalence, vote_weight, weighted_winner
from ponder.tasks import FAMILIES, Problem

LABELS = {
    "majority": "majority vote",
    "weighted_majority": "weighted majority (exp mean log-prob)",
    "best_of_n_loglik": "best-of-N (model log-likelihood)",
    "pass@n": "pass@N = oracle best-of-N (upper bound)",
}


def best_of_k(scores: Sequence[float], committed: Sequence[bool], correct: Sequence[bool], k: int) -> float:
    """Exact mean over all k-subsets of "the best-scored committed candidate is correct"
    (ties: the earliest; a subset with no committed candidate answers nothing)."""
    n = len(scores)
    if not 1 <= k <= n:
        raise ValueError(f"best-of-{k} needs 1 <= k <= n samples, n={n}")
    ranked = sorted(range(n), key=lambda i: (not committed[i], -scores[i] if committed[i] else 0.0, i))
    total = math.comb(n, k)
    return sum(math.comb(n - 1 - r, k - 1) for r, i in enumerate(ranked) if committed[i] and correct[i]) / total


def vote_at_k(cands: Sequence[Candidate], clusters: Sequence[int | None], k: int, draws: int,
              rng: random.Random, weighted: bool) -> float:
    """Mean over N-subsets of "the (weighted) majority of the subset is correct", each subset
    voting on its own (ties: the cluster first seen in the subset)."""
    weights = [(vote_weight(c) if weighted else 1.0) if c.committed else 0.0 for c in cands]

    def correct(subset: Sequence[int]) -> float:
        local: dict[int, int] = {}  # global cluster label -> order of first appearance in the subset
        labels = [None if clusters[i] is None else local.setdefault(clusters[i], len(local)) for i in subset]
        winner = weighted_winner(labels, [weights[i] for i in subset])
        if winner is None:
            return 0.0
        return float(cands[subset[labels.index(winner)]].correct)

    return M.subset_mean(len(cands), k, correct, draws, seed=rng.randrange(2**32))


def problem_curve(cands: Sequence[Candidate], equivalent, ks: Sequence[int], draws: int,
                  rng: random.Random, scored: dict[str, Sequence[float]] | None = None) -> dict[int, dict[str, float]]:
    """Each strategy's expected accuracy at each N in ks for one problem's pool of samples
    (`scored`: more best-of-N columns, by name, from a scorer's values)."""
    clusters = M.cluster([c.pred if c.committed else None for c in cands], equivalent)
    correct = [c.correct for c in cands]
    committed = [c.committed for c in cands]
    out = {}
    for k in ks:
        out[k] = {
            "majority": vote_at_k(cands, clusters, k, draws, rng, weighted=False),
            "weighted_majority": vote_at_k(cands, clusters, k, draws, rng, weighted=True),
            "best_of_n_loglik": best_of_k([c.loglik for c in cands], committed, correct, k),
            "pass@n": M.pass_at_k(len(cands), sum(correct), k),
            **{name: best_of_k(values, committed, correct, k) for name, values in (scored or {}).items()},
        }
    return out


def scale_curve(model, tokenizer, problems: Sequence[Problem], ns: Sequence[int], *, draws: int = 200,
                seed: int = 0, temperature: float = 1.0, max_new_tokens: int | None = None,
                engine=None, batch_size: int = 16, progress: bool = True, scorer=None) -> dict:
    """The curve's table (see the module docstring): settings, greedy baseline, one row per N;
    with `scorer` (ponder.scaling.scorers' interface) a best-of-N column by its scores too."""
    ks = sorted(set(ns))
    if not ks or ks[0] < 1:
        raise ValueError(f"--n values must be >= 1, got {list(ns)}")
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    if temperature <= 0:
        raise ValueError(f"the curve samples: temperature must be > 0, got {temperature}")
    if not problems:
        raise ValueError("no problems")
    equivalences = [answer_equivalence(p) for p in problems]
    if max_new_tokens is None:
        max_new_tokens = max(DEFAULT_MAX_NEW_TOKENS["synthetic" if p.kind in FAMILIES else p.kind] for p in problems)
    if engine is None:
        model.eval()
        engine = Engine(model, tokenizer)
    pool = max(ks)
    sample_params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    greedy_params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, seed=seed)
    rng = random.Random(seed)
    labels = {**LABELS, **({f"best_of_n_{scorer.name}": scorer.label} if scorer is not None else {})}
    rows = {k: {name: [] for name in labels} for k in ks}
    greedy_correct, greedy_tokens, sample_tokens, scored, scorer_tokens = [], [], [], 0, 0
    with ProgressBar(total=len(problems), desc="scale-curve", unit="problem", enabled=progress) as bar:
        for start in range(0, len(problems), batch_size):
            batch = list(problems[start:start + batch_size])
            prompts = [build_prompt(p, tokenizer) for p in batch]
            for [g] in generate_candidates(engine, batch, prompts, 1, greedy_params):
                greedy_correct.append(float(g.correct))
                greedy_tokens.append(g.tokens)
            cands = generate_candidates(engine, batch, prompts, pool, replace(sample_params, seed=seed + start))
            scored += sum(fill_logliks(model, tokenizer, prompts, cands))
            by_scorer = scorer.score(batch, prompts, cands) if scorer is not None else [None] * len(batch)
            for cs, equivalent, s in zip(cands, equivalences[start:start + batch_size], by_scorer):
                sample_tokens.append(M.mean([c.tokens for c in cs]))
                extra = {f"best_of_n_{scorer.name}": s.values} if s is not None else None
                scorer_tokens += s.generated_tokens if s is not None else 0
                for k, values in problem_curve(cs, equivalent, ks, draws, rng, extra).items():
                    for name, value in values.items():
                        rows[k][name].append(value)
            bar.update(len(batch))

    count = len(problems)
    per_sample = M.mean(sample_tokens)
    greedy_acc = M.mean(greedy_correct)
    curve = []
    for k in ks:
        row: dict = {"n": k, "generated_tokens": k * per_sample}
        for name in labels:
            row[name] = M.mean(rows[k][name])
        curve.append(row)
    return {
        "settings": {"problems": count, "n": ks, "draws": draws, "seed": seed, "temperature": temperature,
                     "max_new_tokens": max_new_tokens,
                     "loglik": ("engine log-probs (temperature 1, no filtering: the model's own)"
                                if logprobs_are_the_models(sample_params) else
                                "recomputed under the model at temperature 1")},
        "grader": grader_info(problems),
        "labels": labels,
        "greedy": {"accuracy": greedy_acc, "stderr": M.stderr(greedy_acc, count),
                   "generated_tokens": M.mean(greedy_tokens)},
        "curve": curve,
        "scored_tokens_per_problem": scored / count,
        "scorer_tokens_per_problem": scorer_tokens / count,  # generated by the scorer, on top of the samples
    }


def markdown(table: dict, title: str = "") -> str:
    lines = [f"## {title}", ""] if title else []
    g = table["greedy"]
    settings = table["settings"]
    lines += [f"{settings['problems']} problems; samples at T={settings['temperature']}, up to "
              f"{settings['max_new_tokens']} tokens. Greedy decoding: {100 * g['accuracy']:.1f}% "
              f"± {100 * g['stderr']:.1f} at {g['generated_tokens']:.1f} tokens/problem.", "",
              "| N | tokens/problem | " + " | ".join(table["labels"].values()) + " |",
              "|---|---|" + "---|" * len(table["labels"])]
    for row in table["curve"]:
        cells = " | ".join(f"{100 * row[name]:.1f}%" for name in table["labels"])
        lines.append(f"| {row['n']} | {row['generated_tokens']:.1f} | {cells} |")
    return "\n".join(lines) + "\n"


def plot(table: dict, path: str | Path, title: str = "") -> Path:
    """Accuracy against mean generated tokens per problem, one line per strategy (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [row["generated_tokens"] for row in table["curve"]]
    styles = {"majority": "o-", "weighted_majority": "s-", "best_of_n_loglik": "^-", "pass@n": "x--"}
    for name, label in table["labels"].items():
        ys = [100 * row[name] for row in table["curve"]]
        color = "0.55" if name == "pass@n" else None
        own = table.get("scorer_tokens_per_problem", 0) if name not in LABELS else 0  # a scorer's own cost
        ax.plot([x + own for x in xs], ys, styles.get(name, "d-"), label=label, color=color)
    for row, x in zip(table["curve"], xs):
        ax.annotate(f"N={row['n']}", (x, 100 * row["majority"]), textcoords="offset points", xytext=(4, -12),
                    fontsize=7)
    g = table["greedy"]
    ax.plot([g["generated_tokens"]], [100 * g["accuracy"]], "k*", markersize=11, label="greedy")
    ax.axhline(100 * g["accuracy"], color="k", linestyle=":", linewidth=0.8)
    if len(xs) > 1 and min(xs) > 0:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    top = max([100 * row["pass@n"] for row in table["curve"]] + [100 * g["accuracy"]])
    ax.set_ylim(0, min(100, top + 8))
    ax.set_xlabel("mean generated tokens per problem")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "accuracy vs inference compute")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(args) -> int:
    """`ponder scale-curve`: write curve.json, curve.md and curve.png under --out."""
    from ponder.evaluate.loading import load_model, load_problems

    problems = load_problems(args)
    model, tokenizer = load_model(args.model, getattr(args, "device", "auto"))
    scorer = None
    if getattr(args, "verifier", None):
        from ponder.verify.judge import Verifier, VerifierScorer  # a trained verifier (floor 4), chosen at the command

        scorer = VerifierScorer(Verifier.load(args.verifier))
    table = scale_curve(model, tokenizer, problems, args.n, draws=args.draws, seed=args.seed,
                        temperature=getattr(args, "temperature", 1.0),
                        max_new_tokens=getattr(args, "max_new_tokens", None), scorer=scorer)
    table = {"model": str(args.model), "task": args.task, "data": None if args.data is None else str(args.data),
             "split": getattr(args, "split", None),
             "limit": args.limit, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
             **table}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.json").write_text(json.dumps(table, indent=1) + "\n")
    title = f"{args.task} · {Path(args.model).name}"
    (out / "curve.md").write_text(markdown(table, title))
    plot(table, out / "curve.png", title)
    print(markdown(table, title), end="")
    print(f"wrote {out / 'curve.json'}, {out / 'curve.md'} and {out / 'curve.png'}")
    return 0
