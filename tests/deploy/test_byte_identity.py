"""``vitopt export``, a recipe ``export`` step and ``vitopt bench MODEL`` ship the same bytes."""
from __future__ import annotations

import shutil

import pytest

from optimizer.cli.main import main
from tests.conftest import tiny_vit


@pytest.fixture
def tiny_everywhere(monkeypatch):
    """Every entry point loads the same tiny ViT (seeded) for any model name."""
    import optimizer.models.loading as loading
    monkeypatch.setattr(loading, "load_model",
                        lambda name, checkpoint=None, **kw: loading.LoadedModel(tiny_vit(depth=2), name, "random"))


def _recipe(tmp_path, export_opts: str):
    r = tmp_path / "r.yaml"
    r.write_text(f"model: vit_tiny_patch16_224\nworkers: 0\nsteps:\n  - export: {export_opts}\n")
    return r


def _keep_temporary(monkeypatch, module, name, kept):
    """Wrap ``module.name`` (a function writing the benchmark's temporary ONNX file and returning its path)
    so the file is also copied to ``kept`` for the comparison; returns ``kept``."""
    real = getattr(module, name)

    def keep(*args):
        out = real(*args)
        shutil.copyfile(out, kept)
        return out
    monkeypatch.setattr(module, name, keep)
    return kept


def _cli_export(tmp_path, name, extra=()):
    out = tmp_path / name
    assert main(["export", "--model", "vit_tiny_patch16_224", "-o", str(out), *extra]) == 0
    return out.read_bytes()


def test_export_recipe_and_bench_write_byte_identical_onnx(tmp_path, tiny_everywhere, monkeypatch, capsys):
    import optimizer.cli.cmd_bench as cmd_bench
    cli = _cli_export(tmp_path, "cli.onnx")

    assert main(["run", str(_recipe(tmp_path, "{precision: fp32}")), "-o", str(tmp_path / "run")]) == 0
    recipe = (tmp_path / "run" / "model.onnx").read_bytes()

    kept = _keep_temporary(monkeypatch, cmd_bench, "_export_onnx", tmp_path / "bench.onnx")
    assert main(["bench", "vit_tiny_patch16_224", "--backend", "onnxruntime", "--batch", "1", "--iters", "1",
                 "--warmup", "0", "--min-time", "0"]) == 0
    bench = kept.read_bytes()
    assert len(cli) > 10_000
    assert cli == recipe == bench


def test_export_and_recipe_agree_for_non_default_options(tmp_path, tiny_everywhere, capsys):
    import onnx
    from optimizer.export import get_metadata
    cli = _cli_export(tmp_path, "cli.onnx", ["--legacy", "--fp16", "--opset", "17"])
    assert main(["run", str(_recipe(tmp_path, "{exporter: legacy, precision: fp16, opset: 17}")),
                 "-o", str(tmp_path / "run")]) == 0
    assert sorted(p.name for p in (tmp_path / "run").glob("*.onnx")) == ["model.fp16.onnx"]
    assert (tmp_path / "run" / "model.fp16.onnx").read_bytes() == cli
    meta = get_metadata(onnx.load_from_string(cli))
    assert (meta["vitopt.exporter"], meta["vitopt.opset"], meta["vitopt.precision"]) == ("torchscript", "17", "fp16")


def test_bench_fp16_times_the_graph_export_fp16_ships(tmp_path, tiny_everywhere, monkeypatch, capsys):
    """``vitopt bench --fp16`` converts through the chain's fp16 precision step: the graph it times has the
    nodes and weights of ``vitopt export --precision fp16`` (metadata aside) and FP32 inputs/outputs."""
    import onnx
    import optimizer.cli.cmd_bench as cmd_bench
    _cli_export(tmp_path, "fp32.onnx")
    shipped = onnx.load_from_string(_cli_export(tmp_path, "fp16.onnx", ["--precision", "fp16"]))
    kept = _keep_temporary(monkeypatch, cmd_bench, "_fp16_onnx", tmp_path / "bench16.onnx")
    assert main(["bench", str(tmp_path / "fp32.onnx"), "--backend", "onnxruntime", "--fp16", "--batch", "1",
                 "--iters", "1", "--warmup", "0", "--min-time", "0"]) == 0
    timed = onnx.load(str(kept))
    assert timed.graph.SerializeToString() == shipped.graph.SerializeToString()
    assert timed.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
