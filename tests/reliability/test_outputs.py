"""Outputs never lose the user's files: refused unless a previous vitopt output of the same kind or
--force, replaced by a swap (the previous output survives a failed run), written with the user's
umask, manifests naming final paths, and a full or read-only target is one line with nothing left."""
from __future__ import annotations

import errno
import json
import os

import pytest

from .conftest import assert_one_error, cli, snapshot


def _run_eval(capsys, broken, out, *extra):
    return cli(capsys, "run", broken["eval_recipe"], "-o", out, *extra)


def test_previous_run_output_is_replaced_and_names_final_paths(broken, sandbox, capsys):
    out = sandbox.root / "out"
    rc, _, err = _run_eval(capsys, broken, out)
    assert rc == 0, err
    first = json.loads((out / "manifest.json").read_text())
    (out / "stale.txt").write_text("from an older run")   # a previous output of the same kind: replaced
    rc, _, err = _run_eval(capsys, broken, out)
    assert rc == 0, err
    assert not (out / "stale.txt").exists() and (out / "manifest.json").is_file()
    text = (out / "manifest.json").read_text()
    assert ".tmp" not in text and json.loads(text)["artifacts"] == first["artifacts"]


def test_user_directory_needs_force_then_is_replaced(broken, user_dir, sandbox, capsys):
    before = snapshot(user_dir)
    rc, _, err = _run_eval(capsys, broken, user_dir)
    assert_one_error(rc, err, "run", "pass --force to replace it")
    assert snapshot(user_dir) == before
    rc, _, err = _run_eval(capsys, broken, user_dir, "--force")
    assert rc == 0, err
    assert not (user_dir / "thesis.tex").exists() and (user_dir / "manifest.json").is_file()


def test_failed_write_keeps_the_previous_output(broken, sandbox, capsys, monkeypatch):
    """A disk that fills up while the manifest is written: one line, the previous output intact."""
    import optimizer.fileio as fileio
    out = sandbox.root / "out"
    assert _run_eval(capsys, broken, out)[0] == 0
    before = snapshot(out)

    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    monkeypatch.setattr(fileio, "write_text", full)
    rc, _, err = _run_eval(capsys, broken, out)
    line = assert_one_error(rc, err, "run", "No space left on device")
    assert f"({out}/manifest.json)" in line   # the final path, never the temporary one
    assert snapshot(out) == before


def test_full_disk_on_a_json_result(broken, sandbox, capsys, monkeypatch):
    real = os.replace

    def full(src, dst):
        if str(dst).endswith("r.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst)
    monkeypatch.setattr(os, "replace", full)
    rc, _, err = cli(capsys, "eval", "--model", "test_vit", "--json", "r.json")
    assert_one_error(rc, err, "eval", "No space left on device")
    assert not (sandbox.root / "r.json").exists()


def test_read_only_target_is_refused_before_work(broken, sandbox, capsys, monkeypatch):
    ro = sandbox.root / "ro"
    ro.mkdir()
    if os.geteuid() == 0:   # root writes anywhere: make the access check answer as for a user
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p) == str(ro) else real(p, mode, **k))
    else:
        ro.chmod(0o555)
    try:
        for argv, cmd in ((["export", "--model", "test_vit", "-o", ro / "m.onnx"], "export"),
                          (["run", broken["eval_recipe"], "-o", ro / "out"], "run"),
                          (["eval", "--model", "test_vit", "--json", ro / "r.json"], "eval")):
            rc, out, err = cli(capsys, *argv)
            assert_one_error(rc, err, cmd, "is not writable")
            assert "model:" not in err   # refused before the model was even loaded
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_outputs_follow_the_umask(broken, sandbox, capsys, mask, file_mode, dir_mode):
    old = os.umask(mask)
    try:
        rc, _, err = _run_eval(capsys, broken, sandbox.root / "out", "--json", "r.json")
    finally:
        os.umask(old)
    assert rc == 0, err
    assert (sandbox.root / "out").stat().st_mode & 0o777 == dir_mode
    assert (sandbox.root / "out" / "manifest.json").stat().st_mode & 0o777 == file_mode
    assert (sandbox.root / "r.json").stat().st_mode & 0o777 == file_mode
