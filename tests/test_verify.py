"""Verifier and meta-verifier: rewards on fixed strings, the train / held-out wall, refinement's
stopping rule, and the study command end to end on a tiny setting."""

import json

import pytest

from ponder.rewards.process import check_steps
from ponder.tasks import multiply
from ponder.verify.data import Labelled, check_separate, training_records, work_records
from ponder.verify.protocol import Analysis, compared_analysis, issue_is_real, parse_analysis, verifier_reward, verifier_target
from ponder.verify.testtime import pick_best, pick_majority, refine_all, selection_curve, trusted_prefix

WRONG_PRODUCT = "<think>48*80=3840,48*6=298,3840+298=4138</think>\\boxed{4138}"
RIGHT = "<think>48*80=3840,48*6=288,3840+288=4128</think>\\boxed{4128}"


def labelled(solution, a=48, b=86, source="base@1.0"):
    p = multiply.make(a, b)
    return Labelled(p, solution, source, check_steps(solution, p))


def test_verifier_target_and_reward_on_fixed_strings():
    assert verifier_target(labelled(WRONG_PRODUCT).verdict) == "<think>48*6=298</think>\\boxed{0}"
    assert verifier_target(labelled(RIGHT).verdict) == "<think></think>\\boxed{1}"
    assert verifier_target(labelled("<think></think>\\boxed{4128}").verdict) == "<think>48*80=</think>\\boxed{1/2}"
    assert verifier_reward("<think>48*6=298</think>\\boxed{0}", 0.0) == 1.0
    assert verifier_reward("<think></think>\\boxed{1/2}", 0.0) == 0.5
    assert verifier_reward("<think></think>\\boxed{1}", 0.0) == 0.0
    assert verifier_reward("\\boxed{0}", 0.0) == 0.0  # no analysis: format fails
    assert verifier_reward("<think></think>\\boxed{0.5}", 0.5) == 0.0  # only 0, 1/2, 1
    assert verifier_reward("<think>x</think>\\boxed{0}", 0.0, meta_score=0.0) == 0.0  # meta vetoes
    assert parse_analysis(" <think>48*6=298</think>\\boxed{1/2}\n") == Analysis("48*6=298", 0.5)


def test_meta_verifier_truth_on_fixed_strings():
    wrong = labelled(WRONG_PRODUCT).verdict
    assert issue_is_real(Analysis("48*6=298", 0.0), wrong)
    assert not issue_is_real(Analysis("48*80=3840", 0.0), wrong)  # a right step: invented
    assert not issue_is_real(Analysis("", 1.0), wrong)  # misses the error
    assert issue_is_real(Analysis("4138", 0.0), wrong)  # the wrong answer is a real issue
    assert issue_is_real(Analysis("", 1.0), labelled(RIGHT).verdict)


def test_the_meta_verifier_passes_an_analysis_only_when_its_own_work_quotes_the_same_issue():
    from ponder.verify.judge import MetaVerifier, Verifier

    class Solver:
        def __init__(self, work):
            self.work = work

        def read(self, prompts):
            return [self.work for _ in prompts]

    slipped = "<think>48*80=3840,48*6=290,3840+290=4130</think>\\boxed{4130}"  # a verifier's wrong work
    verifier, meta = Verifier(Solver(slipped)), MetaVerifier(Verifier(Solver(RIGHT)))
    solutions = [RIGHT, WRONG_PRODUCT]
    analyses = verifier.verify(["48*86="] * 2, solutions)  # it quotes a right step of RIGHT: invented
    assert [parse_analysis(a).issue for a in analyses] == ["48*6=288", "48*6=298"]
    assert meta.scores(["48*86="] * 2, solutions, analyses) == [0.0, 1.0]
    assert [issue_is_real(parse_analysis(a), labelled(s).verdict) for a, s in zip(analyses, solutions)] == [False, True]
    assert meta.scores(["48*86="], [RIGHT], [""]) == [0.0]  # a malformed analysis is never passed


def test_no_held_out_problem_or_sample_reaches_training_data():
    train_problem = multiply.make(48, 86)
    test_problem = multiply.generate("test", 1, seed=0)[0]
    train = [Labelled(train_problem, RIGHT, "base@1.0", check_steps(RIGHT, train_problem))]
    held = [Labelled(test_problem, RIGHT, "process@1.0", check_steps(RIGHT, test_problem))]
    assert len(training_records(train)) == 1
    assert work_records([train_problem]) == [{"prompt": "48*86=/", "completion": RIGHT}]
    with pytest.raises(ValueError, match="non-training"):
        training_records(held)
    with pytest.raises(ValueError, match="non-training"):
        work_records([test_problem])
    check_separate(train, held)
    with pytest.raises(ValueError, match="held-out problems"):
        check_separate(train, [Labelled(train_problem, RIGHT, "process@1.0", train[0].verdict)])
    with pytest.raises(ValueError, match="checkpoint"):  # another temperature, same checkpoint
        check_separate(train, [Labelled(test_problem, RIGHT, "base@0.7", held[0].verdict)])


def test_refinement_stops_at_a_score_of_one_and_keeps_the_trusted_prefix():
    seen = []

    def generate(prompts, r):
        seen.append(list(prompts))
        return [("48*6=298,3840+298=4138</think>\\boxed{4138}" if r == 0 else "48*6=288,3840+288=4128</think>\\boxed{4128}", 5)
                for _ in prompts]

    def judge(prompts, solutions):
        return [Analysis("", 1.0) if "288" in s else Analysis("48*6=298", 0.0) for s in solutions]

    generate_first = generate

    def gen(prompts, r):
        if r == 0:
            return [("<think>48*80=3840,48*6=298,3840+298=4138</think>\\boxed{4138}", 9) for _ in prompts]
        return generate_first(prompts, r)

    out = refine_all(["48*86="], gen, judge, rounds=8)
    assert out[0]["rounds"] == 2 and out[0]["score"] == 1.0 and out[0]["tokens"] == 14
    assert seen[-1] == ["48*86=<think>48*80=3840,"]
    assert out[0]["solution"] == RIGHT
    never = refine_all(["48*86="], gen, lambda ps, ss: [Analysis("48*6=298", 0.0)] * len(ss), rounds=3)
    assert never[0]["rounds"] == 3
    assert trusted_prefix(RIGHT, "4128") == "<think>"


def test_selection_rules():
    assert pick_best([0.5, 1.0, 1.0]) == 1
    assert pick_majority(["7", None, "8", "8"]) == 2 and pick_majority([None, None]) == 0
    curve = selection_curve([[1.0, 0.0, 0.0]], [[True, False, False]], [["1", "2", "2"]], ns=(1, 3), draws=4)
    assert curve[3] == {"verifier": 1.0, "majority": 0.0, "oracle": 1.0}  # the verifier beats a wrong majority
    assert curve[1]["verifier"] == curve[1]["majority"] == curve[1]["oracle"]  # N=1: one sample, no choice


def test_study_command_end_to_end_on_a_tiny_setting(tmp_path, capsys):
    from ponder.cli import main

    args = ["verify-study", "--steps", "1", "--prompts-per-step", "2", "--group-size", "2", "--held-out", "4",
            "--label-problems", "4", "--verifier-sft-steps", "1", "--meta-sft-steps", "1", "--verifier-rl-steps", "1",
            "--test-problems", "2", "--best-of", "2", "--refine-rounds", "2", "--out", str(tmp_path), "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["summary"]) == {"outcome", "process", "verifier", "verifier_meta"}
    assert len(result["arms"]["verifier"][0]["history"]) == 1  # the hacking curve: one row per step
    assert set(result["test_time"]["best_of_n"]) == {"1", "2"}
    assert result["verifier"]["grpo"]["solutions"] > 0 and (tmp_path / "result.json").exists()


def test_the_verifiers_analysis_is_read_off_its_own_work():
    """Solve first, then compare (ponder.verify.protocol): the issue is the first step that
    differs from the verifier's own, the score 0 / 1/2 / 1 by the answer and the steps."""
    assert compared_analysis(RIGHT, RIGHT) == "<think></think>\\boxed{1}"
    assert compared_analysis(RIGHT, WRONG_PRODUCT) == "<think>48*6=298</think>\\boxed{0}"
    assert compared_analysis(RIGHT, "<think></think>\\boxed{4128}") == "<think>48*80=</think>\\boxed{1/2}"
    assert compared_analysis(RIGHT, "<think>48*80=3840,48*6=288,3840+288=4128</think>") == "<think>nobox</think>\\boxed{0}"
    # the verifier's own slip: a right solution is scored 0, quoting the step where they part
    assert compared_analysis(WRONG_PRODUCT, RIGHT) == "<think>48*6=288</think>\\boxed{0}"
    assert compared_analysis("<think></think>", RIGHT) == ""  # no work of its own: no verdict (malformed)
    # where the rule agrees with the step checker, the verdict is the checker's
    for solution in (RIGHT, WRONG_PRODUCT, "<think></think>\\boxed{4128}"):
        assert parse_analysis(compared_analysis(RIGHT, solution)).score == labelled(solution).score


def test_the_verifier_works_each_problem_once_and_compares_every_solution():
    from ponder.verify.judge import Verifier

    class Solver:  # a stand-in for the verifier's model: the right work, a record of what it read
        read_prompts = []

        def read(self, prompts):
            self.read_prompts.extend(prompts)
            return [RIGHT if p == "48*86=/" else "<think></think>" for p in prompts]

    solver = Solver()
    texts = Verifier(solver).verify(["48*86=", "48*86=", "47*86="], [RIGHT, WRONG_PRODUCT, RIGHT])
    assert solver.read_prompts == ["48*86=/", "47*86=/"]  # once per problem, the solution out of view
    assert [parse_analysis(t) for t in texts] == [Analysis("", 1.0), Analysis("48*6=298", 0.0), None]


def test_the_probes_compared_verdict_is_the_studys_rule():
    """scripts/verifier_probe.py's solver writes bare steps; its verdict is the study's rule on them."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "verifier_probe.py"
    spec = importlib.util.spec_from_file_location("verifier_probe", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    work = "48*80=3840,48*6=288,3840+288=4128"
    assert probe.compared_score(work, RIGHT) == 1.0
    assert probe.compared_score(work, WRONG_PRODUCT) == 0.0
    assert probe.compared_score(work, "<think></think>\\boxed{4128}") == 0.5
    assert probe.compared_score("48*80=3840,48*6=298,3840+298=4138", RIGHT) == 0.0
    assert probe.by_grade([(0.0, 0.0), (1.0, 0.0), (1.0, 1.0)]) == {"all": 2 / 3, "0": 1.0, "1": 0.5}


def test_the_verifiers_grpo_prompt_is_its_prompt_exactly(tmp_path, monkeypatch):
    """RL asks a problem of an unknown kind as math (an instruction appended); the verifier's
    work prompt must reach it untouched, with the labelled solution and its true score beside
    it, or GRPO trains the verifier on another question."""
    from ponder.demo import base_model_dir
    from ponder.verify import judge

    items = [labelled(WRONG_PRODUCT), labelled(RIGHT, a=47, b=86)]
    seen = []
    real_call = judge.VerifierReward.__call__

    def spy(self, prompts, completions, score, solution, **kw):
        seen.extend(zip(prompts, solution, score))
        return real_call(self, prompts, completions, score, solution, **kw)

    monkeypatch.setattr(judge.VerifierReward, "__call__", spy)
    judge.grpo_verifier(items, str(base_model_dir()), tmp_path, steps=1, prompts_per_step=2, group_size=2)
    assert seen and set(seen) <= {(f"{x.problem.prompt}/", x.solution, x.score) for x in items}


def test_best_of_n_by_the_verifier_in_ponder_eval(tmp_path, capsys):
    """`ponder eval --strategy best-of-n --scorer verifier`: the verifier's score picks the
    candidate (a stand-in solver here), and the command runs with a checkpoint as the verifier."""
    from ponder.cli import main
    from ponder.demo import base_model_dir
    from ponder.scaling.candidates import Candidate
    from ponder.verify.judge import Verifier, VerifierScorer

    class Solver:
        tokenizer = type("Chars", (), {"encode": staticmethod(list)})

        def read(self, prompts):
            return [RIGHT for _ in prompts]

    problem = multiply.make(48, 86)
    group = [Candidate(text, text[-5:-1], text == RIGHT, True, 9, "stop") for text in (WRONG_PRODUCT, RIGHT)]
    [scores] = VerifierScorer(Verifier(Solver())).score([problem], [problem.prompt], [group])
    assert scores.values == [0.0, 1.0] and scores.generated_tokens == len(RIGHT)

    args = ["eval", "--model", str(base_model_dir()), "--task", "multiply:test", "--limit", "2", "--strategy",
            "best-of-n", "--n", "2", "--scorer", "verifier", "--max-new-tokens", "8", "--out", str(tmp_path / "v")]
    assert main(args) == 2 and "--judge-model" in capsys.readouterr().err
    assert main(args + ["--judge-model", str(base_model_dir())]) == 0
    result = json.loads((tmp_path / "v" / "result.json").read_text())
    assert result["settings"]["scorer"] == "verifier"
    assert all(len(r["scores"]) == 2 and "verifier_work" in r for r in result["records"])


def test_the_scale_curve_draws_best_of_n_by_a_verifier(tmp_path):
    from ponder.cli import main
    from ponder.demo import base_model_dir

    out = tmp_path / "curve"
    assert main(["scale-curve", "--model", str(base_model_dir()), "--task", "multiply:test", "--limit", "2", "--n", "1,2",
                 "--max-new-tokens", "8", "--verifier", str(base_model_dir()), "--out", str(out)]) == 0
    table = json.loads((out / "curve.json").read_text())
    assert "best_of_n_verifier" in table["labels"] and table["scorer_tokens_per_problem"] > 0
    one, two = table["curve"]
    assert one["best_of_n_verifier"] == one["pass@n"]  # N = 1: no choice to make
    assert two["best_of_n_verifier"] <= two["pass@n"]  # never above the oracle
    assert "learned verifier" in (out / "curve.md").read_text() and (out / "curve.png").stat().st_size > 0
