"""Which step orders a recipe may use: the rules as data, checked when the recipe loads.

A recipe is a sequence of steps; some orders cannot work (``build`` before ``export``) and
some would silently do something else than asked (a pruning method after an input-adaptive one slices a model
calibrated on the unsliced widths). Each rule below names the steps it
is about and the one-line reason a user sees, so a long compression step never runs in vain.

Step tags: a step has its own kind (``export``, a method name, ...) and, where it applies, a group
tag: ``compression`` or ``recovery`` (the method's role in the registry,
``optimizer.compress.registry.METHODS``, which also holds the methods each may not follow); a ``bench`` step is also tagged
``bench:<backend>`` for each backend it times (``bench:onnxruntime`` needs an ONNX file,
``bench:tensorrt`` an engine).

Supported combined orders are tested in tests/sweep/test_order.py.
"""
from __future__ import annotations

from typing import Sequence

from ..errors import VitoptError

from ..compress.registry import METHODS

# the registry says which methods compress and which recover, and which methods each may not follow
COMPRESSION = tuple(name for name, entry in METHODS.items() if entry.role == "compression")
RECOVERY = tuple(name for name, entry in METHODS.items() if entry.role == "recovery")

# (later, earlier, reason): ``later`` may not come after any step tagged ``earlier``
NOT_AFTER = (
    ("compression", "export", "a compression step after export would not be in the exported model; move it before export"),
    ("recovery", "export", "distill after export would not be in the exported model; move it before export"),
    ("export", "build", "export after build: the engine would be built from the previous ONNX file"),
) + tuple((name, earlier, reason) for name, entry in METHODS.items() for earlier, reason in entry.not_after.items())
# (step, any of these before it, reason)
NEEDS_BEFORE = (
    ("build", ("export",), "build step needs an export step before it"),
    ("bench:onnxruntime", ("export",), "bench on onnxruntime needs an export step before it"),
    ("bench:tensorrt", ("build",), "bench on tensorrt needs a build step before it (an engine to run)"),
    ("recovery", COMPRESSION, "distill recovers what a compression step changed: put it after "
                              + " or ".join(COMPRESSION)),
)
# steps a recipe may hold once: a second one would redo (a compression method) or overwrite (export, build) the first
AT_MOST_ONCE = {
    **{name: f"two {name} steps: give one {name} step with the final budget" for name in COMPRESSION},
    "export": "two export steps: the second would overwrite model.onnx",
    "build": "two build steps: the second would overwrite the engines (give all batch sizes / precisions in one)",
}
# a repeated tag right after itself
NOT_TWICE_IN_A_ROW = {"recovery": "two distill steps in a row: give one with more steps or epochs"}


# SlimConfig.token_mode's default, here so that loading a recipe imports no torch (tests/sweep/test_order.py
# checks the two agree)
SLIM_TOKEN_MODE = "merge"


def slim_merges(options: dict) -> bool:
    """Whether a slim step with these recipe options merges tokens: token_mode merge (SlimConfig's
    default when not given) with tokens pruned and a MACs budget (``merge.slim_mode.uses_merging``)."""
    mode = options.get("token_mode", SLIM_TOKEN_MODE)
    has_params = any(k in options for k in ("params", "params_ratio"))
    return mode == "merge" and options.get("prune_tokens", True) is not False and not has_params


def step_tags(kind: str, options: dict) -> set:
    """The kind of a step plus its group tags (see the module docstring)."""
    tags = {kind}
    if kind in COMPRESSION:
        tags.add("compression")
    if kind in RECOVERY:
        tags.add("recovery")
    if kind == "slim" and slim_merges(options):   # slim's merge mode: the merge rules apply
        tags.add("merge")
    if kind == "bench":
        backends = options.get("backends", ["onnxruntime", "torch"])
        backends = [backends] if isinstance(backends, str) else list(backends or [])
        tags.update(f"bench:{b}" for b in backends)
    return tags


def order_problem(steps: Sequence) -> str | None:
    """The first rule ``steps`` (objects with ``kind`` and ``options``) break, as "step N (kind): reason"; None if none."""
    seen: list = []          # tags of the steps before the current one
    counts: dict = {}
    for i, step in enumerate(steps, 1):
        tags = step_tags(step.kind, step.options or {})
        where = f"step {i} ({step.kind})"
        earlier = set().union(*seen) if seen else set()
        for later, before, reason in NOT_AFTER:
            if later in tags and before in earlier:
                return f"{where}: {reason}"
        for tag, needs, reason in NEEDS_BEFORE:
            if tag in tags and not earlier.intersection(needs):
                return f"{where}: {reason}"
        counts[step.kind] = counts.get(step.kind, 0) + 1
        if step.kind in AT_MOST_ONCE and counts[step.kind] > 1:
            return f"{where}: {AT_MOST_ONCE[step.kind]}"
        for tag, reason in NOT_TWICE_IN_A_ROW.items():
            if tag in tags and seen and tag in seen[-1]:
                return f"{where}: {reason}"
        seen.append(tags)
    return None


def check_order(steps: Sequence, source: str = "recipe") -> None:
    """Raise VitoptError naming the first order rule ``steps`` break (``source``: what to call them)."""
    problem = order_problem(steps)
    if problem:
        raise VitoptError(f"{source}: {problem}")

