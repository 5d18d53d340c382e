"""The trace family: the sys.settrace tracer, its caps, user programs through the sandbox, the
trace verifier (answer exact, frames step by step) and the family's hash split."""

from __future__ import annotations

import pytest

from ponder.rewards import sandbox
from ponder.rewards.trace import score_trace, scratchpad, trace_reward, verify
from ponder.tasks import load_task, program, synthetic, trace
from ponder.tasks.tracer import Frame, TraceError, trace_text
from ponder.tasks.tracer import trace as run_traced

# ---------------------------------------------------------------- the tracer


@pytest.mark.parametrize("source,expected", [
    # a for loop: the header runs once per iteration and once more to find the range empty
    ("a=2\nfor i in range(3):\n a=a+i\nb=a*2", "1a=2;2i=0;3;2i=1;3a=3;2i=2;3a=5;2;4b=10"),
    # a while loop: the test line runs until it fails
    ("a=1\nwhile a<10:\n a=a*3\nb=a", "1a=1;2;3a=3;2;3a=9;2;3a=27;2;4b=27"),
    # a branch: only the taken side runs; `else:` itself is no line event
    ("a=5\nb=3\nif a>b:\n c=a-b\nelse:\n c=b-a\nc=c*2", "1a=5;2b=3;3;4c=2;7c=4"),
    ("a=1\nb=3\nif a>b:\n c=a-b\nelse:\n c=b-a\nc=c*2", "1a=1;2b=3;3;6c=2;7c=4"),
    # calls: the def line with the arguments, the body, the return value, then the calling line
    ("def f(x):\n y=x*2\n return y+1\na=3\nb=f(a)\nc=b-a", "1;4a=3;1x=3;2y=6;3>7;5b=7;6c=4"),
    ("def f(x,y):\n return x*y\na=f(2,3)+f(1,1)", "1;1x=2,y=3;2>6;1x=1,y=1;2>1;3a=7"),
])
def test_tracer_follows_pythons_own_execution(source, expected):
    frames, final = run_traced(source)
    assert trace_text(frames) == expected
    scope: dict = {}
    exec(source, scope)  # noqa: S102 - the test's own programs, run untraced for comparison
    assert final == {k: v for k, v in scope.items() if type(v) is int}


@pytest.mark.parametrize("kind", trace.KINDS)
def test_generated_programs_agree_with_plain_execution(kind):
    problems = [p for p in trace.generate("train", 200, seed=2) if p.meta["kind"] == kind]
    assert len(problems) == 50  # kinds come in turn
    for p in problems:
        scope: dict = {}
        exec(p.meta["program"], scope)  # noqa: S102 - generated, capped programs
        assert p.answer == str(scope[p.meta["query"]])
        frames = p.meta["trace"].split(";")
        assert len(frames) == p.meta["steps"] and frames[0].startswith("1")
        # the queried variable's last assignment in the trace is the answer
        last = [f for f in frames if f"{p.meta['query']}=" in f][-1]
        assert last.split(f"{p.meta['query']}=")[1].split(",")[0] == p.answer


def test_loop_iterations_and_taken_branch_are_what_python_did():
    p = trace.make("a=1\nfor i in range(3):\n a=a*2\nc=a")
    assert [f for f in p.meta["trace"].split(";") if f.startswith("3")] == ["3a=2", "3a=4", "3a=8"]
    taken = trace.make("a=4\nb=2\nif a<b:\n c=1\nelse:\n c=2\nc=c")
    assert "4c=1" not in taken.meta["trace"] and "6c=2" in taken.meta["trace"]


def test_frame_text_is_canonical():
    frame = Frame(7, (("a", -3), ("b", 12)), returned=5)
    assert frame.text() == "7a=-3,b=12>5" and Frame(2).text() == "2"
    frames, _ = run_traced("a=1\nb=2\na,b=b,a")
    assert trace_text(frames) == "1a=1;2b=2;3a=2,b=1"  # one line, two changes, names in order


# ---------------------------------------------------------------- caps


def test_caps_hold_for_every_generated_program():
    for split in ("train", "test"):
        for p in trace.generate(split, 300, seed=0):
            assert p.meta["steps"] <= trace.MAX_STEPS and len(p.meta["trace"]) <= trace.MAX_TRACE_CHARS
            values = [int(v.split(">")[0]) for f in p.meta["trace"].split(";") for v in f.split("=")[1:]]
            assert all(abs(v) <= trace.MAX_ABS for v in values)


def test_generation_rejects_programs_past_a_cap(monkeypatch):
    monkeypatch.setattr(trace, "MAX_STEPS", 5)
    problems = trace.generate("train", 40, seed=0)
    assert max(p.meta["steps"] for p in problems) <= 5
    assert {p.meta["kind"] for p in problems} == set(trace.KINDS)  # short programs of every kind remain
    monkeypatch.undo()
    assert max(p.meta["steps"] for p in trace.generate("train", 40, seed=0)) > 5  # the cap did the cutting


@pytest.mark.parametrize("source,why", [
    ("a=1\nwhile a>0:\n a=a+1-1", "steps"),  # never ends: stopped by the step cap
    ("a=1\nfor i in range(3):\n a=a*50", "value cap"),
    ("a=1\ntry:\n while True:\n  a=a\nexcept BaseException:\n a=2\nb=3", "steps"),  # swallowing the stop does not help
    ("a=1.5", "integers only"),
    ("def f(x):\n return 1\na=f(1.5)", "integers only"),  # caught at the call, not after it
    ("a=[i for i in range(3)][2]", r"returns \[0, 1, 2\], not an integer"),  # a comprehension's list
    ("a=1//0", "ZeroDivisionError"),
    ("a=(", "not a program"),
])
def test_tracer_refuses_programs_past_a_cap_or_not_integer(source, why):
    with pytest.raises(TraceError, match=why):
        trace.make(source, "a")


def test_make_refuses_a_trace_past_the_length_cap():
    long = "a=10\nb=-20\nfor i in range(3):\n a=a+10\n b=b-10\nc=a-b"  # 13 steps, 74 characters
    with pytest.raises(TraceError, match="74 characters"):
        trace.make(long)


def test_generated_programs_see_no_builtins_but_range():
    with pytest.raises(TraceError, match="NameError"):
        trace.make("a=len([1])", "a")


# ---------------------------------------------------------------- user programs: the sandbox


def test_user_program_runs_in_the_sandbox(monkeypatch):
    calls = []
    real = sandbox.run_python

    def spy(script, files, *args, **kwargs):
        calls.append((script, files))
        return real(script, files, *args, **kwargs)

    monkeypatch.setattr(sandbox, "run_python", spy)
    source = "def g(n):\n return n+1\nz=0\nfor k in range(2):\n z=g(z)*2"
    p = trace.from_source(source)
    assert len(calls) == 1 and calls[0][1]["program.py"] == source  # the program ran there, not here
    assert (p.answer, p.meta["trace"]) == ("6", "1;3z=0;4k=0;1n=0;2>1;5z=2;4k=1;1n=2;2>3;5z=6;4")
    assert p == trace.make(source)  # same problem as the in-process tracer would give, split included


def test_user_program_output_and_errors_come_back_as_trace_errors():
    # printing does not confuse the result (it travels on the sandbox's report channel)
    assert trace.from_source("print('{\"frames\": []}', end='')\na=2\na=a*3").answer == "6"
    with pytest.raises(TraceError, match="steps"):
        trace.from_source("a=0\nwhile True:\n a=a")
    with pytest.raises(TraceError, match="ValueError"):
        trace.from_source("import os\na=int('x')")


# ---------------------------------------------------------------- the verifier


GOLD = "1a=2;2i=0;3;2i=1;3a=3"


@pytest.mark.parametrize("predicted,share,first_wrong", [
    (GOLD, 1.0, None),
    ("1a=2;2i=0;3a=2;2i=1;3a=3", 0.8, 2),  # one wrong frame in the middle
    ("1a=2;2i=0;3;2i=1", 0.8, 4),  # the last frame missing
    (GOLD + ";2", 5 / 6, 5),  # an extra frame
    ("1a=2;3;2i=1;3a=3", 0.2, 1),  # a skipped frame shifts the rest
    ("", 0.0, 0),
])
def test_trace_score_by_frame(predicted, share, first_wrong):
    s = score_trace(predicted, GOLD)
    assert s.frames_right == pytest.approx(share) and s.first_wrong == first_wrong
    assert s.exact == (first_wrong is None) and s.gold == 5


def test_verify_grades_answer_and_trace_apart():
    p = trace.make("a=2\nfor i in range(3):\n a=a+i\nb=a*2")
    gold = trace.sft_text(p, scratchpad=True)
    assert verify(gold, p).answer_correct and verify(gold, p).trace.exact
    wrong_trace = gold.replace("3a=3", "3a=4")
    v = verify(wrong_trace, p)
    assert v.answer_correct and v.trace.first_wrong == 4 and v.trace.frames_right == pytest.approx(8 / 9)
    direct = trace.sft_text(p, scratchpad=False)
    assert verify(direct, p).answer_correct and verify(direct, p).trace is None
    assert not verify(direct.replace("{10}", "{11}"), p).answer_correct
    assert scratchpad("<think>1a=2") is None  # an unfinished scratchpad is no trace


def test_trace_reward_is_usable_by_rl():
    from ponder.rl.scoring import resolve_reward

    assert resolve_reward("trace_reward") is trace_reward
    p = trace.make("a=3\nb=a+4\na=b*2")
    assert trace_reward("", trace.sft_text(p, True), p) == 1.0
    assert trace_reward("", trace.sft_text(p, False), p) == 0.0
    assert trace_reward("", "<think>1a=3;2b=7;3a=15</think>\\boxed{15}", p) == pytest.approx(2 / 3)
    straight = program.make("a=3;b=a+4;a=b*2", "a")  # a family without a gold trace text
    assert trace_reward("", "<think>a=3</think>\\boxed{14}", straight) is None


# ---------------------------------------------------------------- the family


def test_split_is_a_hash_of_the_prompt_and_never_shared():
    train = {p.prompt for seed in range(3) for p in trace.generate("train", 300, seed=seed)}
    test = {p.prompt for seed in range(3) for p in trace.generate("test", 300, seed=seed)}
    assert train and test and not train & test
    for p in trace.generate("test", 50, seed=5):
        assert p.meta["split"] == synthetic.split_of("trace", p.prompt) == "test"
    assert all(p.kind == "trace" and p.meta["split"] == "test" for p in load_task("trace", limit=20))
    assert [p.prompt for p in load_task("trace:train", limit=20)] == \
        [p.prompt for p in trace.generate("train", 20, seed=0)]


def test_examples_stay_in_the_alphabet_and_the_budget():
    for p in trace.generate("train", 400, seed=0):
        example = trace.trace_example(p)
        text = p.prompt + trace.sft_text(p, True) + example["prompt"] + example["completion"]
        assert set(text) <= set(trace.ALPHABET)
        assert example["completion"] == f"<think>{p.meta['trace']}</think>"
        assert example["prompt"].endswith("\ntrace?") and not example["prompt"].endswith(f"{p.meta['query']}?")


def test_a_user_program_exiting_early_leaves_no_trace():
    with pytest.raises(TraceError, match="exit status 3"):
        trace.from_source("import sys\na=1\nsys.exit(3)")
    with pytest.raises(TraceError, match="no trace"):
        trace.from_source("import os\na=1\nos._exit(0)")
