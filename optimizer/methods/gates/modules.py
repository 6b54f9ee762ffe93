"""Gated attention and MLP: one input-adaptive decision per group of samples, dense tensors throughout.

A gated module holds the (statically pruned) weights of its units in two parts::

    [ static units (always run) | dynamic units (each behind one gate) ]

Units are attention heads, or MLP channel groups of ``group_size`` channels. A small gate network
scores the dynamic units from the block input pooled over tokens *and over the samples of the
group*, so every sample of a group runs the same sub-network and the batch stays one dense tensor.

Eval (deployment) forward, group = the whole batch::

    pooled = mean(x, dims=(batch, tokens))        (D,)
    scores = gate_net(pooled)                     (G,)
    K      = max(1, count(scores > threshold))    data-dependent, 1-element
    idx    = TopK(scores, K).indices              (K,)
    W      = Gather(weights, static ∪ idx)         smaller matrices
    y      = MatMul(x, W) ...

which exports to ONNX as ReduceMean → MatMul → Greater → ReduceSum → Clip → TopK → Gather → MatMul.
No NonZero, so TensorRT for RTX builds it. ``fixed_k`` replaces the data-dependent K by a constant
(the calibrated mean) for targets that need static shapes.

Training forward: the dense computation with a per-sample mask; the batch is split into groups
(``set_group_sizes``), each group's hard decision uses a straight-through estimator (optionally
with logistic "Gumbel-sigmoid" noise), and the module exposes its expected MACs per sample as a
differentiable tensor for the MACs-target loss.

Outputs of one sample depend on the other samples of its group (the pooled gate input), never on
their order within the group.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import VitoptError


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


def subgroup_sizes(batch: int) -> list:
    """Recursive halving of a batch: 8 -> [4, 2, 1, 1], 10 -> [5, 2, 1, 1, 1], 1 -> [1].

    Every group size from batch/2 down to 1 occurs in one training batch (sub-group gate
    augmentation); the trainer alternates it with whole-batch groups so size ``batch`` is seen too.
    """
    if batch < 1:
        raise VitoptError(f"batch size must be positive, got {batch}")
    sizes, rest = [], batch
    while rest > 1:
        g = rest // 2
        sizes.append(g)
        rest -= g
    sizes.append(rest)
    return sizes


def level_group_sizes(batch: int, step: int) -> list:
    """Level ``step mod L`` of the recursive split, the whole batch in groups of that size:
    batch 8 -> [8], [4, 4], [2, 2, 2, 2], [1] * 8, then again. Every group size from the batch down to
    1 gets the same share of steps and of samples (the "tree" split of ``subgroup_sizes`` gives
    size 1 to two samples per batch only)."""
    if batch < 1:
        raise VitoptError(f"batch size must be positive, got {batch}")
    levels, g = [], batch
    while True:
        levels.append(g)
        if g == 1:
            break
        g = max(1, g // 2)
    size = levels[step % len(levels)]
    full, rest = divmod(batch, size)
    return [size] * full + ([rest] if rest else [])


def group_schedule(batch: int, step: int, subgroup_aug: bool, mode: str = "tree") -> list:
    """Gate groups of training step ``step``: the whole batch without augmentation; with it, "tree"
    alternates ``subgroup_sizes`` (even steps) with the whole batch, "level" is ``level_group_sizes``.
    Gate training and the backbone fine-tune both follow it, so the backbone is tuned under the
    same group sizes the gates were trained for."""
    if not subgroup_aug:
        return [batch]
    if mode == "level":
        return level_group_sizes(batch, step)
    if mode != "tree":
        raise VitoptError(f"unknown sub-group mode {mode!r}: use 'tree' or 'level'")
    return subgroup_sizes(batch) if step % 2 == 0 else [batch]


class GateNet(nn.Module):
    """Pooled features (D,) or (groups, D) -> one logit per dynamic unit. ``hidden=0``: one Linear."""

    def __init__(self, dim: int, units: int, hidden: int = 32, init_logit: float = 1.0):
        super().__init__()
        self.dim, self.units, self.hidden = dim, units, hidden
        if hidden > 0:
            self.fc1 = nn.Linear(dim, hidden)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(hidden, units)
            last = self.fc2
        else:
            self.fc = nn.Linear(dim, units)
            last = self.fc
        nn.init.normal_(last.weight, std=0.01)
        nn.init.constant_(last.bias, init_logit)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.hidden > 0:
            return self.fc2(self.act(self.fc1(pooled)))
        return self.fc(pooled)

    @property
    def last(self) -> nn.Linear:
        return self.fc2 if self.hidden > 0 else self.fc

    def keep_units(self, index: Sequence[int]) -> None:
        """Keep only the output units ``index`` (in that order)."""
        idx = torch.as_tensor(list(index), dtype=torch.long)
        old = self.last
        new = nn.Linear(old.in_features, len(idx))
        with torch.no_grad():
            new.weight.copy_(old.weight[idx])
            new.bias.copy_(old.bias[idx])
        if self.hidden > 0:
            self.fc2 = new
        else:
            self.fc = new
        self.units = len(idx)


def is_lowrank(lin: nn.Module) -> bool:
    """True for a factorised linear (``LowRankLinear``: down/up pairs), by its attributes (no lowrank import)."""
    return hasattr(lin, "down1") and hasattr(lin, "up1")


def row_parts(lin: nn.Module) -> tuple:
    """(pre, W, bias) with ``lin(x) == F.linear(pre(x), W, bias)``; rows of W are output units.

    nn.Linear: pre = None, W = weight. Low-rank ``up·down`` (both factor pairs concatenated):
    pre = down (r × in), W = up (out × r): gathering output units gathers rows of ``up`` only.
    """
    if is_lowrank(lin):
        if lin.down2 is None:
            return lin.down1, lin.up1, lin.bias
        return torch.cat([lin.down1, lin.down2]), torch.cat([lin.up1, lin.up2], 1), lin.bias
    return None, lin.weight, lin.bias


def col_parts(lin: nn.Module) -> tuple:
    """(Wt, post, bias) with ``lin(h) == F.linear(h @ Wt, post, bias)`` (post None: ``h @ Wt + bias``);
    rows of Wt are input units."""
    if is_lowrank(lin):
        pre, up, bias = row_parts(lin)
        return pre.t(), up, bias
    return lin.weight.t(), None, lin.bias


def _width(lin: nn.Module, side: str) -> int:
    """Inner width of the gathered matrix: the rank for low-rank layers, else the other dimension."""
    if is_lowrank(lin):
        return lin.rank
    return lin.in_features if side == "rows" else lin.out_features


def _unit_rows(idx: torch.Tensor, unit_size: int, parts: int = 1, part_stride: int = 0) -> torch.Tensor:
    """Row numbers of units ``idx`` (``unit_size`` consecutive rows each) in each of ``parts`` blocks
    ``part_stride`` rows apart, in the order the reshape → index_select gathers of the reference give."""
    rows = (idx[:, None] * unit_size + torch.arange(unit_size, device=idx.device)).reshape(-1)
    if parts == 1:
        return rows
    return (torch.arange(parts, device=idx.device)[:, None] * part_stride + rows).reshape(-1)


def _run(lin: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's forward without its module hooks (the gated module counts its own MACs)."""
    return lin.forward(x)


class _Gated(nn.Module):
    """Shared gate logic: decisions, forced patterns, recording, training masks."""

    unit_kind = "unit"
    use_kernels = False   # kernels.enable(model): gathered-weight Triton GEMMs on CUDA (kernels.dispatch says when)

    def _kernels_on(self, *tensors) -> bool:
        if not self.use_kernels:
            return False
        from kernels import wanted  # lazy: triton loads only when enabled
        return wanted(*tensors)

    def _init_gates(self, dim: int, static_units: int, dynamic_units: int, gate_hidden: int,
                    threshold: float, init_logit: float = 1.0) -> None:
        if gate_hidden < 0:
            raise VitoptError(f"gate_hidden must be >= 0, got {gate_hidden}")
        self.static_units, self.dynamic_units = int(static_units), int(dynamic_units)
        self.threshold = float(threshold)
        self.gate_hidden = int(gate_hidden)
        self.gate_net = GateNet(dim, dynamic_units, gate_hidden, threshold + init_logit) if dynamic_units else None
        # run-time knobs (not part of the saved state; set through functions in this package)
        self.forced: Optional[list] = None      # list[bool] per dynamic unit: bypass the gate net
        self.fixed_k: Optional[int] = None      # constant K (static shapes) instead of the data-dependent one
        self.group_sizes: Optional[list] = None  # training: partition of the batch into gate groups
        self.estimator = "ste"
        self.gumbel_tau = 1.0
        self.record: Optional[list] = None      # when a list: each eval forward appends its on-vector
        self.last_active: float = float(dynamic_units)
        self.train_macs: Optional[torch.Tensor] = None
        self.mean_active: Optional[float] = None  # calibrated mean number of active dynamic units

    @property
    def units(self) -> int:
        return self.static_units + self.dynamic_units

    def _eval_index(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """Indices of the dynamic units that run for this batch (None: no dynamic units)."""
        if not self.dynamic_units:
            return None
        if self.forced is not None:
            on = [i for i, f in enumerate(self.forced) if f]
            idx = torch.tensor(on if on else [0], dtype=torch.long, device=x.device)
            if not _tracing():
                self.last_active = float(len(idx))
            return idx
        pooled = x.mean(dim=(0, 1))
        scores = self.gate_net(pooled)
        if self.fixed_k is not None:
            k = max(1, min(int(self.fixed_k), self.dynamic_units))
            idx = torch.topk(scores, k).indices
        else:
            k = (scores > self.threshold).sum().clamp(min=1)
            idx = torch.topk(scores, k).indices
        if not _tracing():
            self.last_active = float(idx.numel())
            if self.record is not None:
                on = torch.zeros(self.dynamic_units, dtype=torch.bool)
                on[idx.cpu()] = True
                self.record.append(on)
        return idx

    def _all_index(self, idx: Optional[torch.Tensor], device) -> torch.Tensor:
        static = torch.arange(self.static_units, device=device)
        if idx is None:
            return static
        return torch.cat([static, idx + self.static_units]) if self.static_units else idx

    def _train_mask(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dynamic_units) per-sample mask; hard values forward, sigmoid gradient backward."""
        B = x.shape[0]
        sizes = self.group_sizes if self.group_sizes is not None else [B]
        if sum(sizes) != B:
            raise VitoptError(f"gate group sizes {sizes} do not add up to the batch {B}")
        if self.forced is not None:
            m = torch.tensor([float(f) for f in self.forced], device=x.device)
            return m.expand(B, -1)
        per_sample = x.mean(dim=1)                                     # (B, D)
        pooled = torch.stack([g.mean(0) for g in per_sample.split(sizes)])  # (groups, D)
        logits = self.gate_net(pooled) - self.threshold
        if self.estimator == "gumbel":
            u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
            noisy = logits + torch.log(u) - torch.log1p(-u)
            soft = torch.sigmoid(noisy / self.gumbel_tau)
            hard = noisy > 0
        else:
            soft = torch.sigmoid(logits)
            hard = logits > 0
        # at least one dynamic unit per group, as in deployment (K >= 1)
        none_on = ~hard.any(dim=1)
        if none_on.any():
            top = F.one_hot(logits.argmax(dim=1), self.dynamic_units).bool()
            hard = hard | (top & none_on[:, None])
        mask = hard.float() + soft - soft.detach()
        counts = torch.as_tensor(sizes, device=x.device)
        return mask.repeat_interleave(counts, dim=0)                    # (B, units)

    def unit_costs(self, x: torch.Tensor) -> tuple:
        """(MACs per image of the always-run part, MACs per image of one dynamic unit)."""
        raise NotImplementedError

    def output_map(self) -> nn.Module:
        """The layer every unit writes its output through (``proj`` / ``fc2``)."""
        raise NotImplementedError

    def eval_unit_mask(self, x: torch.Tensor) -> torch.Tensor:
        """(units,) 0/1 float mask of the units that run on ``x`` in eval: static units and the dynamic
        units the gate chose for this batch (one group, as deployed)."""
        mask = torch.zeros(self.units, device=x.device, dtype=x.dtype)
        mask[self._all_index(self._eval_index(x), x.device)] = 1.0
        return mask

    @torch.no_grad()
    def output_map_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input of ``output_map()`` over ALL its columns for the eval forward of ``x`` (the batch is
        one gate group): the active units' values, zeros where the gate switched a unit off, so
        ``output_map()(output_map_input(x))`` equals ``self(x)`` in eval. The closed-form re-fit of the
        output map reads its statistics from this (optimizer/reconstruct): columns of units that are off
        for a group add nothing, and the fitted intercept takes their mean contribution.
        Example: ``fc2_in = block.mlp.output_map_input(block.norm2(x))``
        """
        raise NotImplementedError


class GatedAttention(_Gated):
    """Multi-head attention whose heads are static or gated; param names equal timm's (qkv, proj)."""

    unit_kind = "head"

    def __init__(self, dim: int, static_heads: int, dynamic_heads: int, head_dim: int, scale: float,
                 qkv_bias: bool = True, proj_bias: bool = True, gate_hidden: int = 32, threshold: float = 0.0,
                 init_logit: float = 1.0):
        super().__init__()
        if static_heads < 0 or dynamic_heads < 0 or static_heads + dynamic_heads < 1:
            raise VitoptError(f"gated attention needs at least one head, got {static_heads} static + "
                              f"{dynamic_heads} dynamic")
        self._init_gates(dim, static_heads, dynamic_heads, gate_hidden, threshold, init_logit)
        self.dim, self.head_dim, self.scale = dim, int(head_dim), float(scale)
        heads = self.units
        self.qkv = nn.Linear(dim, 3 * heads * head_dim, bias=qkv_bias)
        self.proj = nn.Linear(heads * head_dim, dim, bias=proj_bias)

    @property
    def num_heads(self) -> int:
        return self.units

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
        return self._attend(x, attn_mask, is_causal, keys=False)[0]

    def _attend(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor], is_causal: bool, keys: bool) -> tuple:
        """(output, keys averaged over the heads that ran, or None unless ``keys``): the merge metric of
        ``GatedMergeAttention``; plain gated attention never computes it, so its graph has no extra op."""
        B, N, D = x.shape
        H, hd = self.units, self.head_dim
        if self.training and self.dynamic_units:
            mask = torch.cat([torch.ones(B, self.static_units, device=x.device, dtype=x.dtype),
                              self._train_mask(x).to(x.dtype)], dim=1)          # (B, H)
            qkv = _run(self.qkv, x).reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=self.scale)
            o = o * mask[:, :, None, None]
            o = o.transpose(1, 2).reshape(B, N, H * hd)
            fixed, per_unit = self.unit_costs(x)
            self.train_macs = fixed + per_unit * mask[:, self.static_units:].sum(1)
            # the heads that ran (hard mask forward, as the gathered eval forward averages them)
            metric = (k * mask[:, :, None, None]).sum(1) / mask.sum(1)[:, None, None] if keys else None
            return _run(self.proj, o), metric
        if not self.dynamic_units:      # every head static: the plain attention, no gather
            qkv = _run(self.qkv, x).reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=self.scale)
            return _run(self.proj, o.transpose(1, 2).reshape(B, N, H * hd)), k.mean(1) if keys else None
        idx = self._all_index(self._eval_index(x), x.device)
        pre, w, b = row_parts(self.qkv)
        kernels_on = self._kernels_on(x, w)
        if kernels_on:
            from kernels import gathered_cols_linear, gathered_rows_linear
            rows = _unit_rows(idx, hd, 3, H * hd)   # valid by construction: no range check, no host sync
            qkv = gathered_rows_linear(x if pre is None else F.linear(x, pre), w, rows, b, check_index=False)
        else:
            r = w.shape[1]
            wqkv = w.reshape(3, H, hd, r).index_select(1, idx).reshape(-1, r)
            bqkv = None if b is None else b.reshape(3, H, hd).index_select(1, idx).reshape(-1)
            qkv = F.linear(x if pre is None else F.linear(x, pre), wqkv, bqkv)
        qkv = qkv.reshape(B, N, 3, -1, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=self.scale)
        o = o.transpose(1, 2).reshape(B, N, -1)
        metric = k.mean(1) if keys else None
        wt, post, b = col_parts(self.proj)
        if kernels_on:
            out = gathered_cols_linear(o, wt.t(), _unit_rows(idx, hd), None if post is not None else b,
                                       check_index=False)
            return (out if post is None else F.linear(out, post, b)), metric
        r = wt.shape[1]
        out = torch.matmul(o, wt.reshape(H, hd, r).index_select(0, idx).reshape(-1, r))
        if post is not None:
            out = F.linear(out, post)
        return (out if b is None else out + b), metric

    @torch.no_grad()
    def unit_importance(self, x: torch.Tensor) -> torch.Tensor:
        """Mean norm of each dynamic head's contribution to the output on ``x`` (dense computation)."""
        B, N, D = x.shape
        H, hd = self.units, self.head_dim
        qkv = _run(self.qkv, x).reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        o = F.scaled_dot_product_attention(q, k, v, scale=self.scale)                  # (B, H, N, hd)
        wt, post, _ = col_parts(self.proj)
        w = wt if post is None else wt @ post.t()                                        # (H*hd, D)
        w = w.reshape(H, hd, D)
        contrib = torch.einsum("bhnd,hde->bhne", o, w).norm(dim=-1).mean(dim=(0, 2))     # (H,)
        return contrib[self.static_units:]

    def output_map(self) -> nn.Module:
        return self.proj

    @torch.no_grad()
    def output_map_input(self, x: torch.Tensor) -> torch.Tensor:
        # heads are independent: every head computed, the switched-off ones zeroed, equals the gathered forward
        B, N, _ = x.shape
        H, hd = self.units, self.head_dim
        mask = self.eval_unit_mask(x)
        qkv = _run(self.qkv, x).reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        o = F.scaled_dot_product_attention(q, k, v, scale=self.scale) * mask[None, :, None, None]
        return o.transpose(1, 2).reshape(B, N, H * hd)

    def unit_costs(self, x):
        N, D, hd = x.shape[1], self.dim, self.head_dim
        kq, kp = _width(self.qkv, "rows"), _width(self.proj, "cols")
        per_head = 3 * N * kq * hd + 2 * N * N * hd + N * hd * kp
        outer = (N * D * kq if is_lowrank(self.qkv) else 0) + (N * kp * D if is_lowrank(self.proj) else 0)
        return per_head * self.static_units + outer, per_head

    def vitopt_macs(self, inputs, output) -> int:
        """Executed q/k/v, attention and projection MACs for the heads that ran (batch total)."""
        x = inputs[0]
        fixed, per_unit = self.unit_costs(x)
        active = self.dynamic_units if self.training else self.last_active
        return int(round(x.shape[0] * (fixed + per_unit * active)))

    def extra_repr(self) -> str:
        return (f"static_heads={self.static_units}, dynamic_heads={self.dynamic_units}, head_dim={self.head_dim}, "
                f"scale={self.scale:.6g}, threshold={self.threshold}")


class GatedMergeAttention(GatedAttention):
    """``GatedAttention`` in a token-merging block (``optimizer.methods.merge``), with that block's
    ``MergeAttention`` contract: ``forward(x, size) -> (output, keys averaged over heads)``, the log
    token sizes added to the logits (proportional attention). The merge metric averages the keys of
    the heads that ran for the group (every head with all gates on: exactly ``MergeAttention``).
    """

    def forward(self, x: torch.Tensor, size: Optional[torch.Tensor] = None) -> tuple:
        bias = None if size is None else size.log()[:, None, None, :, 0].to(x.dtype)   # (B, 1, 1, N)
        return self._attend(x, bias, False, keys=True)

    @torch.no_grad()
    def output_map_input(self, x: torch.Tensor) -> torch.Tensor:
        raise VitoptError("reconstruction of gated token-merging blocks is not supported (the block's token "
                          "sizes are not part of its input)")


class GatedMlp(_Gated):
    """fc1 -> act -> fc2 whose hidden channels are static or gated in groups; names equal timm's Mlp."""

    unit_kind = "channel group"

    def __init__(self, dim: int, static_channels: int, dynamic_groups: int, group_size: int,
                 act: Optional[nn.Module] = None, bias: bool = True, gate_hidden: int = 32,
                 threshold: float = 0.0, init_logit: float = 1.0):
        super().__init__()
        if group_size < 1:
            raise VitoptError(f"group_size must be positive, got {group_size}")
        self.dim, self.group_size, self.static_channels = dim, int(group_size), int(static_channels)
        if static_channels < 0 or dynamic_groups < 0 or static_channels + dynamic_groups < 1:
            raise VitoptError(f"gated MLP needs at least one channel, got {static_channels} static channels "
                              f"+ {dynamic_groups} dynamic groups")
        self._init_gates(dim, 0, dynamic_groups, gate_hidden, threshold, init_logit)
        self.hidden = self.static_channels + self.dynamic_units * self.group_size
        self.fc1 = nn.Linear(dim, self.hidden, bias=bias)
        self.act = act if act is not None else nn.GELU()
        self.fc2 = nn.Linear(self.hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        D, C = self.dim, self.hidden
        if self.training and self.dynamic_units:
            B = x.shape[0]
            gm = self._train_mask(x).to(x.dtype)                                    # (B, groups)
            mask = torch.cat([torch.ones(B, self.static_channels, device=x.device, dtype=x.dtype),
                              gm.repeat_interleave(self.group_size, dim=1)], dim=1)  # (B, C)
            h = self.act(_run(self.fc1, x)) * mask[:, None, :]
            fixed, per_unit = self.unit_costs(x)
            self.train_macs = fixed + per_unit * gm.sum(1)
            return _run(self.fc2, h)
        if not self.dynamic_units:
            return _run(self.fc2, self.act(_run(self.fc1, x)))
        idx = self._eval_index(x)
        G, S, Cs = self.dynamic_units, self.group_size, self.static_channels
        pre, w1f, b1f = row_parts(self.fc1)
        w2f, post, b2 = col_parts(self.fc2)
        if self._kernels_on(x, w1f):
            from kernels import gathered_cols_linear, gathered_rows_linear
            rows = _unit_rows(idx, S) + Cs      # valid by construction: no range check, no host sync
            if Cs:
                rows = torch.cat([torch.arange(Cs, device=rows.device), rows])
            h = self.act(gathered_rows_linear(x if pre is None else F.linear(x, pre), w1f, rows, b1f,
                                              check_index=False))
            out = gathered_cols_linear(h, w2f.t(), rows, None if post is not None else b2, check_index=False)
            return out if post is None else F.linear(out, post, b2)
        r1, r2 = w1f.shape[1], w2f.shape[1]
        w1 = w1f[Cs:].reshape(G, S, r1).index_select(0, idx).reshape(-1, r1)
        w2 = w2f[Cs:].reshape(G, S, r2).index_select(0, idx).reshape(-1, r2)
        b1 = None if b1f is None else b1f[Cs:].reshape(G, S).index_select(0, idx).reshape(-1)
        if Cs:
            w1 = torch.cat([w1f[:Cs], w1])
            w2 = torch.cat([w2f[:Cs], w2])
            b1 = None if b1 is None else torch.cat([b1f[:Cs], b1])
        h = self.act(F.linear(x if pre is None else F.linear(x, pre), w1, b1))
        out = torch.matmul(h, w2)
        if post is not None:
            out = F.linear(out, post)
        return out if b2 is None else out + b2

    @torch.no_grad()
    def unit_importance(self, x: torch.Tensor) -> torch.Tensor:
        """Per dynamic group: sum over its channels of mean |activation| x ||fc2 column||."""
        h = self.act(_run(self.fc1, x))
        wt, post, _ = col_parts(self.fc2)
        w = wt if post is None else wt @ post.t()                                        # (C, D)
        imp = h.abs().mean(dim=(0, 1)) * w.norm(dim=1)
        return imp[self.static_channels:].reshape(self.dynamic_units, self.group_size).sum(1)

    def output_map(self) -> nn.Module:
        return self.fc2

    @torch.no_grad()
    def output_map_input(self, x: torch.Tensor) -> torch.Tensor:
        groups = self.eval_unit_mask(x)[self.static_units:] if self.dynamic_units else x.new_zeros(0)
        mask = torch.cat([x.new_ones(self.static_channels), groups.repeat_interleave(self.group_size)])
        return self.act(_run(self.fc1, x)) * mask

    def unit_costs(self, x):
        N, D = x.shape[1], self.dim
        k1, k2 = _width(self.fc1, "rows"), _width(self.fc2, "cols")
        per_channel = N * k1 + N * k2
        outer = (N * D * k1 if is_lowrank(self.fc1) else 0) + (N * k2 * D if is_lowrank(self.fc2) else 0)
        return per_channel * self.static_channels + outer, per_channel * self.group_size

    def vitopt_macs(self, inputs, output) -> int:
        """Executed fc1 and fc2 MACs for the channels that ran (batch total)."""
        x = inputs[0]
        fixed, per_unit = self.unit_costs(x)
        active = self.dynamic_units if (self.training or not self.dynamic_units) else self.last_active
        return int(round(x.shape[0] * (fixed + per_unit * active)))

    def extra_repr(self) -> str:
        return (f"static_channels={self.static_channels}, dynamic_groups={self.dynamic_units}, "
                f"group_size={self.group_size}, threshold={self.threshold}")


def gated_modules(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, _Gated)]


def set_group_sizes(model: nn.Module, sizes: Optional[Sequence[int]]) -> None:
    """Training: how the next batch is split into gate groups (None: the whole batch is one group)."""
    for m in gated_modules(model):
        m.group_sizes = None if sizes is None else [int(s) for s in sizes]


def set_forced_gates(model: nn.Module, pattern) -> None:
    """Bypass the gate nets: ``"on"``, ``"off"`` (K=1: the first unit runs), None (gate nets decide),
    or a callable ``(module) -> list[bool]``."""
    for m in gated_modules(model):
        if not m.dynamic_units or pattern is None:
            m.forced = None
        elif pattern == "on":
            m.forced = [True] * m.dynamic_units
        elif pattern == "off":
            m.forced = [False] * m.dynamic_units
        elif callable(pattern):
            m.forced = [bool(v) for v in pattern(m)]
        else:
            raise VitoptError(f"unknown gate pattern {pattern!r}: use 'on', 'off', None or a callable")


def set_fixed_k(model: nn.Module, enabled: bool) -> None:
    """Static shapes: every module runs its calibrated mean number of dynamic units (top-scored)."""
    for m in gated_modules(model):
        if enabled and m.dynamic_units:
            mean = m.mean_active if m.mean_active is not None else m.dynamic_units
            m.fixed_k = max(1, int(round(mean)))
        else:
            m.fixed_k = None


def set_estimator(model: nn.Module, estimator: str, gumbel_tau: float = 1.0) -> None:
    for m in gated_modules(model):
        m.estimator, m.gumbel_tau = estimator, gumbel_tau
