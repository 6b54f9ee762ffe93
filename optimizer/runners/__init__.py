"""One runner interface for every backend (Polygraphy ``BaseRunner`` style).

``TorchRunner`` (eager PyTorch), ``OrtRunner`` (ONNX Runtime), ``TrtRunner`` (TensorRT engines on
an NVIDIA GPU): context managers with ``.name``, ``.input_name``, ``.output_names``,
``infer(feed) -> outputs`` and the timing fast path ``run_once(batch)`` / ``infer_timed(batch)``.
``compare_outputs`` checks two runners' outputs against a row of ``optimizer.tolerances``
(``compare_arrays`` does it for one pair of arrays; it is the project's one comparator).

Importing this package imports neither onnxruntime nor TensorRT; they load on ``activate()``.
"""
from .base import BaseRunner, physical_cores
from .compare import compare_arrays, compare_outputs, outputs_match
from .ort_runner import OrtRunner
from .torch_runner import TorchRunner
from .trt_runner import TrtRunner, gpu_available

__all__ = ["BaseRunner", "TorchRunner", "OrtRunner", "TrtRunner", "compare_arrays", "compare_outputs", "outputs_match",
           "physical_cores", "gpu_available"]
