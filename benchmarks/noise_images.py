"""Write random-noise JPEGs in an ImageNet-style folder: calibration images for `make demo` without ../shared.

    python benchmarks/noise_images.py build/noise-images [--count 64]

The compression steps need images to calibrate on; with random weights (no checkpoint) any images
do, and the demo says everywhere that its accuracy is meaningless.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main(argv=None) -> int:
    import numpy as np
    from PIL import Image
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--count", type=int, default=64)
    args = ap.parse_args(argv)
    d = Path(args.out) / "noise"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(args.count):
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(d / f"noise_{i:03d}.jpg")
    print(f"{args.count} noise images in {d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
