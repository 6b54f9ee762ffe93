"""The deployment chain's parts: options, the precision registry and its parity gate, method export forms."""
from __future__ import annotations

import pytest
import torch

from optimizer.deploy import DeployOptions
from optimizer.errors import VitoptError
from tests.conftest import tiny_vit


def test_options_round_trip_and_reject_unknown_or_bad_values():
    opts = DeployOptions.from_dict({"opset": "17", "exporter": "legacy", "cleanup": "false", "rules": ["remove_identity"],
                                    "precision": "fp16", "parity_images": 4, "atol": "1e-3", "gates_k": "fixed"})
    assert opts.method_options == {"gates_k": "fixed"} and opts.rules == ("remove_identity",) and opts.opset == 17
    assert DeployOptions.from_dict(opts.to_dict()) == opts
    assert opts.to_dict()["gates_k"] == "fixed" and "method_options" not in opts.to_dict()
    assert opts.metadata() == {"vitopt.cleanup": "false", "vitopt.precision": "fp16", "vitopt.export.gates_k": "fixed"}
    cases = [({"reference": 1}, "unknown export option(s): reference"),
             ({"exporter": "onnxscript"}, "exporter must be dynamo or legacy, got 'onnxscript'"),
             ({"precision": "int4"}, "precision must be one of fp32, fp16"),
             ({"opset": 7}, "opset must be an integer in 13..23"),
             ({"parity_images": 0}, "parity_images must be a positive integer"),
             ({"atol": -1}, "atol must be a positive number"),
             ({"gates_k": "static"}, "gates_k must be data or fixed, got 'static'"),
             ({"method_options": {"gates_k": "data"}}, "write method export options as top-level keys")]
    for d, msg in cases:
        with pytest.raises(VitoptError, match=msg.replace("(", "\\(").replace(")", "\\)")):
            DeployOptions.from_dict(d)


def test_default_options_record_the_default_rules():
    assert DeployOptions().metadata() == {"vitopt.cleanup": "true", "vitopt.precision": "fp32", "vitopt.rules": "default"}


def test_a_registered_precision_plugs_in_and_its_parity_gate_holds(monkeypatch):
    """A new precision is one register_precision call; the chain applies its cosine gate: a graph whose
    logits are negated (cosine -1) is refused, an unchanged one passes and is recorded as that precision."""
    import onnx
    from onnx import helper
    import optimizer.deploy.precision as precision
    from optimizer.export import get_metadata

    def negate(proto, calib):
        out = onnx.ModelProto()
        out.CopyFrom(proto)
        g = out.graph
        name = g.output[0].name
        for n in g.node:       # the producer of the logits writes a new tensor; Neg restores the name
            n.output[:] = [o + "_pos" if o == name else o for o in n.output]
        g.node.append(helper.make_node("Neg", [name + "_pos"], [name]))
        return out, {"negated": name}

    def same(proto, calib):
        out = onnx.ModelProto()
        out.CopyFrom(proto)
        return out, {}

    monkeypatch.setitem(precision._PRECISIONS, "negated", precision.Precision("negated", negate, 0.9, "test"))
    monkeypatch.setitem(precision._PRECISIONS, "same", precision.Precision("same", same, 0.9, "test"))
    from optimizer.deploy import deploy_model, deploy_models
    model = tiny_vit(depth=1)
    opts = DeployOptions(exporter="legacy", cleanup=False, parity_images=2)
    with pytest.raises(VitoptError, match="negated model diverges from PyTorch: min cosine -1"):
        deploy_models(model, opts, None, ("fp32", "negated"))
    res = deploy_model(model, DeployOptions(exporter="legacy", cleanup=False, parity_images=2, precision="same"))
    assert res.report["parity_same"]["cosine"] > 0.9999 and res.report["parity_inputs"].startswith("random inputs")
    assert get_metadata(res.proto)["vitopt.precision"] == "same"


def test_lowrank_export_form_merges_a_copy_and_leaves_the_model_alone():
    from optimizer.deploy import export_form
    from optimizer.methods.lowrank import LowRankLinear
    model = tiny_vit(depth=1)
    torch.manual_seed(0)
    lr = LowRankLinear(64, 256, (8, 4), True)
    model.blocks[0].mlp.fc1 = lr
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        with export_form(model, DeployOptions()) as (form, meta):
            assert form is not model and meta == {"vitopt.lowrank.merged_layers": "1"}
            assert form.blocks[0].mlp.fc1.ranks == (12, 0)
            torch.testing.assert_close(form(x), ref, atol=1e-5, rtol=1e-5)
    assert model.blocks[0].mlp.fc1 is lr and lr.ranks == (8, 4)
    with export_form(tiny_vit(depth=1), DeployOptions()) as (_, meta):
        assert meta == {}


def test_a_method_export_option_on_a_model_without_that_method_is_refused():
    from optimizer.deploy import export_form
    with pytest.raises(VitoptError, match="needs a model compressed with a gates step"):
        with export_form(tiny_vit(depth=1), DeployOptions(method_options={"gates_k": "fixed"})):
            pass


def test_parity_inputs_from_a_folder_skip_unreadable_files(image_folder):
    from optimizer.deploy import parity_inputs
    model = tiny_vit(depth=1)
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 32, 32))
    got = parity_inputs(model, str(image_folder), 7)
    assert tuple(got.images.shape) == (6, 3, 32, 32) and got.source == f"real images (6 images from {image_folder})"
    with pytest.raises(VitoptError, match="parity data directory not found"):
        parity_inputs(model, str(image_folder / "nope"), 2)


@pytest.mark.parametrize("precision,ops", [("int8", {"QuantizeLinear", "DequantizeLinear"}),
                                           ("int8_dynamic", {"DynamicQuantizeLinear", "MatMulInteger"})])
def test_int8_precisions_come_out_of_the_chain_quantized_and_parity_gated(precision, ops):
    """Oracle: the quantized op types are in the graph, every weight MatMul lost its fp32 weight, the
    file records the precision, and the chain's cosine gate (the table's int8 row) passed."""
    from optimizer.deploy import DeployOptions, deploy_model
    from optimizer.export import get_metadata
    from optimizer.graph import op_histogram
    from optimizer.tolerances import tolerance_for
    result = deploy_model(tiny_vit(), DeployOptions(precision=precision))
    hist = op_histogram(result.proto)
    assert ops <= set(hist)
    assert get_metadata(result.proto)["vitopt.precision"] == precision
    assert result.report["parity"]["cosine"] >= tolerance_for("int8").min_cosine
