"""INT8 post-training quantization on DeiT-Tiny, against ONNX Runtime's own quantization tools.

Variants (the FP32 graph of the deployment chain, ``optimizer.deploy``: what ``vitopt export`` ships,
then ``quantize_onnx``; ``optimizer.quant.int8_onnx_from_model``): FP32; vitopt static INT8 per
calibrator (max, percentile, entropy, mse; 7-bit weights for ORT's AVX2 kernels, and entropy with full-range weights, the TensorRT form);
vitopt dynamic INT8 (ORT CPU), with and without the sensitivity fallback to ``--min-agreement``;
the peers: ORT ``quantize_dynamic`` (per-channel INT8 weights) and ``quantize_static`` (QDQ,
per-channel, MinMax, the same calibration images); slim 0.75 and lowrank 0.75 FP32 and + INT8.
Calibration on train images (``--calib-images``, held-out ``--held-images`` for the fallback),
measured on the val images against dense FP32: top-1 agreement, top-1, min cosine; ONNX Runtime
latency at batch 1/8/32 (interleaved in one run, 2 threads, no spinning); file size; TensorRT-RTX
engine size (or the builder's exact refusal) for FP32, INT8 Q/DQ and FP8 Q/DQ.

    flock /tmp/vitopt-heavy.lock python benchmarks/quant.py --work /tmp/quant-bench \\
        --weights ../shared/weights/deit_tiny_patch16_224.pth --train ../shared/data/imagenet-mini/train \\
        --val ../shared/data/imagenet-mini/val --slim DIR --lowrank DIR

``--slim`` / ``--lowrank``: directories from ``vitopt compress --method slim --macs 0.75`` /
``--method lowrank --params 0.75`` (same weights and train folder). Stages cache into --work.
Results: benchmarks/results/quant.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

from _harness import provenance, write_result  # noqa: E402
from optimizer.errors import VitoptError  # noqa: E402
from optimizer.fileio import write_json  # noqa: E402
from optimizer.quant import QuantConfig  # noqa: E402

STAGES = ("build", "compressed", "eval", "latency", "engine", "report")


def _state(work: Path) -> dict:
    p = work / "state.json"
    return json.loads(p.read_text()) if p.is_file() else {"variants": {}}


def _save(work: Path, state: dict) -> None:
    write_json(work / "state.json", state)


def _images(args, model):
    from optimizer.data.arrays import folder_images
    return folder_images(args.train, [args.calib_images, args.held_images], (3, 224, 224), model=model)


def _val(args, model):
    from optimizer.data.folder import build_loader
    xs, ys = [], []
    for b in build_loader(args.val, model, batch_size=64, workers=0):
        xs.append(b.images.numpy())
        ys.append(b.labels.numpy())
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def _quantize(fp32, calib, held, cfg, path, state, name, base, note=""):
    """One vitopt variant; skipped when a previous run of the stage finished it (resumable)."""
    from optimizer.export import save_onnx
    from optimizer.quant import quantize_onnx
    if name in state["variants"] and path.is_file():
        return
    t0 = time.perf_counter()
    # held-out images only where the fallback needs them: val agreement is measured by stage eval
    q, rep = quantize_onnx(fp32, calib, cfg, eval_inputs=held if cfg.min_agreement > 0 else None)
    save_onnx(q, path)
    state["variants"][name] = {"file": path.name, "base": base, "kind": "vitopt", "config": cfg.to_dict(),
                               "report": rep.to_dict(), "seconds": round(time.perf_counter() - t0, 1),
                               "note": note}
    _save(path.parent, state)
    print(f"{name}: {rep}", flush=True)


def stage_build(args, work, state):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from optimizer.export import save_onnx
    from optimizer.models.loading import load_model
    from optimizer.quant import int8_onnx_from_model
    import onnx
    dense = load_model("deit_tiny_patch16_224", args.weights).model
    calib, held = _images(args, dense)
    v = state["variants"]
    n = args.calib_images
    if (work / "fp32.onnx").is_file():
        fp32 = onnx.load(str(work / "fp32.onnx"))
    else:
        first = QuantConfig(calibrator="max", calib_images=n, reduce_range=True)
        fp32, q, rep = int8_onnx_from_model(dense, calib, first, path=work / "int8_static_max.onnx")
        save_onnx(fp32, work / "fp32.onnx")
        v["int8_static_max"] = {"file": "int8_static_max.onnx", "base": "dense", "kind": "vitopt",
                                "config": first.to_dict(), "report": rep.to_dict()}
        print(f"int8_static_max: {rep}", flush=True)
    v.setdefault("fp32", {"file": "fp32.onnx", "base": "dense", "kind": "fp32"})   # keeps an earlier eval
    for cal in ("max", "percentile", "entropy", "mse"):
        _quantize(fp32, calib, held, QuantConfig(calibrator=cal, calib_images=n, reduce_range=True),
                  work / f"int8_static_{cal}.onnx", state, f"int8_static_{cal}", "dense")
    _quantize(fp32, calib, held, QuantConfig(calibrator="entropy", calib_images=n),
              work / "int8_static_entropy_fullrange.onnx", state, "int8_static_entropy_fullrange", "dense",
              "8-bit weights (the TensorRT form), run here in ORT's AVX2 kernels")
    _quantize(fp32, calib, held, QuantConfig(mode="dynamic", reduce_range=True),
              work / "int8_dynamic.onnx", state, "int8_dynamic", "dense")
    if args.min_agreement > 0:
        _quantize(fp32, calib, held, QuantConfig(mode="dynamic", reduce_range=True, min_agreement=args.min_agreement,
                                                 max_fallback=args.max_fallback, rank_images=args.rank_images),
                  work / "int8_dynamic_fallback.onnx", state, "int8_dynamic_fallback", "dense")
    _save(work, state)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib[i:i + 1] for i in range(len(calib)))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x}
    if "peer_static" in v and (work / "peer_static.onnx").is_file():
        return   # the peers are made by an earlier run of the stage
    quantize_dynamic(str(work / "fp32.onnx"), str(work / "peer_dynamic.onnx"), per_channel=True,
                     weight_type=QuantType.QInt8)
    v["peer_dynamic"] = {"file": "peer_dynamic.onnx", "base": "dense", "kind": "peer",
                         "note": "onnxruntime.quantization.quantize_dynamic(per_channel=True, QInt8)"}
    quantize_static(str(work / "fp32.onnx"), str(work / "peer_static.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True)
    v["peer_static"] = {"file": "peer_static.onnx", "base": "dense", "kind": "peer",
                        "note": f"onnxruntime.quantization.quantize_static(QDQ, per_channel=True, MinMax, {n} images)"}
    _save(work, state)


def stage_compressed(args, work, state):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from optimizer.export import save_onnx
    from optimizer.models.loading import load_model
    from optimizer.quant import int8_onnx_from_model
    calib, held = _images(args, load_model("deit_tiny_patch16_224", args.weights).model)
    v, n = state["variants"], args.calib_images
    for tag, d in (("slim75", args.slim), ("lowrank75", args.lowrank)):
        if not d:
            continue
        m = load_model(d).model
        fp, q, rep = int8_onnx_from_model(m, calib, QuantConfig(mode="dynamic", reduce_range=True),
                                          eval_inputs=held, path=work / f"{tag}_int8_dynamic.onnx")
        save_onnx(fp, work / f"{tag}_fp32.onnx")
        v[f"{tag}_fp32"] = {"file": f"{tag}_fp32.onnx", "base": tag, "kind": "fp32"}
        v[f"{tag}_int8_dynamic"] = {"file": f"{tag}_int8_dynamic.onnx", "base": tag, "kind": "vitopt",
                                    "report": rep.to_dict()}
        print(f"{tag}_int8_dynamic: {rep}", flush=True)
        _quantize(fp, calib, held, QuantConfig(calibrator="max", calib_images=n, reduce_range=True),
                  work / f"{tag}_int8_static_max.onnx", state, f"{tag}_int8_static_max", tag)
        quantize_dynamic(str(work / f"{tag}_fp32.onnx"), str(work / f"{tag}_peer_dynamic.onnx"), per_channel=True,
                         weight_type=QuantType.QInt8)
        v[f"{tag}_peer_dynamic"] = {"file": f"{tag}_peer_dynamic.onnx", "base": tag, "kind": "peer",
                                    "note": "quantize_dynamic on the compressed export"}
        _save(work, state)


def stage_eval(args, work, state):
    from optimizer.export import compare_outputs, ort_session
    from optimizer.models.loading import load_model
    x, y = _val(args, load_model("deit_tiny_patch16_224", args.weights).model)
    logits = {}
    ref_path = work / "fp32_val_logits.npy"
    if ref_path.is_file():
        logits["fp32"] = np.load(ref_path)
    for name, v in state["variants"].items():
        if ("fp32" in logits) if name == "fp32" else ("val" in v):
            continue  # measured by an earlier run of the stage
        sess = ort_session(str(work / v["file"]), threads=2)
        out = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i:i + 32]})[0]
                              for i in range(0, len(x), 32)])
        logits[name] = out
        if name == "fp32":
            np.save(ref_path, out)
        ref = logits["fp32"]
        r = compare_outputs(ref, out, atol=float("inf"))
        v["val"] = {"images": int(len(x)), "agreement": r.top1_agreement, "min_cosine": r.cosine,
                    "top1": float(np.mean(np.argmax(out, 1) == y))}
        v["size_bytes"] = (work / v["file"]).stat().st_size
        print(f"{name}: agreement {100 * r.top1_agreement:.1f} %, top-1 {100 * v['val']['top1']:.2f} %", flush=True)
        _save(work, state)


def stage_latency(args, work, state):
    from optimizer.bench import interleaved_latency
    from optimizer.runners import OrtRunner
    names = [n for n in state["variants"] if n in args.latency_variants.split(",")]
    runners = {n: OrtRunner(work / state["variants"][n]["file"], threads=2, allow_spinning=False, name=n)
               for n in names}
    res = interleaved_latency(runners, (1, 8, 32), rounds=args.rounds, iters_per_round=args.iters, warmup=2)
    # its own file: the stage may run (under the heavy lock) while another stage updates state.json
    write_json(work / "latency.json", res)


def stage_engine(args, work, state):
    from optimizer.engine import engine_from_onnx
    from optimizer.quant import QuantConfig as QC, quantize_onnx
    from optimizer.quant.chain import fp32_onnx_from_model
    from optimizer.export import save_onnx
    from optimizer.models.loading import load_model
    eng = {}
    todo = [("fp32", work / "fp32.onnx"), ("int8_static_entropy_fullrange", work / "int8_static_entropy_fullrange.onnx"),
            ("int8_dynamic", work / "int8_dynamic.onnx")]
    dense = load_model("deit_tiny_patch16_224", args.weights).model
    fp19 = fp32_onnx_from_model(dense, opset=19)
    calib = _images(args, dense)[0]
    q8, _ = quantize_onnx(fp19, calib, QC(calibrator="max", dtype="fp8", calib_images=args.calib_images))
    save_onnx(q8, work / "fp8_static_max.onnx")
    todo.append(("fp8_static_max", work / "fp8_static_max.onnx"))
    for name, path in todo:
        t0 = time.perf_counter()
        try:
            built = engine_from_onnx(path, (1, 8, 32), builder="tensorrt_rtx")
            mem = built.info.get("memory") or {}
            eng[name] = {"ok": True, "engine_size_bytes": built.info["engine_size_bytes"],
                         "weights_bytes": mem.get("weights_bytes"), "activation_bytes": mem.get("activation_bytes"),
                         "seconds": round(time.perf_counter() - t0, 1)}
        except VitoptError as e:
            eng[name] = {"ok": False, "error": str(e).replace(str(work) + "/", "")}
        print(name, eng[name], flush=True)
    state["engines"] = eng
    _save(work, state)


def _f(v, nd=1, pct=False):
    if v is None:
        return "—"
    return f"{100 * v:.{nd}f}" if pct else f"{v:.{nd}f}"


def stage_report(args, work, state, out_dir: Path):
    lat = {}
    if (work / "latency.json").is_file():
        state["latency"] = json.loads((work / "latency.json").read_text())
    for r in (state.get("latency") or {}).get("rows", []):
        lat.setdefault(r["name"], {})[r["batch"]] = r
    cmd = ("flock /tmp/vitopt-heavy.lock python benchmarks/quant.py --work WORK --weights "
           "../shared/weights/deit_tiny_patch16_224.pth --train ../shared/data/imagenet-mini/train "
           "--val ../shared/data/imagenet-mini/val"
           + (" --slim SLIM75_DIR" if any(k.startswith("slim75") for k in state["variants"]) else "")
           + (" --lowrank LOWRANK75_DIR" if any(k.startswith("lowrank75") for k in state["variants"]) else "")
           + f" --calib-images {args.calib_images} --held-images {args.held_images}"
           + f" --rounds {args.rounds} --iters {args.iters} --latency-variants {args.latency_variants}"
           + (f" --min-agreement {args.min_agreement}" if args.min_agreement > 0 else "")
           + (f" --max-fallback {args.max_fallback}" if args.min_agreement > 0 else "")
           + (f" --rank-images {args.rank_images}" if args.rank_images else ""))
    prov = provenance()
    res = {"command": cmd, "commit": prov["git_commit"], "variants": state["variants"],
           "latency": state.get("latency"), "engines": state.get("engines"),
           "slim_command": "vitopt compress --method slim --model deit_tiny_patch16_224 --checkpoint "
                           "../shared/weights/deit_tiny_patch16_224.pth --calib ../shared/data/imagenet-mini/train "
                           "--macs 0.75 -o SLIM75_DIR",
           "lowrank_command": "vitopt compress --method lowrank --model deit_tiny_patch16_224 --checkpoint "
                              "../shared/weights/deit_tiny_patch16_224.pth --calib ../shared/data/imagenet-mini/train "
                              "--params 0.75 -o LOWRANK75_DIR"}
    fp_size = state["variants"]["fp32"].get("size_bytes")
    lines = ["# INT8 post-training quantization — DeiT-Tiny, ONNX Runtime CPU", "",
             f"All stages: `{cmd}` (stages cache into WORK; the Reproduce section below is the command that "
             "wrote this report).", "",
             "Agreement/top-1/cosine: val images vs dense FP32 (ORT). Speed-up: dense FP32 p50 / variant p50, "
             "interleaved in one run, 2 threads, no spinning. Fallback: layers returned to FP32 by the sensitivity "
             "fallback (held-out train images).", "",
             "| variant | kind | agreement % | top-1 % | min cos | x b1 | x b8 | x b32 | p50 b8 ms | MB | size/FP32 | quantized layers | fallback |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in state["variants"].items():
        val = v.get("val", {})
        L = lat.get(name, {})
        rep = v.get("report") or {}
        nq = f"{rep.get('quantized_layers')}/{len(rep.get('layers', []))}" if rep else ""
        fb = ", ".join(f["node"] for f in rep.get("fallback", [])) if rep else ""
        sz = v.get("size_bytes")
        lines.append(f"| {name} | {v['kind']} | {_f(val.get('agreement'), 1, True)} | {_f(val.get('top1'), 2, True)} | "
                     f"{_f(val.get('min_cosine'), 4)} | {_f(L.get(1, {}).get('speedup'), 2)} | "
                     f"{_f(L.get(8, {}).get('speedup'), 2)} | {_f(L.get(32, {}).get('speedup'), 2)} | "
                     f"{_f(L.get(8, {}).get('p50_ms'), 1)} | {_f(sz / 1e6 if sz else None, 2)} | "
                     f"{_f(sz / fp_size if sz and fp_size else None, 3)} | {nq} | {fb} |")
    lines += ["", "## TensorRT for RTX (tensorrt_rtx builder, profile 1/8/32, built on this CPU)", "",
              "| graph | result |", "|---|---|"]
    for name, e in (state.get("engines") or {}).items():
        mb = {k: (f"{e[k] / 1e6:.1f} MB" if e.get(k) is not None else "not reported")
              for k in ("weights_bytes", "activation_bytes")}
        lines.append(f"| {name} | " + (f"built, engine {e['engine_size_bytes'] / 1e6:.2f} MB; builder memory: weights "
                                        f"{mb['weights_bytes']}, activations {mb['activation_bytes']} at batch 32"
                                        if e["ok"] else f"refused: `{e['error']}`") + " |")
    lines += ["", "## Notes", ""] + [f"- {n}" for n in args.notes]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_result(out_dir / "quant", res, lines, prov=prov)
    print("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--slim")
    p.add_argument("--lowrank")
    p.add_argument("--calib-images", type=int, default=128)
    p.add_argument("--held-images", type=int, default=128)
    p.add_argument("--min-agreement", type=float, default=0.0,
                   help="also build the dynamic variant with the sensitivity fallback to this agreement")
    p.add_argument("--max-fallback", type=int, default=8)
    p.add_argument("--rank-images", type=int, default=None,
                   help="the fallback ranks layers on the first N held-out images (default: all)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--latency-variants", default="fp32,int8_static_entropy,int8_dynamic,int8_dynamic_fallback,"
                   "peer_dynamic,peer_static,slim75_fp32,slim75_int8_dynamic,slim75_peer_dynamic,lowrank75_int8_dynamic")
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--note", dest="notes", action="append", default=[])
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    state = _state(work)
    for s in args.stages.split(","):
        if s not in STAGES:
            raise SystemExit(f"unknown stage {s}; stages: {', '.join(STAGES)}")
        t0 = time.perf_counter()
        if s == "report":
            stage_report(args, work, state, Path(args.out))
        else:
            globals()[f"stage_{s}"](args, work, state)
        print(f"[stage {s}: {time.perf_counter() - t0:.0f} s]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
