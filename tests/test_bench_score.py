"""`ponder bench score` runs end to end on a few programs and reports what the README quotes:
programs/s serial and in parallel, their ratio, and whether both runs gave the same rewards."""

import json

import pytest

from ponder.cli import main


def test_bench_score_prints_both_rates_and_their_ratio(tmp_path, capsys):
    # synthesized programs (no HumanEval file here), half passing; a generous clock, since a
    # program pushed past it on a busy machine would count as failing
    assert main(["bench", "score", "--programs", "8", "--wall-s", "10", "--data", str(tmp_path / "none"),
                 "--workers", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["source"].startswith("synthesized")
    assert (result["programs"], result["passed"], result["looping"], result["workers"]) == (8, 4, 0, 2)
    assert result["serial_programs_per_s"] > 0 and result["parallel_programs_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["parallel_programs_per_s"] / result["serial_programs_per_s"])
    assert result["differing_rewards"] == 0
