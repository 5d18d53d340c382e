"""ponder.tasks: file loaders, the public sets, and the synthetic families' generators and splits."""

from __future__ import annotations

import gzip
import json
import logging
import re
import sys
from pathlib import Path

import pytest

from ponder.tasks import FAMILIES, TaskFileError, load_file, load_task, multiply, program
from ponder.tasks.loaders import read_records

DATA = Path(__file__).parents[1].parent / "shared" / "data"

RECORDS = [
    {"problem": "1+1?", "answer": "2", "subject": "Algebra", "level": 1, "id": "p1"},
    {"prompt": "2+3?", "answer": 5},
]


def _need(name: str) -> Path:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not present (public test sets live in ../shared/data, outside the repo)")
    return path


def _write_jsonl(path: Path, lines: list[str], gz: bool = False) -> Path:
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


# ---------------------------------------------------------------- loaders

@pytest.mark.parametrize("name,gz", [("t.jsonl", False), ("t.jsonl.gz", True)])
def test_jsonl_and_gzipped_jsonl_load(tmp_path, name, gz):
    path = _write_jsonl(tmp_path / name, [json.dumps(r) for r in RECORDS], gz=gz)
    problems = load_task("jsonl", path=path)
    assert [(p.prompt, p.answer, p.kind) for p in problems] == [("1+1?", "2", "math"), ("2+3?", "5", "math")]
    assert problems[0].id == "p1" and problems[0].meta == {"subject": "Algebra", "level": 1, "id": "p1"}


@pytest.mark.parametrize("gz", [False, True])
def test_json_array_loads(tmp_path, gz):
    path = tmp_path / ("t.json.gz" if gz else "t.json")
    text = json.dumps(RECORDS)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    assert [p.answer for p in load_task("jsonl", path=path)] == ["2", "5"]


def test_json_lines_under_a_json_name_load(tmp_path):
    path = _write_jsonl(tmp_path / "t.json", [json.dumps(r) for r in RECORDS])
    assert len(load_task("jsonl", path=path)) == 2


def test_parquet_loads(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist([{"problem": "1+1?", "answer": "2"}, {"problem": "3*3?", "answer": "9"}]), path)
    assert [(p.prompt, p.answer) for p in load_task("jsonl", path=path)] == [("1+1?", "2"), ("3*3?", "9")]


def test_malformed_records_are_reported_with_line_and_skipped(tmp_path, caplog):
    lines = [json.dumps(RECORDS[0]), "{not json", "[1, 2]", "", json.dumps({"problem": "no answer"}),
             json.dumps(RECORDS[1])]
    path = _write_jsonl(tmp_path / "bad.jsonl", lines)
    problems, warnings = load_file("jsonl", path)
    assert [p.answer for p in problems] == ["2", "5"]
    assert len(warnings) == 3
    assert warnings[0].startswith(f"{path}:2: not valid JSON")
    assert warnings[1].startswith(f"{path}:3: expected a JSON object")
    assert warnings[2].startswith(f"{path}:5: missing field 'answer'")
    with caplog.at_level(logging.WARNING, logger="ponder.tasks"):
        assert len(load_task("jsonl", path=path)) == 2
    assert f"{path}:5" in caplog.text


def test_file_without_usable_record_is_an_error_naming_it(tmp_path):
    bad = _write_jsonl(tmp_path / "bad.jsonl", ["{oops", json.dumps({"question": "q"})])
    with pytest.raises(TaskFileError, match=re.escape(str(bad))):
        load_task("jsonl", path=bad)
    empty = _write_jsonl(tmp_path / "empty.jsonl", [""])
    with pytest.raises(TaskFileError, match="no usable record"):
        read_records(empty)
    with pytest.raises(TaskFileError, match="unknown task file type"):
        read_records(_write_jsonl(tmp_path / "t.csv", ["a,b"]))
    with pytest.raises(TaskFileError, match="no such file"):
        load_task("jsonl", path=tmp_path / "missing.jsonl")
    with pytest.raises(TaskFileError, match="is a folder"):
        load_task("jsonl", path=tmp_path)


def test_missing_public_set_says_where_it_looked_and_about_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PONDER_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(TaskFileError) as err:
        load_task("math500")
    message = str(err.value)
    assert "math500_test.jsonl" in message and "--data" in message and str(tmp_path / "nowhere") in message
    # The same loader serves configs and the command line: the message names both ways to give the data.
    with pytest.raises(TaskFileError) as err:
        load_task("jsonl")
    assert "task_path" in str(err.value) and "--data" in str(err.value)


def test_public_set_is_found_through_ponder_data(tmp_path, monkeypatch):
    _write_jsonl(tmp_path / "gsm8k_test.jsonl", [json.dumps({"question": "q?", "answer": "so\n#### 1,234"})])
    monkeypatch.setenv("PONDER_DATA", str(tmp_path))
    [p] = load_task("gsm8k")
    assert p.answer == "1234" and p.meta["solution"] == "so"


def test_unknown_task_lists_known_ones():
    with pytest.raises(ValueError, match="multiply"):
        load_task("nope")


# ---------------------------------------------------------------- per-problem data, datasets

TOLERANCE_RECORDS = [
    {"prompt": "Estimate pi.", "answer": "3.14159", "tolerance": 0.01, "difficulty": "easy"},
    {"prompt": "Estimate e.", "answer": "2.71828", "tolerance": 0.5, "difficulty": "hard"},
]


def within_tolerance(prompt: str, completion: str, problem) -> float:
    """A reward that needs per-problem data: right when within the record's own tolerance."""
    return float(abs(float(completion) - float(problem.answer)) <= problem.meta["tolerance"])


def _parquet(path: Path, records: list[dict]) -> Path:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_every_other_field_of_a_record_reaches_the_reward(tmp_path, fmt):
    if fmt == "jsonl":
        path = _write_jsonl(tmp_path / "t.jsonl", [json.dumps(r) for r in TOLERANCE_RECORDS])
    else:
        path = _parquet(tmp_path / "t.parquet", TOLERANCE_RECORDS)
    problems = load_task("jsonl", path=path)
    assert [p.meta for p in problems] == [{"tolerance": 0.01, "difficulty": "easy"},
                                          {"tolerance": 0.5, "difficulty": "hard"}]
    # 3.0 is wrong for pi at 0.01 and right for e at 0.5: the reward saw each problem's own field.
    assert [within_tolerance(p.prompt, "3.0", p) for p in problems] == [0.0, 1.0]


def test_public_sets_keep_their_extra_fields_too(tmp_path):
    path = _write_jsonl(tmp_path / "gsm8k_test.jsonl",
                        [json.dumps({"question": "q?", "answer": "so\n#### 7", "source": "x"})])
    [p] = load_task("gsm8k", path=path)
    assert p.meta == {"source": "x", "solution": "so"}


def _datasets():
    return pytest.importorskip("datasets")


QA_ROWS = {"question": ["1+1?", "2+3?", "4*4?"], "solution": ["2", "5", "16"], "tolerance": [0, 0, 1]}


def test_saved_dataset_with_a_column_mapping_loads(tmp_path):
    datasets = _datasets()
    datasets.Dataset.from_dict(QA_ROWS).save_to_disk(str(tmp_path / "qa"))
    problems = load_task("jsonl", path=tmp_path / "qa", prompt_column="question", answer_column="solution")
    assert [(p.prompt, p.answer, p.meta) for p in problems] == [
        ("1+1?", "2", {"tolerance": 0}), ("2+3?", "5", {"tolerance": 0}), ("4*4?", "16", {"tolerance": 1})]
    # Without the mapping the rows have no prompt field: the error says which field is missing.
    with pytest.raises(TaskFileError, match="missing field 'prompt' or 'problem'"):
        load_task("jsonl", path=tmp_path / "qa")


def test_saved_dataset_dict_takes_a_split(tmp_path):
    datasets = _datasets()
    rows = datasets.Dataset.from_dict(QA_ROWS)
    datasets.DatasetDict({"train": rows.select([0, 1]), "test": rows.select([2])}).save_to_disk(str(tmp_path / "qa"))
    columns = dict(prompt_column="question", answer_column="solution")
    assert [p.prompt for p in load_task("jsonl", path=tmp_path / "qa", split="test", **columns)] == ["4*4?"]
    assert [p.prompt for p in load_task("jsonl", path=tmp_path / "qa", split="train", **columns)] == ["1+1?", "2+3?"]
    with pytest.raises(TaskFileError, match="several splits; it has train, test: choose one.*task_split"):
        load_task("jsonl", path=tmp_path / "qa", **columns)
    with pytest.raises(TaskFileError, match="no split 'validation'; it has train, test"):
        load_task("jsonl", path=tmp_path / "qa", split="validation", **columns)
    bad = tmp_path / "qa" / "train" / "state.json"
    bad.write_text("{oops")
    with pytest.raises(TaskFileError, match="cannot load this saved dataset"):
        load_task("jsonl", path=tmp_path / "qa", split="train", **columns)


def test_a_split_on_a_file_is_an_error(tmp_path):
    path = _write_jsonl(tmp_path / "t.jsonl", [json.dumps(r) for r in RECORDS])
    with pytest.raises(TaskFileError, match="applies to a Hugging Face dataset"):
        load_task("jsonl", path=path, split="train")


def _cache_hub_dataset(tmp_path: Path, repo: str) -> Path:
    """Put `repo` into a datasets cache under tmp_path the way an online load_dataset would."""
    datasets = _datasets()
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.json.json import Json

    source = tmp_path / "source"
    source.mkdir()
    _write_jsonl(source / "train.jsonl", [json.dumps({"question": q, "solution": a})
                                          for q, a in zip(QA_ROWS["question"], QA_ROWS["solution"])])
    owner, name = repo.split("/")
    files = DataFilesDict.from_patterns({"train": ["train.jsonl"]}, base_path=str(source))
    builder = Json(cache_dir=str(tmp_path / "scratch"), dataset_name=name, data_files=files)
    cache = tmp_path / "cache"
    builder.download_and_prepare(output_dir=str(cache / f"{owner}___{name}" / "default" / "0.0.0" / "0123abcd"))
    return cache


def test_hub_id_in_the_local_cache_loads_and_nothing_is_downloaded(tmp_path, monkeypatch):
    datasets = _datasets()
    cache = _cache_hub_dataset(tmp_path, "someone/tiny-qa")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # as online: ponder must not go out
    hub_calls = []

    class RecordingHub:  # stands in for the hub client; the library swallows errors, so record instead
        def __init__(self, *args, **kwargs):
            pass

        def __getattr__(self, name):
            hub_calls.append(name)
            raise ConnectionError(name)

    monkeypatch.setattr(datasets.load, "HfApi", RecordingHub)
    problems = load_task("jsonl", path="someone/tiny-qa", prompt_column="question", answer_column="solution")
    assert [p.answer for p in problems] == ["2", "5", "16"]
    with pytest.raises(TaskFileError) as err:
        load_task("jsonl", path="someone/not-cached")
    assert hub_calls == []
    message = str(err.value)
    assert "not a Hugging Face dataset in the local cache" in message and "downloads nothing" in message
    assert datasets.config.HF_HUB_OFFLINE is False  # held offline only for the call
    with pytest.raises(TaskFileError, match="no such file"):  # a file name is never taken for a hub id
        load_task("jsonl", path="data/missing.jsonl")


def test_without_the_datasets_library_a_dataset_says_what_to_install(tmp_path, monkeypatch):
    datasets = _datasets()
    datasets.Dataset.from_dict(QA_ROWS).save_to_disk(str(tmp_path / "qa"))
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(TaskFileError, match=r"pip install datasets"):
        load_task("jsonl", path=tmp_path / "qa", prompt_column="question", answer_column="solution")


def test_synthetic_tasks_take_no_dataset_split():
    with pytest.raises(ValueError, match="multiply:train"):
        load_task("multiply", split="train")


# ---------------------------------------------------------------- public sets

def test_math500_loads():
    problems = load_task("math500", path=_need("math500_test.jsonl"))
    assert len(problems) == 500 and len({p.id for p in problems}) == 500
    assert all(p.kind == "math" and p.answer for p in problems)
    assert problems[0].id == "test/precalculus/807.json"
    assert problems[0].meta["subject"] == "Precalculus" and problems[0].meta["level"] == 2
    assert len(load_task("math500", path=DATA, limit=7)) == 7  # a folder holding the file works too


def test_gsm8k_loads_with_gold_after_hashes_and_commas_stripped():
    problems = load_task("gsm8k", path=_need("gsm8k_test.jsonl"))
    assert len(problems) == 1319
    assert problems[0].answer == "18"
    assert all(re.fullmatch(r"-?[\d.]+", p.answer) for p in problems)
    assert "114200" in {p.answer for p in problems}  # "#### 114,200" in the file


def test_humaneval_loads_as_code():
    problems = load_task("humaneval", path=_need("HumanEval.jsonl.gz"))
    assert len(problems) == 164
    p = problems[0]
    assert p.id == "HumanEval/0" and p.kind == "code" and p.answer == ""
    assert p.meta["entry_point"] == "has_close_elements" and "def check(candidate)" in p.meta["test"]


# ---------------------------------------------------------------- synthetic families

@pytest.mark.parametrize("name", list(FAMILIES))
def test_generators_are_deterministic(name):
    fam = FAMILIES[name]
    a, b = fam.generate("train", 50, seed=3), fam.generate("train", 50, seed=3)
    assert a == b
    assert [p.prompt for p in fam.generate("train", 50, seed=4)] != [p.prompt for p in a]
    assert len({p.prompt for p in a}) == 50  # distinct within a call


@pytest.mark.parametrize("name", list(FAMILIES))
def test_train_and_heldout_never_share_a_problem(name):
    fam = FAMILIES[name]
    train = {p.prompt for seed in range(3) for p in fam.generate("train", 400, seed=seed)}
    test = {p.prompt for seed in range(3) for p in fam.generate("test", 400, seed=seed)}
    assert train and test and not train & test
    assert all(p.meta["split"] == "test" for p in load_task(name))


def test_multiply_split_is_by_unordered_operands():
    train, test = set(multiply.space("train")), set(multiply.space("test"))
    assert len(train) + len(test) == 90 * 90 and not train & test
    assert all((b, a) in test for a, b in test)  # 47*86 and 86*47 always share a split
    assert 0.1 < len(test) / 8100 < 0.3
    with pytest.raises(ValueError, match="only"):
        multiply.generate("test", len(test) + 1)
    with pytest.raises(ValueError, match="split"):
        multiply.generate("valid", 1)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_sft_texts_verify_and_scratchpad_arithmetic_holds(name):
    fam = FAMILIES[name]
    for p in fam.generate("test", 100, seed=1):
        with_pad, direct = fam.sft_text(p, scratchpad=True), fam.sft_text(p, scratchpad=False)
        assert direct == f"<think></think>\\boxed{{{p.answer}}}"
        assert with_pad.startswith("<think>") and with_pad.endswith(f"</think>\\boxed{{{p.answer}}}")
        assert fam.check(with_pad, p) and fam.check(direct, p)
        assert not fam.check(f"<think></think>\\boxed{{{int(p.answer) + 1}}}", p)
        assert not fam.check("<think>no answer", p)
        assert set(p.prompt + with_pad) <= set(fam.ALPHABET)
        # the demo's char model needs multiply and program short; a trace (programs with loops
        # and calls) fits 96 tokens (`ponder eval --task trace --max-new-tokens 96`)
        prompt_cap, completion_cap = (64, 100) if name == "trace" else (30, 80)
        assert len(p.prompt) <= prompt_cap and len(with_pad) <= completion_cap


def test_multiply_scratchpad_partial_products_are_true():
    for p in multiply.generate("train", 200, seed=0):
        a, b = p.meta["a"], p.meta["b"]
        assert p.answer == str(a * b)
        for lhs, rhs in (eq.split("=") for eq in multiply.scratch_text(p).split(",")):
            x, op, y = re.fullmatch(r"(\d+)([*+])(\d+)", lhs).groups()
            assert (int(x) * int(y) if op == "*" else int(x) + int(y)) == int(rhs)
    assert multiply.sft_text(multiply.make(47, 86), True) == \
        "<think>47*80=3760,47*6=282,3760+282=4042</think>\\boxed{4042}"


def test_program_gold_matches_python_and_trace():
    for p in program.generate("train", 200, seed=0):
        scope: dict = {}
        exec(p.meta["program"], {}, scope)  # noqa: S102 - our own generated, checked programs
        assert p.answer == str(scope[p.meta["query"]])
        # the scratchpad ends on the queried variable's final value
        assert program.scratch_text(p).split(",")[-1] == f"{p.meta['query']}={p.answer}"
    assert program.sft_text(program.make("a=3;b=a+4;a=b*2", "a"), True) == "<think>a=3,b=7,a=14</think>\\boxed{14}"


@pytest.mark.parametrize("source", ["import os", "a=__import__('os')", "a=1;print(a)", "a=b+1", "a=1;b=a.real",
                                    "a=2**99", "a,b=1,2", "a='x'"])
def test_program_evaluator_refuses_anything_but_integer_assignments(source):
    with pytest.raises(ValueError):
        program.run(source)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_gold_is_equivalent_under_the_math_grader(name):
    math = pytest.importorskip("ponder.rewards.math", reason="ponder.rewards.math not written yet")
    for p in FAMILIES[name].generate("test", 20, seed=0):
        pred = math.extract_answer(FAMILIES[name].sft_text(p, True), mode="strict")
        assert math.equivalent(p.answer, pred)
