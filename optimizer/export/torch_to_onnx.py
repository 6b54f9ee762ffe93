"""PyTorch ViT -> one self-contained ONNX file with a dynamic batch axis.

Two exporters:

* ``dynamo=True`` (default): ``torch.onnx.export(..., dynamo=True, dynamic_shapes=...)`` — the
  ``torch.export`` based exporter, which records the batch as a symbolic dim and runs the
  onnxscript optimizer.
* ``dynamo=False``: the legacy TorchScript tracer with ``dynamic_axes`` (emits Identity /
  Constant / shape-arithmetic noise that ``optimizer.graph.cleanup_graph`` removes).

If the dynamo exporter raises and ``fallback=True`` the legacy exporter is used instead; this is
never silent: a warning is issued and ``ExportInfo.fallback_reason`` plus the file's
``vitopt.exporter_fallback_reason`` metadata say why.

Every choice (opset, exporter, batch axis, vitopt/torch versions, optional model description)
is written to the model's ``metadata_props`` under ``vitopt.*`` keys.
"""
from __future__ import annotations

import io
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

from ..errors import VitoptError
from ..fileio import atomic_path

_TWO_GB = 2 * 1024 ** 3
BATCH_DIM = "batch"


@dataclass(frozen=True)
class ExportInfo:
    """What was exported and how (also recorded in the file's metadata_props)."""
    path: Optional[str]           # None for an in-memory export (proto_from_torch)
    opset: int
    exporter: str                 # "dynamo" or "torchscript"
    input_name: str
    output_name: str
    input_shape: tuple            # example shape; dim 0 is dynamic ("batch")
    seconds: float
    size_bytes: int
    fallback_reason: Optional[str] = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d


def _export_dynamo(model, x, opset, input_name, output_name):
    import torch
    batch = torch.export.Dim(BATCH_DIM, min=1, max=65536)
    with warnings.catch_warnings():
        # torch's own pytree deprecation notices (FutureWarning) say nothing about the model
        warnings.simplefilter("ignore", FutureWarning)
        prog = torch.onnx.export(model, (x,), None, dynamo=True, opset_version=opset,
                                 input_names=[input_name], output_names=[output_name],
                                 dynamic_shapes=({0: batch},), external_data=False, optimize=True,
                                 verbose=False, report=False)
    # the in-memory proto carries all initialisers; nothing is written to disk here, so no
    # external-data side files can appear beside the output
    return prog.model_proto


def _export_torchscript(model, x, opset, input_name, output_name):
    import torch
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about timm's python-side asserts
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=opset,
                          input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: BATCH_DIM}, output_name: {0: BATCH_DIM}},
                          do_constant_folding=True)
    import onnx
    return onnx.load_from_string(buf.getvalue())


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def set_metadata(model_proto, entries: dict) -> None:
    """Add or replace ``metadata_props`` entries (values stored as strings)."""
    existing = {p.key: p for p in model_proto.metadata_props}
    for k, v in entries.items():
        if v is None:
            continue
        if k in existing:
            existing[k].value = str(v)
        else:
            p = model_proto.metadata_props.add()
            p.key, p.value = k, str(v)


def get_metadata(model_proto) -> dict:
    return {p.key: p.value for p in model_proto.metadata_props}


def save_onnx(model_proto, path: str | os.PathLike, check: bool = True) -> int:
    """Write ``model_proto`` as one self-contained file, atomically; returns its size in bytes.

    Raises VitoptError for models of 2 GB or more (protobuf's limit: they would need external data).
    """
    import onnx
    size = model_proto.ByteSize()
    if size >= _TWO_GB:
        raise VitoptError(f"ONNX model is {size / 1e9:.2f} GB: models of 2 GB or more need external data, "
                          "which vitopt does not write")
    if check:
        try:
            onnx.checker.check_model(model_proto)
        except onnx.checker.ValidationError as e:
            raise VitoptError(f"exported ONNX model fails onnx.checker: {_first_line(e)}") from None
    with atomic_path(path) as tmp:
        onnx.save_model(model_proto, str(tmp), save_as_external_data=False)
    return Path(path).stat().st_size


def onnx_from_torch(model, path: str | os.PathLike, *, opset: int = 18, dynamo: bool = True,
                    input_name: str = "input", output_name: str = "logits", example_batch: int = 2,
                    example_shape: Optional[Sequence[int]] = None, description: Optional[str] = None,
                    fallback: bool = True) -> ExportInfo:
    """Export ``model`` to ``path`` (one .onnx file, dynamic batch axis named ``batch``): the exporter's
    graph as is. What the product ships goes through ``optimizer.deploy.deploy_model`` (rules,
    precision, parity gate) instead; this is its first step written to a file.

    Args:
        model: an ``nn.Module`` taking one image tensor (timm ViT, ``PrunedBlock`` models, ...).
        path: output file; written atomically, never left half-written.
        others: as ``proto_from_torch``.

    Returns:
        ExportInfo. Raises VitoptError when the export or the ONNX checker fails.

    Example: ``onnx_from_torch(timm.create_model("deit_tiny_patch16_224"), "deit.onnx")``
    """
    proto, info = proto_from_torch(model, opset=opset, dynamo=dynamo, input_name=input_name,
                                   output_name=output_name, example_batch=example_batch,
                                   example_shape=example_shape, description=description, fallback=fallback)
    size = save_onnx(proto, path)
    return replace(info, path=str(path), size_bytes=size)


def proto_from_torch(model, *, opset: int = 18, dynamo: bool = True, input_name: str = "input",
                     output_name: str = "logits", example_batch: int = 2,
                     example_shape: Optional[Sequence[int]] = None, description: Optional[str] = None,
                     fallback: bool = True):
    """Export ``model`` to an in-memory ``onnx.ModelProto`` (dynamic batch axis named ``batch``).

    Args:
        model: an ``nn.Module`` taking one image tensor (timm ViT, ``PrunedBlock`` models, ...).
        opset: ONNX opset (>= 17 keeps ``LayerNormalization`` as one op).
        dynamo: True uses the ``torch.export`` exporter, False the legacy TorchScript one.
        input_name, output_name: graph I/O names.
        example_batch: batch of the example input used for tracing (2 avoids 0/1 specialisation).
        example_shape: (C, H, W); default read from the model.
        description: free text recorded as ``vitopt.model`` metadata.
        fallback: if the dynamo exporter fails, use the legacy one (with a warning) instead of raising.

    Returns:
        ``(proto, ExportInfo)`` (``info.path`` None, ``info.size_bytes`` the proto's size). The proto
        passed ``onnx.checker``; raises VitoptError when the export or the checker fails.

    Example: ``proto, info = proto_from_torch(model, dynamo=False)``
    """
    import onnx
    import torch
    from .. import __version__
    from ..counting import model_input_size
    if not isinstance(opset, int) or not 13 <= opset <= 23:
        raise VitoptError(f"opset must be an integer in 13..23, got {opset!r}")
    if example_batch < 2:
        raise VitoptError("example_batch must be at least 2 (batch 1 would be specialised as a constant)")
    shape = (example_batch, *map(int, example_shape or model_input_size(model, default=None)))
    model = model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    # a fixed seed: the example values never reach the graph, but nothing in an export may vary by run
    x = torch.randn(*shape, device=device, generator=torch.Generator(device=device).manual_seed(0))
    t0 = time.perf_counter()
    fallback_reason = None
    exporter = "dynamo" if dynamo else "torchscript"
    with torch.no_grad():
        if dynamo:
            try:
                proto = _export_dynamo(model, x, opset, input_name, output_name)
            except Exception as e:  # the exporter raises many types (export, onnxscript, torch errors)
                if not fallback:
                    raise VitoptError(f"dynamo ONNX export failed: {_first_line(e)} "
                                      "(try the legacy exporter: dynamo=False / --legacy)") from None
                fallback_reason = f"dynamo exporter failed: {_first_line(e)}"
                warnings.warn(f"{fallback_reason}; falling back to the TorchScript exporter", stacklevel=2)
                print(f"warning: {fallback_reason}; using the legacy TorchScript exporter", file=sys.stderr)
                exporter = "torchscript"
        if exporter == "torchscript":
            try:
                proto = _export_torchscript(model, x, opset, input_name, output_name)
            except Exception as e:
                raise VitoptError(f"TorchScript ONNX export failed: {_first_line(e)}") from None
    seconds = time.perf_counter() - t0
    _check_io(proto, input_name, output_name)
    set_metadata(proto, {
        "vitopt.version": __version__,
        "vitopt.exporter": exporter,
        "vitopt.exporter_fallback_reason": fallback_reason,
        "vitopt.opset": opset,
        "vitopt.torch_version": torch.__version__,
        "vitopt.dynamic_axes": f"{input_name}:0={BATCH_DIM},{output_name}:0={BATCH_DIM}",
        "vitopt.example_input_shape": "x".join(map(str, shape)),
        "vitopt.model": description,
    })
    proto.producer_name = proto.producer_name or "vitopt"
    size = proto.ByteSize()
    if size < _TWO_GB:  # larger ones are refused by save_onnx with their size named
        try:
            onnx.checker.check_model(proto)
        except onnx.checker.ValidationError as e:
            raise VitoptError(f"exported ONNX model fails onnx.checker: {_first_line(e)}") from None
    return proto, ExportInfo(None, opset, exporter, input_name, output_name, tuple(shape), round(seconds, 3),
                             size, fallback_reason)


def _check_io(proto, input_name: str, output_name: str) -> None:
    ins = [i.name for i in proto.graph.input]
    outs = [o.name for o in proto.graph.output]
    if ins != [input_name] or outs[:1] != [output_name]:
        raise VitoptError(f"exported graph has inputs {ins} and outputs {outs}, "
                          f"expected [{input_name!r}] -> [{output_name!r}]")
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if not dims or dims[0].dim_value:
        raise VitoptError(f"exported input {input_name!r} has a fixed batch dimension; the dynamic axis was lost")
