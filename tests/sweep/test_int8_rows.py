"""INT8 in sweeps: a recipe exporting [fp32, int8_dynamic] gives each variant a quantized row of its own in
`vitopt report` / `vitopt pick`, with the INT8 graph's own agreement (checked against ONNX Runtime run here)
and its own latency rows."""
import json

import numpy as np
import pytest

from optimizer.cli.main import main

from .conftest import TINY_RECIPE

# the tiny sweep recipe without its slim step (lowrank alone keeps the sweep short), exporting INT8 too
RECIPE = "\n".join(line for line in TINY_RECIPE.splitlines() if "- slim:" not in line).replace(
    "parity_images: 2}}", "parity_images: 2, precision: [fp32, int8_dynamic]}}")
KW = dict(depth=2, embed_dim=64, num_heads=4, img_size=32, patch_size=8, num_classes=5)
ROWS = ["dense", "dense+int8_dynamic", "lowrank-params0.8", "lowrank-params0.8+int8_dynamic"]


@pytest.fixture(scope="module")
def int8_sweep(tmp_path_factory):
    from PIL import Image
    from optimizer.pipeline.recipe import load_recipe
    from optimizer.sweep import parse_vary, run_sweep
    root = tmp_path_factory.mktemp("int8sweep")
    rng = np.random.default_rng(1)
    for c in range(5):   # five synset folders: labels for the 5-class model without a synsets file
        d = root / "imgs" / f"n0000000{c}"
        d.mkdir(parents=True)
        for j in range(4):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / f"{j}.jpg")
    p = root / "r.yaml"
    p.write_text(RECIPE.format(images=root / "imgs", search_steps=0))
    out = root / "sweep"
    run_sweep(load_recipe(p), [parse_vary("lowrank.params=off,0.8")], out, log=lambda s: None)
    return out, root / "imgs"


def _ort_argmax(path, x):
    import onnxruntime as ort
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0].argmax(1)


def test_every_variant_has_an_int8_row_with_its_own_agreement_and_latency(int8_sweep):
    from optimizer.data import build_loader
    from optimizer.models.loading import load_model
    from optimizer.sweep.results import sweep_results
    out, imgs = int8_sweep
    res = {r.name: r for r in sweep_results(out)}
    assert sorted(res) == sorted(ROWS)
    # oracle: the INT8 graph's top-1 vs the dense FP32 graph's, run here with ONNX Runtime on the same images
    model = load_model("vit_tiny_patch16_224", None, **KW).model
    x = np.concatenate([b.images.numpy() for b in build_loader(str(imgs), model, batch_size=8, workers=0)])
    ref = _ort_argmax(out / "variants" / "dense" / "model.onnx", x)
    for base in ("dense", "lowrank-params0.8"):
        q = res[f"{base}+int8_dynamic"]
        got = _ort_argmax(out / "variants" / base / "model.int8_dynamic.onnx", x)
        assert q.images == len(x) == 20
        assert q.agreement == pytest.approx(100.0 * float(np.mean(got == ref)))
        assert q.precision == "int8_dynamic" and q.macs == res[base].macs
        # latency rows: the INT8 graph's on the quantized row, none on the variant's own row
        assert q.bench and {b["precision"] for b in q.bench} == {"int8_dynamic"}
        assert "int8_dynamic" not in {b["precision"] for b in res[base].bench}
        assert q.latency_ms("onnxruntime", 2) is not None and q.latency_ms("onnxruntime", 2, "fp32") is None
        assert res[base].latency_ms("onnxruntime", 2) == res[base].latency_ms("onnxruntime", 2, "fp32")
    # the lowrank variant's own row: its PyTorch model's agreement from the eval step, not the INT8 graph's
    lr = json.loads((out / "variants" / "lowrank-params0.8" / "manifest.json").read_text())
    assert res["lowrank-params0.8"].agreement == [s for s in lr["steps"] if s["step"] == "eval"][0]["result"]["agreement"]


def test_report_and_pick_show_the_int8_rows(int8_sweep, capsys):
    from optimizer.sweep.results import sweep_results
    out, _ = int8_sweep
    assert main(["report", str(out)]) == 0
    capsys.readouterr()
    md = (out / "report.md").read_text()
    rows = {l.split(" | ")[0][2:]: l for l in md.splitlines() if l.startswith("| ") and not l.startswith("| variant")}
    assert sorted(rows) == sorted(ROWS)
    assert "| int8_dynamic |" in rows["lowrank-params0.8+int8_dynamic"] and "| fp32 |" in rows["lowrank-params0.8"]
    # pick judges every row at its own precision: INT8 rows are candidates with their own latency
    assert main(["pick", str(out), "--batch", "2", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    lat = {c["name"]: c["latency_ms"] for c in got["candidates"]}
    res = {r.name: r for r in sweep_results(out)}
    assert sorted(lat) == sorted(ROWS)
    assert lat["dense+int8_dynamic"] == round(res["dense+int8_dynamic"].latency_ms("onnxruntime", 2), 4)
    # only the INT8 rows: the chosen one is the INT8 row with the highest agreement
    assert main(["pick", str(out), "--batch", "2", "--precision", "int8_dynamic", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    q = [r for r in res.values() if r.quantized]
    assert got["chosen"] in {r.name for r in q if r.agreement == max(x.agreement for x in q)}
