"""Graph rewrite rules, one per module, each documenting the subgraph it matches.

Registered rules (``list_rules()``):

* ``remove_identity`` — bypass Identity nodes.
* ``reshape_transpose_to_transpose`` — flatten/transpose/unflatten of the last two dims -> Transpose.
* ``merge_attention_scales`` — q·c1 @ kᵀ·c2 -> (q·c1c2) @ kᵀ.

To add one: a module here with a ``@register_rule`` class (see ``base.py``) whose module name is
listed in ``_BUILTIN`` or ``_EXTRA`` below; ``_EXTRA`` rules (e.g. the low-rank
``merge_lowrank_pairs``, module ``merge_lowrank_pairs.py`` registering a rule of the same name)
are imported and run by ``cleanup_graph`` when their module exists.
"""
from .base import (Rule, apply_rules, const_value, detach, get_rule, list_rules, only_consumer, producer,
                   register_rule, replace_tensor, scalar_value)

# the built-in rules cleanup_graph runs by default, in order
DEFAULT_RULES = ("remove_identity", "reshape_transpose_to_transpose", "merge_attention_scales")

_BUILTIN = DEFAULT_RULES
# rule modules of other features, run by default after the built-ins when the module exists
_EXTRA = ("merge_lowrank_pairs",)


def default_rules() -> tuple:
    """DEFAULT_RULES plus the registered ``_EXTRA`` rules that are installed (the list cleanup_graph runs)."""
    _load_builtin_rules()
    from .base import _REGISTRY
    extra = tuple(name for name in _EXTRA if name in _REGISTRY)
    return DEFAULT_RULES + extra


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


__all__ = ["Rule", "register_rule", "apply_rules", "get_rule", "list_rules", "DEFAULT_RULES", "default_rules",
           "producer",
           "only_consumer", "const_value", "scalar_value", "replace_tensor", "detach"]
