"""vitopt report / pick on one tiny finished sweep: plots rendered in headless Chromium, the picker's rules."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from optimizer.cli.main import main

RECIPE = """
model: vit_tiny_patch16_224
model_kwargs: {{depth: 2, embed_dim: 64, num_heads: 4, img_size: 32, patch_size: 8, num_classes: 5}}
calib: {images}
data: {images}
synsets: {synsets}
workers: 0
steps:
  - slim: {{macs: 0.8, importance: magnitude, prune_tokens: false, recovery: none}}
  - lowrank: {{params: 0.8, calib_images: 6, batch_size: 3, heldout_every: 0, probe_images: 2}}
  - eval: {{batch_size: 4}}
  - export: {{opset: 18, parity_images: 2}}
{build}  - bench: {{backends: [onnxruntime], batch: [1, 2], iters: 3, warmup: 1}}
"""


def _has_builder():
    try:
        from optimizer.engine import import_builder
        import_builder(None)
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """dense, slim 0.5, lowrank 0.7, slim 0.5 + lowrank 0.7 of a tiny ViT with random weights; labels from
    a synsets file, so top-1 and per-image correctness exist (random weights only drop accuracy in run's eval)."""
    import numpy as np
    from PIL import Image
    from optimizer.pipeline.recipe import load_recipe
    from optimizer.sweep import parse_vary, run_sweep
    root = tmp_path_factory.mktemp("rep")
    rng = np.random.default_rng(0)
    rows = ["index\tsynset\tname"] + [f"{i}\tn0000000{i}\tclass{i}" for i in range(5)]
    (root / "synsets.tsv").write_text("\n".join(rows) + "\n")
    for syn in ("n00000001", "n00000003"):
        d = root / "imgs" / syn
        d.mkdir(parents=True)
        for j in range(4):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / f"{j}.jpg")
    build = "  - build: {batch: [1, 4], precision: [fp32]}\n" if _has_builder() else ""
    p = root / "r.yaml"
    p.write_text(RECIPE.format(images=root / "imgs", synsets=root / "synsets.tsv", build=build))
    out = root / "sweep"
    run_sweep(load_recipe(p), [parse_vary("slim.macs=off,0.5"), parse_vary("lowrank.params=off,0.7")], out,
              log=lambda s: None)
    return out


def test_report_writes_md_and_html_with_a_row_per_variant(sweep_dir, capsys):
    assert main(["report", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert f"report: {sweep_dir / 'report.html'}" in out and "frontier (" in out
    md = (sweep_dir / "report.md").read_text()
    rows = [l for l in md.splitlines() if l.startswith("| ") and not l.startswith("| variant")]
    assert sorted(r.split(" | ")[0][2:] for r in rows) == sorted(
        ["dense", "slim-macs0.5", "lowrank-params0.7", "slim-macs0.5_lowrank-params0.7"])
    for k in ("accuracy", "latency", "throughput", "engine", "size"):
        assert (sweep_dir / "report_files" / f"{k}.png").read_bytes()[:4] == b"\x89PNG"
    html = (sweep_dir / "report.html").read_text()
    assert "http://" not in html and "https://" not in html        # self-contained: opens offline


def test_report_html_renders_every_plot_non_blank_in_chromium(sweep_dir, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("headless Chromium is absent: apt-get install -y chromium (the CI script .ci/run does)")
    main(["report", str(sweep_dir)])
    url = (sweep_dir / "report.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([exe, *flags, "--virtual-time-budget=10000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=180).stdout
    assert 'data-checked="1"' in dom, "the page's script did not run"
    imgs = re.findall(r"<img[^>]*class=\"plot\"[^>]*>", dom)
    assert len(imgs) == 5
    for tag in imgs:
        frac = float(re.search(r'data-nonblank="([0-9.]+)"', tag).group(1))
        w, h = map(int, re.search(r'data-size="(\d+)x(\d+)"', tag).groups())
        assert frac > 0.01 and w > 200 and h > 150, tag[:120]
    assert dom.count('class="variant"') == 4
    shot = tmp_path / "shot.png"
    subprocess.run([exe, *flags, f"--screenshot={shot}", "--window-size=1200,2400", url], capture_output=True,
                   timeout=180)
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_report_merges_bench_files_from_another_machine(sweep_dir, tmp_path):
    from optimizer.sweep.results import sweep_results
    src = json.loads((sweep_dir / "variants" / "dense" / "bench.json").read_text())
    for r in src["rows"]:
        r["env"] = {**r["env"], "gpu": "Jetson Orin (test)", "cpu": "ARM"}
    f = tmp_path / "edge.json"
    f.write_text(json.dumps({**src, "target": "sweep/variants/dense/model.onnx"}))
    res = {r.name: r for r in sweep_results(sweep_dir, [str(f)])}
    devs = {b["device_label"] for b in res["dense"].bench}
    assert "Jetson Orin (test)" in devs and len(devs) == 2
    assert len(res["dense"].bench) == 2 * len(src["rows"])
    assert main(["report", str(sweep_dir), "--bench", f"nosuch={f}"]) == 2
    assert main(["report", str(sweep_dir), "--bench", f"slim-macs0.5={f}"]) == 0
    assert "Jetson Orin (test)" in (sweep_dir / "report.md").read_text()


def test_report_and_pick_refuse_a_directory_without_a_sweep(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert main(["pick", str(tmp_path), "--batch", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("is not a sweep directory" in e for e in err)


def test_pick_best_fit_none_fits_and_unreported_constraint(sweep_dir, capsys):
    from optimizer.sweep.results import sweep_results
    res = sweep_results(sweep_dir)
    lat = {r.name: r.latency_ms("onnxruntime", 2) for r in res}
    # no constraint: the highest agreement (dense, 100 %) wins
    assert main(["pick", str(sweep_dir), "--batch", "2", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    best_agree = max(r.agreement for r in res if r.agreement is not None)
    assert [r.agreement for r in res if r.name == got["chosen"]][0] == best_agree
    # a latency cap below every variant: exit 1, naming the closest variant (the fastest)
    cap = min(lat.values()) / 2
    assert main(["pick", str(sweep_dir), "--batch", "2", "--max-latency-ms", str(cap)]) == 1
    out = capsys.readouterr().out
    fastest = min(lat, key=lat.get)
    assert f"closest: {fastest} misses --max-latency-ms" in out
    # a cap that only some meet: the pick meets it
    cap = sorted(lat.values())[1] * 1.0001
    assert main(["pick", str(sweep_dir), "--batch", "2", "--max-latency-ms", str(cap), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert lat[got["chosen"]] <= cap
    ok = [r for r in res if lat[r.name] <= cap]
    assert [r.agreement for r in res if r.name == got["chosen"]][0] == max(r.agreement for r in ok
                                                                         if r.agreement is not None)
    # batch never benchmarked: exit 2
    assert main(["pick", str(sweep_dir), "--batch", "64"]) == 2
    assert "no variant has a onnxruntime latency at batch 64" in capsys.readouterr().err


def test_pick_memory_without_engines_is_exit_2(sweep_dir, tmp_path, capsys):
    """Memory comes from built engines: with their build results removed, the constraint cannot be judged."""
    work = tmp_path / "copy"
    shutil.copytree(sweep_dir, work)
    for m in work.glob("variants/*/manifest.json"):
        d = json.loads(m.read_text())
        d["steps"] = [s for s in d["steps"] if s["step"] != "build"]
        m.write_text(json.dumps(d))
    assert main(["pick", str(work), "--batch", "1", "--max-memory-mb", "100"]) == 2
    assert "no variant has an engine with memory figures" in capsys.readouterr().err
