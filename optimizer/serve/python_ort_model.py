"""Triton Python-backend model that runs ``model.onnx`` (beside it) with ONNX Runtime on CPU.

Copied verbatim into a repository's version folder as ``model.py`` by ``vitopt serve-prepare
--platform python-ort``; it does not import vitopt. The backend's stub process does not inherit
the caller's Python environment: the config's ``EXECUTION_ENV_PATH`` parameter (the virtual
environment vitopt ran in, written at prepare time) makes the stub start inside it, since the
backend's own utilities import numpy before this file runs; the ``site_packages`` parameter lists
the folders that held numpy and onnxruntime, put on ``sys.path`` before either is imported. Requests that the dynamic batcher hands over together run as one ONNX Runtime
call (concatenated on the batch axis, then split back per request).
"""
import json
import os
import sys


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        for path in reversed([p for p in params.get("site_packages", "").split(os.pathsep) if p]):
            if path not in sys.path:
                sys.path.insert(0, path)
        import numpy as np
        import onnxruntime as ort
        import triton_python_backend_utils as pb_utils
        self.np, self.pb = np, pb_utils
        so = ort.SessionOptions()
        threads = int(params.get("intra_op_threads") or 0)
        if threads:
            so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.batched = int(config.get("max_batch_size", 0)) > 0

    def execute(self, requests):
        np, pb = self.np, self.pb
        feeds = [{n: pb.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
        if self.batched and len(requests) > 1:
            sizes = [f[self.inputs[0]].shape[0] for f in feeds]
            joint = {n: np.concatenate([f[n] for f in feeds]) for n in self.inputs}
            outs = self.session.run(self.outputs, joint)
            bounds = np.cumsum(sizes)[:-1]
            per_request = [list(parts) for parts in zip(*[np.split(o, bounds) for o in outs])]
        else:
            per_request = [self.session.run(self.outputs, f) for f in feeds]
        return [pb.InferenceResponse([pb.Tensor(n, np.ascontiguousarray(v)) for n, v in zip(self.outputs, outs)])
                for outs in per_request]

    def finalize(self):
        self.session = None
