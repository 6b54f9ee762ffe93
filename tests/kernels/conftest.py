"""Kernel tests run the Triton kernels themselves: compiled on a CUDA machine, through Triton's
interpreter (numpy, on CPU tensors) elsewhere.

TRITON_INTERPRET must be set before the kernels are decorated (their first launch imports them),
and kernels.dispatch reads it when imported, so it is set here, at collection, for the session:
on a machine without CUDA no other test can launch a Triton kernel anyway.
"""
import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# the device the kernels run on in this session
DEVICE = "cuda" if CUDA else "cpu"
SKIP_GPU = "needs a CUDA device (torch.cuda.is_available() is False): run on a GPU machine"


@pytest.fixture
def gen():
    """A fresh seeded generator per test: inputs differ between tests, never zeros, reproducible."""
    import zlib
    name = os.environ.get("PYTEST_CURRENT_TEST", "kernels")
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


def rand(gen, *shape, dtype=torch.float32, scale=1.0):
    """Normal values on the kernels' device in ``dtype`` (drawn in FP32 on CPU for reproducibility)."""
    return (torch.randn(*shape, generator=gen) * scale).to(device=DEVICE, dtype=dtype)
