"""Evaluation metrics: unbiased pass@k, majority vote over equivalence clusters (maj@k), and
the small aggregates a result table needs. Pure Python; no model, no grader inside.

pass@k (Chen et al. 2021): the probability that at least one of k samples drawn without
replacement from the n generated is correct, 1 - C(n-c, k) / C(n, k), computed in the stable
product form 1 - prod_{i=n-c+1..n} (1 - k/i); exactly 1 when n - c < k. Needs n >= k.

maj@k: the vote of k samples, averaged over the k-subsets of the n samples (all of them when
there are at most `draws`, else that many seeded random ones), each subset voting on its own, as
k fresh samples would.
  * Answers are grouped into clusters by an equivalence function (mathematical equivalence, not
    string equality): an answer joins the first cluster whose first member it is equivalent to.
  * Empty answers (None: nothing could be extracted) do not vote. A subset in which nobody
    votes has no winner and counts as wrong.
  * Tie rule: among clusters with the most votes in the subset, the one whose first member *in
    the subset* was generated earliest wins; its first member's grade decides. (Breaking ties by
    first appearance in the whole pool would favour the pool's most common answer, which
    appears early, and overstate maj@k for k < n.)
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Callable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct."""
    if not 0 <= c <= n:
        raise ValueError(f"pass@k: need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n samples, got k={k}, n={n}: generate at least k samples")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def cluster(answers: Sequence[str | None], equivalent: Callable[[str, str], bool]) -> list[int | None]:
    """Cluster index of each answer (None for an empty answer), numbered by first appearance.

    Identical strings share a cluster without calling `equivalent`; otherwise an answer joins
    the first cluster whose first member it is equivalent to (equivalent(first, answer)).
    """
    firsts: list[str] = []
    by_string: dict[str, int] = {}
    out: list[int | None] = []
    for answer in answers:
        if answer is None or not answer.strip():
            out.append(None)
            continue
        index = by_string.get(answer)
        if index is None:
            index = next((j for j, first in enumerate(firsts) if equivalent(first, answer)), None)
            if index is None:
                index = len(firsts)
                firsts.append(answer)
            by_string[answer] = index
        out.append(index)
    return out


def subset_mean(n: int, k: int, fn: Callable[[Sequence[int]], float], draws: int = 500,
                seed: int = 0) -> float:
    """Mean of fn(subset) over the k-subsets of range(n) (each sorted): all of them when there
    are at most `draws`, else `draws` uniform random ones from a generator seeded with `seed`."""
    if not 1 <= k <= n:
        raise ValueError(f"subsets of size k need 1 <= k <= n samples, got k={k}, n={n}: generate at least k samples")
    if math.comb(n, k) <= draws:
        values = [fn(s) for s in itertools.combinations(range(n), k)]
    else:
        rng = random.Random(seed)
        values = [fn(sorted(rng.sample(range(n), k))) for _ in range(draws)]
    return sum(values) / len(values)


def maj_at_k(clusters: Sequence[int | None], correct: Sequence[bool], k: int, draws: int = 500,
             seed: int = 0) -> float:
    """Mean, over k-subsets of the n samples, of "the subset's own majority cluster is correct".

    clusters: each sample's cluster index from `cluster` (None: empty, does not vote).
    correct: each sample's grade; the winning cluster's first member in the subset decides.
    """
    n = len(clusters)
    if len(correct) != n:
        raise ValueError(f"maj@k: {n} cluster labels but {len(correct)} grades")

    def subset_correct(subset: Sequence[int]) -> float:
        winner = majority([clusters[i] for i in subset])
        if winner is None:
            return 0.0
        return float(correct[next(i for i in subset if clusters[i] == winner)])

    return subset_mean(n, k, subset_correct, draws, seed)


def majority(clusters: Sequence[int | None]) -> int | None:
    """The winning cluster of one vote (ties: the tied cluster seen first in `clusters`), or
    None if nobody voted."""
    counts: dict[int, int] = {}
    for label in clusters:
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
    if not counts:
        return None
    top = max(counts.values())
    return next(label for label in clusters if label is not None and counts[label] == top)


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def stderr(p: float | None, count: int) -> float | None:
    """Binomial standard error of an accuracy p measured on `count` problems."""
    if p is None or count == 0:
        return None
    return math.sqrt(max(p * (1 - p), 0.0) / count)
