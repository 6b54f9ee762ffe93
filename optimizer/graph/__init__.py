"""ONNX graph passes: clean-up (folding, rules), op histograms, FP16 conversion.

Where things are:

* ``cleanup.py`` — ``cleanup_graph`` (shape inference, constant folding, rules, cleanup, toposort)
  and ``op_histogram``.
* ``rules/`` — one documented rewrite rule per module, the ``Rule`` base class and ``apply_rules``.
* ``fp16.py`` — ``convert_to_fp16`` for strongly typed TensorRT networks.
"""
from .cleanup import CleanupReport, cleanup_graph, fold_constants, format_histograms, infer_shapes, op_histogram
from .fp16 import FP32_OPS, convert_to_fp16
from .rules import DEFAULT_RULES, Rule, apply_rules, default_rules, get_rule, list_rules, register_rule

__all__ = ["cleanup_graph", "CleanupReport", "op_histogram", "format_histograms", "fold_constants",
           "infer_shapes", "convert_to_fp16", "FP32_OPS", "Rule", "register_rule", "apply_rules", "get_rule",
           "list_rules", "DEFAULT_RULES", "default_rules"]
