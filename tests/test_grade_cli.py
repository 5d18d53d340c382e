"""`ponder grade FILE.jsonl` (math): output lines repeat the input with correct/reason/grader;
malformed lines are reported by line number and the rest still grade."""

import json

from ponder.cli import main


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_grade_math_file_with_a_malformed_line(tmp_path, capsys):
    src = _write(tmp_path / "in.jsonl", [
        json.dumps({"gold": "\\frac{1}{2}", "pred": "0.5", "id": 1}),
        json.dumps({"gold": "3", "response": "We get \\boxed{4}."}),
        "{not json",
        json.dumps({"gold": "2"}),
        "",
        json.dumps({"gold": "(1,3)", "pred": "\\{1,3\\}"}),
        json.dumps({"gold": "10", "response": "so the answer is 10", "finish_reason": "length"}),
        json.dumps({"gold": 12, "response": "Answer: 12"}),
    ])
    out = tmp_path / "out.jsonl"
    assert main(["grade", str(src), "--out", str(out), "--workers", "1"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["correct"] for r in rows] == [True, False, False, False, False, False, True]
    assert rows[0]["id"] == 1 and rows[0]["pred"] == "0.5"          # input repeated
    assert rows[1]["extracted"] == "4"
    assert "line 3" in rows[2]["reason"] and "JSON" in rows[2]["reason"]
    assert "line 4" in rows[3]["reason"] and "pred" in rows[3]["reason"]
    assert rows[5]["reason"] == "truncated"
    assert rows[0]["grader"].startswith("ponder-math/")
    err = capsys.readouterr().err
    assert f"{src}:3:" in err and f"{src}:4:" in err


def test_grade_to_stdout_and_missing_file(tmp_path, capsys):
    src = _write(tmp_path / "in.jsonl", [json.dumps({"gold": "5", "pred": "5.0"})])
    assert main(["grade", str(src)]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["correct"] is True and line["reason"]
    assert main(["grade", str(tmp_path / "absent.jsonl")]) == 2
    assert "absent.jsonl" in capsys.readouterr().err
