"""`ponder demo` run again on the same folder says what it did: a finished run is only evaluated
again (not "50 steps in 5 s"), an interrupted one resumes."""

from dataclasses import replace

from ponder import demo
from ponder.cli import main


def test_rerun_of_a_finished_demo_says_it_was_already_trained(tmp_path, capsys, monkeypatch):
    # The real loop on a smaller budget: few prompts, few held-out problems.
    monkeypatch.setattr(demo, "DEMO_CONFIG", replace(demo.DEMO_CONFIG, prompts_per_step=4, group_size=2,
                                                     max_new_tokens=6, micro_batch_size=8, eval_every=0))
    monkeypatch.setattr(demo, "HELD_OUT", 8)
    monkeypatch.setattr(demo, "SAMPLES", 1)
    args = ["demo", "--steps", "2", "--out", str(tmp_path)]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "\n2 steps in " in first and "already" not in first
    assert main(args) == 0
    again = capsys.readouterr().out
    assert "already trained: this folder holds a finished 2-step run" in again and "2 steps in" not in again


def test_an_interrupted_run_says_where_it_resumed():
    result = {"steps": 50, "resumed_from_step": 30, "seconds": 12.0}
    assert demo.what_ran(result) == "resumed at step 30: 20 more steps in 12 s"
