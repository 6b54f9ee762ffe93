"""A compressed model is tied to its weights and its structure, and a resumable work directory to the
run it was made for: tampering, a structure of the wrong types or ranges, or another run's work
directory is one line naming the problem, never a silently wrong model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .conftest import ARCH, assert_one_error, cli

FAST = ["--set", "steps=1", "--set", "batch_size=2", "--set", "recovery=none", "--workers", "0"]


@pytest.fixture(scope="module")
def slimmed(broken, tmp_path_factory):
    """A slim-compressed test_vit made from good.pth (token drop: the tests edit its token_index), and the
    work directory of its mask search."""
    from optimizer.cli.main import main
    root = tmp_path_factory.mktemp("slimmed")
    rc = main(["compress", "--method", "slim", "--model", ARCH, "--checkpoint", broken["good_pth"], "--calib",
               broken["data"], "--macs", "0.6", "-o", str(root / "model"), "--work-dir", str(root / "wd"), *FAST,
               "--set", "token_mode=drop"])
    assert rc == 0
    return root


def _copy(slimmed, sandbox, legacy: bool = False) -> Path:
    d = sandbox.root / "m"
    shutil.copytree(slimmed / "model", d)
    if legacy:   # as written before the hashes existed: only the type and range checks guard it
        r = json.loads((d / "recipe.json").read_text())
        for k in ("structure_sha256", "weights_sha256"):
            r.pop(k)
        (d / "recipe.json").write_text(json.dumps(r))
    return d


def _edit_block(d: Path, **changes) -> None:
    r = json.loads((d / "recipe.json").read_text())
    r["steps"][0]["structure"]["blocks"][0].update(changes)
    (d / "recipe.json").write_text(json.dumps(r))


def test_recipe_records_the_hashes_it_is_checked_against(slimmed, broken, sandbox, capsys):
    from optimizer.fileio import sha256_file
    r = json.loads((slimmed / "model" / "recipe.json").read_text())
    assert r["base_weights_sha256"] == sha256_file(broken["good_pth"])
    assert r["weights_sha256"] == sha256_file(slimmed / "model" / "model.safetensors")
    rc, out, err = cli(capsys, "eval", "--model", _copy(slimmed, sandbox))
    assert rc == 0, err


def test_swapped_weights_are_refused(slimmed, sandbox, capsys):
    from safetensors.torch import load_file, save_file
    d = _copy(slimmed, sandbox)
    state = load_file(str(d / "model.safetensors"))
    state["head.bias"] = state["head.bias"] + 1      # same shapes: a strict load alone would not notice
    save_file(state, str(d / "model.safetensors"))
    rc, out, err = cli(capsys, "eval", "--model", d)
    assert_one_error(rc, err, "eval", "does not match the sha256")


def test_edited_structure_is_refused(slimmed, sandbox, capsys):
    d = _copy(slimmed, sandbox)
    _edit_block(d, scale=0.5)
    rc, out, err = cli(capsys, "eval", "--model", d)
    assert_one_error(rc, err, "eval", "does not match its recorded hash")


@pytest.mark.parametrize("change,needle", [
    ({"mlp_hidden": "192"}, "steps[0].structure.blocks[0].mlp_hidden is the string '192'"),
    ({"scale": "abc"}, "steps[0] (slim) structure does not fit"),
    ({"scale": float("nan")}, "steps[0].structure.blocks[0].scale is nan"),
    ({"token_index": [0, -3, 5]}, "steps[0].structure.blocks[0].token_index holds a negative token index"),
    ({"token_index": [0, 1, 100000]}, "the rebuilt model does not run"),
    ({"mlp_hidden": 100000}, "does not fit the model"),
], ids=["width-string", "scale-text", "scale-nan", "token-negative", "token-out-of-range", "width-too-big"])
def test_structure_types_and_ranges_without_hashes(slimmed, sandbox, capsys, change, needle):
    d = _copy(slimmed, sandbox, legacy=True)
    _edit_block(d, **change)
    rc, out, err = cli(capsys, "eval", "--model", d)
    assert_one_error(rc, err, "eval", needle)


def test_work_dir_of_other_weights_or_data_is_refused(slimmed, broken, sandbox, capsys):
    wd = sandbox.root / "wd"
    shutil.copytree(slimmed / "wd", wd)
    base = ["compress", "--method", "slim", "--model", ARCH, "--macs", "0.6", "-o", "out", "--work-dir", wd, *FAST]
    # the search of good.pth resumed for random weights: the silent 0 % top-1 of the issue
    rc, out, err = cli(capsys, *base, "--calib", broken["data"])
    assert_one_error(rc, err, "compress", "different weights")
    data = sandbox.root / "data"
    shutil.copytree(Path(broken["data"]).parent, data.parent / "labelled")
    (data.parent / "labelled" / "imgs" / "n00000001" / "extra.jpg").write_bytes(
        (Path(broken["data"]) / "n00000001" / "n00000001_0.jpg").read_bytes())
    rc, out, err = cli(capsys, *base, "--checkpoint", broken["good_pth"], "--calib", data.parent / "labelled" / "imgs")
    assert_one_error(rc, err, "compress", "data); give another --work-dir")
    assert not (sandbox.root / "out").exists()
