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


def test_outputs_get_the_umask_not_mkstemps_0600(tmp_path):
    import os
    from optimizer.fileio import atomic_dir, write_text
    old = os.umask(0o027)
    try:
        write_text(tmp_path / "f.txt", "x")
        with atomic_dir(tmp_path / "d", kind="run") as tmp:
            (tmp / "a").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750


def test_check_output_refuses_what_would_lose_files(tmp_path, monkeypatch):
    from optimizer.fileio import check_output, output_kind, atomic_dir
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    (tmp_path / "outer" / "data").mkdir(parents=True)
    for args, msg in [((".", "run"), "is the current directory"), ((str(tmp_path.parent), "run"), "contains it"),
                      (("mine", "run"), "is not a vitopt output"), (("mine", "file"), "is a directory")]:
        with pytest.raises(VitoptError, match=msg):
            check_output(*args)
    with pytest.raises(VitoptError, match="contains the input"):
        check_output(tmp_path / "outer", "run", inputs=[str(tmp_path / "outer" / "data")])
    (tmp_path / "empty").mkdir()
    assert check_output("empty", "run").name == "empty"      # an empty directory is fine
    with atomic_dir("prev", kind="compressed") as tmp:
        (tmp / "recipe.json").write_text("{}")
    assert output_kind("prev") == "compressed"
    assert check_output("prev", "compressed").name == "prev"
    with pytest.raises(VitoptError, match="is a vitopt compressed output"):
        check_output("prev", "run")
    assert check_output("mine", "run", force=True).name == "mine"
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"   # checking never deletes


def test_swap_restores_the_previous_output_when_the_rename_in_fails(tmp_path, monkeypatch):
    import os
    from optimizer.fileio import atomic_dir
    with atomic_dir(tmp_path / "out", kind="run") as tmp:
        (tmp / "v").write_text("1")
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2:          # the old one is aside, the new one fails to go in
            raise OSError(28, "No space left on device")
        return real(src, dst)
    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError):
        with atomic_dir(tmp_path / "out", kind="run") as tmp:
            (tmp / "v").write_text("2")
    monkeypatch.undo()
    assert (tmp_path / "out" / "v").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_temporaries_map_to_final_paths_and_are_removed_on_demand(tmp_path):
    from optimizer.fileio import atomic_dir, atomic_path, final_path, final_paths, remove_temporaries, temp_dir
    with atomic_dir(tmp_path / "run", kind="run") as run_tmp:
        with atomic_path(run_tmp / "m.onnx") as f:
            assert final_path(f) == str(tmp_path / "run" / "m.onnx")
            assert final_paths({"a": [str(run_tmp / "x" / "y")]}) == {"a": [str(tmp_path / "run" / "x" / "y")]}
            f.write_text("m")
    assert (tmp_path / "run" / "m.onnx").read_text() == "m"
    # what the signal handler does: every temporary the product holds is removed
    with pytest.raises(FileNotFoundError):
        with atomic_dir(tmp_path / "run2", kind="run") as run_tmp, temp_dir("vitopt-test-") as scratch:
            (scratch / "junk").write_text("j")
            removed = remove_temporaries()
            assert scratch in removed and run_tmp in removed
            assert not scratch.exists() and not run_tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
