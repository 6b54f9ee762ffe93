"""``DeployOptions``: every choice of the deployment chain, typed, validated, recorded in the ONNX file."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Mapping, Optional

from ..compress.config import TypedOptions, coerce
from ..errors import VitoptError
from ..tolerances import tolerance_for

EXPORTERS = ("dynamo", "legacy")


@dataclass(frozen=True)
class DeployOptions(TypedOptions):
    """Options of ``deploy_model`` (``vitopt export`` flags, recipe ``export:`` keys).

    opset           ONNX opset (13..23; >= 17 keeps LayerNormalization as one op)
    exporter        "dynamo" (torch.export based) or "legacy" (TorchScript tracer)
    fallback        if the dynamo exporter fails, export with the legacy one (said in the report and
                    the file's metadata) instead of failing
    cleanup         run the graph rules (constant folding, rewrite rules); off: the exporter's graph
    rules           rule names to run (None: the default rules of ``optimizer.graph.cleanup_graph``)
    precision       a registered precision (``optimizer.deploy.precision_names()``: fp32, fp16, ...)
    parity_images   images (or seeded random inputs without data) of the parity check against PyTorch
    atol            largest allowed |PyTorch - ONNX| of a lossless (fp32) graph's outputs
    method_options  export options declared by compression methods in the registry
                    (``optimizer.compress.registry.export_options()``, e.g. {"gates_k": "fixed"}); in a
                    dict (recipe, ``from_dict``) they are top-level keys
    """

    what: ClassVar[str] = "export"

    opset: int = 18
    exporter: str = "dynamo"
    fallback: bool = True
    cleanup: bool = True
    rules: Optional[tuple] = None
    precision: str = "fp32"
    parity_images: int = 8
    atol: float = tolerance_for("fp32").atol   # the shared table's lossless row
    method_options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        from ..compress.registry import export_options
        from .precision import precision_names
        if not isinstance(self.opset, int) or isinstance(self.opset, bool) or not 13 <= self.opset <= 23:
            raise ValueError(f"opset must be an integer in 13..23, got {self.opset!r}")
        if self.exporter not in EXPORTERS:
            raise ValueError(f"exporter must be {' or '.join(EXPORTERS)}, got {self.exporter!r}")
        if self.rules is not None:
            if isinstance(self.rules, str) or not all(isinstance(r, str) and r for r in self.rules):
                raise ValueError(f"rules must be a list of rule names, got {self.rules!r}")
            object.__setattr__(self, "rules", tuple(self.rules))
        if self.precision not in precision_names():
            raise ValueError(f"precision must be one of {', '.join(precision_names())}, got {self.precision!r}")
        if not isinstance(self.parity_images, int) or self.parity_images < 1:
            raise ValueError(f"parity_images must be a positive integer, got {self.parity_images!r}")
        if not isinstance(self.atol, (int, float)) or not 0 < self.atol < float("inf"):
            raise ValueError(f"atol must be a positive number, got {self.atol!r}")
        declared = export_options()
        for name, value in self.method_options.items():
            if name not in declared:
                raise ValueError(f"unknown export option {name!r} (methods declare: {', '.join(sorted(declared))})")
            if value is not None and value not in declared[name].choices:
                raise ValueError(f"{name} must be {' or '.join(declared[name].choices)}, got {value!r}")
        # a plain sorted dict: the same options always give the same metadata
        object.__setattr__(self, "method_options",
                           {k: v for k, v in sorted(self.method_options.items()) if v is not None})

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "method_options"}
        d["rules"] = list(self.rules) if self.rules is not None else None
        return {**d, **self.method_options}

    @classmethod
    def from_dict(cls, d: dict) -> "DeployOptions":
        """Recipe keys -> options; method export options are top-level keys (``gates_k: fixed``)."""
        from ..compress.registry import export_options
        declared = export_options()
        d = dict(d)
        if "method_options" in d:
            raise VitoptError(f"write method export options as top-level keys ({', '.join(sorted(declared))})")
        known = ({f.name for f in dataclasses.fields(cls)} - {"method_options"}) | set(declared)
        unknown = sorted(set(d) - known)
        if unknown:
            raise VitoptError(f"unknown export option(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        methods = {k: coerce(d.pop(k), Optional[str], f"export.{k}") for k in list(d) if k in declared}
        opts = super().from_dict(d)
        try:
            return dataclasses.replace(opts, method_options=methods)
        except ValueError as e:
            raise VitoptError(f"invalid export options: {e}") from None

    def metadata(self) -> dict:
        """The graph-shaping choices as ``vitopt.*`` metadata_props (parity settings are checks, not
        choices: they go to the report, so a file does not change with the images it was checked on)."""
        meta = {"vitopt.cleanup": str(self.cleanup).lower(), "vitopt.precision": self.precision}
        if self.cleanup:
            meta["vitopt.rules"] = "default" if self.rules is None else ",".join(self.rules)
        meta.update({f"vitopt.export.{k}": v for k, v in self.method_options.items()})
        return meta
