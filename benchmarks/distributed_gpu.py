"""Images/s of the slim search, gate training and recovery on one CUDA GPU, FP32 vs BF16 autocast.

Prepared for a session with a GPU (not run on the 2-core CPU machine): DeiT-Tiny and DeiT-Small with
random weights (speed only), a synthetic folder of 224x224 JPEGs (so it runs where ../shared is
absent), the loops exactly as `vitopt compress` / `vitopt distill` run them (data loading included,
``--workers`` loader processes). One process; with torchrun each process reports its own GPU's share.
About 5 minutes on an H200 with the defaults.

    python benchmarks/distributed_gpu.py            # -> benchmarks/results/distributed_gpu.{json,md}
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import ROOT, write_result  # noqa: E402

MODELS = ("deit_tiny_patch16_224", "deit_small_patch16_224")


def synthetic_folder(root: Path, images: int) -> Path:
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    d = root / "n00000000"
    d.mkdir(parents=True)
    for i in range(images):
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(d / f"{i:05d}.jpg", quality=90)
    return root


def timed(fn) -> float:
    import torch
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def run_loop(loop: str, arch: str, amp: bool, data: str, batch: int, steps: int, workers: int) -> dict:
    """One loop on a fresh random-weight model; images/s over ``steps`` steps after one warm-up step."""
    import timm
    import torch
    from optimizer.compress.config import RecoveryConfig
    from optimizer.compress.registry import CompressContext, get_method
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False).cuda().eval()
    teacher = copy.deepcopy(model)
    ctx = CompressContext(calib_dir=data, teacher=teacher, device="cuda", workers=workers, seed=0,
                          log=lambda s: None)
    none = RecoveryConfig(loss="none")
    torch.cuda.reset_peak_memory_stats()
    if loop == "slim_search":
        from optimizer.methods.slim import SlimConfig, search_masks

        def go(n):
            search_masks(copy.deepcopy(model), SlimConfig(macs_ratio=0.7, steps=n, batch_size=batch, amp=amp,
                                                          recovery=none), ctx, teacher)
    elif loop == "gate_training":
        from optimizer.methods.gates import GatesConfig

        def go(n):
            get_method("gates").apply(copy.deepcopy(model), GatesConfig(
                macs_ratio=0.6, steps=n, batch_size=batch, amp=amp, calib_images=batch, calib_groups=(batch,),
                recovery=none), ctx)
    elif loop == "recovery":
        from optimizer.distill import DistillConfig, recover

        def go(n):
            recover(copy.deepcopy(model).train(), teacher, ctx, DistillConfig(steps=n, batch_size=batch, amp=amp,
                                                                              eval_at_start=False))
    else:
        raise SystemExit(f"unknown loop {loop}")
    warm = timed(lambda: go(1))        # start-up: loaders, kernels, autotuning
    full = timed(lambda: go(steps + 1))
    seconds = max(full - warm, 1e-9)   # the steady steps: the difference of the two runs
    return {"loop": loop, "model": arch, "precision": "bf16-autocast" if amp else "fp32", "batch": batch,
            "steps": steps, "seconds": round(seconds, 3), "images_per_s": round(steps * batch / seconds, 1),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def main(argv=None) -> int:
    import torch
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--loops", default="slim_search,gate_training,recovery")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--images", type=int, default=512, help="synthetic images in the folder")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distributed_gpu"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("distributed_gpu.py needs a CUDA GPU (torch sees none)")
    torch.backends.cuda.matmul.allow_tf32 = False    # FP32 means FP32
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = str(synthetic_folder(Path(tmp) / "imgs", args.images))
        for arch in args.models.split(","):
            for loop in args.loops.split(","):
                for amp in (False, True):       # interleaved: FP32 then BF16 of the same loop
                    rows.append(run_loop(loop, arch, amp, data, args.batch, args.steps, args.workers))
                    print(rows[-1], file=sys.stderr, flush=True)
    device = torch.cuda.get_device_name(0)
    md = [f"# Training loops on {device}: images/s, FP32 vs BF16 autocast", "",
          f"Random weights, synthetic 224x224 JPEGs, batch {args.batch}, {args.steps} timed steps after a warm-up run, "
          f"{args.workers} loader workers, one process.", "",
          "| model | loop | precision | images/s | peak GiB |", "|---|---|---|---:|---:|"]
    md += [f"| {r['model']} | {r['loop']} | {r['precision']} | {r['images_per_s']} | {r['peak_memory_gib']} |"
           for r in rows]
    write_result(args.out, {"device": device, "rows": rows, "batch": args.batch, "steps": args.steps}, md)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
