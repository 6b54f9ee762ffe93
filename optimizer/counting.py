"""Parameters and MACs counted from what actually executes.

Forward hooks see the real shapes of every executed op, so pruned tokens, sliced widths,
factorised linears and input-adaptive gates are all counted as they run. Convention (fvcore's,
which timm and the papers quote: DeiT-Ti 1.26 G, DeiT-S 4.61 G, DeiT-B 17.58 G at 224 px):
  Linear  tokens·in·out        Conv2d  out_elems·in/groups·kh·kw
  LayerNorm 5 per element (4 without affine)
  attention q·kᵀ and attn·v    2·B·heads·N²·head_dim
Bias adds, softmax, GELU and residual adds are not counted.
Modules that run matmuls outside nn.Linear (attention, gated layers) count those through a
``vitopt_macs(inputs, output) -> int`` method, called from a hook; their nn.Linear children
still count themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn


@dataclass
class Counts:
    params: int
    macs: float                       # per image
    per_module: dict = field(default_factory=dict)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def mparams(self) -> float:
        return self.params / 1e6

    def to_dict(self) -> dict:
        return {"params": self.params, "macs": self.macs,
                "params_M": round(self.mparams, 4), "gmacs": round(self.gmacs, 4)}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _timm_attention_macs(m, inputs) -> int:
    B, N, _ = inputs[0].shape
    return 2 * B * m.num_heads * N * N * m.head_dim


def _op_macs(m: nn.Module, inputs, output) -> int:
    if isinstance(m, nn.Linear):
        return output.numel() // max(m.out_features, 1) * m.in_features * m.out_features if m.out_features else 0
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        return output.numel() * (m.in_channels // m.groups) * kh * kw
    if isinstance(m, nn.LayerNorm):
        return inputs[0].numel() * (5 if m.elementwise_affine else 4)
    fn = getattr(m, "vitopt_macs", None)
    if callable(fn):
        return int(fn(inputs, output))
    if type(m).__name__ == "Attention" and hasattr(m, "num_heads") and hasattr(m, "head_dim"):
        return _timm_attention_macs(m, inputs)
    return 0


@torch.no_grad()
def count_macs(model: nn.Module, inputs: Optional[torch.Tensor] = None, img_size: int = 224) -> Counts:
    """MACs per image of one forward pass on ``inputs`` (default: one zero image).

    Input-adaptive models should pass a real batch: the result is the mean over its images.
    """
    if inputs is None:
        p = next(model.parameters())
        size = model_input_size(model, img_size)
        inputs = torch.zeros((1, *size), dtype=p.dtype, device=p.device)
    per_module: dict[str, int] = {}
    names = {m: n for n, m in model.named_modules()}
    handles = []

    def hook(m, inp, out):
        macs = _op_macs(m, inp, out)
        if macs:
            per_module[names[m]] = per_module.get(names[m], 0) + macs

    for m in model.modules():
        handles.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    batch = inputs.shape[0]
    total = sum(per_module.values()) / batch
    return Counts(params=count_params(model), macs=total,
                  per_module={k: v / batch for k, v in per_module.items()})


def model_input_size(model: nn.Module, default: Optional[int] = 224) -> tuple:
    """(C, H, W) the model was built for (its patch embed), else its pretrained config, else
    (3, default, default); with ``default=None`` an unknown size raises VitoptError (the exporter
    must not guess)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    pe = getattr(model, "patch_embed", None)
    img = getattr(pe, "img_size", None)
    if pe is not None and img:
        h, w = (img, img) if isinstance(img, int) else tuple(img)
        return (int(getattr(getattr(pe, "proj", None), "in_channels", 3)), int(h), int(w))
    if size:
        return tuple(map(int, size))
    if default is None:
        from .errors import VitoptError
        raise VitoptError(f"cannot tell the input size of {type(model).__name__}: pass example_shape=(C, H, W)")
    return (3, default, default)