"""INT8 on real (tiny) timm ViTs: the exported chain, PyTorch fake-quant parity, after slim and
lowrank, and the ``vitopt quantize`` command with its bad-input errors."""
import numpy as np
import pytest
import torch

from optimizer.compress.config import RecoveryConfig
from optimizer.quant import QuantConfig, int8_onnx_from_model
from tests.conftest import tiny_vit

TINY_KW = dict(depth=2, embed_dim=64, num_heads=4, img_size=32, patch_size=8, num_classes=10)


def _x(n, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)).numpy()


def _weight_layers(proto):
    inits = {i.name for i in proto.graph.initializer}
    return [n.name for n in proto.graph.node if n.op_type in ("MatMul", "Gemm", "Conv") and n.input[1] in inits]


@pytest.fixture(scope="module")
def vit_int8():
    model = tiny_vit()
    # reduce_range: ORT's fused int8 kernels saturate full-range weights on AVX2 CPUs (QuantConfig doc)
    cfg = QuantConfig(calibrator="max", calib_images=32, reduce_range=True)
    fp32, q, rep = int8_onnx_from_model(model, _x(32), cfg, eval_inputs=_x(32, seed=1))
    return model, fp32, q, rep


def test_tiny_vit_every_weight_layer_quantized_and_matches_fake_quant_pytorch(vit_int8):
    from optimizer.quant.parity import check_int8_parity
    model, fp32, q, rep = vit_int8
    assert sorted(rep.quantized) == sorted(_weight_layers(fp32))   # 2 blocks x 4 linears + patch conv + head
    assert len(rep.quantized) == 10
    skipped = {l.node: l.reason for l in rep.layers if not l.quantized}
    assert len(skipped) == 4 and all("activation x activation" in r for r in skipped.values())
    par = check_int8_parity(model, fp32, q, rep, _x(16, seed=2))
    # same scales in PyTorch: tight; vs FP32 only as close as 8 bits allow
    assert par.fake_quant.passed and par.fake_quant.cosine > 0.9995
    assert par.fake_quant.max_abs_diff < par.fp32.max_abs_diff / 3
    assert par.fp32.cosine > 0.98


def test_fake_quant_reference_restores_the_model(vit_int8):
    from optimizer.quant.parity import fake_quantized
    model, fp32, _, rep = vit_int8
    x = torch.from_numpy(_x(2))
    with torch.no_grad():
        before = model(x)
        with fake_quantized(model, fp32, rep):
            during = model(x)
        after = model(x)
    assert torch.equal(before, after) and not torch.equal(before, during)


def test_tiny_vit_after_slim_and_lowrank_quantizes(image_folder):
    from optimizer.compress import CompressContext, compress
    from optimizer.methods.lowrank import LowRankConfig
    from optimizer.methods.slim import SlimConfig
    ctx = CompressContext(calib_dir=str(image_folder), workers=0, log=lambda s: None)
    slim = SlimConfig(macs_ratio=0.8, importance="magnitude", prune_tokens=False,
                      recovery=RecoveryConfig(loss="none"))
    low = LowRankConfig(params_ratio=0.8, calib_images=6, batch_size=3, heldout_every=0)
    cm = compress(tiny_vit(), [slim, low], ctx, arch="vit_tiny_patch16_224", model_kwargs=TINY_KW,
                  base_weights="random")
    cfg = QuantConfig(calibrator="max", calib_images=16, reduce_range=True)
    fp32, q, rep = int8_onnx_from_model(cm.model.eval(), _x(16), cfg, eval_inputs=_x(16, seed=1))
    assert sorted(rep.quantized) == sorted(_weight_layers(fp32))
    # the factorised pairs are there and quantized: more weight MatMuls than the dense 2 x 4
    assert sum(l.op_type == "MatMul" for l in rep.layers if l.quantized) > 8
    assert rep.min_cosine > 0.98


def _vitopt(*argv):
    from optimizer.cli.main import main
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    from optimizer.export import save_onnx
    from optimizer.quant.chain import fp32_onnx_from_model
    path = tmp_path_factory.mktemp("vit") / "m.onnx"
    save_onnx(fp32_onnx_from_model(tiny_vit()), path)
    return path


def test_cli_quantize_writes_the_graph_and_its_report(vit_file, image_folder, tmp_path, capsys):
    import json
    import onnx
    out, js = tmp_path / "m.int8.onnx", tmp_path / "q.json"
    rc = _vitopt("quantize", vit_file, "-o", out, "--calib", image_folder, "--calibrator", "max",
                 "--calib-images", 5, "--held-images", 2, "--json", js)
    assert rc == 0
    rep = json.loads(js.read_text())["report"]
    # all 7 files drawn, the broken one skipped
    assert rep["calib_images"] + rep["eval_images"] == 6 and rep["quantized_layers"] == 10
    hist = {n.op_type for n in onnx.load(out).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= hist
    assert out.stat().st_size < 0.5 * vit_file.stat().st_size
    # quantizing the output again: refused, one line, exit 2, nothing written
    again = tmp_path / "again.onnx"
    assert _vitopt("quantize", out, "-o", again, "--calib", image_folder, "--calibrator", "max",
                   "--calib-images", 4) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vitopt quantize: error: the model is already quantized (DequantizeLinear")
    assert not again.exists()


def test_cli_quantize_too_few_images_for_the_calibrator(vit_file, image_folder, tmp_path, capsys):
    out = tmp_path / "out" / "m.int8.onnx"
    # the folder holds 6 readable images (and a broken one); entropy needs 16
    assert _vitopt("quantize", vit_file, "-o", out, "--calib", image_folder, "--calibrator", "entropy") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "vitopt quantize: error: the entropy calibrator needs at least 16 calibration images, got 6"
    assert not out.exists() and list(out.parent.glob("*")) == []  # no temporary file left either


def test_cli_quantize_old_opset_is_refused(image_folder, tmp_path, capsys):
    import onnx
    from tests.quant.graphs import mlp_graph
    old = tmp_path / "old.onnx"
    onnx.save(mlp_graph([np.ones((16, 10), np.float32)], opset=12), old)
    out = tmp_path / "o.onnx"
    assert _vitopt("quantize", old, "-o", out, "--calib", image_folder) == 2
    assert "opset 12 is too old for per-channel int8 Q/DQ (needs >= 13)" in capsys.readouterr().err
    assert not out.exists()
