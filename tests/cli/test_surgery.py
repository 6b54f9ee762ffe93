"""``vitopt surgery``: rules that fired and histograms printed, --list with sketches, bad input -> one line, exit 2."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from optimizer.cli.main import main
from optimizer.graph import get_rule, list_rules, op_histogram
from tests.export.models import run_ort
from tests.graph.graphs import const, f32, make_model


@pytest.fixture
def noisy_onnx(tmp_path):
    """Identity, a Cast to the same type and a Transpose pair that cancels, around one Relu."""
    nodes = [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Cast", ["a"], ["b"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["b"], ["c"], perm=[1, 0]), helper.make_node("Transpose", ["c"], ["d"], perm=[1, 0]),
             helper.make_node("Relu", ["d"], ["y"])]
    path = tmp_path / "in.onnx"
    onnx.save(make_model(nodes, [f32("x", ["batch", 8])], [f32("y", ["batch", 8])]), str(path))
    return path


def test_surgery_prints_rules_and_histograms_and_writes(tmp_path, noisy_onnx, capsys):
    out = tmp_path / "out.onnx"
    assert main(["surgery", str(noisy_onnx), "-o", str(out), "--json", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    assert "remove_identity" in text and "simplify_casts" in text and "simplify_transposes" in text
    lines = {ln.split()[0]: ln.split()[1:] for ln in text.splitlines() if ln.split()}
    assert lines["remove_identity"] == ["x1"] and lines["simplify_casts"] == ["x1"]
    assert lines["simplify_transposes"] == ["x1"]
    assert lines["Transpose"] == ["2", "0", "-2"] and lines["total"] == ["5", "1", "-4"]
    new = onnx.load(str(out))
    assert op_histogram(new) == {"Relu": 1}
    meta = {p.key: p.value for p in new.metadata_props}
    assert meta["vitopt.surgery"].split(",") == ["remove_identity", "simplify_casts", "simplify_transposes"]
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(new, x), run_ort(noisy_onnx, x))
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["written"] and res["rules"]["remove_identity"] == 1 and res["nodes_after"] == 1


def test_surgery_runs_exactly_the_named_rules(tmp_path, noisy_onnx, capsys):
    out = tmp_path / "out.onnx"
    assert main(["surgery", str(noisy_onnx), "-o", str(out), "--rules", "simplify_transposes"]) == 0
    assert op_histogram(onnx.load(str(out))) == {"Identity": 1, "Cast": 1, "Relu": 1}


def test_surgery_list_shows_every_rule_with_its_sketch(capsys):
    assert main(["surgery", "--list"]) == 0
    text = capsys.readouterr().out
    for name in list_rules():
        assert f"\n{name} (" in "\n" + text
        first = get_rule(name).sketch().splitlines()[0].strip()
        assert first in text


@pytest.mark.parametrize("case, message", [
    ("unknown-rule", "unknown graph rule 'nope'"),
    ("corrupt", "is not a valid ONNX model"),
    ("missing", "input ONNX file not found"),
    ("out-is-dir", "is a directory"),
    ("out-under-a-file", "cannot create output directory"),
])
def test_surgery_bad_input_is_one_line_exit_2_nothing_written(tmp_path, noisy_onnx, capsys, case, message):
    src, out, extra = str(noisy_onnx), tmp_path / "out.onnx", []
    if case == "unknown-rule":
        extra = ["--rules", "remove_identity,nope"]
    elif case == "corrupt":
        src = str(tmp_path / "bad.onnx")
        (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage that is not a protobuf model" * 3)
    elif case == "missing":
        src = str(tmp_path / "absent.onnx")
    elif case == "out-is-dir":
        out = tmp_path
    else:
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "out.onnx"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["surgery", src, "-o", str(out)] + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vitopt surgery: error:") and message in err[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_surgery_check_failure_exits_1_and_writes_nothing(tmp_path, capsys):
    nodes = [helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("Gather", ["r", "idx"], ["y"], axis=1)]
    m = make_model(nodes, [f32("x", ["batch", 6, 4])], [f32("y", ["batch", 3, 4])],
                   [const("s", np.array([2, 6, 4], np.int64)), const("idx", np.array([0, 2, 5], np.int64))])
    src, out = tmp_path / "baked.onnx", tmp_path / "out.onnx"
    onnx.save(m, str(src))
    assert main(["surgery", str(src), "-o", str(out), "--no-parity-check"]) == 1
    captured = capsys.readouterr()
    assert "check_dynamic_batch" in captured.out and "FAILED: Gather" in captured.out
    assert "not written" in captured.err and not out.exists()
