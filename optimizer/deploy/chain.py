"""The deployment chain: each step takes and returns a model or an ONNX proto plus its report.

    export_form ─ export_step ─ rules_step ─ precision_step ─ parity_step ─ metadata_step ─ write_onnx
    (methods)    (torch→ONNX)  (graph.cleanup) (registry)     (vs PyTorch)  (vitopt.*)     (atomic)

``deploy_model`` composes them; ``vitopt export``, recipe ``export`` steps, ``vitopt bench MODEL``,
the methods and the benchmarks all call it, so what they time or check is what ``vitopt export`` ships.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..fileio import temp_dir
from ..errors import VitoptError
from .inputs import ParityInputs, parity_inputs
from .options import DeployOptions
from .precision import get_precision


def _quiet(msg: str) -> None:
    pass


@dataclass(frozen=True)
class DeployResult:
    """proto: the final ONNX model (metadata set); report: every step's report (JSON-ready);
    options: the options it was made with."""
    proto: Any
    report: dict
    options: DeployOptions


@contextlib.contextmanager
def export_form(model, options: DeployOptions):
    """The model as its compression methods export it (registry ``export_form`` hooks: merged
    low-rank pairs, the gates' K mode, ...), and their ``vitopt.*`` metadata, for the block's duration."""
    from ..compress.registry import registered_methods
    meta: dict = {}
    with contextlib.ExitStack() as stack:
        for method in registered_methods():
            if method.export_form is not None:
                model, m = stack.enter_context(method.export_form(model, options.method_options))
                meta.update(m)
        yield model, meta


@contextlib.contextmanager
def decision_margins():
    """Lists that receive per-sample decision margins of the registered methods' discrete decisions
    (registry ``decision_margins`` hooks: token matching) taken inside the block."""
    from ..compress.registry import registered_methods
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(m.decision_margins()) for m in registered_methods()
               if m.decision_margins is not None]


def export_step(model, options: DeployOptions, description: Optional[str] = None):
    """torch -> ONNX proto with a dynamic batch axis: ``(proto, report)``."""
    from ..export import proto_from_torch
    proto, info = proto_from_torch(model, opset=options.opset, dynamo=options.exporter == "dynamo",
                                   description=description, fallback=options.fallback)
    return proto, info.to_dict()


def rules_step(proto, options: DeployOptions):
    """Graph rules and constant folding (``optimizer.graph.cleanup_graph``): ``(proto, CleanupReport)``."""
    from ..graph import cleanup_graph
    proto, report = cleanup_graph(proto, rules=None if options.rules is None else list(options.rules), fold=True)
    if not report.ok:   # a check rule found a graph that cannot ship (e.g. a batch baked into a gather)
        raise VitoptError("graph check failed: " + "; ".join(f"{k}: {m}" for k, ms in report.failures.items()
                                                              for m in ms))
    return proto, report


def precision_step(proto, precision: str, calib: Optional[ParityInputs] = None):
    """The fp32 graph in ``precision`` (a registered one): ``(proto, report dict)``."""
    return get_precision(precision).convert(proto, calib)


def parity_step(model, proto, inputs: ParityInputs, precision: str, atol: float):
    """Outputs of ``proto`` (ONNX Runtime) against ``model`` (PyTorch) on ``inputs``: the ParityResult.

    Lossless precisions pass within ``atol``; lossy ones by their worst per-sample cosine (the
    precision's ``min_cosine``). Raises VitoptError when the gate fails.
    """
    from ..export import check_parity, save_onnx
    p = get_precision(precision)
    with temp_dir("vitopt-parity-") as tmp:
        path = os.path.join(tmp, "m.onnx")
        save_onnx(proto, path, check=False)
        res = check_parity(model, path, inputs.images, atol=atol if p.min_cosine is None else float("inf"),
                           raise_on_fail=False, margins=decision_margins)
    if p.min_cosine is None and not res.passed:
        raise VitoptError(f"{precision} ONNX output differs from PyTorch: {res} on {inputs.source}")
    if p.min_cosine is not None and not res.cosine >= p.min_cosine:
        raise VitoptError(f"{precision} model diverges from PyTorch: min cosine {res.cosine:.4f} < "
                          f"{p.min_cosine} on {inputs.source}")
    return res


def metadata_step(proto, entries: dict):
    """Record ``entries`` (``vitopt.*`` keys) in the proto's metadata_props; returns the proto."""
    from ..export import set_metadata
    set_metadata(proto, entries)
    return proto


def deploy_model(model, options: Optional[DeployOptions] = None, inputs: Optional[ParityInputs] = None, *,
                 description: Optional[str] = None, log: Callable[[str], None] = _quiet) -> DeployResult:
    """Export ``model`` as ``options`` say, through every step of the chain, parity-gated.

    Args:
        model: the PyTorch model (any registered compression applied); left as it is.
        options: DeployOptions (None: the defaults).
        inputs: parity images (``parity_inputs(model, data_dir, n)``); None: options.parity_images
            seeded random inputs.
        description: recorded as ``vitopt.model`` (e.g. ``LoadedModel.describe()``).
        log: progress lines.
    Returns a DeployResult; nothing is written (``write_onnx``). Raises VitoptError when a step or
    a parity gate fails.
    Example: ``write_onnx(deploy_model(model, DeployOptions(precision="fp16")), "m.onnx")``
    """
    options = options if options is not None else DeployOptions()
    return deploy_models(model, options, inputs, (options.precision,), description=description, log=log)[
        options.precision]


def deploy_models(model, options: DeployOptions, inputs: Optional[ParityInputs], precisions, *,
                  description: Optional[str] = None, log: Callable[[str], None] = _quiet) -> dict:
    """``deploy_model`` for several precisions sharing one export and one rules pass:
    ``{precision: DeployResult}`` (each equal to ``deploy_model`` with that precision)."""
    precisions = tuple(dict.fromkeys(precisions))
    for p in precisions:
        get_precision(p)
    inputs = inputs if inputs is not None else parity_inputs(model, None, options.parity_images)
    model = model.eval()
    with export_form(model, options) as (form, method_meta):
        for k, v in method_meta.items():
            log(f"{k}: {v}")
        proto, info = export_step(form, options, description)
        log(f"exported with the {info['exporter']} exporter, opset {options.opset}, dynamic batch "
            f"({info['seconds']:.1f} s)" + (f" [{info['fallback_reason']}]" if info["fallback_reason"] else ""))
        report: dict = {"export": info, "method_export": method_meta, "parity_inputs": inputs.source}
        log(f"parity check on {inputs.source}")
        res = parity_step(form, proto, inputs, "fp32", options.atol)
        log(f"exported graph:  {res}")
        report["parity_export"] = report["parity"] = res.to_dict()
        if options.cleanup:
            proto, cleanup = rules_step(proto, options)
            log(str(cleanup))
            res = parity_step(form, proto, inputs, "fp32", options.atol)
            log(f"cleaned graph:   {res}")
            report["cleanup"] = cleanup.to_dict()
            report["parity_cleaned"] = report["parity"] = res.to_dict()
        results = {}
        for prec in precisions:
            out, prec_report = precision_step(proto, prec, inputs)
            rep = dict(report)
            if out is not proto:
                res = parity_step(form, out, inputs, prec, options.atol)
                log(f"{prec} graph:      {res}")
                rep[f"precision_{prec}"] = prec_report
                rep[f"parity_{prec}"] = rep["parity"] = res.to_dict()
            opts = dataclasses.replace(options, precision=prec)
            out = _copy(out) if out is proto else out   # each result owns its proto
            metadata_step(out, {**opts.metadata(), **method_meta})
            results[prec] = DeployResult(out, rep, opts)
    return results


def _copy(proto):
    import onnx
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


def write_onnx(result: DeployResult, path) -> int:
    """Write the chain's result as one self-contained file, atomically; returns its size in bytes."""
    from ..export import save_onnx
    return save_onnx(result.proto, path)
