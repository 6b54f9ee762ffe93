"""``TritonRunner``: a model served by Triton behind the shared runner interface (HTTP or gRPC).

``infer`` sends named inputs and returns named outputs; the timing fast path keeps one prepared
request per batch size, so ``infer_timed`` measures what a client waits for: serialisation,
loopback transport, the server's queue and scheduler, and the model.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from ..errors import MissingDependency, VitoptError
from .base import BaseRunner

_NP_OF_TRITON = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT64": np.int64,
                 "INT32": np.int32, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}


def triton_client(protocol: str):
    """``tritonclient.http`` or ``tritonclient.grpc``; MissingDependency when not installed."""
    if protocol not in ("http", "grpc"):
        raise VitoptError(f"protocol must be http or grpc, got {protocol!r}")
    try:
        if protocol == "http":
            import tritonclient.http as client
        else:
            import tritonclient.grpc as client
    except ImportError:
        raise MissingDependency(f"tritonclient[{protocol}] is not installed: pip install 'vitopt[serve]'") from None
    return client


class TritonRunner(BaseRunner):
    """Run a model on a Triton server.

    Args:
        url: "host:port" of the server's HTTP or gRPC endpoint.
        model: the model name; ``version``: "" for the server's choice.
        protocol: "http" or "grpc".
        timeout_s: network timeout per request.
    Raises VitoptError when the model is not ready on the server.
    Example: ``with TritonRunner("127.0.0.1:8000", "deit") as r: r.infer({r.input_name: x})``
    """

    backend = "triton"

    def __init__(self, url: str, model: str, protocol: str = "http", version: str = "",
                 timeout_s: float = 60.0, name: Optional[str] = None):
        super().__init__(name or f"triton-{protocol}")
        self.url, self.model, self.protocol, self.version = url, model, protocol, str(version)
        self.timeout_s = float(timeout_s)
        self._client_mod = triton_client(protocol)
        self.client = None

    def _activate(self) -> None:
        mod = self._client_mod
        if self.protocol == "http":
            self.client = mod.InferenceServerClient(self.url, connection_timeout=self.timeout_s,
                                                    network_timeout=self.timeout_s)
        else:
            self.client = mod.InferenceServerClient(self.url)
        try:
            ready = self.client.is_model_ready(self.model, self.version)
        except Exception as e:
            raise VitoptError(f"cannot reach Triton at {self.url} ({self.protocol}): {str(e).splitlines()[0]}") \
                from None
        if not ready:
            raise VitoptError(f"model {self.model!r} is not ready on the Triton server at {self.url}")
        meta = self.client.get_model_metadata(self.model, self.version)
        if self.protocol == "grpc":
            ins = [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs]
            outs = [{"name": t.name} for t in meta.outputs]
            cfg = self.client.get_model_config(self.model, self.version).config
            self._max_batch = int(cfg.max_batch_size)
        else:
            ins, outs = meta["inputs"], meta["outputs"]
            self._max_batch = int(self.client.get_model_config(self.model, self.version).get("max_batch_size", 0))
        self._inputs = ins
        self.input_names = [t["name"] for t in ins]
        self.output_names = [t["name"] for t in outs]

    def _deactivate(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:
                pass
        self.client = None
        self._request = None

    @property
    def sample_shape(self) -> Optional[Tuple[int, ...]]:
        if not self.is_active:
            return None
        shape = [int(d) for d in self._inputs[0]["shape"]][1:]    # metadata shapes lead with the batch axis
        return tuple(shape) if all(d > 0 for d in shape) else None

    @property
    def input_dtype(self):
        if not self.is_active:
            return np.float32
        return _NP_OF_TRITON.get(self._inputs[0]["datatype"], np.float32)

    def info(self) -> dict:
        return {"url": self.url, "model": self.model, "protocol": self.protocol}

    def _request_for(self, feed: Dict[str, np.ndarray]):
        mod = self._client_mod
        dtypes = {t["name"]: t["datatype"] for t in self._inputs}
        inputs = []
        for name, arr in feed.items():
            arr = np.ascontiguousarray(arr.astype(_NP_OF_TRITON.get(dtypes[name], arr.dtype), copy=False))
            i = mod.InferInput(name, list(arr.shape), dtypes[name])
            i.set_data_from_numpy(arr)
            inputs.append(i)
        outputs = [mod.InferRequestedOutput(n) for n in self.output_names]
        return inputs, outputs

    def _send(self, inputs, outputs):
        try:
            return self.client.infer(self.model, inputs, model_version=self.version, outputs=outputs)
        except Exception as e:
            raise VitoptError(f"Triton inference on {self.model!r} failed: {str(e).splitlines()[0][:300]}") from None

    def _infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        res = self._send(*self._request_for(feed))
        return {n: res.as_numpy(n) for n in self.output_names}

    def _prepare(self, data: np.ndarray) -> None:
        self._request = self._request_for({self.input_names[0]: data})

    def _run_prepared(self) -> None:
        self._send(*self._request)
