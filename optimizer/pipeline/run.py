"""Execute a recipe: every artifact lands in OUT/ with a manifest of hashes, atomically.

The whole run writes into a temporary directory beside OUT and is renamed onto OUT only when
every step succeeded, so a failed run never leaves a half-written OUT behind.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import VitoptError
from ..fileio import atomic_dir, sha256_file, write_json
from .recipe import PIPELINE_STEPS, Recipe


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class RunState:
    recipe: Recipe
    out: Path                               # the temporary output directory
    loaded: object = None                   # LoadedModel
    compressed: object = None               # CompressedModel after compression steps
    dense: object = None                    # the dense original (reference, teacher)
    onnx: dict = field(default_factory=dict)    # precision -> path
    engines: dict = field(default_factory=dict)  # precision -> path
    results: dict = field(default_factory=dict)
    steps: list = field(default_factory=list)
    work_dir: Optional[Path] = None         # shared, resumable work of method steps (run_recipe's work_dir)

    @property
    def model(self):
        return self.compressed.model if self.compressed is not None else self.loaded.model


def _step_compress(st: RunState, method: str, opts: dict) -> dict:
    from ..compress.runner import build_config, compress_loaded
    from ..compress.saving import save_compressed
    from ..counting import count_macs
    cfg = build_config(method, opts)
    before = count_macs(st.model)
    base = st.loaded if st.compressed is None else _as_loaded(st)
    st.compressed = compress_loaded(base, [cfg], st.recipe.calib, teacher=st.dense, device=_device(st),
                                    workers=st.recipe.workers, seed=st.recipe.seed, log=_log,
                                    synsets=st.recipe.synsets, work_dir=_method_work_dir(st, cfg))
    st.compressed.model.to("cpu").eval()
    after = count_macs(st.compressed.model)
    save_compressed(st.out / "compressed", st.compressed)
    _log(f"{method}: params {before.mparams:.2f} M -> {after.mparams:.2f} M, MACs {before.gmacs:.3f} G -> {after.gmacs:.3f} G")
    return {"config": cfg.to_dict(), "before": before.to_dict(), "after": after.to_dict(),
            "report": st.compressed.steps[-1]["report"]}


def _method_work_dir(st: RunState, cfg) -> Optional[str]:
    """Steps with the same config up to the budget, after the same earlier steps, share one work dir:
    a slim search or a low-rank calibration pass is the same for every budget, so a sweep does it once."""
    if st.work_dir is None:
        return None
    import hashlib
    from ..compress.runner import BUDGET_FLAGS
    own = {k: v for k, v in cfg.to_dict().items() if k not in BUDGET_FLAGS.values()}
    prior = [s["config"] for s in st.compressed.steps] if st.compressed is not None else []
    key = hashlib.sha256(json.dumps([prior, own], sort_keys=True, default=str).encode()).hexdigest()[:12]
    return str(st.work_dir / f"{cfg.method}-{key}")


def _as_loaded(st: RunState):
    from ..models.loading import LoadedModel
    cm = st.compressed
    return LoadedModel(cm.model, cm.arch, "compressed", "pipeline", recipe=cm.recipe(), model_kwargs=cm.model_kwargs)


def _device(st: RunState) -> str:
    if st.recipe.device == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    return st.recipe.device


def _step_eval(st: RunState, opts: dict) -> dict:
    from ..counting import count_macs
    counts = count_macs(st.model)
    res = {"params": counts.params, "macs": counts.macs, "params_M": round(counts.mparams, 3),
           "gmacs": round(counts.gmacs, 3)}
    _log(f"eval: params {counts.mparams:.2f} M, MACs {counts.gmacs:.3f} G")
    if not st.recipe.data:
        res["accuracy"] = "not measured: no data (set VITOPT_DATA or the recipe's data)"
        _log("eval: accuracy not measured (no data given)")
        return res
    from ..data import build_loader
    from ..evaluation import evaluate
    bs = int(opts.get("batch_size", 64))
    if bs < 1:
        raise VitoptError(f"eval batch_size must be positive, got {bs}")
    loader = build_loader(st.recipe.data, st.model, batch_size=bs, synsets=st.recipe.synsets,
                          workers=st.recipe.workers, limit=opts.get("limit"))
    ref = st.dense if st.compressed is not None else None
    cache = st.work_dir / "eval_reference.pt" if st.work_dir is not None and ref is not None else None
    r = evaluate(st.model, loader, reference=ref, reference_cache=cache).to_dict()
    random_w = st.loaded.is_random
    if random_w:
        r["top1"] = r["top5"] = r["reference_top1"] = None
        _log("eval: accuracy not reported (random weights)")
    else:
        _log(f"eval: top-1 {r['top1']:.2f} %, top-5 {r['top5']:.2f} % on {r['images']} images"
             + (f", agreement with dense {r['agreement']:.2f} %" if r.get("agreement") is not None else ""))
    res.update(r)
    return res


def _parity_inputs(st: RunState, n: int):
    import torch
    from ..counting import model_input_size
    if st.recipe.data:
        from ..data import build_loader
        loader = build_loader(st.recipe.data, st.model, batch_size=n, synsets=st.recipe.synsets, workers=0,
                              limit=n)
        for batch in loader:
            if batch.images.numel():
                return batch.images, "real images from " + st.recipe.data
    g = torch.Generator().manual_seed(0)
    return torch.randn((n, *model_input_size(st.model)), generator=g), "random inputs (no data given)"


def _step_export(st: RunState, opts: dict) -> dict:
    import onnx
    from ..export import check_parity, onnx_from_torch, set_metadata
    from ..graph import cleanup_graph, convert_to_fp16, op_histogram
    from ..methods.gates.export import gates_k_mode
    from ..export.torch_to_onnx import save_onnx
    opset = int(opts.get("opset", 18))
    exporter = opts.get("exporter", "dynamo")
    if exporter not in ("dynamo", "legacy"):
        raise VitoptError(f"export exporter must be dynamo or legacy, got {exporter!r}")
    model = st.model
    merge = _export_ready(model)
    path = st.out / "model.onnx"
    with gates_k_mode(merge, opts.get("gates_k")) as gates_meta:
        info = onnx_from_torch(merge, path, opset=opset, dynamo=exporter == "dynamo",
                               description=st.loaded.describe())
        res = {"export": info.to_dict()}
        proto = onnx.load(str(path))
        if opts.get("cleanup", True):
            proto, report = cleanup_graph(proto)
            res["cleanup"] = report.to_dict()
            _log(f"export: graph clean-up {report.nodes_before} -> {report.nodes_after} nodes")
        if gates_meta:
            set_metadata(proto, gates_meta)
            res["gates_k"] = gates_meta["vitopt.gates.k"]
        save_onnx(proto, path)
        x, what = _parity_inputs(st, int(opts.get("parity_images", 8)))
        parity = check_parity(merge, path, x, atol=float(opts.get("atol", 1e-4)))
    res["parity"] = {**parity.to_dict(), "inputs": what}
    _log(f"export: parity vs PyTorch on {what}: {parity}")
    st.onnx["fp32"] = path
    proto16 = convert_to_fp16(proto)
    p16 = st.out / "model.fp16.onnx"
    save_onnx(proto16, p16)
    st.onnx["fp16"] = p16
    res["fp16_ops"] = op_histogram(proto16)
    return res


def _export_ready(model):
    """Compression modules that need a deploy form (e.g. merged low-rank pairs) provide it here."""
    try:
        from ..methods.lowrank import merge_for_export
    except ImportError:
        return model
    return merge_for_export(model)


def _step_build(st: RunState, opts: dict) -> dict:
    from ..engine import engine_from_onnx, import_builder, save_engine
    from ..errors import MissingDependency
    if not st.onnx:
        raise VitoptError("build step needs an export step before it")
    precisions = opts.get("precision", ["fp32"])
    precisions = [precisions] if isinstance(precisions, str) else list(precisions)
    batches = opts.get("batch", [1, 8, 32])
    batches = [batches] if isinstance(batches, int) else list(batches)
    if any((not isinstance(b, int)) or b < 1 for b in batches):
        raise VitoptError(f"build batch sizes must be positive integers, got {batches}")
    builder = opts.get("builder")
    try:
        import_builder(builder)
    except MissingDependency as e:
        if opts.get("optional"):
            _log(f"build: skipped, {e}")
            return {"skipped": str(e)}
        raise
    res = {}
    for prec in precisions:
        if prec not in ("fp32", "fp16"):
            raise VitoptError(f"build precision must be fp32 or fp16, got {prec!r}")
        src = st.onnx["fp16" if prec == "fp16" else "fp32"]
        built = engine_from_onnx(src, batch_sizes=batches, fp16=prec == "fp16", builder=builder)
        path = st.out / f"model.{prec}.engine"
        built.info["onnx"] = src.name  # relative: the run directory is renamed at the end
        save_engine(built, path)
        st.engines[prec] = path
        res[prec] = built.info
        _log(f"build: {prec} engine {path.name}: {built.size_bytes / 1e6:.1f} MB")
    return res


def _step_bench(st: RunState, opts: dict) -> dict:
    from ..bench import benchmark, rows_to_dict, to_markdown
    from ..runners import OrtRunner, TorchRunner, TrtRunner, gpu_available
    backends = opts.get("backends", ["onnxruntime", "torch"])
    backends = [backends] if isinstance(backends, str) else list(backends)
    batches = opts.get("batch", [1, 8, 32])
    batches = [batches] if isinstance(batches, int) else list(batches)
    if any((not isinstance(b, int)) or b < 1 for b in batches):
        raise VitoptError(f"bench batch sizes must be positive integers, got {batches}")
    kw = {k: int(opts[k]) for k in ("iters", "warmup") if k in opts}
    rows, skipped = [], {}
    for be in backends:
        if be == "onnxruntime":
            for prec, path in st.onnx.items():
                with OrtRunner(path, threads=opts.get("threads"), allow_spinning=bool(opts.get("spinning", False))) as r:
                    rows += benchmark(r, batches, **kw)
        elif be == "torch":
            with TorchRunner(st.model, device=_device(st)) as r:
                rows += benchmark(r, batches, **kw)
        elif be == "tensorrt":
            if not gpu_available():
                skipped[be] = "engine cannot run here (no NVIDIA GPU)"
                _log("bench: tensorrt skipped, engine cannot run here (no NVIDIA GPU)")
                continue
            for prec, path in st.engines.items():
                with TrtRunner(path) as r:
                    rows += benchmark(r, batches, **kw)
        else:
            raise VitoptError(f"unknown bench backend {be!r} (onnxruntime, torch, tensorrt)")
    table = to_markdown(rows)
    (st.out / "bench.md").write_text(table + "\n")
    print(table, flush=True)
    (st.out / "bench.json").write_text(json.dumps(rows_to_dict(rows), indent=2) + "\n")
    return {"rows": rows_to_dict(rows)["rows"], "skipped": skipped}


def run_recipe(recipe: Recipe, out: str | os.PathLike, work_dir: str | os.PathLike | None = None,
               on_step=None) -> dict:
    """Run every step of ``recipe`` into ``out``; returns the manifest.

    ``work_dir``: where method steps keep resumable work shared between runs (a sweep's variants: one
    slim search for every budget, the dense model's eval outputs); None keeps nothing.
    ``on_step(i, n, kind)`` is called before step i of n (progress bars)."""
    import copy
    from .. import __version__
    from ..cli.common import environment
    from ..models.loading import load_model
    out = Path(out)
    with atomic_dir(out) as tmp:
        st = RunState(recipe, tmp, work_dir=Path(work_dir) if work_dir is not None else None)
        st.loaded = load_model(recipe.model, recipe.checkpoint, **recipe.model_kwargs)
        _log(f"model: {st.loaded.describe()}")
        st.dense = copy.deepcopy(st.loaded.model).eval()
        for i, step in enumerate(recipe.steps, 1):
            t0 = time.perf_counter()
            _log(f"[{i}/{len(recipe.steps)}] {step.kind}")
            if on_step is not None:
                on_step(i, len(recipe.steps), step.kind)
            if step.kind == "eval":
                res = _step_eval(st, step.options)
            elif step.kind == "export":
                res = _step_export(st, step.options)
            elif step.kind == "build":
                res = _step_build(st, step.options)
            elif step.kind == "bench":
                res = _step_bench(st, step.options)
            else:
                res = _step_compress(st, step.kind, step.options)
            st.steps.append({"step": step.kind, "options": step.options,
                             "seconds": round(time.perf_counter() - t0, 2), "result": res})
        artifacts = []
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                artifacts.append({"path": str(p.relative_to(tmp)), "bytes": p.stat().st_size,
                                  "sha256": sha256_file(p)})
        manifest = {"vitopt": __version__, "recipe": recipe.source, "model": st.loaded.to_dict(),
                    "environment": environment(), "steps": st.steps, "artifacts": artifacts}
        write_json(tmp / "manifest.json", manifest)
    return manifest
