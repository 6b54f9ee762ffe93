"""``vitopt distill`` end to end on tiny model directories, and its error contract."""
from __future__ import annotations

import json

import pytest
import torch

from optimizer.cli.main import main
from optimizer.compress.api import CompressedModel
from optimizer.compress.saving import load_compressed, save_compressed
from tests.conftest import tiny_vit

KW = dict(depth=2, embed_dim=64, num_heads=4, img_size=32, patch_size=8, num_classes=10)


@pytest.fixture
def dirs(tmp_path):
    teacher = tiny_vit()
    student = tiny_vit(seed=5)
    save_compressed(tmp_path / "teacher", CompressedModel(teacher, "vit_tiny_patch16_224", KW, []))
    save_compressed(tmp_path / "student", CompressedModel(student, "vit_tiny_patch16_224", KW, []))
    return tmp_path


def test_cli_distills_saves_and_resumes(dirs, image_folder, capsys):
    out, js = dirs / "rec", dirs / "r.json"
    argv = ["distill", "--student", str(dirs / "student"), "--teacher", str(dirs / "teacher"),
            "--data", str(image_folder), "--val", str(image_folder), "--steps", "4", "--batch-size", "2",
            "--workers", "0", "--set", "save_every=2", "--set", "augment=false", "-o", str(out), "--json", str(js)]
    assert main(argv) == 0
    res = json.loads(js.read_text())
    assert res["report"]["steps"] == 4 and len(res["report"]["evals"]) == 2
    assert (out / "distill_report.json").is_file()
    rec = load_compressed(out).model
    orig = load_compressed(dirs / "student").model
    assert any(not torch.equal(a, b) for a, b in zip(rec.parameters(), orig.parameters()))
    assert "agreement" in capsys.readouterr().out
    # resuming a finished run does no further steps and reproduces the same weights
    assert main(argv + ["--resume"]) == 0
    res2 = json.loads(js.read_text())
    assert res2["report"]["start_step"] == 4 and res2["report"]["steps"] == 4
    rec2 = load_compressed(out).model
    assert all(torch.equal(a, b) for a, b in zip(rec.parameters(), rec2.parameters()))


@pytest.mark.parametrize("extra,msg", [
    (["--steps", "0"], "steps must be positive"),
    (["--alpha", "2"], "alpha must be in"),
    (["--set", "nope=1"], "unknown distill option"),
    (["--resume"], "needs --work-dir"),
    (["--holdout", "0.9"], "holdout must be a fraction"),
])
def test_cli_errors_are_one_line(dirs, image_folder, capsys, extra, msg):
    argv = ["distill", "--student", str(dirs / "student"), "--teacher", str(dirs / "teacher"),
            "--data", str(image_folder)] + extra
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_random_teacher(dirs, image_folder, capsys):
    argv = ["distill", "--student", str(dirs / "student"), "--teacher", "vit_tiny_patch16_224",
            "--data", str(image_folder)]
    assert main(argv) == 2
    assert "random weights" in capsys.readouterr().err


def test_cli_holdout_reports_the_guard(dirs, image_folder):
    js = dirs / "h.json"
    argv = ["distill", "--student", str(dirs / "student"), "--teacher", str(dirs / "teacher"),
            "--data", str(image_folder), "--steps", "2", "--batch-size", "2", "--workers", "0",
            "--holdout", "0.34", "--set", "augment=false", "--json", str(js)]
    assert main(argv) == 0
    h = json.loads(js.read_text())["report"]["holdout"]
    assert [r["step"] for r in h["history"]] == [0, 2] and h["images"] >= 1
