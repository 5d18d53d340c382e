"""Evaluation metrics: unbiased pass@k, majority vote over equivalence clusters (maj@k), and
the small aggregates a result table needs. Pure Python; no model, no grader inside.

pass@k (Chen et al. 2021): the probability that at least one of k samples drawn without
replacement from the n generated is correct, 1 - C(n-c, k) / C(n, k), computed in the stable
product form 1 - prod_{i=n-c+1..n} (1 - k/i); exactly 1 when n - c < k. Needs n >= k.

maj@k: the vote of k samples, averaged *exactly* over all C(n, k) subsets of the n samples by
counting with the multivariate hypergeometric over cluster sizes (no random subsets).
  * Answers are grouped into clusters by an equivalence function (mathematical equivalence, not
    string equality): an answer joins the first cluster whose first member it is equivalent to.
  * A cluster is correct when its first member is (its grade decides for the cluster).
  * Empty answers (None: nothing could be extracted) do not vote. A subset in which nobody
    votes has no winner and counts as wrong.
  * Tie rule: among clusters with the most votes, the one whose first member comes earliest in
    the generation order wins. The order of clusters is thus fixed for all subsets, which is what
    makes exact counting possible.
"""

from __future__ import annotations

import math
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


def _truncated_poly(size: int, cap: int, degree: int) -> list[int]:
    """Coefficients of sum_{x=0..min(cap, size)} C(size, x) t^x, up to t^degree."""
    return [math.comb(size, x) if x <= cap else 0 for x in range(min(size, degree) + 1)]


def _multiply(p: list[int], q: list[int], degree: int) -> list[int]:
    out = [0] * min(len(p) + len(q) - 1, degree + 1)
    for i, a in enumerate(p):
        if a:
            for j, b in enumerate(q[: degree + 1 - i]):
                out[i + j] += a * b
    return out


def maj_at_k(clusters: Sequence[int | None], correct: Sequence[bool], k: int) -> float:
    """Exact mean, over all k-subsets of the n samples, of "the majority cluster is correct".

    clusters: each sample's cluster index from `cluster` (None: empty, does not vote).
    correct: each sample's grade; a cluster is correct when its first member is.
    """
    n = len(clusters)
    if len(correct) != n:
        raise ValueError(f"maj@k: {n} cluster labels but {len(correct)} grades")
    if not 1 <= k <= n:
        raise ValueError(f"maj@k needs 1 <= k <= n samples, got k={k}, n={n}: generate at least k samples")
    sizes: dict[int, int] = {}
    cluster_correct: dict[int, bool] = {}
    for label, ok in zip(clusters, correct):
        if label is None:
            continue
        sizes[label] = sizes.get(label, 0) + 1
        cluster_correct.setdefault(label, bool(ok))
    order = sorted(sizes)  # cluster index = order of first appearance = tie-break order
    empties = n - sum(sizes.values())
    favourable = 0
    for j in (label for label in order if cluster_correct[label]):
        # Count subsets where cluster j gets v votes and wins: earlier clusters get < v
        # (they would win a tie), later clusters <= v, empties anything.
        for v in range(1, min(sizes[j], k) + 1):
            ways = [1]
            for other in order:
                if other != j:
                    cap = v - 1 if other < j else v
                    ways = _multiply(ways, _truncated_poly(sizes[other], cap, k - v), k - v)
            ways = _multiply(ways, _truncated_poly(empties, empties, k - v), k - v)
            if k - v < len(ways):
                favourable += math.comb(sizes[j], v) * ways[k - v]
    return favourable / math.comb(n, k)


def majority(clusters: Sequence[int | None]) -> int | None:
    """The winning cluster of one vote over all samples (same tie rule), or None if nobody voted."""
    counts: dict[int, int] = {}
    for label in clusters:
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
    if not counts:
        return None
    return min(counts, key=lambda label: (-counts[label], label))


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def stderr(p: float | None, count: int) -> float | None:
    """Binomial standard error of an accuracy p measured on `count` problems."""
    if p is None or count == 0:
        return None
    return math.sqrt(max(p * (1 - p), 0.0) / count)
