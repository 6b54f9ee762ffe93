"""Graph rewrite rules, one per module, each documenting the subgraph it matches.

Registered rules (``list_rules()``):

* ``remove_identity`` — bypass Identity nodes.
* ``reshape_transpose_to_transpose`` — flatten/transpose/unflatten of the last two dims -> Transpose.
* ``merge_attention_scales`` — q·c1 @ kᵀ·c2 -> (q·c1c2) @ kᵀ.

To add one: a module here with a ``@register_rule`` class (see ``base.py``), imported below.
"""
from .base import (Rule, apply_rules, const_value, detach, get_rule, list_rules, only_consumer, producer,
                   register_rule, replace_tensor, scalar_value)

# the rules cleanup_graph runs by default, in order
DEFAULT_RULES = ("remove_identity", "reshape_transpose_to_transpose", "merge_attention_scales")

_BUILTIN = ("remove_identity", "reshape_transpose_to_transpose", "merge_attention_scales")
_EXTRA = ("merge_lowrank_pairs",)  # added by the low-rank work when present


def _load_builtin_rules() -> None:
    import importlib
    for mod in _BUILTIN:
        importlib.import_module(f"{__name__}.{mod}")
    for mod in _EXTRA:
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{mod}":
                raise


__all__ = ["Rule", "register_rule", "apply_rules", "get_rule", "list_rules", "DEFAULT_RULES", "producer",
           "only_consumer", "const_value", "scalar_value", "replace_tensor", "detach"]
