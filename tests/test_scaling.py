"""Inference-time strategies and the scale curve: voting by equivalence and its tie rule, the
subset estimators against hand counts, the judge's verdicts, refinement's stopping rule, token
accounting, and both commands end to end on a tiny random checkpoint."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field

import pytest

from ponder.engine import SamplingParams
from ponder.evaluate.harness import build_prompt
from ponder.scaling import (Candidate, JudgeScorer, LoglikScorer, OracleScorer, best_of_k, fill_logliks,
                            majority_vote, parse_verdict, run_strategy, scale_curve, subset_mean)
from ponder.scaling.curve import problem_curve
from ponder.scaling.strategies import REFINE_INSTRUCTION, refine_prompt
from ponder.tasks import Problem, multiply


@dataclass
class FakeCompletion:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    text: str
    forced: list[bool] = field(default_factory=list)


def done(text: str, loglik: float = -1.0, finish: str = "stop") -> FakeCompletion:
    """A completion of len(text) tokens, each with log-prob `loglik`."""
    return FakeCompletion(list(range(len(text))), [loglik] * len(text), finish, text)


class FakeEngine:
    """Answers from a script: prompt -> completions (greedy calls take the "greedy" entry)."""

    def __init__(self, script: dict):
        self.script = script
        self.calls: list[tuple[list[str], int, SamplingParams]] = []

    def generate(self, prompts, n=1, params=None):
        self.calls.append((list(prompts), n, params))
        out = []
        for prompt in prompts:
            entry = self.script[prompt]
            if isinstance(entry, dict):
                entry = entry["greedy" if params.temperature == 0 else "sampled"]
            assert len(entry) >= n, f"script for {prompt!r} has {len(entry)} completions, asked {n}"
            out.append([c if isinstance(c, FakeCompletion) else done(c) for c in entry[:n]])
        return out


def boxed(x) -> str:
    return f"<think></think>\\boxed{{{x}}}"


def cand(pred, correct=False, loglik=-1.0, committed=True, tokens=5) -> Candidate:
    return Candidate(text=boxed(pred), pred=pred if committed else None, correct=correct, committed=committed,
                     tokens=tokens, finish_reason="stop" if committed else "length", loglik=loglik)


# ---------------------------------------------------------------- voting


def test_majority_clusters_answers_by_equivalence_not_string():
    pytest.importorskip("ponder.rewards.math")
    problem = Problem("m1", "Half of one?", "\\frac{1}{2}", "math")
    prompt = build_prompt(problem, None)
    texts = [boxed(3), boxed(3), boxed("1/2"), "so the answer is 0.5", boxed("\\frac{1}{2}"), (boxed(7) + "99", "length")]
    completions = [done(t) if isinstance(t, str) else done(t[0], finish=t[1]) for t in texts]
    engine = FakeEngine({prompt: completions})
    [choice] = run_strategy("majority", None, None, [problem], n=6, engine=engine, progress=False)
    # by string "3" would win 2-1-1-1; by value 1/2 wins 3-2; the cut-off sample does not vote
    assert choice.pred == "1/2" and choice.correct == 1.0
    assert choice.detail["chosen"] == 2
    assert choice.generated_tokens == sum(len(t if isinstance(t, str) else t[0]) for t in texts)
    assert engine.calls[0][1] == 6 and engine.calls[0][2].temperature == 1.0


def test_vote_tie_goes_to_the_answer_generated_first():
    same = lambda a, b: int(a) == int(b)  # noqa: E731
    first_400 = [cand("400"), cand("408", True), cand("0408", True), cand("400")]
    first_408 = [cand("408", True), cand("400"), cand("400"), cand("408", True)]
    assert majority_vote(first_400, same) == 0  # 2-2: "400" appeared first
    assert majority_vote(first_408, same) == 0  # 2-2: "408" appeared first
    # a non-voter (truncated) does not break the tie, and nobody voting chooses nothing
    assert majority_vote([cand("1", committed=False), cand("408"), cand("400")], same) == 1
    assert majority_vote([cand("1", committed=False)], same) is None
    # equal weights tie the same way; unequal weights outvote a larger cluster
    even = [cand("400", loglik=-1.0), cand("408", loglik=-1.0)]
    assert majority_vote(even, same, weighted=True) == 0
    light_pair = [cand("400", loglik=-3.0), cand("400", loglik=-3.0), cand("408", loglik=-0.1)]
    assert majority_vote(light_pair, same) == 0
    assert majority_vote(light_pair, same, weighted=True) == 2  # 2 e^-3 = 0.10 < e^-0.1 = 0.90


def test_weighted_majority_uses_the_engine_logprobs_at_temperature_one():
    problem = multiply.make(12, 34)  # 408
    sampled = [done(boxed(400), -2.0), done(boxed(400), -2.0), done(boxed(408), -0.05)]
    engine = FakeEngine({problem.prompt: sampled})
    [majority] = run_strategy("majority", None, None, [problem], n=3, engine=engine, progress=False)
    [weighted] = run_strategy("weighted-majority", None, None, [problem], n=3, engine=engine, progress=False)
    assert majority.pred == "400" and majority.correct == 0.0
    assert weighted.pred == "408" and weighted.correct == 1.0
    assert weighted.detail["weights"] == pytest.approx([math.exp(-2.0)] * 2 + [math.exp(-0.05)])
    assert weighted.scored_tokens == 0  # T=1, no filtering: nothing recomputed


def test_voting_refuses_code_before_generating():
    engine = FakeEngine({})
    code = Problem("c1", "def f():\n", "", "code", {"test": "", "entry_point": "f"})
    with pytest.raises(ValueError, match="code"):
        run_strategy("majority", None, None, [code], n=2, engine=engine, progress=False)
    assert engine.calls == []


# ---------------------------------------------------------------- subset estimators


def test_best_of_k_matches_a_hand_count():
    scores = [0.5, 0.9, 0.1, 0.7]
    correct = [True, False, False, True]
    committed = [True] * 4
    # ranking 1 > 3 > 0 > 2; k=2 subsets {01}1 {02}0 {03}3 {12}1 {13}1 {23}3 -> 3 of 6 correct
    assert best_of_k(scores, committed, correct, 2) == pytest.approx(3 / 6)
    assert best_of_k(scores, committed, correct, 1) == pytest.approx(2 / 4)
    assert best_of_k(scores, committed, correct, 3) == pytest.approx(1 / 4)  # only {0,2,3} -> 3
    assert best_of_k(scores, committed, correct, 4) == 0.0
    # an uncommitted candidate is passed over however well it scores
    assert best_of_k([0.5, 9.0], [True, False], [True, False], 2) == 1.0
    assert best_of_k([0.5, 9.0], [True, False], [True, False], 1) == 0.5


def test_weighted_majority_subsets_match_a_hand_count():
    # answers A B A C with weights .1 .9 .3 .5; C is correct
    cands = [cand("1", loglik=math.log(0.1)), cand("2", loglik=math.log(0.9)),
             cand("1", loglik=math.log(0.3)), cand("3", True, loglik=math.log(0.5))]
    curve = problem_curve(cands, lambda a, b: a == b, [1, 2, 3, 4], draws=100, rng=random.Random(0))
    # k=2: C wins {0,3} (.5 > .1) and {2,3} (.5 > .3); B wins the rest -> 2/6
    # k=3: C wins only {0,2,3} (.5 > .4) -> 1/4; k=4: B (.9) beats C (.5) and A (.4) -> 0
    assert [curve[k]["weighted_majority"] for k in (1, 2, 3, 4)] == pytest.approx([1 / 4, 2 / 6, 1 / 4, 0.0])
    # unweighted: A has two votes at k=4; pass@k is the ceiling
    assert curve[4]["majority"] == 0.0
    assert [curve[k]["pass@n"] for k in (1, 2, 3, 4)] == pytest.approx([1 / 4, 1 / 2, 3 / 4, 1.0])


def test_subset_mean_enumerates_when_it_can_and_samples_without_replacement_otherwise():
    seen = []

    def has_zero(subset):
        assert len(set(subset)) == len(subset) == 5 and list(subset) == sorted(subset)
        seen.append(tuple(subset))
        return float(0 in subset)

    assert subset_mean(10, 5, has_zero, draws=252, seed=0) == pytest.approx(0.5)  # C(10,5) = 252
    assert len(set(seen)) == 252
    seen.clear()
    estimate = subset_mean(10, 5, has_zero, draws=100, seed=0)
    assert len(seen) == 100 and abs(estimate - 0.5) < 0.15  # 3 standard errors of 100 draws
    with pytest.raises(ValueError):
        subset_mean(3, 4, has_zero, draws=10, seed=0)


def test_scale_curve_from_one_pool_matches_hand_counts():
    problem = multiply.make(12, 34)  # 408
    pool = [done(boxed(408), -2.0), done(boxed(400), -0.1), done(boxed(400), -0.2), done(boxed(408), -3.0)]
    engine = FakeEngine({problem.prompt: {"greedy": [done(boxed(400) + "0")], "sampled": pool}})
    table = scale_curve(None, None, [problem], [1, 2, 4], draws=50, engine=engine, progress=False)
    # one greedy call and one call for the largest N only
    assert [(n, params.temperature) for _, n, params in engine.calls] == [(1, 0.0), (4, 1.0)]
    rows = {row["n"]: row for row in table["curve"]}
    length = len(boxed(408))
    assert [rows[k]["generated_tokens"] for k in (1, 2, 4)] == [length, 2 * length, 4 * length]
    # k=2: majority {01}408 {02}408 {03}408 {12}400 {13}400 {23}400 -> 3/6 (ties go to the answer first
    # within the subset: breaking {13} and {23} by the whole pool's order, 408, would give 5/6);
    # weighted (e^-2, e^-.1, e^-.2, e^-3): only {0,3} picks 408 -> 1/6; best loglik ranks 1,2,0,3 -> 1/6
    assert rows[2]["majority"] == pytest.approx(3 / 6)
    assert rows[2]["weighted_majority"] == pytest.approx(1 / 6)
    assert rows[2]["best_of_n_loglik"] == pytest.approx(1 / 6)
    assert rows[2]["pass@n"] == pytest.approx(5 / 6)
    # k=4: the 2-2 tie goes to 408 (first); weight and likelihood both pick 400
    assert (rows[4]["majority"], rows[4]["weighted_majority"], rows[4]["best_of_n_loglik"], rows[4]["pass@n"]) == \
        (1.0, 0.0, 0.0, 1.0)
    assert all(rows[1][name] == 0.5 for name in ("majority", "weighted_majority", "best_of_n_loglik", "pass@n"))
    assert table["greedy"] == {"accuracy": 0.0, "stderr": 0.0, "generated_tokens": length + 1}
    assert "upper bound" in table["labels"]["pass@n"]


# ---------------------------------------------------------------- judge


@pytest.mark.parametrize("text, verdict", [
    ("Yes", 1.0), ("no.", 0.0), ("**Correct**", 1.0), ("INCORRECT!", 0.0),
    ("The answer is incorrect.", 0.0), ("It is not correct", 0.0), ("The solution wasn't right.", 0.0),
    ("There is no error; the solution is correct.", 1.0),  # "no" is not the verdict here
    ("Verdict: wrong. Earlier I said yes", 0.0),
    ("Score: 8/10", 0.8), ("rating: 4 out of 5", 0.8), ("score: 0.7", 0.7), ("10/10", 1.0), ("1", 1.0), ("0", 0.0),
    ("<think>looks fine, yes</think>No", 0.0),
])
def test_judge_verdicts_are_read(text, verdict):
    assert parse_verdict(text) == pytest.approx(verdict)


@pytest.mark.parametrize("garbage", [
    "", "   ", "asdf qwerty 123", "The answer is 3/4.", "score: 12/10", "Not sure", "<think>yes yes",
    "\\boxed{", "yesterday was nice", "!!!???",
])
def test_malformed_judge_output_has_no_verdict(garbage):
    assert parse_verdict(garbage) is None


def test_judge_scorer_falls_back_judges_each_text_once_and_counts_its_tokens():
    problem = multiply.make(12, 34)
    cands = [cand("408", True), cand("400"), cand("408", True), cand("1", committed=False), cand("407")]
    judge = JudgeScorer(None, None, max_new_tokens=8, fallback=0.5)
    asks = {boxed(408): "Yes.", boxed(400): "No, 12*34 is 408", boxed(407): "%%$# garbled"}
    engine = FakeEngine({judge.prompt(problem, c): [asks[c.text]] for c in cands if c.committed})
    judge.engine = engine
    [scores] = judge.score([problem], [problem.prompt], [cands])
    assert scores.values == [1.0, 0.0, 1.0, -math.inf, 0.5]  # garbage -> fallback; truncated not judged
    assert scores.detail["unread"] == 1
    [(prompts, n, params)] = engine.calls
    assert len(prompts) == 3 and n == 1 and params.temperature == 0 and params.max_new_tokens == 8
    assert scores.generated_tokens == sum(len(t) for t in asks.values())
    assert "12*34=" in prompts[0] and "yes or no" in prompts[0]


def test_best_of_n_token_accounting_includes_the_judge():
    problem = multiply.make(12, 34)
    samples = [boxed(400), boxed(408)]
    judge = JudgeScorer(None, None)
    verdicts = {boxed(400): "no", boxed(408): "yes"}
    script = {problem.prompt: samples}
    script.update({judge.prompt(problem, cand(x)): [verdicts[boxed(x)]] for x in (400, 408)})
    judge.engine = FakeEngine(script)
    [choice] = run_strategy("best-of-n", None, None, [problem], n=2, scorer=judge, engine=FakeEngine(script),
                            progress=False)
    assert choice.pred == "408" and choice.correct == 1.0
    assert choice.generated_tokens == sum(map(len, samples)) + len("no") + len("yes")
    [oracle] = run_strategy("best-of-n", None, None, [problem], n=2, scorer=OracleScorer(),
                            engine=FakeEngine(script), progress=False)
    assert oracle.correct == 1.0 and oracle.generated_tokens == sum(map(len, samples))
    assert "UPPER BOUND" in OracleScorer.label


# ---------------------------------------------------------------- refinement


def test_refinement_stops_when_the_answer_is_unchanged():
    p1, p2, p3, p4 = multiply.make(12, 34), multiply.make(21, 43), multiply.make(11, 11), multiply.make(10, 10)

    def again(problem, previous):
        return refine_prompt(problem, problem.prompt, previous, None)

    script = {
        # 400 -> 408 -> 408: changed once, then unchanged: stops after round 2 of 3
        p1.prompt: [boxed(400)], again(p1, boxed(400)): [boxed(408)], again(p1, boxed(408)): [boxed(408)],
        # 903 -> 0903: the same integer, so the first revision already stops it
        p2.prompt: [boxed(903)], again(p2, boxed(903)): [boxed("0903")],
        # 121 -> 120 -> 121 -> 120: never settles; runs all 3 rounds and keeps the last answer
        p3.prompt: [boxed(121)], again(p3, boxed(121)): [boxed(120)], again(p3, boxed(120)): [boxed(121)],
        # 100 -> nothing (cut off): the answer stays 100, unchanged, so it stops
        p4.prompt: [boxed(100)], again(p4, boxed(100)): [done(boxed(1) + "000", finish="length")],
    }
    engine = FakeEngine(script)
    c1, c2, c3, c4 = run_strategy("refine", None, None, [p1, p2, p3, p4], rounds=3, engine=engine, progress=False)
    assert c1.detail == {"answers": ["400", "408", "408"], "rounds": 2} and c1.correct == 1.0
    assert c2.detail == {"answers": ["903", "0903"], "rounds": 1} and c2.correct == 1.0
    assert c3.detail["rounds"] == 3 and c3.pred == "120" and c3.correct == 0.0
    assert c4.detail == {"answers": ["100", None], "rounds": 1} and c4.pred == "100" and c4.correct == 1.0
    assert c4.generated_tokens == len(boxed(100)) + len(boxed(1)) + 3
    # every round's tokens count
    assert c1.generated_tokens == len(boxed(400)) + 2 * len(boxed(408))
    assert c2.generated_tokens == len(boxed(903)) + len(boxed("0903"))
    # round by round, only the problems still changing are asked again; all greedy by default
    assert [len(prompts) for prompts, _, _ in engine.calls] == [4, 4, 2, 1]
    assert all(params.temperature == 0 for _, _, params in engine.calls)
    assert engine.calls[1][0][0].endswith(f"{boxed(400)}\n\n{REFINE_INSTRUCTION}\n")
    [zero] = run_strategy("refine", None, None, [p1], rounds=0, engine=FakeEngine(script), progress=False)
    assert zero.detail["rounds"] == 0 and zero.pred == "400"
    # the thinking-length dials reach every completion, revisions included
    engine = FakeEngine(script)
    dials = SamplingParams(temperature=0.0, thinking_budget=4, extend_thinking=2)
    run_strategy("refine", None, None, [p1], rounds=3, params=dials, engine=engine, progress=False)
    assert len(engine.calls) == 3
    assert all((p.thinking_budget, p.extend_thinking) == (4, 2) for _, _, p in engine.calls)


def test_sample_and_greedy_report_per_answer_tokens():
    problem = multiply.make(12, 34)
    engine = FakeEngine({problem.prompt: {"greedy": [boxed(408)], "sampled": [boxed(408), boxed(4) + "x" * 3]}})
    [g] = run_strategy("greedy", None, None, [problem], n=5, engine=engine, progress=False)
    [s] = run_strategy("sample", None, None, [problem], n=2, engine=engine, progress=False)
    assert (g.correct, g.generated_tokens) == (1.0, len(boxed(408)))
    assert s.correct == 0.5 and s.generated_tokens == (len(boxed(408)) + len(boxed(4)) + 3) / 2


# ---------------------------------------------------------------- on a real (tiny, random) model


def test_recomputed_loglik_equals_the_engine_logprobs_at_temperature_one(tiny_checkpoint):
    import torch

    from ponder.engine import Engine
    from ponder.models import from_pretrained
    from ponder.scaling import generate_candidates
    from ponder.tokenizer import Tokenizer

    model, tokenizer = from_pretrained(tiny_checkpoint).eval(), Tokenizer.from_pretrained(tiny_checkpoint)
    problems = [multiply.make(12, 34), multiply.make(56, 78)]
    prompts = [p.prompt for p in problems]
    at_one = generate_candidates(Engine(model, tokenizer), problems, prompts, 3,
                                 SamplingParams(max_new_tokens=12, temperature=1.0, seed=1))
    assert all(c.loglik is not None for cs in at_one for c in cs)
    expected = [[c.loglik for c in cs] for cs in at_one]
    for cs in at_one:
        for c in cs:
            c.loglik = None  # as after sampling at T != 1: must be recomputed
    scored = fill_logliks(model, tokenizer, prompts, at_one)
    assert [[c.loglik for c in cs] for cs in at_one] == [pytest.approx(e, abs=1e-5) for e in expected]
    assert scored == [sum(c.tokens for c in cs) for cs in at_one]
    # sampled at T=0.5 the engine's log-probs are not the model's: the scorer recomputes them
    cooler = generate_candidates(Engine(model, tokenizer), problems, prompts, 2,
                                 SamplingParams(max_new_tokens=12, temperature=0.5, seed=1))
    assert all(c.loglik is None for cs in cooler for c in cs)
    scores = LoglikScorer(model, tokenizer).score(problems, prompts, cooler)
    assert all(s.scored_tokens > 0 and all(v <= 0 for v in s.values) for s in scores)
    torch.testing.assert_close(torch.tensor(scores[0].values), torch.tensor([c.loglik for c in cooler[0]]))


def test_ponder_eval_majority_end_to_end(tiny_checkpoint, tmp_path, capsys):
    from ponder.cli import main

    out = tmp_path / "eval"
    rc = main(["eval", "--model", str(tiny_checkpoint), "--task", "multiply", "--limit", "3", "--strategy",
               "majority", "--n", "3", "--max-new-tokens", "6", "--out", str(out)])
    assert rc == 0
    result = json.loads((out / "result.json").read_text())
    metrics, records = result["metrics"], result["records"]
    assert result["settings"]["strategy"] == "majority" and result["settings"]["n"] == 3
    assert metrics["strategy"] == "majority" and len(records) == 3 and not metrics["upper_bound"]
    assert all(len(r["answers"]) == 3 and r["generated_tokens"] <= 3 * 6 for r in records)
    assert metrics["generated_tokens_per_problem"] == pytest.approx(sum(r["generated_tokens"] for r in records) / 3)
    assert metrics["accuracy"] == pytest.approx(sum(r["correct"] for r in records) / 3)
    assert "| generated tokens / problem |" in (out / "result.md").read_text()
    assert "result.json" in capsys.readouterr().out
    rc = main(["eval", "--model", str(tiny_checkpoint), "--task", "multiply", "--limit", "2", "--strategy",
               "best-of-n", "--scorer", "oracle", "--n", "2", "--max-new-tokens", "4", "--out", str(tmp_path / "o")])
    assert rc == 0 and "UPPER BOUND" in (tmp_path / "o" / "result.md").read_text()
    for bad, message in ((["--strategy", "vote"], "--strategy must be one of"),
                         (["--strategy", "best-of-n", "--scorer", "vibes"], "--scorer must be one of"),
                         (["--scorer", "judge"], "--scorer needs --strategy")):
        assert main(["eval", "--model", str(tiny_checkpoint), "--task", "multiply", "--out", str(tmp_path / "x")]
                    + bad) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_ponder_scale_curve_end_to_end(tiny_checkpoint, tmp_path, capsys):
    from ponder.cli import main

    out = tmp_path / "curve"
    rc = main(["scale-curve", "--model", str(tiny_checkpoint), "--task", "multiply", "--limit", "4",
               "--n", "1,2,4", "--max-new-tokens", "6", "--temperature", "0.8", "--out", str(out)])
    assert rc == 0
    table = json.loads((out / "curve.json").read_text())
    assert [row["n"] for row in table["curve"]] == [1, 2, 4]
    per_sample = table["curve"][0]["generated_tokens"]
    assert 0 < per_sample <= 6
    assert [row["generated_tokens"] for row in table["curve"]] == pytest.approx([per_sample, 2 * per_sample,
                                                                                 4 * per_sample])
    for row in table["curve"]:  # pass@N is the ceiling of every selection rule
        assert all(0 <= row[k] <= row["pass@n"] + 1e-12 for k in ("majority", "weighted_majority",
                                                                   "best_of_n_loglik"))
    assert table["settings"]["loglik"].startswith("recomputed")  # T=0.8
    assert table["scored_tokens_per_problem"] == pytest.approx(4 * per_sample)
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| N | tokens/problem |" in (out / "curve.md").read_text()
    assert main(["scale-curve", "--model", str(tiny_checkpoint), "--task", "multiply", "--n", "0,2",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--n values must be >= 1" in capsys.readouterr().err
