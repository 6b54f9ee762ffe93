"""Inference-server preparation: Triton model repositories from a variant, checked by a real server.

- ``prepare_repository`` (``vitopt serve-prepare``): REPO/NAME/config.pbtxt + a new version folder
  (model.onnx, model.plan or a Python-backend model.py running ONNX Runtime), class labels, the
  client's preprocessing as JSON and a client example.
- ``validate_model_dir``: Triton's own model-config protobuf plus semantic checks against the file.
- ``TritonServer``: the ``tritonserver`` binary bundled with ``nvidia-pytriton``, on loopback with
  free ports, stopped within a bounded time.
- ``check_repository`` (``vitopt serve-check``): loads a repository in that server and compares the
  served outputs (HTTP and gRPC) with ONNX Runtime in process.

Importing this package imports neither tritonclient nor onnxruntime; they load when used.
"""
from .batching import knee_batch_sizes
from .config import PLATFORMS, ServeConfig
from .repository import PrepareResult, prepare_repository
from .signature import ModelSignature, TensorSpec, signature_of
from .validate import validate_model_dir

__all__ = ["ServeConfig", "PLATFORMS", "prepare_repository", "PrepareResult", "validate_model_dir",
           "ModelSignature", "TensorSpec", "signature_of", "knee_batch_sizes"]
