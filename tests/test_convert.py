"""`ponder convert`: the errors a user meets before any conversion (the conversion itself is
tested on the real checkpoints, tests/test_real_smollm2.py)."""

from __future__ import annotations

import sys

import pytest

from ponder.cli import main


def test_missing_file_is_one_line_naming_it(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope.gguf"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "ponder convert: error:" in err and "nope.gguf: no such file" in err


def test_missing_extra_names_it(tmp_path, monkeypatch):
    from ponder.models.gguf import ConvertError, convert_gguf

    file = tmp_path / "m.gguf"
    file.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if the package were not installed
    with pytest.raises(ConvertError, match=r"ponder\[gguf\]"):
        convert_gguf(file, tmp_path / "out")


def test_not_a_gguf_file(tmp_path):
    pytest.importorskip("gguf", reason="the gguf package (ponder[gguf]) reads GGUF files")
    from ponder.models.gguf import ConvertError, convert_gguf

    file = tmp_path / "m.gguf"
    file.write_text("not a model")
    with pytest.raises(ConvertError, match="not a readable GGUF file"):
        convert_gguf(file, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_is_named(tmp_path):
    gguf = pytest.importorskip("gguf", reason="the gguf package (ponder[gguf]) reads GGUF files")
    pytest.importorskip("transformers", reason="transformers reads GGUF models")
    import numpy as np

    from ponder.models.gguf import ConvertError, convert_gguf

    file = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(file), "wavenet")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConvertError, match="'wavenet'"):
        convert_gguf(file, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_a_checkpoint(tmp_path, tiny_checkpoint):
    from ponder.models.gguf import ConvertError, convert_gguf

    file = tmp_path / "m.gguf"
    file.write_bytes(b"GGUF")
    with pytest.raises(ConvertError, match="already holds a checkpoint"):
        convert_gguf(file, tiny_checkpoint)
