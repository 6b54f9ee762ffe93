"""``TorchRunner``: eager PyTorch inference behind the shared runner interface."""
from __future__ import annotations

import copy
from typing import Dict, Optional, Tuple

import numpy as np

from ..errors import VitoptError
from .base import BaseRunner

_DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16", "half": "float16",
           "bf16": "bfloat16", "bfloat16": "bfloat16"}
_PRECISION = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _torch_dtype(dtype):
    import torch
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        name = str(dtype).replace("torch.", "")
    else:
        name = _DTYPES.get(str(dtype).lower())
    if name not in _PRECISION:
        raise VitoptError(f"unsupported torch dtype {dtype!r} (use fp32, fp16 or bf16)")
    return getattr(torch, name)


class TorchRunner(BaseRunner):
    """Run an ``nn.Module`` eagerly under ``torch.inference_mode``.

    Args:
        model: the module (left untouched: a copy is moved when ``device``/``dtype`` differ).
        device: "cpu" or "cuda" (or "cuda:N").
        dtype: None (keep the model's), or fp32 / fp16 / bf16 (string or torch.dtype); inputs are
            cast to it and outputs returned in it.
        threads: torch intra-op threads while active (None: leave torch's setting).
        input_name / output_name: the names used in feeds and results.
    Raises VitoptError for an unknown dtype or a CUDA device on a machine without one.
    Example: ``with TorchRunner(model) as r: r.infer({"input": x})["logits"]``
    """

    backend = "torch"

    def __init__(self, model, device: str = "cpu", dtype=None, threads: Optional[int] = None,
                 input_name: str = "input", output_name: str = "logits", name: Optional[str] = None):
        super().__init__(name)
        import torch
        self.device = str(device)
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise VitoptError(f"device {self.device} requested but torch sees no CUDA GPU")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise VitoptError(f"unknown torch device {device!r} (use cpu or cuda)")
        if threads is not None and threads < 1:
            raise VitoptError(f"threads must be positive, got {threads}")
        self._source = model
        self._dtype = _torch_dtype(dtype)
        self.threads = threads
        self._input_name = input_name
        self._output_name = output_name
        self.model = None
        self._saved_threads = None

    def _param_dtype(self):
        for p in self._source.parameters():
            return p.dtype
        import torch
        return torch.float32

    def _activate(self) -> None:
        import torch
        src = self._source
        dtype = self._dtype or self._param_dtype()
        src_dev = next((p.device for p in src.parameters()), torch.device("cpu"))
        needs_copy = torch.device(self.device) != src_dev or dtype != self._param_dtype()
        model = copy.deepcopy(src) if needs_copy else src
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self._run_dtype = dtype
        self.precision = _PRECISION.get(str(dtype).replace("torch.", ""), str(dtype))
        if self.threads is not None:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        self.input_names = [self._input_name]
        self.output_names = [self._output_name]
        if self.device.startswith("cuda"):
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def _deactivate(self) -> None:
        import torch
        self.model = None
        self._x = None
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None

    @property
    def sample_shape(self) -> Optional[Tuple[int, ...]]:
        pe = getattr(self._source, "patch_embed", None)
        size = getattr(pe, "img_size", None)
        proj = getattr(pe, "proj", None)
        chans = getattr(proj, "in_channels", None)
        if size is not None and chans is not None:
            return (int(chans), *[int(s) for s in size])
        return None

    def info(self) -> dict:
        import torch
        return {"threads": torch.get_num_threads() if self.device == "cpu" else None, "device": self.device}

    def _outputs(self, y) -> Dict[str, "object"]:
        if isinstance(y, dict):
            return dict(y)
        if isinstance(y, (tuple, list)):
            return {self._output_name if i == 0 else f"{self._output_name}_{i}": t for i, t in enumerate(y)}
        return {self._output_name: y}

    def _infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        import torch
        x = torch.from_numpy(np.ascontiguousarray(feed[self._input_name])).to(self.device, self._run_dtype)
        with torch.inference_mode():
            outs = self._outputs(self.model(x))
        self.output_names = list(outs)
        res = {}
        for k, t in outs.items():
            t = t.detach().cpu()
            if t.dtype == torch.bfloat16:  # numpy has no bfloat16
                t = t.float()
            res[k] = t.numpy()
        return res

    def _prepare(self, data: np.ndarray) -> None:
        import torch
        self._x = torch.from_numpy(data).to(self.device, self._run_dtype)

    def _run_prepared(self) -> None:
        import torch
        with torch.inference_mode():
            self.model(self._x)

    def _synchronize(self) -> None:
        if self.device.startswith("cuda"):
            import torch
            torch.cuda.synchronize(self.device)

    def infer_timed(self, batch: int) -> float:
        """Milliseconds for one inference; CUDA events on GPU, host clock on CPU."""
        if not self.device.startswith("cuda"):
            return super().infer_timed(batch)
        if self._prepared_batch != batch:
            self._reprepare(batch)
        self._start.record()
        self._run_prepared()
        self._end.record()
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))
