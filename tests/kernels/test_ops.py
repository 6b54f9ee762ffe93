"""The Triton ops against their PyTorch references: dtypes, odd shapes, strides, bad input, fake shapes.

Without CUDA the kernels run through Triton's interpreter (set up in conftest), so shapes stay tiny;
block sizes there are 16, so sizes like 38 / 50 / 21 span several partial tiles.
"""
import pytest
import torch

import kernels
from kernels.reference import (TOLERANCES, gathered_cols_linear_reference, gathered_rows_linear_reference,
                               lowrank_linear_reference)
from optimizer.errors import VitoptError
from tests.kernels.conftest import CUDA, DEVICE, SKIP_GPU, rand

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def assert_matches(y, ref, dtype):
    atol, rtol = TOLERANCES[dtype]
    assert y.dtype == ref.dtype and y.shape == ref.shape
    torch.testing.assert_close(y.float(), ref.float(), atol=atol, rtol=rtol)


def _strided_x(gen, batch, tokens, k, dtype):
    """(batch, tokens, k) that is not contiguous: a transposed view of a bigger buffer."""
    buf = rand(gen, tokens, batch, k + 3, dtype=dtype)
    x = buf.transpose(0, 1)[..., :k]
    assert not x.is_contiguous()
    return x


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_lowrank_linear_matches_reference(gen, dtype):
    k, r, n = 40, 21, 50                       # r not a power of two; no size a multiple of the block
    x = _strided_x(gen, 2, 19, k, dtype)
    down = rand(gen, r, k, dtype=dtype, scale=k ** -0.5)
    up = rand(gen, r, n, dtype=dtype, scale=r ** -0.5).t()   # (n, r) with transposed strides
    bias = rand(gen, n, dtype=dtype)
    y = kernels.lowrank_linear(x, down, up, bias)
    assert_matches(y, lowrank_linear_reference(x, down, up, bias), dtype)


def test_lowrank_linear_rank_one_one_token_no_bias(gen):
    x = rand(gen, 1, 24)
    down, up = rand(gen, 1, 24), rand(gen, 17, 1)
    y = kernels.lowrank_linear(x, down, up)
    assert_matches(y, lowrank_linear_reference(x, down, up), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gathered_rows_matches_reference(gen, dtype):
    k, units = 40, 60
    x = _strided_x(gen, 2, 19, k, dtype)
    weight = rand(gen, k, units, dtype=dtype, scale=k ** -0.5).t()  # non-contiguous (units, k)
    bias = rand(gen, units, dtype=dtype)
    # unsorted, repeated, both ends of the range; int32 for one dtype
    index = torch.randperm(units, generator=gen)[:33]
    index = torch.cat([index, torch.tensor([0, units - 1, 5, 5])]).to(DEVICE)
    if dtype == torch.float16:
        index = index.int()
    y = kernels.gathered_rows_linear(x, weight, index, bias)
    assert_matches(y, gathered_rows_linear_reference(x, weight, index.long(), bias), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gathered_cols_matches_reference(gen, dtype):
    units, n = 60, 30
    index = torch.randperm(units, generator=gen)[:37].to(DEVICE)
    h = _strided_x(gen, 2, 19, index.numel(), dtype)
    weight = rand(gen, n, units, dtype=dtype, scale=37 ** -0.5)
    bias = rand(gen, n, dtype=dtype)
    y = kernels.gathered_cols_linear(h, weight, index, bias)
    assert_matches(y, gathered_cols_linear_reference(h, weight, index, bias), dtype)


def test_empty_index_gives_empty_rows_and_bias_columns(gen):
    x, weight, bias = rand(gen, 5, 24), rand(gen, 40, 24), rand(gen, 40)
    empty = torch.zeros(0, dtype=torch.long, device=DEVICE)
    rows = kernels.gathered_rows_linear(x, weight, empty, bias)
    assert rows.shape == (5, 0)
    h = torch.zeros(5, 0, device=DEVICE)
    w2, b2 = rand(gen, 24, 40), rand(gen, 24)
    cols = kernels.gathered_cols_linear(h, w2, empty, b2)
    torch.testing.assert_close(cols, b2.expand(5, 24), atol=0, rtol=0)


def test_one_active_group(gen):
    """A gated MLP with one group of 8 channels running: rows then columns of that group only."""
    dim, hidden, group = 24, 48, 8
    x = rand(gen, 2, 9, dim)
    w1, b1 = rand(gen, hidden, dim, scale=dim ** -0.5), rand(gen, hidden)
    w2, b2 = rand(gen, dim, hidden, scale=group ** -0.5), rand(gen, dim)
    rows = torch.arange(3 * group, 4 * group, device=DEVICE)
    h = kernels.gathered_rows_linear(x, w1, rows, b1)
    assert_matches(h, gathered_rows_linear_reference(x, w1, rows, b1), torch.float32)
    y = kernels.gathered_cols_linear(h, w2, rows, b2)
    assert_matches(y, gathered_cols_linear_reference(h, w2, rows, b2), torch.float32)


@pytest.mark.parametrize("op", ["rows", "cols"])
def test_gathered_gradients_equal_the_reference(gen, op):
    """Backward of the gathered ops: repeated indices accumulate into the same weight row / column."""
    units = 30
    index = torch.tensor([4, 0, 29, 4, 17, 8], device=DEVICE)
    weight = rand(gen, units, 12).requires_grad_() if op == "rows" else rand(gen, 12, units).requires_grad_()
    bias = rand(gen, units if op == "rows" else 12).requires_grad_()
    a = rand(gen, 2, 3, 12 if op == "rows" else 6).requires_grad_()
    fn, ref = ((kernels.gathered_rows_linear, gathered_rows_linear_reference) if op == "rows" else
               (kernels.gathered_cols_linear, gathered_cols_linear_reference))
    gy = rand(gen, 2, 3, 6 if op == "rows" else 12)
    grads = [torch.autograd.grad(f(a, weight, index, bias), (a, weight, bias), gy) for f in (fn, ref)]
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ---- bad input: a VitoptError naming the problem, raised before anything launches

@pytest.fixture
def no_launch(monkeypatch):
    """Any launch fails the test: the errors below must come from the checks before it."""
    from kernels import _triton_gathered, _triton_lowrank

    def launched(*args, **kwargs):
        raise AssertionError("a kernel was launched for bad input")
    for mod, name in ((_triton_lowrank, "run"), (_triton_gathered, "run_rows"), (_triton_gathered, "run_cols")):
        monkeypatch.setattr(mod, name, launched)


def _lowrank_args(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 12, generator=g).to(DEVICE, dtype), torch.randn(3, 12, generator=g).to(DEVICE, dtype),
            torch.randn(10, 3, generator=g).to(DEVICE, dtype), torch.randn(10, generator=g).to(DEVICE, dtype)]


LOWRANK_BAD = {
    "float64": (lambda a: [t.double() for t in a], "is torch.float64"),
    "mixed dtypes": (lambda a: [a[0].half()] + a[1:], "mix dtypes"),
    "mixed devices": (lambda a: a[:3] + [a[3].to("meta")], "different devices"),
    "in features": (lambda a: [a[0][:, :11]] + a[1:], "x has 11 features but down is 3x12"),
    "rank mismatch": (lambda a: a[:2] + [a[2][:, :2], a[3]], "down has rank 3 but up is 10x2"),
    "bias shape": (lambda a: a[:3] + [a[3][:9]], "bias has shape (9,), expected (10,)"),
    "rank too big": (lambda a: [torch.randn(4, 300), torch.randn(257, 300), torch.randn(10, 257), None],
                     "rank 257 is outside 1..256"),
}


@pytest.mark.parametrize("case", list(LOWRANK_BAD))
def test_lowrank_linear_rejects_bad_input(no_launch, case):
    make, message = LOWRANK_BAD[case]
    with pytest.raises(VitoptError, match=message.replace("(", r"\(").replace(")", r"\)")):
        kernels.lowrank_linear(*make(_lowrank_args()))


def _gather_args():
    g = torch.Generator().manual_seed(2)
    return [torch.randn(4, 12, generator=g).to(DEVICE), torch.randn(20, 12, generator=g).to(DEVICE),
            torch.tensor([0, 7, 19], device=DEVICE), torch.randn(20, generator=g).to(DEVICE)]


GATHER_BAD = {
    "index past the end": (lambda a: a[:2] + [torch.tensor([0, 20], device=DEVICE), a[3]],
                           r"index out of range for 20 weight rows \(min 0, max 20\)"),
    "negative index": (lambda a: a[:2] + [torch.tensor([-1, 3], device=DEVICE), a[3]], "index out of range"),
    "float index": (lambda a: a[:2] + [a[2].float(), a[3]], "index must be an int32 or int64 tensor"),
    "2-D index": (lambda a: a[:2] + [a[2][None], a[3]], "index must be 1-D"),
    "index device": (lambda a: a[:2] + [a[2].to("meta"), a[3]], "index is on meta"),
    "weight 3-D": (lambda a: [a[0], a[1][None], a[2], a[3]], "weight must be 2-D"),
    "in features": (lambda a: [a[0][:, :5]] + a[1:], "x has 5 features but weight is 20x12"),
}


@pytest.mark.parametrize("case", list(GATHER_BAD))
def test_gathered_rows_rejects_bad_input(no_launch, case):
    make, message = GATHER_BAD[case]
    with pytest.raises(VitoptError, match=message):
        kernels.gathered_rows_linear(*make(_gather_args()))


def test_gathered_cols_rejects_bad_input(no_launch):
    h, w = torch.randn(4, 3, device=DEVICE), torch.randn(10, 20, device=DEVICE)
    with pytest.raises(VitoptError, match=r"index out of range for 20 weight columns \(min 2, max 20\)"):
        kernels.gathered_cols_linear(h, w, torch.tensor([2, 20, 5], device=DEVICE))
    with pytest.raises(VitoptError, match="h has 3 features but the index selects 2 columns"):
        kernels.gathered_cols_linear(h, w, torch.tensor([2, 5], device=DEVICE))
    with pytest.raises(VitoptError, match=r"bias has shape \(20,\), expected \(10,\)"):
        kernels.gathered_cols_linear(h, w, torch.tensor([1, 2, 5], device=DEVICE), torch.randn(20, device=DEVICE))


def test_cpu_tensors_need_the_interpreter(no_launch, monkeypatch):
    from kernels import _triton_common
    monkeypatch.setattr(_triton_common, "INTERPRETED", False)
    with pytest.raises(VitoptError, match="runs on CUDA tensors .* got a cpu tensor"):
        kernels.lowrank_linear(*[t.cpu() for t in _lowrank_args()])


# ---- shapes for torch.compile / torch.export (fake tensors), no launch needed for most

def test_fake_impls_give_shapes_under_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x = torch.empty(3, 197, 192)
        y = torch.ops.vitopt.lowrank_linear(x, torch.empty(40, 192), torch.empty(768, 40), torch.empty(768))
        idx = torch.empty(96, dtype=torch.long)
        h = torch.ops.vitopt.gathered_rows_linear(x, torch.empty(768, 192), idx, None, True)
        z = torch.ops.vitopt.gathered_cols_linear(h, torch.empty(192, 768), idx, torch.empty(192), True)
    assert (y.shape, h.shape, z.shape) == ((3, 197, 768), (3, 197, 96), (3, 197, 192))
    with FakeTensorMode(), pytest.raises(VitoptError, match="down has rank 40 but up is 768x41"):
        torch.ops.vitopt.lowrank_linear(torch.empty(2, 192), torch.empty(40, 192), torch.empty(768, 41), None)


class _Both(torch.nn.Module):
    def __init__(self, gen):
        super().__init__()
        self.down = torch.nn.Parameter(rand(gen, 5, 24), requires_grad=False)
        self.up = torch.nn.Parameter(rand(gen, 30, 5), requires_grad=False)
        self.w2 = torch.nn.Parameter(rand(gen, 24, 30), requires_grad=False)
        self.register_buffer("idx", torch.tensor([1, 4, 9, 29, 11], device=DEVICE))

    def forward(self, x):
        h = kernels.lowrank_linear(x, self.down, self.up)
        return kernels.gathered_cols_linear(h[..., :5], self.w2, self.idx, check_index=False)


def test_torch_export_sees_the_ops_with_a_symbolic_batch(gen):
    m = _Both(gen)
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(m, (rand(gen, 2, 7, 24),), dynamic_shapes=({0: batch},))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert "vitopt.lowrank_linear.default" in targets and "vitopt.gathered_cols_linear.default" in targets
    out = [n for n in ep.graph.nodes if n.op == "output"][0].args[0][0]
    shape = out.meta["val"].shape
    assert isinstance(shape[0], torch.SymInt)    # the fake impls kept the batch symbolic
    assert tuple(shape[1:]) == (7, 24)


def test_torch_compile_fullgraph_runs_the_ops(gen):
    m = _Both(gen)
    x = rand(gen, 3, 7, 24)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)   # a graph break would raise
    with torch.no_grad():
        y = compiled(x)
        h = lowrank_linear_reference(x, m.down, m.up)[..., :5]
        ref = gathered_cols_linear_reference(h, m.w2, m.idx)
    assert_matches(y, ref, torch.float32)


# ---- real shapes on a GPU (DeiT-Small: 384 wide, MLP 1536, 8 images of 197 tokens)

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_real_shapes_on_gpu(gen, dtype):
    if not CUDA:
        pytest.skip(SKIP_GPU)
    x = rand(gen, 8, 197, 384, dtype=dtype)
    down, up = rand(gen, 96, 384, dtype=dtype, scale=384 ** -0.5), rand(gen, 1536, 96, dtype=dtype, scale=0.1)
    bias = rand(gen, 1536, dtype=dtype)
    assert_matches(kernels.lowrank_linear(x, down, up, bias), lowrank_linear_reference(x, down, up, bias), dtype)
    w1, w2 = rand(gen, 1536, 384, dtype=dtype, scale=384 ** -0.5), rand(gen, 384, 1536, dtype=dtype, scale=0.03)
    rows = torch.randperm(1536, generator=gen)[:900].to(DEVICE)
    h = kernels.gathered_rows_linear(x, w1, rows, bias[:1536])
    assert_matches(h, gathered_rows_linear_reference(x, w1, rows, bias), dtype)
    y = kernels.gathered_cols_linear(h, w2, rows)
    assert_matches(y, gathered_cols_linear_reference(h, w2, rows), dtype)
