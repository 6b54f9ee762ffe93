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
from .recipe import Recipe


def _log(msg: str) -> None:
    from ..distributed import is_main
    if is_main():   # under torchrun every rank runs the compression steps; rank 0 reports
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
    steps: list = field(default_factory=list)
    work_dir: Optional[Path] = None         # shared, resumable work of method steps (run_recipe's work_dir)

    @property
    def model(self):
        return self.compressed.model if self.compressed is not None else self.loaded.model


def _step_compress(st: RunState, method: str, cfg) -> dict:
    from ..compress.runner import compress_loaded
    from ..compress.saving import save_compressed
    from ..counting import count_macs
    before = count_macs(st.model)
    base = st.loaded if st.compressed is None else _as_loaded(st)
    from ..distributed import is_main, rank_device
    st.compressed = compress_loaded(base, [cfg], st.recipe.calib, teacher=st.dense, device=rank_device(_device(st)),
                                    workers=st.recipe.workers, seed=st.recipe.seed, log=_log,
                                    synsets=st.recipe.synsets, work_dir=_method_work_dir(st, cfg))
    st.compressed.model.to("cpu").eval()
    after = count_macs(st.compressed.model)
    if is_main():
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
    from ..resources import resolve_device
    return resolve_device(st.recipe.device, "recipe device")


def _step_eval(st: RunState, opts) -> dict:
    from ..counting import count_macs
    counts = count_macs(st.model)
    res = {"params": counts.params, "macs": counts.macs, "params_M": round(counts.mparams, 3),
           "gmacs": round(counts.gmacs, 3)}
    _log(f"eval: params {counts.mparams:.2f} M, MACs {counts.gmacs:.3f} G")
    if not st.recipe.data:
        res["accuracy"] = "not measured: no data (set VITOPT_DATA or the recipe's data)"
        _log("eval: accuracy not measured (no data given)")
        return res
    res.update(_accuracy(st, st.model, opts, "eval"))
    return res


def _accuracy(st: RunState, model, opts, what: str) -> dict:
    """``evaluate`` of ``model`` (PyTorch, or an ``OnnxModel``) on the recipe's data against the dense
    model (whose logits are cached in the work dir, so every variant and precision reuses them)."""
    from ..data import build_loader
    from ..evaluation import evaluate
    loader = build_loader(st.recipe.data, st.model, batch_size=opts.batch_size, synsets=st.recipe.synsets,
                          workers=st.recipe.workers, limit=opts.limit)
    ref = st.dense if st.compressed is not None or model is not st.model else None
    cache = st.work_dir / "eval_reference.pt" if st.work_dir is not None and ref is not None else None
    r = evaluate(model, loader, reference=ref, reference_cache=cache, desc=what).to_dict()
    if st.loaded.is_random:
        r["top1"] = r["top5"] = r["reference_top1"] = None
        _log(f"{what}: accuracy not reported (random weights)")
    else:
        _log(f"{what}: top-1 {r['top1']:.2f} %, top-5 {r['top5']:.2f} % on {r['images']} images"
             + (f", agreement with dense {r['agreement']:.2f} %" if r.get("agreement") is not None else ""))
    return r


def _eval_options(recipe: Recipe):
    """The recipe's eval step options (the export step evaluates quantized graphs the same way)."""
    from .step_options import EvalOptions
    return next((s.config for s in recipe.steps if s.kind == "eval"), EvalOptions())


def _step_export(st: RunState, opts) -> dict:
    from ..deploy import deploy_models, get_precision, parity_inputs, write_onnx
    from ..evaluation import OnnxModel
    inputs = parity_inputs(st.model, st.recipe.data, opts.deploy.parity_images)
    results = deploy_models(st.model, opts.deploy, inputs, opts.precisions, description=st.loaded.describe(),
                            log=lambda m: _log(f"export: {m}"))
    res = {}
    for prec, result in results.items():
        path = st.out / ("model.onnx" if prec == "fp32" else f"model.{prec}.onnx")
        write_onnx(result, path)
        st.onnx[prec] = path
        res[prec] = {**result.report, "parity": {**result.report["parity"], "inputs": inputs.source}}
        if get_precision(prec).own_accuracy and st.recipe.data:
            # a quantized graph's accuracy is its own: measured on the eval images, as the eval step does
            with OnnxModel(path) as m:
                res[prec]["eval"] = _accuracy(st, m, _eval_options(st.recipe), f"eval {prec}")
    # the first precision's report at the top level (what a one-precision recipe reads)
    return {**res[opts.precisions[0]], "precisions": res}


def _step_build(st: RunState, opts) -> dict:
    from ..engine import engine_from_onnx, import_builder, save_engine
    from ..errors import MissingDependency
    if not st.onnx:
        raise VitoptError("build step needs an export step before it")
    try:
        import_builder(opts.builder)
    except MissingDependency as e:
        if opts.optional:
            _log(f"build: skipped, {e}")
            return {"skipped": str(e)}
        raise
    res = {}
    for prec in opts.precision:
        if prec not in st.onnx:
            raise VitoptError(f"build precision {prec} needs the export step to write it (export precision: "
                              f"{', '.join(st.onnx)})")
        src = st.onnx[prec]
        built = engine_from_onnx(src, batch_sizes=list(opts.batch), fp16=prec == "fp16", builder=opts.builder)
        path = st.out / f"model.{prec}.engine"
        built.info["onnx"] = src.name  # relative: the run directory is renamed at the end
        save_engine(built, path)
        st.engines[prec] = path
        res[prec] = built.info
        _log(f"build: {prec} engine {path.name}: {built.size_bytes / 1e6:.1f} MB")
    return res


def _step_bench(st: RunState, opts) -> dict:
    from ..bench import benchmark, rows_to_dict, to_markdown
    from ..runners import OrtRunner, TorchRunner, TrtRunner, gpu_available
    batches = list(opts.batch)
    kw = {k: getattr(opts, k) for k in ("iters", "warmup") if getattr(opts, k) is not None}
    rows, skipped = [], {}
    for be in opts.backends:
        if be == "onnxruntime":
            for prec, path in st.onnx.items():
                with OrtRunner(path, threads=opts.threads, allow_spinning=opts.spinning) as r:
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
    table = to_markdown(rows)
    (st.out / "bench.md").write_text(table + "\n")
    print(table, flush=True)
    (st.out / "bench.json").write_text(json.dumps(rows_to_dict(rows), indent=2) + "\n")
    return {"rows": rows_to_dict(rows)["rows"], "skipped": skipped}


_STEPS = {"eval": _step_eval, "export": _step_export, "build": _step_build, "bench": _step_bench}


def _method_configs(recipe: Recipe) -> dict:
    """Every compression step's config, built before the first step runs (a bad option in step 5 must
    not cost the compression of step 1): {step index: config}."""
    from ..compress.runner import build_config
    out = {}
    for i, step in enumerate(recipe.steps):
        if step.kind not in _STEPS:
            try:
                out[i] = build_config(step.kind, step.options)
            except VitoptError as e:
                raise VitoptError(f"recipe {recipe.source}: step {i + 1} ({step.kind}): {e}") from None
    return out


def _check_bench_memory(recipe: Recipe, st: RunState) -> None:
    """Refuse a bench step whose largest batch would not fit in memory (``resources.check_batch_memory``)."""
    from ..counting import model_input_size
    from ..resources import check_batch_memory
    for i, step in enumerate(recipe.steps, 1):
        if step.kind == "bench":
            check_batch_memory(max(step.config.batch), model_input_size(st.model), _device(st),
                               what=f"recipe step {i} (bench): batch")


def run_recipe(recipe: Recipe, out: str | os.PathLike, work_dir: str | os.PathLike | None = None,
               on_step=None) -> dict:
    """Run every step of ``recipe`` into ``out``; returns the manifest.

    ``work_dir``: where method steps keep resumable work shared between runs (a sweep's variants: one
    slim search for every budget, the dense model's eval outputs); None keeps nothing.
    ``on_step(i, n, kind)`` is called before step i of n (progress bars)."""
    import copy
    from .. import __version__
    from ..bench import environment
    from ..models.loading import load_model
    from ..resources import resolve_device
    from ..fileio import check_output, final_paths
    out = Path(out)
    configs = _method_configs(recipe)
    # before any work: an output that would lose the user's files, a device this machine lacks
    check_output(out, "run", inputs=[recipe.checkpoint, recipe.data, recipe.calib, recipe.synsets, recipe.source])
    resolve_device(recipe.device, "recipe device")
    from ..distributed import is_main
    if not is_main():
        return _follow_recipe(recipe, configs, work_dir)
    with atomic_dir(out, kind="run") as tmp:
        st = RunState(recipe, tmp, work_dir=Path(work_dir) if work_dir is not None else None)
        st.loaded = load_model(recipe.model, recipe.checkpoint, **recipe.model_kwargs)
        _log(f"model: {st.loaded.describe()}")
        st.dense = copy.deepcopy(st.loaded.model).eval()
        _check_bench_memory(recipe, st)   # before the first step: a batch that cannot fit never costs a compression
        for i, step in enumerate(recipe.steps, 1):
            t0 = time.perf_counter()
            _log(f"[{i}/{len(recipe.steps)}] {step.kind}")
            if on_step is not None:
                on_step(i, len(recipe.steps), step.kind)
            if step.kind in _STEPS:
                res = _STEPS[step.kind](st, step.config)
            else:
                res = _step_compress(st, step.kind, configs[i - 1])
            st.steps.append({"step": step.kind, "options": step.options,
                             "seconds": round(time.perf_counter() - t0, 2), "result": res})
        artifacts = []
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                artifacts.append({"path": str(p.relative_to(tmp)), "bytes": p.stat().st_size,
                                  "sha256": sha256_file(p)})
        manifest = final_paths({"vitopt": __version__, "recipe": recipe.source, "model": st.loaded.to_dict(),
                                "environment": environment(), "steps": st.steps, "artifacts": artifacts})
        write_json(tmp / "manifest.json", manifest)
    return manifest


def _follow_recipe(recipe: Recipe, configs: dict, work_dir) -> dict:
    """A torchrun rank other than 0: the recipe's compression steps alone, in step with rank 0 (their
    loops share the images and sum gradients and statistics over the ranks); rank 0 alone evaluates,
    exports, builds, benchmarks and writes. Returns an empty manifest."""
    import copy
    from ..models.loading import load_model
    st = RunState(recipe, Path("."), work_dir=Path(work_dir) if work_dir is not None else None)
    st.loaded = load_model(recipe.model, recipe.checkpoint, **recipe.model_kwargs)
    st.dense = copy.deepcopy(st.loaded.model).eval()
    for i, step in enumerate(recipe.steps, 1):
        if step.kind not in _STEPS:
            st.steps.append({"step": step.kind, "result": _step_compress(st, step.kind, configs[i - 1])})
    return {}
