"""Graph rewrite rules, one per module, each documenting the subgraph it matches.

Registered rules (``list_rules()``; ``vitopt surgery --list`` prints each with its sketch):

* ``fold_constants`` — constant folding incl. static shape arithmetic (a graph pass).
* ``remove_identity`` — bypass Identity nodes.
* ``simplify_casts`` / ``simplify_reshapes`` / ``simplify_transposes`` / ``remove_noop_expand`` —
  redundant Cast / Reshape / Transpose / Expand chains; ``remove_neutral_elementwise`` — x+0, x*1.
* ``static_reshape_shapes`` — a Reshape target computed from Shape arithmetic -> a constant with -1.
* ``reshape_transpose_to_transpose`` — flatten/transpose/unflatten of the last two dims -> Transpose.
* ``merge_attention_scales`` — q·c1 @ kᵀ·c2 -> (q·c1c2) @ kᵀ.
* ``fuse_layer_norm`` — decomposed LayerNorm -> LayerNormalization (opset >= 17).
* ``fuse_gelu`` — decomposed GELU (erf / tanh) -> Gelu (opset >= 20); ``fuse_gelu_contrib``
  (opt-in) -> com.microsoft.Gelu on older opsets.
* ``merge_lowrank_pairs`` — two-term factorised Linear -> one pair of factors.
* ``check_dynamic_batch`` — a check: token gathers and gate TopK paths keep the dynamic batch.

To add one: a module here with a ``@register_rule`` class (see ``base.py``) and its module name in
``_MODULES``; add it to ``DEFAULT_RULES`` if ``cleanup_graph`` should run it by default.
"""
from .base import (CheckRule, Rule, apply_rules, as_rule, bypass, const_value, detach, get_rule, graph_opset,
                   list_rules, only_consumer, producer, register_rule, replace_tensor, run_rule, scalar_value)

# the rules cleanup_graph runs by default, in order (constant folding runs before and after them
# when cleanup_graph(fold=True)); check rules inspect the final graph
DEFAULT_RULES = ("remove_identity", "remove_neutral_elementwise", "simplify_casts",
                 "reshape_transpose_to_transpose", "static_reshape_shapes", "simplify_reshapes", "simplify_transposes",
                 "remove_noop_expand", "merge_attention_scales", "fuse_layer_norm", "fuse_gelu", "merge_lowrank_pairs",
                 "check_dynamic_batch")

# every rule module (registered on first use of the registry)
_MODULES = ("fold_constants", "remove_identity", "remove_neutral_elementwise", "static_reshape_shapes",
            "simplify_casts", "simplify_reshapes", "simplify_transposes",
            "remove_noop_expand", "reshape_transpose_to_transpose", "merge_attention_scales", "fuse_layer_norm",
            "fuse_gelu", "fuse_gelu_contrib", "merge_lowrank_pairs", "check_dynamic_batch")


def default_rules() -> tuple:
    """The rules ``cleanup_graph`` runs when none are given (``DEFAULT_RULES``)."""
    _load_builtin_rules()
    return DEFAULT_RULES


def _load_builtin_rules() -> None:
    import importlib
    for mod in _MODULES:
        importlib.import_module(f"{__name__}.{mod}")


__all__ = ["Rule", "CheckRule", "register_rule", "apply_rules", "run_rule", "as_rule", "get_rule", "list_rules",
           "DEFAULT_RULES", "default_rules", "graph_opset", "producer", "only_consumer", "const_value",
           "scalar_value", "replace_tensor", "detach", "bypass"]
