"""``LowRankLinear``: a Linear stored as one or two low-rank factor pairs, and the model edits around it.

    y = x @ down1ᵀ @ up1ᵀ + x @ down2ᵀ @ up2ᵀ + bias        down_i: (r_i × in), up_i: (out × r_i)

The first pair is the activation-aware SVD term, the second the error-compensation term. For
deployment the two pairs concatenate into one pair of rank r1 + r2 (``merged`` /
``merge_for_export``): two GEMMs instead of four, numerically the same map.

A model's factorised layers are described by a JSON structure
``{module path: {"in": int, "out": int, "ranks": [r1, r2], "bias": bool}}`` from which
``rebuild`` recreates the exact architecture on a freshly built (or already sliced) model.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import VitoptError


class LowRankLinear(nn.Module):
    """A Linear of rank ``r1 + r2`` held as two factor pairs plus an optional bias.

    Example: ``LowRankLinear(192, 768, ranks=(64, 16), bias=True)``
    """

    use_kernels = False   # kernels.enable(model): the fused Triton op on CUDA (kernels.dispatch says when)

    def __init__(self, in_features: int, out_features: int, ranks: Sequence[int] = (1, 0), bias: bool = True):
        super().__init__()
        r1, r2 = (int(r) for r in ranks)
        if in_features < 1 or out_features < 1:
            raise VitoptError(f"LowRankLinear needs positive sizes, got {in_features}x{out_features}")
        if r1 < 1 or r2 < 0 or r1 + r2 > min(in_features, out_features):
            raise VitoptError(f"LowRankLinear ranks {r1}+{r2} do not fit a {out_features}x{in_features} layer")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.ranks = (r1, r2)
        self.down1 = nn.Parameter(torch.zeros(r1, in_features))
        self.up1 = nn.Parameter(torch.zeros(out_features, r1))
        if r2:
            self.down2 = nn.Parameter(torch.zeros(r2, in_features))
            self.up2 = nn.Parameter(torch.zeros(out_features, r2))
        else:
            self.register_parameter("down2", None)
            self.register_parameter("up2", None)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @property
    def rank(self) -> int:
        return self.ranks[0] + self.ranks[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_kernels:
            from kernels import MAX_RANK, lowrank_linear, wanted  # lazy: triton loads only when enabled
            if self.rank <= MAX_RANK and wanted(x, self.down1):
                down, up = (self.down1, self.up1) if self.down2 is None else \
                    (torch.cat([self.down1, self.down2]), torch.cat([self.up1, self.up2], 1))
                return lowrank_linear(x, down, up, self.bias)
        y = F.linear(F.linear(x, self.down1), self.up1, self.bias)
        if self.down2 is not None:
            y = y + F.linear(F.linear(x, self.down2), self.up2)
        return y

    def vitopt_macs(self, inputs, output) -> int:
        """tokens · rank · (in + out): each pair is two GEMMs through its rank."""
        tokens = inputs[0].numel() // self.in_features
        return tokens * self.rank * (self.in_features + self.out_features)

    @torch.no_grad()
    def set_factors(self, up1, down1, up2=None, down2=None, bias=None) -> "LowRankLinear":
        """Copy factor tensors in (shapes must match this module's ranks)."""
        pairs = [(self.up1, up1), (self.down1, down1)]
        if self.ranks[1]:
            if up2 is None or down2 is None:
                raise VitoptError("this LowRankLinear has a second term: give up2 and down2")
            pairs += [(self.up2, up2), (self.down2, down2)]
        if bias is not None and self.bias is not None:
            pairs.append((self.bias, bias))
        for p, t in pairs:
            t = torch.as_tensor(t)
            if tuple(t.shape) != tuple(p.shape):
                raise VitoptError(f"factor shape {tuple(t.shape)} does not fit parameter {tuple(p.shape)}")
            p.copy_(t.to(p.dtype))
        return self

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """The (out × in) matrix this module applies."""
        w = self.up1 @ self.down1
        if self.down2 is not None:
            w = w + self.up2 @ self.down2
        return w

    @torch.no_grad()
    def merged(self) -> "LowRankLinear":
        """One factor pair of rank r1 + r2 computing the same map (for export)."""
        if not self.ranks[1]:
            return self
        m = LowRankLinear(self.in_features, self.out_features, (self.rank, 0), bias=self.bias is not None)
        m.down1.copy_(torch.cat([self.down1, self.down2], 0))
        m.up1.copy_(torch.cat([self.up1, self.up2], 1))
        if self.bias is not None:
            m.bias.copy_(self.bias)
        return m.to(self.down1.device)

    def spec(self) -> dict:
        return {"in": self.in_features, "out": self.out_features, "ranks": list(self.ranks),
                "bias": self.bias is not None}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, ranks={self.ranks}, "
                f"bias={self.bias is not None}")


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise VitoptError(f"model has no module '{path}'") from None


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = get_submodule(model, parent_path) if parent_path else model
    if not hasattr(parent, name):
        raise VitoptError(f"model has no module '{path}'")
    setattr(parent, name, module)


def lowrank_structure(model: nn.Module) -> dict:
    """``{path: spec}`` of every ``LowRankLinear`` in ``model``."""
    return {name: m.spec() for name, m in model.named_modules() if isinstance(m, LowRankLinear)}


def rebuild(model: nn.Module, structure: dict) -> nn.Module:
    """Replace the nn.Linear at each path of ``structure`` by a shape-correct ``LowRankLinear`` (in place).

    Weights are arbitrary afterwards; load them from the saved state_dict.
    Example: ``rebuild(model, {"blocks.0.mlp.fc1": {"in": 192, "out": 768, "ranks": [64, 0], "bias": True}})``
    """
    if not isinstance(structure, dict):
        raise VitoptError("lowrank structure must be a mapping of module path -> spec")
    for path, spec in structure.items():
        try:
            fin, fout = int(spec["in"]), int(spec["out"])
            r1, r2 = (int(r) for r in spec["ranks"])
            bias = bool(spec["bias"])
        except (KeyError, TypeError, ValueError):
            raise VitoptError(f"lowrank structure entry for '{path}' needs in, out, ranks [r1, r2], bias") from None
        old = get_submodule(model, path)
        if not isinstance(old, (nn.Linear, LowRankLinear)):
            raise VitoptError(f"'{path}' is a {type(old).__name__}, not a Linear: the recipe does not fit this model")
        if (old.in_features, old.out_features) != (fin, fout):
            raise VitoptError(f"'{path}' is {old.in_features}->{old.out_features} but the recipe says {fin}->{fout} "
                              "(were earlier steps, e.g. slim, replayed first?)")
        p = next(old.parameters())
        set_submodule(model, path, LowRankLinear(fin, fout, (r1, r2), bias).to(device=p.device, dtype=p.dtype))
    return model


def merge_for_export(model: nn.Module) -> nn.Module:
    """Replace every two-pair ``LowRankLinear`` by its one-pair ``merged()`` form (in place).

    The map is unchanged (up to float rounding); exported graphs then hold two MatMuls per layer.
    """
    for name, m in list(model.named_modules()):
        if isinstance(m, LowRankLinear) and m.ranks[1]:
            set_submodule(model, name, m.merged())
    return model
