"""ponder.evaluate: metric formulas against hand-computed values, the harness on a fake engine,
and `ponder eval` end to end on a tiny random checkpoint."""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import dataclass, replace
from fractions import Fraction

import pytest

from ponder.evaluate import build_prompt, evaluate, maj_at_k, markdown, pass_at_k
from ponder.evaluate.harness import MATH_INSTRUCTION
from ponder.evaluate.metrics import cluster, majority
from ponder.tasks import Problem, multiply

# ---------------------------------------------------------------- pass@k


def test_pass_at_k_hand_values():
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(4, 1, 4) == 1.0  # n - c = 3 < k: every 4-subset holds the correct one
    assert pass_at_k(5, 4, 2) == 1.0  # n - c = 1 < k
    assert pass_at_k(8, 0, 4) == 0.0
    assert pass_at_k(8, 8, 8) == 1.0


def test_pass_at_k_matches_the_binomial_form():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_needs_enough_samples():
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 8)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


# ---------------------------------------------------------------- maj@k


def test_maj_at_k_hand_values_with_ties():
    # answers A B A C, A correct. k=2 subsets, each voting on its own, a tie going to the answer
    # first generated within the subset: AB -> A, AA -> A, AC -> A, BA -> B, BC -> B, AC -> A: 4 of 6.
    clusters, correct = [0, 1, 0, 2], [True, False, True, False]
    assert maj_at_k(clusters, correct, 1) == pytest.approx(2 / 4)
    assert maj_at_k(clusters, correct, 2) == pytest.approx(4 / 6)
    # k=3: ABA, ABC (tie -> A), AAC, BAC (tie -> B): 3 of 4
    assert maj_at_k(clusters, correct, 3) == pytest.approx(3 / 4)
    assert maj_at_k(clusters, correct, 4) == 1.0
    # the same answers with B correct: BA and BC win for B
    assert maj_at_k(clusters, [False, True, False, False], 2) == pytest.approx(2 / 6)


def test_maj_at_k_ties_are_not_decided_by_samples_outside_the_subset():
    # A and B tie in both pools; only the order within each 2-subset decides its ties.
    # A A B B: AA, AB, AB, AB, AB -> A; BB -> B: 5 of 6.
    assert maj_at_k([0, 0, 1, 1], [True, True, False, False], 2) == pytest.approx(5 / 6)
    # A B B A: AB, AB, AA -> A; BB, BA, BA -> B: 3 of 6 (a pool-wide rule, A first, would say 5 of 6)
    assert maj_at_k([0, 1, 1, 0], [True, False, False, True], 2) == pytest.approx(3 / 6)


def test_maj_at_k_empty_answers_do_not_vote():
    # (empty) B A A with A correct; k=2: {e,B} B wins; {e,A} x2 A; {B,A} x2 tie -> B (first);
    # {A,A} A -> 3 of 6.
    clusters, correct = [None, 0, 1, 1], [False, False, True, True]
    assert maj_at_k(clusters, correct, 2) == pytest.approx(3 / 6)
    assert maj_at_k(clusters, correct, 1) == pytest.approx(2 / 4)
    # a subset where nobody answers has no winner and counts as wrong
    assert maj_at_k([None, None, 0], [False, False, True], 2) == pytest.approx(2 / 3)
    assert maj_at_k([None, None], [False, False], 1) == 0.0


def _brute_maj(clusters, correct, k):
    """Each k-subset votes alone: most votes, ties to the answer first generated in the subset."""
    wins = []
    for subset in itertools.combinations(range(len(clusters)), k):
        labels = [clusters[i] for i in subset if clusters[i] is not None]
        if not labels:
            wins.append(False)
            continue
        top = max(labels.count(x) for x in labels)
        winner = next(x for x in labels if labels.count(x) == top)
        wins.append(correct[next(i for i in subset if clusters[i] == winner)])
    return sum(wins) / len(wins)


def test_maj_at_k_equals_enumerating_subsets_and_estimates_large_pools():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 9)
        raw = [rng.choice([None, "a", "b", "c", "d"]) for _ in range(n)]
        clusters = cluster(raw, lambda x, y: x == y)
        good = {label for label in set(clusters) - {None} if rng.random() < 0.5}
        correct = [label in good for label in clusters]
        for k in range(1, n + 1):
            assert maj_at_k(clusters, correct, k) == pytest.approx(_brute_maj(clusters, correct, k), abs=1e-12)
    # C(14, 7) = 3432 subsets: with 500 random ones the estimate is within a few standard errors
    clusters = [0, 1, 0, 2, 1, 0, 3, 1, 0, 2, 0, 1, 4, 0]
    correct = [c == 0 for c in clusters]
    exact = _brute_maj(clusters, correct, 7)
    assert abs(maj_at_k(clusters, correct, 7) - exact) < 3 * (exact * (1 - exact) / 500) ** 0.5 + 1e-9


def test_maj_at_k_needs_enough_samples():
    with pytest.raises(ValueError, match="k <= n"):
        maj_at_k([0, 0], [True, True], 3)


def test_clusters_follow_equivalence_not_strings():
    def numeric(a, b):
        return Fraction(a) == Fraction(b)

    assert cluster(["1/2", "0.5", "2", None, "0.50", ""], numeric) == [0, 0, 1, None, 0, None]
    assert majority([1, 0, 0, 1]) == 1  # tie: the cluster whose vote comes first
    assert majority([None, None]) is None


# ---------------------------------------------------------------- harness on a fake engine


@dataclass
class FakeCompletion:
    token_ids: list
    logprobs: list
    finish_reason: str
    text: str


class FakeEngine:
    """Engine interface; answers from a script: prompt -> (greedy text, [sampled texts]).
    A text given as (text, "length") was cut at max_new_tokens."""

    def __init__(self, script):
        self.script, self.calls = script, []

    def generate(self, prompts, n=1, params=None):
        self.calls.append((list(prompts), n, params))
        out = []
        for prompt in prompts:
            greedy, sampled = self.script[prompt]
            texts = [greedy] if params.temperature == 0 else sampled[:n]
            assert len(texts) == n
            texts = [t if isinstance(t, tuple) else (t, "stop") for t in texts]
            out.append([FakeCompletion(list(range(len(t))), [0.0] * len(t), finish, t) for t, finish in texts])
        return out


def _boxed(x):
    return f"<think></think>\\boxed{{{x}}}"


def test_harness_metrics_on_a_fake_engine():
    p1 = replace(multiply.make(12, 34), meta={**multiply.make(12, 34).meta, "level": 1})  # 408
    p2 = replace(multiply.make(21, 43), meta={**multiply.make(21, 43).meta, "level": 2})  # 903
    script = {
        "12*34=": (_boxed(408), [_boxed(408), _boxed(400), _boxed(400), (_boxed(408) + "99", "length")]),
        "21*43=": (_boxed(900), [_boxed(903), _boxed(900), _boxed(" 0903"), _boxed(901)]),
    }
    engine = FakeEngine(script)
    result = evaluate(None, None, [p1, p2], n=4, k_values=(2, 4), temperature=0.7, max_new_tokens=20,
                      engine=engine, progress=False)
    m = result.metrics
    assert m["problems"] == 2
    assert m["greedy"]["accuracy"] == 0.5
    assert m["greedy"]["truncation_rate"] == 0.0
    s = m["sampled"]
    # problem 1: 1 of 4 correct (the truncated one has committed to nothing); problem 2: 2 of 4
    # correct ("0903" is the integer 903)
    assert s["pass@1"] == pytest.approx((1 / 4 + 2 / 4) / 2)
    assert s["pass@2"] == pytest.approx(((1 - 3 / 6) + (1 - 1 / 6)) / 2)
    assert s["pass@4"] == 1.0
    # maj@4: p1 votes 408 x1, 400 x2, truncated none -> 400 (wrong); p2 903 x2 (with 0903) -> right
    assert s["maj@4"] == pytest.approx(0.5)
    assert s["truncation_rate"] == pytest.approx(1 / 8)
    assert s["mean_tokens"] == pytest.approx(sum(len(t if isinstance(t, str) else t[0])
                                                 for _, ts in script.values() for t in ts) / 8)
    r1, r2 = result.records
    assert r1["majority"] == "400" and r2["majority"] == "903"
    assert r1["samples"][3]["pred"] is None and r1["samples"][3]["finish_reason"] == "length"
    assert r1["samples"][3]["reason"] == "truncated" and not r1["samples"][3]["correct"]
    assert m["by_level"] == {"1": {"count": 1, "greedy": 1.0, "pass@1": 0.25},
                             "2": {"count": 1, "greedy": 0.0, "pass@1": 0.5}}
    # the engine got the task's own prompts and the settings asked for
    (greedy_prompts, greedy_n, greedy_params), (_, sample_n, sample_params) = engine.calls
    assert greedy_prompts == ["12*34=", "21*43="] and greedy_n == 1 and greedy_params.temperature == 0
    assert sample_n == 4 and sample_params.temperature == 0.7 and sample_params.max_new_tokens == 20
    table = markdown(result)
    assert "| greedy accuracy | 50.0%" in table and "| maj@4 (n=4, T=0.7) | 50.0% |" in table
    assert "| level | count | greedy | pass@1 |" in table
    json.dumps(result.records)  # records are plain JSON


def test_math_votes_cluster_by_equivalence_not_string():
    pytest.importorskip("ponder.rewards.math")
    problem = Problem("m1", "Half of one?", "\\frac{1}{2}", "math", {"subject": "Algebra", "level": 1})
    prompt = build_prompt(problem, None)
    samples = [_boxed(3), _boxed(3), _boxed(0.5), _boxed("\\frac12"), "so the answer is 1/2", ("\\boxed{1/2", "length")]
    result = evaluate(None, None, [problem], n=6, k_values=(6,), engine=FakeEngine({prompt: (_boxed("1/2"), samples)}),
                      progress=False)
    [record] = result.records
    # by string "3" would win 2-1-1-1; by value 1/2 wins 3-2 (the cut-off sample does not vote)
    assert [s["correct"] for s in record["samples"]] == [False, False, True, True, True, False]
    assert record["maj@k"]["6"] == 1.0 and record["majority"] == "0.5"
    assert result.metrics["greedy"]["accuracy"] == 1.0
    assert result.metrics["by_subject"] == {"Algebra": {"count": 1, "greedy": 1.0, "pass@1": pytest.approx(0.5)}}
    assert "ponder-math" in result.grader["math"]["grader"]


def test_harness_checks_k_against_n_before_generating():
    engine = FakeEngine({})
    with pytest.raises(ValueError, match="n=2"):
        evaluate(None, None, [multiply.make(12, 34)], n=2, k_values=(1, 4), engine=engine, progress=False)
    assert engine.calls == []


class ChatTokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, add_generation_prompt=True, enable_thinking=True):
        return f"<chat>{messages[0]['content']}</chat>"


def test_prompts_per_kind():
    math = Problem("m1", "What is 1+1?", "2", "math")
    assert build_prompt(math, None) == f"What is 1+1?\n\n{MATH_INSTRUCTION}\n"
    assert build_prompt(math, ChatTokenizer()) == f"<chat>What is 1+1?\n\n{MATH_INSTRUCTION}</chat>"
    code = Problem("c1", "def f():\n", "", "code")
    assert build_prompt(code, ChatTokenizer()) == "def f():\n"
    assert build_prompt(multiply.make(12, 34), ChatTokenizer()) == "12*34="


# ---------------------------------------------------------------- `ponder eval` end to end


def test_ponder_eval_end_to_end(tiny_checkpoint, tmp_path, capsys):
    from ponder.cli import main

    out = tmp_path / "eval"
    rc = main(["eval", "--model", str(tiny_checkpoint), "--task", "multiply", "--limit", "3", "--n", "2",
               "--k", "1,2", "--max-new-tokens", "6", "--out", str(out)])
    assert rc == 0
    result = json.loads((out / "result.json").read_text())
    assert result["task"] == "multiply" and result["model"] == str(tiny_checkpoint)
    assert result["settings"]["n"] == 2 and result["settings"]["max_new_tokens"] == 6
    assert "synthetic" in result["grader"]
    assert len(result["records"]) == 3 and all(len(r["samples"]) == 2 for r in result["records"])
    assert all(s["tokens"] <= 6 for r in result["records"] for s in r["samples"])
    metrics = result["metrics"]
    assert 0.0 <= metrics["greedy"]["accuracy"] <= 1.0 and "pass@2" in metrics["sampled"]
    assert "| greedy accuracy |" in (out / "result.md").read_text()
    assert "result.json" in capsys.readouterr().out
    # --n 0: greedy only
    assert main(["eval", "--model", str(tiny_checkpoint), "--task", "program", "--limit", "2", "--n", "0",
                 "--max-new-tokens", "4", "--out", str(out)]) == 0
    metrics = json.loads((out / "result.json").read_text())["metrics"]
    assert "greedy" in metrics and "sampled" not in metrics
    assert json.loads((out / "result.json").read_text())["settings"]["tool"] is None
    # --python-tool: generation runs the model's code blocks (this model writes none) and says so
    assert main(["eval", "--model", str(tiny_checkpoint), "--task", "multiply", "--limit", "2", "--n", "0",
                 "--max-new-tokens", "4", "--python-tool", "--out", str(out)]) == 0
    assert json.loads((out / "result.json").read_text())["settings"]["tool"] == "python"


def test_ponder_eval_errors_are_clear(tiny_checkpoint, tmp_path, capsys):
    from ponder.cli import main

    args = ["eval", "--model", str(tiny_checkpoint), "--out", str(tmp_path)]
    assert main(args + ["--task", "multiply", "--n", "2", "--k", "4"]) == 2
    assert "n=2" in capsys.readouterr().err
    assert main(args + ["--task", "multiply", "--strategy", "beam"]) == 2
    assert "--strategy must be one of" in capsys.readouterr().err
    assert main(args + ["--task", "multiply", "--strategy", "majority", "--python-tool"]) == 2
    assert "--python-tool works without --strategy" in capsys.readouterr().err
    assert main(args + ["--task", "jsonl"]) == 2
    assert "--data" in capsys.readouterr().err
    assert not (tmp_path / "result.json").exists()


def test_ponder_eval_reads_a_saved_dataset_split_with_a_column_mapping(tiny_checkpoint, tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    from ponder.cli import main

    rows = datasets.Dataset.from_dict({"question": ["12*34=", "5*6=", "7*8="], "solution": ["408", "30", "56"],
                                       "difficulty": ["hard", "easy", "easy"]})
    datasets.DatasetDict({"train": rows.select([0]), "test": rows.select([1, 2])}).save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tiny_checkpoint), "--task", "jsonl", "--data", str(tmp_path / "ds"),
                 "--split", "test", "--prompt-column", "question", "--answer-column", "solution", "--n", "0",
                 "--max-new-tokens", "2", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert [r["gold"] for r in result["records"]] == ["30", "56"] and result["split"] == "test"
    assert main(["eval", "--model", str(tiny_checkpoint), "--task", "jsonl", "--data", str(tmp_path / "ds"),
                 "--prompt-column", "question", "--answer-column", "solution", "--out", str(out)]) == 2
    assert "--split" in capsys.readouterr().err
