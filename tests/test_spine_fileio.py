"""fileio: atomic writes leave nothing half-written; read_json names what is wrong in one line."""
from __future__ import annotations

import pytest

from optimizer.errors import VitoptError
from optimizer.fileio import atomic_path, read_json, write_json


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("writer died")
    assert list(tmp_path.iterdir()) == []


def test_read_json_round_trip_and_errors(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    assert read_json(tmp_path / "a.json", "unused") == {"x": 1}
    with pytest.raises(VitoptError, match="^no such thing$"):
        read_json(tmp_path / "missing.json", "no such thing")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(VitoptError, match="bad.json is not valid JSON"):
        read_json(tmp_path / "bad.json", "x")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(VitoptError, match="list.json is not a JSON object"):
        read_json(tmp_path / "list.json", "x")
