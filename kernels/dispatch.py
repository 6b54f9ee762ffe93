"""When a compressed module runs a kernel instead of its PyTorch reference, and the switch for it.

A module runs the kernel when all of these hold, else the reference:
* its ``use_kernels`` flag is on (``enable(model)``; off by default, never saved with the weights);
* no exporter is tracing it (TorchScript tracing or ``torch.onnx.export``): exported graphs must
  stay plain MatMul / Gather, so ONNX files and TensorRT engines are the same with or without kernels;
* its tensors are on CUDA (or on CPU while Triton's interpreter is on, TRITON_INTERPRET=1: tests).
Gradients flow through the ops (plain-PyTorch backward formulas), so training may keep them on.
"""
import os

# Triton decides interpreter vs compiled code when its kernels are decorated, from this variable;
# read once here so the decision above matches it and stays a constant under torch.compile.
_INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def enable(model, on: bool = True) -> int:
    """Set ``use_kernels`` on every module of ``model`` that has kernels (factorised Linears, gated
    attention / MLP); returns how many. The flag is a run-time choice: not saved, not exported.

    Example: ``kernels.enable(model)`` before ``torch.compile(model)`` on CUDA.
    """
    if not isinstance(on, bool):
        from optimizer.errors import VitoptError
        raise VitoptError(f"kernels.enable takes on=True or False, got {on!r}")
    count = 0
    for m in model.modules():
        if hasattr(type(m), "use_kernels"):
            m.use_kernels = on
            count += 1
    return count


def wanted(*tensors) -> bool:
    """True when a module whose ``use_kernels`` is on should call the kernel for these tensors."""
    import torch
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return False
    return all(t.is_cuda or (_INTERPRETER and t.device.type == "cpu") for t in tensors)
