"""Mixed precision of the training loops (slim search, gate training, distillation): one rule.

On CUDA, autocast to bfloat16 when the GPU supports it, else float16 with loss scaling; on the CPU
the loops stay float32 (CPU autocast is slower than float32 for these models and would change the
result a CPU test compares against).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable


@dataclass
class MixedPrecision:
    """``autocast()`` for the forward passes and ``scaler`` for the backward (a no-op unless float16)."""
    autocast: Callable
    scaler: object
    dtype: str           # "float32" | "bfloat16" | "float16": what the report records

    @property
    def enabled(self) -> bool:
        return self.dtype != "float32"


def mixed_precision(device, enabled: bool) -> MixedPrecision:
    """The precision a loop on ``device`` runs in when ``enabled`` (its config's ``amp`` field).

    Example: ``mp = mixed_precision("cuda", True); with mp.autocast(): loss = f(x)``
    """
    import torch
    dev = torch.device(device)
    if not (enabled and dev.type == "cuda"):
        return MixedPrecision(contextlib.nullcontext, torch.amp.GradScaler("cuda", enabled=False), "float32")
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    return MixedPrecision(lambda: torch.autocast("cuda", dtype=dtype), scaler, str(dtype).replace("torch.", ""))
