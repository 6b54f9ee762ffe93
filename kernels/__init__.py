"""GPU kernels (Triton) for compressed ViT structures, registered as ``torch.library`` custom ops.

* ``lowrank_linear(x, down, up, bias)`` — fused ``(x·downᵀ)·upᵀ + bias``, intermediate on chip.
* ``gathered_rows_linear(x, W, idx, b)`` / ``gathered_cols_linear(h, W, idx, b)`` — gated GEMMs that
  read the active rows / columns of W in place.
* ``enable(model, on=True)`` — the compressed modules (``LowRankLinear``, gated attention / MLP)
  call the kernels on CUDA; ``kernels.dispatch`` says exactly when.
* ``kernels.reference`` — the same ops in plain PyTorch, and the tolerances between the two.

Attributes load lazily: ``import kernels`` imports neither torch nor triton; an op's first use
registers it and its first launch imports triton.
"""
import importlib

_HOME = {
    "lowrank_linear": "lowrank",
    "MAX_RANK": "lowrank",
    "gathered_rows_linear": "gathered",
    "gathered_cols_linear": "gathered",
    "enable": "dispatch",
    "wanted": "dispatch",
}

__all__ = sorted(_HOME)


def __getattr__(name):
    if name in _HOME:
        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")
