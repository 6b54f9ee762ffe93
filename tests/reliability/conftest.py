"""The reliability suite's sandbox and broken inputs, all built here (nothing from ../shared).

``sandbox``: a fresh working directory and $TMPDIR per test, and a check after the test that no
temporary file or directory was left behind in either. ``broken``: garbage, empty and truncated
checkpoints / ONNX / engines, corrupt images, folders that cannot be labelled, user directories.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from optimizer.cli.main import main

ARCH = "test_vit"        # timm's own test ViT: random weights, builds in milliseconds
INFO_PREFIXES = ("[", "eval:", "export:", "build:", "bench:", "model:", "student:", "teacher:", "reference:", "onnxruntime:", "tensorrt:", "building ",
                 "warning:", "distill:", "slim:", "lowrank:", "gates:", "work directory ")


@dataclass
class Sandbox:
    root: Path
    tmpdir: Path

    def leftovers(self) -> list:
        """Temporary names vitopt uses (.NAME.xxx.tmp / .old) anywhere in the sandbox, and anything in $TMPDIR."""
        found = [p for p in self.root.rglob(".*") if p.name.endswith((".tmp", ".old"))]
        # ONNX Runtime keeps a session id in $TMPDIR/.ses (created once, kept on purpose): not ours.
        # pymp-*: the scratch dir of a torch DataLoader worker process that the test's group-wide
        # SIGTERM killed (as `timeout` does); the worker's own, and not vitopt's to know or remove
        return found + [p for p in self.tmpdir.iterdir() if p.name != ".ses" and not p.name.startswith("pymp-")]


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    root, tmpdir = tmp_path / "work", tmp_path / "tmpdir"
    root.mkdir()
    tmpdir.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", None)   # re-read $TMPDIR
    box = Sandbox(root, tmpdir)
    yield box
    left = box.leftovers()
    assert not left, f"left behind: {left}"


def cli(capsys, *argv):
    """(exit code, stdout, stderr) of one in-process ``vitopt`` call."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error(rc: int, err: str, command: str, needle: str, code: int = 2) -> str:
    """Exit ``code``; exactly one error line on stderr, the last, naming the problem; no traceback."""
    assert "Traceback" not in err, err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith(f"vitopt {command}: ")]
    assert rc == code, err
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    others = [l for l in lines[:-1] if not l.startswith(INFO_PREFIXES)]
    assert not others, f"unexpected stderr lines: {others}"
    return errors[0]


def snapshot(path: Path) -> dict:
    """Every file under ``path`` (or the file itself) with its bytes, to prove it was left untouched."""
    path = Path(path)
    if path.is_file():
        return {path: path.read_bytes()}
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _images(folder: Path, classes, per_class: int = 2, size=(40, 48)) -> None:
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in classes:
        d = folder / c
        d.mkdir(parents=True)
        for j in range(per_class):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(d / f"{c}_{j}.jpg")


@pytest.fixture(scope="session")
def broken(tmp_path_factory) -> dict:
    """name -> path of every broken or awkward input the suite feeds the commands."""
    import torch
    from optimizer.models.loading import create_architecture
    root = tmp_path_factory.mktemp("broken")
    p = {}
    # trained-looking weights: not the (seeded) random init a run without a checkpoint gets
    state = {k: v + 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) if v.is_floating_point()
             else v for k, v in create_architecture(ARCH).state_dict().items()}
    torch.save(state, root / "good.pth")
    p["good_pth"] = root / "good.pth"
    raw = (root / "good.pth").read_bytes()
    (root / "truncated.pth").write_bytes(raw[: len(raw) // 2])
    p["truncated_pth"] = root / "truncated.pth"
    (root / "empty.pth").write_bytes(b"")
    p["empty_pth"] = root / "empty.pth"
    (root / "garbage.pth").write_bytes(os.urandom(4096))
    p["garbage_pth"] = root / "garbage.pth"
    (root / "garbage.safetensors").write_bytes(os.urandom(4096))
    p["garbage_safetensors"] = root / "garbage.safetensors"
    torch.save({"not": "tensors", "n": 3}, root / "notstate.pth")
    p["notstate_pth"] = root / "notstate.pth"
    (root / "garbage.onnx").write_bytes(os.urandom(4096))
    p["garbage_onnx"] = root / "garbage.onnx"
    (root / "empty.onnx").write_bytes(b"")
    p["empty_onnx"] = root / "empty.onnx"
    (root / "garbage.engine").write_bytes(os.urandom(4096))
    p["garbage_engine"] = root / "garbage.engine"
    # labelled folder with its synset list (5 classes, 3 present)
    data = root / "labelled"
    _images(data / "imgs", ["n00000001", "n00000003", "n00000004"])
    (data / "synsets.tsv").write_text("index\tsynset\tname\n" + "".join(f"{i}\tn0000000{i}\tc{i}\n" for i in range(5)))
    p["data"] = data / "imgs"
    # synset-named folders, no list anywhere above: sorted order would give wrong labels
    _images(root / "nolist" / "imgs", ["n01440764", "n01443537", "n01484850"], per_class=1)
    p["synset_no_list"] = root / "nolist" / "imgs"
    # plain folders, 3 classes, for a 1000-class model
    _images(root / "plain" / "imgs", ["cat", "dog", "fish"], per_class=1)
    p["three_plain_classes"] = root / "plain" / "imgs"
    # only corrupt images
    bad = root / "corrupt" / "imgs" / "n00000001"
    bad.mkdir(parents=True)
    for j in range(3):
        (bad / f"x{j}.jpg").write_bytes(os.urandom(300))
    (root / "corrupt" / "synsets.tsv").write_text("n00000001 one\n")
    p["corrupt_images"] = root / "corrupt" / "imgs"
    (root / "bad.yaml").write_text("model: [unclosed\n")
    p["bad_recipe"] = root / "bad.yaml"
    (root / "cuda.yaml").write_text(f"model: {ARCH}\ndevice: cuda\nsteps:\n  - eval: {{}}\n")
    p["cuda_recipe"] = root / "cuda.yaml"
    (root / "eval.yaml").write_text(f"model: {ARCH}\nsteps:\n  - eval: {{}}\n")
    p["eval_recipe"] = root / "eval.yaml"
    (root / "huge_bench.yaml").write_text(f"model: {ARCH}\nsteps:\n  - bench: {{batch: [100000], backends: [torch]}}\n")
    p["huge_bench_recipe"] = root / "huge_bench.yaml"
    (root / "missing_ckpt.yaml").write_text(f"model: {ARCH}\ncheckpoint: {root / 'nope.pth'}\nsteps:\n  - eval: {{}}\n")
    p["missing_ckpt_recipe"] = root / "missing_ckpt.yaml"
    (root / "not_a_model_dir").mkdir()
    (root / "not_a_model_dir" / "notes.txt").write_text("mine")
    p["not_a_model_dir"] = root / "not_a_model_dir"
    return {k: str(v) for k, v in p.items()}


@pytest.fixture
def user_dir(sandbox) -> Path:
    """A directory holding the user's own files, which no command may delete."""
    d = sandbox.root / "mine"
    (d / "sub").mkdir(parents=True)
    (d / "thesis.tex").write_text("years of work")
    (d / "sub" / "data.csv").write_text("1,2,3")
    return d
