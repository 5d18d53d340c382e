"""`ponder bench generate` runs end to end on a tiny shape and reports what the README quotes:
both engines' tokens/s, their ratio, and the share of the machine's matmul rate."""

import json

import pytest

from ponder.cli import main


@pytest.mark.parametrize("arch", ["qwen3", "qwen3_moe"])
def test_bench_generate_prints_both_rates_and_their_ratio(arch, capsys):
    pytest.importorskip("transformers")
    assert main(["bench", "generate", "--arch", arch, "--hidden", "32", "--layers", "1", "--heads", "2",
                 "--kv-heads", "1", "--vocab", "64", "--batch", "3", "--prompt-len", "4",
                 "--new-tokens", "5", "--repeats", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["ponder_tok_s"] > 0 and result["transformers_tok_s"] > 0
    assert result["ratio"] == pytest.approx(result["ponder_tok_s"] / result["transformers_tok_s"], rel=0.02)
    assert result["ponder_gflops"] > 0 and 0 <= result["fraction_of_matmul"] < 1
    assert result["shape"]["arch"] == arch
