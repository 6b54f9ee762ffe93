"""``vitopt compress --method gates``: config errors are one line and exit code 2."""
from __future__ import annotations

from optimizer.cli.main import main


def test_compress_gates_rejects_bad_macs(capsys, tmp_path):
    rc = main(["compress", "--method", "gates", "--model", "deit_tiny_patch16_224", "--macs", "1.5",
               "--calib", str(tmp_path), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "macs_ratio must be in (0, 1]" in err and len(err.strip().splitlines()) == 1


def test_compress_gates_rejects_unknown_option(capsys, tmp_path):
    rc = main(["compress", "--method", "gates", "--model", "deit_tiny_patch16_224", "--macs", "0.6",
               "--set", "group=16", "--calib", str(tmp_path), "-o", str(tmp_path / "out")])
    assert rc == 2
    assert "unknown gates option(s): group" in capsys.readouterr().err


def _gated_loader(monkeypatch, calibrated=True, k=1, gated=True):
    """Make ``vitopt export --model ...`` load a tiny gated ViT with input-dependent gates."""
    import copy
    import torch
    import optimizer.cli.cmd_export as cmd
    from optimizer.methods.gates import gate_model, gated_modules
    from optimizer.models.loading import LoadedModel
    from tests.conftest import tiny_vit
    model = tiny_vit(depth=2)
    if gated:
        model = gate_model(copy.deepcopy(model), group_size=16, gate_hidden=8)
        g = torch.Generator().manual_seed(4)
        with torch.no_grad():
            for m in gated_modules(model):
                if m.gate_net is not None:
                    for p in m.gate_net.parameters():
                        p.copy_(torch.randn(p.shape, generator=g) * 3.0)
                m.mean_active = float(k) if calibrated else None
    model.eval()
    monkeypatch.setattr(cmd, "load_model_from_args", lambda args: LoadedModel(model, "vit_tiny_patch16_224", "random"))
    return model


def _ort_logits(path, x):
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def test_export_gates_k_fixed_writes_the_static_shape_graph(tmp_path, capsys, monkeypatch):
    """--gates-k fixed: the file computes the fixed-K model (each module's calibrated K, here 1), not
    the data-dependent one; default: the data-dependent one. Metadata and JSON say which."""
    import json
    import onnx
    import pytest
    import torch
    pytest.importorskip("onnxruntime")
    from optimizer.export import get_metadata
    from optimizer.methods.gates import set_fixed_k
    model = _gated_loader(monkeypatch)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        data_ref = model(x).numpy()
        set_fixed_k(model, True)
        fixed_ref = model(x).numpy()
        set_fixed_k(model, False)
    assert abs(data_ref - fixed_ref).max() > 1e-2          # the two modes really differ on this model
    for mode, ref in (("fixed", fixed_ref), (None, data_ref)):
        out, js = tmp_path / f"{mode}.onnx", tmp_path / f"{mode}.json"
        rc = main(["export", "--model", "vit_tiny_patch16_224", "-o", str(out), "--json", str(js), "--parity-data", ""]
                  + (["--gates-k", mode] if mode else []))
        assert rc == 0, capsys.readouterr().err
        assert abs(_ort_logits(out, x) - ref).max() <= 1e-4
        want = "fixed (calibrated mean)" if mode == "fixed" else "data-dependent (TopK)"
        assert get_metadata(onnx.load(str(out)))["vitopt.gates.k"] == want
        assert json.loads(js.read_text())["method_export"]["vitopt.gates.k"] == want
    assert all(m.fixed_k is None for m in model.modules() if hasattr(m, "fixed_k"))   # mode reset afterwards


def test_export_gates_k_errors_are_one_line(tmp_path, capsys, monkeypatch):
    cases = [({}, ["--gates-k", "static"], "gates_k must be data or fixed, got 'static'"),
             ({"gated": False}, ["--gates-k", "fixed"], "has no gates"),
             ({"gated": False}, ["--gates-k", "data"], "has no gates"),
             ({"calibrated": False}, ["--gates-k", "fixed"], "never calibrated")]
    for kw, extra, msg in cases:
        _gated_loader(monkeypatch, **kw)
        rc = main(["export", "--model", "vit_tiny_patch16_224", "-o", str(tmp_path / "m.onnx"), "--parity-data", ""]
                  + extra)
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc == 2 and len(lines) == 1 and msg in lines[0], (extra, err)
        assert list(tmp_path.iterdir()) == []                   # nothing written
