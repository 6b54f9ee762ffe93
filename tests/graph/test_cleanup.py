"""cleanup_graph: folding + rules keep outputs, drop noise, keep metadata and the dynamic batch."""
from __future__ import annotations

import numpy as np
import pytest

from optimizer.export import get_metadata
from optimizer.graph import cleanup_graph, format_histograms, op_histogram
from tests.export.models import TOLERANCES, run_ort
from tests.graph.graphs import exported_tiny


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_cleanup_is_lossless_and_smaller(tmp_path, dynamo):
    _, proto = exported_tiny(tmp_path, dynamo=dynamo, depth=2)
    snapshot = proto.SerializeToString()
    new, rep = cleanup_graph(proto)
    assert proto.SerializeToString() == snapshot  # input not modified
    assert rep.ops_before == op_histogram(proto) and rep.ops_after == op_histogram(new)
    assert rep.nodes_before == len(proto.graph.node) and rep.nodes_after == len(new.graph.node)
    assert rep.nodes_after < rep.nodes_before
    for noise in ("Identity", "Constant", "ConstantOfShape", "Sqrt"):
        assert noise not in rep.ops_after
    assert get_metadata(new) == get_metadata(proto)
    dim0 = new.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value
    for b in (1, 5):
        x = np.random.default_rng(b).standard_normal((b, 3, 32, 32)).astype(np.float32)
        np.testing.assert_allclose(run_ort(new, x), run_ort(proto, x), atol=TOLERANCES["lossless_pass_atol"])


def test_histogram_table_is_printable():
    text = format_histograms({"Add": 3, "Identity": 2}, {"Add": 3, "Cast": 1})
    lines = text.splitlines()
    assert lines[0].split() == ["op", "before", "after", "change"]
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[1:]}
    assert rows["Identity"] == ["2", "0", "-2"] and rows["Cast"] == ["0", "1", "+1"] and rows["Add"] == ["3", "3"]
    assert lines[-1].split() == ["total", "5", "4", "-1"]
