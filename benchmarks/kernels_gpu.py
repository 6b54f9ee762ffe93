"""The Triton kernels (kernels/) against the PyTorch paths they replace, on one CUDA GPU.

    python benchmarks/kernels_gpu.py                  # everything below, bf16 (sized for one 10-min H200 run)
    python benchmarks/kernels_gpu.py --plan           # the cases and their floors only (no GPU needed)

Per case (DeiT-Tiny / Small / Base layer shapes, tokens = batch x 197):
  lowrank   y = (x·Bᵀ)·Aᵀ + b       fused kernel  vs  two cuBLAS GEMMs (the rank-r intermediate in memory)
            ranks: half of the params break-even in·out/(in+out) (capped at kernels.MAX_RANK)
  rows      y = x·W[idx]ᵀ + b[idx]  gathered kernel vs index_select + GEMM (half the MLP groups / heads)
  cols      y = h·W[:, idx]ᵀ + b    gathered kernel vs index_select + GEMM
GPU time per call from CUDA-graph replays (no host launch cost) and eager per-call CUDA-event times
(L2 flushed before each call unless --no-flush; host launch included); the arithmetic and memory
floors of the case (PEAKS), GPU time / floor and the speedup over PyTorch; the kernel's largest
difference from the PyTorch output (kernels.reference.TOLERANCES). Then torch.compile of whole
compressed models (lowrank, gates) with and without the kernels, batch latency per variant.

Targets (issue 18): never slower than PyTorch; >= 1.3x where the intermediate / gathered copy is a
large share of the traffic (extra share >= 1/3); within 1.5x of the floor at batch >= 32.
Writes --out/kernels_gpu.{json,md} with the command, commit, device and environment. Refuses
without CUDA.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _harness import commit_label, provenance, write_result  # noqa: E402

TOKENS = 197
WIDTHS = {"tiny": 192, "small": 384, "base": 768}
ARCHS = {"tiny": "deit_tiny_patch16_224", "small": "deit_small_patch16_224", "base": "deit_base_patch16_224"}
HEAD_DIM, GROUP = 64, 32      # DeiT head width; gated MLP channel group (gates' default group_size)
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

# Peak rates the floors use: NVIDIA H200 (SXM) datasheet, dense (no sparsity): 989 TFLOP/s BF16/FP16
# tensor core, 67 TFLOP/s FP32 (the kernels run FP32 inputs without TF32, like cuBLAS by default),
# 4.8 TB/s HBM3e. Other GPUs: pass --peak-tflops and --peak-tbs, else no floors are computed.
PEAKS = {"H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12, "hbm": 4.8e12}}


@dataclass(frozen=True)
class Case:
    model: str
    op: str          # lowrank | rows | cols
    layer: str       # fc1, qkv, ... (what the shapes are)
    batch: int
    k: int           # input features of the GEMM the kernel runs
    n: int           # output features
    r: int           # rank (lowrank) or number of gathered rows / columns
    total: int = 0   # rows (rows) / columns (cols) of the whole weight the index picks from
    unit: int = 1    # rows / columns per gated unit (MLP group, head)

    @property
    def m(self) -> int:
        return self.batch * TOKENS

    def flops(self) -> int:
        if self.op == "lowrank":
            return 2 * self.m * self.r * (self.k + self.n)
        return 2 * self.m * self.k * self.n

    def bytes_min(self, e: int) -> int:
        """Compulsory traffic: inputs, the weights that are used, bias, output (index: 8 B each)."""
        m, k, n, r = self.m, self.k, self.n, self.r
        if self.op == "lowrank":
            return e * (m * k + r * k + n * r + n + m * n)
        if self.op == "rows":        # n = active rows; reads those rows of W
            return e * (m * k + n * k + n + m * n) + 8 * n
        return e * (m * k + n * k + n + m * n) + 8 * k   # cols: k = active columns

    def bytes_extra(self, e: int) -> int:
        """What the PyTorch path adds: the intermediate written and read, or the gathered copy
        written and read back."""
        if self.op == "lowrank":
            return 2 * e * self.m * self.r
        return 2 * e * self.n * self.k


def cases(models, batches) -> list:
    out = []
    for name in models:
        d = WIDTHS[name]
        for layer, (k, n) in {"qkv": (d, 3 * d), "proj": (d, d), "fc1": (d, 4 * d), "fc2": (4 * d, d)}.items():
            rank = min(256, max(8, 8 * round(0.5 * k * n / (k + n) / 8)))
            out += [Case(name, "lowrank", layer, b, k, n, rank) for b in batches]
        mlp_active = (4 * d // GROUP) // 2 * GROUP          # half the channel groups
        heads_active = max(1, (d // HEAD_DIM) // 2) * HEAD_DIM
        for b in batches:
            out += [Case(name, "rows", "fc1", b, d, mlp_active, mlp_active, 4 * d, GROUP),
                    Case(name, "cols", "fc2", b, mlp_active, d, mlp_active, 4 * d, GROUP),
                    Case(name, "rows", "qkv", b, d, 3 * heads_active, 3 * heads_active, 3 * d, HEAD_DIM),
                    Case(name, "cols", "proj", b, heads_active, d, heads_active, d, HEAD_DIM)]
    return out


def floors(case: Case, dtype: str, peaks) -> dict:
    e = DTYPE_BYTES[dtype]
    row = {"flops": case.flops(), "bytes_min": case.bytes_min(e), "bytes_extra_torch": case.bytes_extra(e),
           "extra_share": case.bytes_extra(e) / (case.bytes_min(e) + case.bytes_extra(e))}
    if peaks:
        compute_ms = 1e3 * case.flops() / peaks[dtype]
        memory_ms = 1e3 * case.bytes_min(e) / peaks["hbm"]
        row.update(compute_floor_ms=compute_ms, memory_floor_ms=memory_ms, floor_ms=max(compute_ms, memory_ms),
                   bound="memory" if memory_ms >= compute_ms else "compute")
    return row


def _inputs(case: Case, dtype, device, gen):
    """(kernel callable, PyTorch callable) on fresh random inputs of the case."""
    import torch
    import kernels
    from kernels.reference import (gathered_cols_linear_reference, gathered_rows_linear_reference,
                                   lowrank_linear_reference)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, device=device) * scale).to(dtype)
    x = rnd(case.m, case.k)
    if case.op == "lowrank":
        down, up, b = rnd(case.r, case.k, scale=case.k ** -0.5), rnd(case.n, case.r, scale=case.r ** -0.5), rnd(case.n)
        return (lambda: kernels.lowrank_linear(x, down, up, b)), (lambda: lowrank_linear_reference(x, down, up, b))
    units = torch.randperm(case.total // case.unit, generator=gen, device=device)[: case.r // case.unit]
    idx = (units.sort().values[:, None] * case.unit + torch.arange(case.unit, device=device)).reshape(-1)
    if case.op == "rows":
        w, b = rnd(case.total, case.k, scale=case.k ** -0.5), rnd(case.total)
        return (lambda: kernels.gathered_rows_linear(x, w, idx, b, check_index=False),
                lambda: gathered_rows_linear_reference(x, w, idx, b))
    w, b = rnd(case.n, case.total, scale=case.k ** -0.5), rnd(case.n)
    return (lambda: kernels.gathered_cols_linear(x, w, idx, b, check_index=False),
            lambda: gathered_cols_linear_reference(x, w, idx, b))


def _timed(fns, iters: int, flush: bool) -> list:
    """Median ms per callable from per-call CUDA events, the callables interleaved call by call."""
    import torch
    scratch = torch.empty(256 * 2 ** 20, dtype=torch.uint8, device="cuda") if flush else None  # > H200's 50 MB L2
    times = [[] for _ in fns]
    for _ in range(iters):
        for i, fn in enumerate(fns):
            if scratch is not None:
                scratch.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times[i].append(start.elapsed_time(end))
    return [statistics.median(t) for t in times]


def _graph_timed(fns, calls: int, rounds: int) -> list:
    """Median GPU ms per call from CUDA-graph replays of ``calls`` back-to-back calls (no host
    launch cost; L2 warm between calls), the callables' replays interleaved round by round."""
    import torch
    graphs = []
    for fn in fns:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(calls):
                fn()
        graphs.append(g)
    times = [[] for _ in fns]
    for _ in range(rounds):
        for i, g in enumerate(graphs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            g.replay()
            end.record()
            end.synchronize()
            times[i].append(start.elapsed_time(end) / calls)
    return [statistics.median(t) for t in times]


def run_kernel_cases(args, peaks) -> list:
    import torch
    from kernels.reference import TOLERANCES
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    atol, rtol = TOLERANCES[dtype]
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for case in cases(args.models, args.batches):
        kern, ref = _inputs(case, dtype, "cuda", gen)
        with torch.no_grad():
            yk, yr = kern(), ref()      # first kernel call autotunes
            torch.cuda.synchronize()
            diff = (yk.float() - yr.float()).abs()
            ok = bool((diff <= atol + rtol * yr.float().abs()).all())
            eager_k, eager_t = _timed([kern, ref], args.iters, not args.no_flush)
            graph_error = None
            try:
                kernel_ms, torch_ms = _graph_timed([kern, ref], calls=20, rounds=args.iters)
            except Exception as e:   # recorded: the row then compares eager per-call times
                graph_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                kernel_ms, torch_ms = eager_k, eager_t
        # speedup and floors use the graph (GPU) times; eager per-call times include the host launch
        row = {**asdict(case), "tokens": case.m, "dtype": args.dtype, "kernel_ms": kernel_ms, "torch_ms": torch_ms,
               "speedup": torch_ms / kernel_ms, "eager_kernel_ms": eager_k, "eager_torch_ms": eager_t,
               "eager_speedup": eager_t / eager_k, "graph_error": graph_error,
               "max_abs_diff": float(diff.max()), "matches_reference": ok, **floors(case, args.dtype, peaks)}
        if "floor_ms" in row:
            row["kernel_vs_floor"] = kernel_ms / row["floor_ms"]
            row["torch_vs_floor"] = torch_ms / row["floor_ms"]
        rows.append(row)
        print(f"{case.model:5s} {case.op:7s} {case.layer:4s} b={case.batch:<4d} kernel {kernel_ms:.4f} ms  "
              f"torch {torch_ms:.4f} ms  x{row['speedup']:.2f}  eager x{row['eager_speedup']:.2f}"
              + ("" if ok else "  MISMATCH") + (f"  ({graph_error})" if graph_error else ""), flush=True)
    return rows


def _compressed(name: str, method: str, dtype, device: str = "cuda"):
    """A DeiT of random weights with every block's linears factorised (0.5 break-even) or gated
    (half the groups / heads forced on)."""
    import timm
    import torch
    arch = ARCHS[name]
    model = timm.create_model(arch, pretrained=False).eval()
    if method == "lowrank":
        from optimizer.methods.lowrank.module import rebuild
        d = WIDTHS[name]
        shapes = {"attn.qkv": (d, 3 * d), "attn.proj": (d, d), "mlp.fc1": (d, 4 * d), "mlp.fc2": (4 * d, d)}
        structure = {}
        for i in range(len(model.blocks)):
            for path, (k, n) in shapes.items():
                rank = min(256, max(8, 8 * round(0.5 * k * n / (k + n) / 8)))
                structure[f"blocks.{i}.{path}"] = {"in": k, "out": n, "ranks": [rank, 0], "bias": True}
        rebuild(model, structure)
        with torch.no_grad():
            for name_, p in model.named_parameters():
                if ".down1" in name_ or ".up1" in name_:
                    p.normal_(0, p.shape[1] ** -0.5)
    else:
        from optimizer.methods.gates import gate_model
        from optimizer.methods.gates.modules import set_forced_gates
        gate_model(model, group_size=GROUP)
        set_forced_gates(model, lambda g: [i % 2 == 0 for i in range(g.dynamic_units)])
    return model.to(device=device, dtype=dtype)


def run_whole_models(args) -> list:
    import torch
    import kernels
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    # each (model, batch, kernels on/off) is one compiled graph of the same code: room for all of them
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
    rows = []
    for name in args.compile_models:
        for method in ("lowrank", "gates"):
            model = _compressed(name, method, dtype)
            variants = {}
            for variant, on in (("eager", False), ("compile", False), ("compile+kernels", True)):
                kernels.enable(model, on)
                torch._dynamo.reset()
                variants[variant] = model if variant == "eager" else torch.compile(model)
            for b in args.compile_batches:
                x = torch.randn(b, 3, 224, 224, device="cuda", dtype=dtype)
                row = {"model": ARCHS[name], "method": method, "batch": b, "dtype": args.dtype}
                fns = {}
                for variant, fn in variants.items():
                    kernels.enable(model, variant == "compile+kernels")
                    try:
                        with torch.no_grad():
                            for _ in range(3):
                                fn(x)          # compiles (and autotunes) on the first calls
                        fns[variant] = fn
                    except Exception as e:    # recorded, not hidden: the row says what failed
                        row[f"{variant}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                for variant, fn in fns.items():
                    kernels.enable(model, variant == "compile+kernels")
                    with torch.no_grad():
                        row[f"{variant}_ms"] = _timed([lambda: fn(x)], args.compile_iters, flush=False)[0]
                kernels.enable(model, False)
                if "compile_ms" in row and "compile+kernels_ms" in row:
                    row["kernels_speedup_over_compile"] = row["compile_ms"] / row["compile+kernels_ms"]
                rows.append(row)
                print(row, flush=True)
    return rows


def _targets(rows) -> dict:
    slower = [r for r in rows if r["speedup"] < 1.0]
    heavy = [r for r in rows if r["extra_share"] >= 1 / 3]
    big = [r for r in rows if r["batch"] >= 32 and "kernel_vs_floor" in r]
    return {"never_slower": {"met": not slower, "cases_slower": len(slower), "cases": len(rows)},
            "1.3x_where_extra_traffic_dominates": {"met": all(r["speedup"] >= 1.3 for r in heavy),
                                                   "cases_below": sum(r["speedup"] < 1.3 for r in heavy),
                                                   "cases": len(heavy)},
            "within_1.5x_of_floor_at_batch_32+": {"met": bool(big) and all(r["kernel_vs_floor"] <= 1.5 for r in big),
                                                  "cases_above": sum(r["kernel_vs_floor"] > 1.5 for r in big),
                                                  "cases": len(big)},
            "all_match_reference": all(r["matches_reference"] for r in rows)}


def to_markdown(result: dict) -> list:
    """The report's lines (``write_result`` adds the Reproduce section: command, commit, environment)."""
    def f(v):
        return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
    lines = ["# Triton kernels vs PyTorch (cuBLAS) paths", "",
             f"Device: {result['device']}.",
             f"dtype {result['dtype']}; peaks used for floors: {result['peaks']} (source: {result['peaks_source']}).",
             "GPU times (kernel / torch ms, speedup, floors): median per call of CUDA-graph replays of 20 "
             "back-to-back calls (no host launch cost, L2 warm). Eager times: median of per-call CUDA events "
             "around one call each" + (", L2 flushed before each call" if result["flush_l2"] else ", L2 warm")
             + ", host launch included.", "",
             "## Targets", ""]
    lines += [f"- {k}: {v}" for k, v in result["targets"].items()]
    lines += ["", "## Per case", "",
              "| model | op | layer | batch | k | n | r | kernel ms | torch ms | speedup | eager speedup | extra share "
              "| floor ms | kernel/floor | bound | max diff |", "|" + "---|" * 16]
    for r in result["cases"]:
        lines.append("| " + " | ".join(f(r.get(c)) for c in (
            "model", "op", "layer", "batch", "k", "n", "r", "kernel_ms", "torch_ms", "speedup", "eager_speedup",
            "extra_share",
            "floor_ms", "kernel_vs_floor", "bound", "max_abs_diff")) + " |")
    if result["whole_models"]:
        lines += ["", "## torch.compile of whole compressed models", "",
                  "| model | method | batch | eager ms | compile ms | compile+kernels ms | kernels speedup | errors |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in result["whole_models"]:
            errs = "; ".join(f"{k}: {v}" for k, v in r.items() if k.endswith("_error")) or "-"
            lines.append("| " + " | ".join(f(r.get(c)) for c in (
                "model", "method", "batch", "eager_ms", "compile_ms", "compile+kernels_ms",
                "kernels_speedup_over_compile")) + f" | {errs} |")
    return lines


def _ints(text: str) -> list:
    return [int(v) for v in text.split(",") if v]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dtype", choices=sorted(DTYPE_BYTES), default="bf16")
    p.add_argument("--models", type=lambda s: s.split(","), default=["tiny", "small", "base"])
    p.add_argument("--batches", type=_ints, default=[1, 8, 32, 128, 256])
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--no-flush", action="store_true", help="keep L2 warm between calls")
    p.add_argument("--compile-models", type=lambda s: [v for v in s.split(",") if v], default=["small"],
                   help="models for the whole-model torch.compile part ('' skips it)")
    p.add_argument("--compile-batches", type=_ints, default=[1, 32])
    p.add_argument("--compile-iters", type=int, default=20)
    p.add_argument("--peak-tflops", type=float, help="dense peak of --dtype (GPUs not in PEAKS)")
    p.add_argument("--peak-tbs", type=float, help="memory bandwidth in TB/s (GPUs not in PEAKS)")
    p.add_argument("--plan", action="store_true", help="print the cases and their H200 floors, run nothing")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args(argv)
    for m in set(a.models) | set(a.compile_models):
        if m not in WIDTHS:
            p.error(f"unknown model {m!r}: use {', '.join(WIDTHS)}")
    if a.plan:
        for c in cases(a.models, a.batches):
            fl = floors(c, a.dtype, PEAKS["H200"])
            print(f"{c.model} {c.op} {c.layer} b={c.batch} k={c.k} n={c.n} r={c.r} floor {1e3 * fl['floor_ms']:.2f} us "
                  f"({fl['bound']}), extra share {fl['extra_share']:.2f}")
        return 0
    import torch
    if not torch.cuda.is_available():
        print("kernels_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); --plan works without one",
              file=sys.stderr)
        return 2
    from optimizer.bench.environment import gpu_name
    device = gpu_name()
    peaks, source = None, "none: no peak rates for this GPU (pass --peak-tflops and --peak-tbs)"
    if a.peak_tflops and a.peak_tbs:
        peaks, source = {a.dtype: a.peak_tflops * 1e12, "hbm": a.peak_tbs * 1e12}, "command line"
    else:
        for key, val in PEAKS.items():
            if key in device:
                peaks, source = val, f"NVIDIA {key} datasheet (dense, no sparsity): benchmarks/kernels_gpu.py PEAKS"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    prov = provenance(None if argv is None else [sys.argv[0], *argv])
    result = {"device": device, "command": prov["command"], "commit": commit_label(prov), "dtype": a.dtype,
              "peaks": peaks, "peaks_source": source, "flush_l2": not a.no_flush}
    result["cases"] = run_kernel_cases(a, peaks)
    result["targets"] = _targets(result["cases"])
    result["whole_models"] = []
    # written now and again after the whole-model part, so a run cut short keeps the per-case table
    write_result(out / "kernels_gpu", result, to_markdown(result), prov=prov)
    if a.compile_models:
        result["whole_models"] = run_whole_models(a)
        write_result(out / "kernels_gpu", result, to_markdown(result), prov=prov)
    print("\n".join(to_markdown(result)).split("## Per case")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
