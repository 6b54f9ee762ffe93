"""The compressed modules with kernels enabled equal their PyTorch path; exports stay standard ONNX."""
import json
import subprocess
import sys

import pytest
import torch

import kernels
from kernels.reference import TOLERANCES
from optimizer.errors import VitoptError
from optimizer.methods.gates.modules import GatedAttention, GatedMlp, set_forced_gates
from optimizer.methods.lowrank.module import LowRankLinear
from tests.conftest import tiny_vit
from tests.kernels.conftest import DEVICE, rand

ATOL, RTOL = TOLERANCES[torch.float32]


@pytest.fixture
def op_calls(monkeypatch):
    """Counts of kernel-op calls by name, so a test can tell the kernel path from the reference."""
    from kernels import gathered, lowrank
    calls = {}
    for mod, name in ((lowrank, "lowrank_linear"), (gathered, "gathered_rows_linear"),
                      (gathered, "gathered_cols_linear")):
        def counted(*args, _f=getattr(mod, name), _n=name, **kw):
            calls[_n] = calls.get(_n, 0) + 1
            return _f(*args, **kw)
        monkeypatch.setattr(mod, name, counted)
    return calls


def _lowrank(gen, fin, fout, ranks=(5, 3)):
    m = LowRankLinear(fin, fout, ranks, bias=True)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(rand(gen, *p.shape, scale=0.3))
    return m.to(DEVICE)


def _randomise(module, gen):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(rand(gen, *p.shape, scale=0.2))
    return module.to(DEVICE).eval()


def _kernels_vs_reference(model, x, op_calls):
    with torch.no_grad():
        ref = model(x)
        assert not op_calls
        assert kernels.enable(model) >= 1
        try:
            y = model(x)
        finally:
            kernels.enable(model, False)
    torch.testing.assert_close(y, ref, atol=ATOL, rtol=RTOL)


def test_lowrank_linear_module_with_kernels_equals_reference(gen, op_calls):
    m = _lowrank(gen, 24, 40)                    # two factor pairs: fused as one of rank 8
    _kernels_vs_reference(m, rand(gen, 2, 9, 24), op_calls)
    assert op_calls == {"lowrank_linear": 1}


def test_lowrank_module_trains_through_the_kernel(gen, op_calls):
    m = _lowrank(gen, 24, 40, (6, 0))
    x = rand(gen, 3, 24).requires_grad_()
    gy = rand(gen, 3, 40)
    m(x).backward(gy)
    ref = [t.grad.clone() for t in (x, m.down1, m.up1, m.bias)]
    for t in (x, m.down1, m.up1, m.bias):
        t.grad = None
    kernels.enable(m)
    m(x).backward(gy)
    assert op_calls == {"lowrank_linear": 1}
    for got, want in zip((x.grad, m.down1.grad, m.up1.grad, m.bias.grad), ref):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


def _forced(module, pattern):
    set_forced_gates(torch.nn.Sequential(module), lambda g: pattern)
    return module


@pytest.mark.parametrize("lowrank", [False, True], ids=["dense", "lowrank"])
def test_gated_attention_with_kernels_equals_reference(gen, op_calls, lowrank):
    attn = GatedAttention(32, static_heads=1, dynamic_heads=3, head_dim=8, scale=8 ** -0.5, gate_hidden=4)
    if lowrank:
        attn.qkv, attn.proj = _lowrank(gen, 32, 96), _lowrank(gen, 32, 32)
    attn = _forced(_randomise(attn, gen), [False, True, False])   # static head 0 and dynamic head 2 run
    _kernels_vs_reference(attn, rand(gen, 2, 9, 32), op_calls)
    assert op_calls == {"gathered_rows_linear": 1, "gathered_cols_linear": 1}


@pytest.mark.parametrize("lowrank", [False, True], ids=["dense", "lowrank"])
def test_gated_mlp_with_kernels_equals_reference(gen, op_calls, lowrank):
    mlp = GatedMlp(32, static_channels=8, dynamic_groups=4, group_size=8, gate_hidden=4)
    if lowrank:
        mlp.fc1, mlp.fc2 = _lowrank(gen, 32, 40), _lowrank(gen, 40, 32)
    mlp = _forced(_randomise(mlp, gen), [False, False, True, False])  # one active group
    _kernels_vs_reference(mlp, rand(gen, 2, 9, 32), op_calls)
    assert op_calls == {"gathered_rows_linear": 1, "gathered_cols_linear": 1}


def _gated_lowrank_vit(gen):
    """Tiny ViT (depth 1): factorised qkv and fc1, then gates on heads and MLP groups."""
    from optimizer.methods.gates import gate_model
    from optimizer.models.blocks import make_prunable
    model = make_prunable(tiny_vit(depth=1))
    blk = model.blocks[0]
    blk.attn.qkv, blk.mlp.fc1 = _lowrank(gen, 64, 192, (6, 2)), _lowrank(gen, 64, 256, (7, 0))
    return gate_model(model, group_size=32, gate_hidden=4).to(DEVICE).eval()


@pytest.mark.slow   # two ONNX exports: ~25 s on 2 shared cores
def test_export_with_kernels_enabled_is_the_plain_graph(gen, tmp_path, op_calls):
    """Exporters trace the reference: same op counts as without kernels, every node a standard op."""
    pytest.importorskip("onnx")
    from optimizer.graph import op_histogram
    from optimizer.methods.gates.export import onnx_from_gated
    import onnx

    def op_counts(path):
        return op_histogram(onnx.load(str(path)))
    model = _gated_lowrank_vit(gen)
    onnx_from_gated(model, tmp_path / "plain.onnx")
    kernels.enable(model)
    onnx_from_gated(model, tmp_path / "kernels.onnx")
    # (op_calls is not empty: the chain's parity gate runs the PyTorch model, kernels on; the graph is the oracle)
    assert op_counts(tmp_path / "kernels.onnx") == op_counts(tmp_path / "plain.onnx")
    assert {"MatMul", "Gather", "TopK"} <= set(op_counts(tmp_path / "kernels.onnx"))
    domains = {n.domain for n in onnx.load(str(tmp_path / "kernels.onnx")).graph.node}
    assert domains <= {"", "ai.onnx"}
    op_calls.clear()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32, generator=gen).to(DEVICE))   # outside the exporter: the kernels
    assert op_calls == {"gathered_rows_linear": 2, "gathered_cols_linear": 2}


def test_enable_counts_modules_and_rejects_non_bool(gen):
    model = _gated_lowrank_vit(gen)
    assert kernels.enable(model) == 4                    # 2 gated modules + 2 LowRankLinear
    assert all(m.use_kernels for m in model.modules() if hasattr(type(m), "use_kernels"))
    assert "use_kernels" not in json.dumps(list(model.state_dict()))
    with pytest.raises(VitoptError, match="on=True or False"):
        kernels.enable(model, "yes")


def test_imports_stay_light_until_an_op_runs():
    code = ("import sys, json, optimizer, kernels\n"
            "from kernels import enable\n"
            "bare = ['torch' in sys.modules, 'triton' in sys.modules]\n"
            "from kernels import lowrank_linear, gathered_rows_linear   # registers the ops\n"
            "print(json.dumps(bare + ['triton' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [False, False, False]


class _LowRankThenGated(torch.nn.Module):
    def __init__(self, gen):
        super().__init__()
        self.lin = _lowrank(gen, 24, 32).eval()
        self.mlp = _randomise(GatedMlp(32, static_channels=8, dynamic_groups=4, group_size=8, gate_hidden=4), gen)

    def forward(self, x):
        return self.mlp(self.lin(x))


def test_modules_with_kernels_compile_in_one_graph(gen, op_calls):
    model = _LowRankThenGated(gen).eval()      # data-dependent gates: K counted from the scores
    x = rand(gen, 2, 5, 24)
    with torch.no_grad():
        ref = model(x)
        kernels.enable(model)
        y = torch.compile(model, backend="aot_eager", fullgraph=True)(x)   # a graph break would raise
    torch.testing.assert_close(y, ref, atol=ATOL, rtol=RTOL)
    assert op_calls == {"lowrank_linear": 1, "gathered_rows_linear": 1, "gathered_cols_linear": 1}


@pytest.mark.slow   # the dynamo exporter: ~20 s on 2 shared cores
def test_dynamo_export_with_kernels_enabled_has_only_standard_ops(gen, op_calls):
    pytest.importorskip("onnxscript")
    model = _LowRankThenGated(gen).eval()
    kernels.enable(model)
    batch = torch.export.Dim("batch", min=1, max=64)
    with torch.no_grad():
        prog = torch.onnx.export(model, (rand(gen, 2, 5, 24),), None, dynamo=True, dynamic_shapes=({0: batch},),
                                 optimize=True, verbose=False, report=False)
    nodes = prog.model_proto.graph.node
    assert not op_calls
    assert {n.domain for n in nodes} <= {"", "ai.onnx"}
    assert {"MatMul", "TopK", "Gather"} <= {n.op_type for n in nodes}
