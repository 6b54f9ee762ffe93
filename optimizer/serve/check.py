"""``check_repository``: load a model repository in the bundled Triton server and prove it serves.

Per model (its latest version, Triton's default version policy):

- ``python-ort`` models must load (READY); real images, preprocessed with the model's
  ``preprocess.json``, go through HTTP and gRPC with ``tritonclient``, and the served outputs must
  equal ONNX Runtime run in this process on the same file: max |diff| <= ``atol`` and top-1 identical;
- ``onnxruntime`` / ``tensorrt`` models need a backend the bundled server lacks: the check passes
  only when the server rejected the model *for that reason alone* (its message "unable to find
  backend library for backend '<name>'"), i.e. it parsed and accepted the config first — a config
  error is reported by the server before any backend is looked up, so it can never pass as
  "backend missing". A server that has the backend gets the inference check instead (ONNX only).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..errors import VitoptError
from .config import parse_config_text
from .repository import PREPROCESS_FILE
from .server import TritonServer
from .validate import validate_model_dir

BACKEND_MISSING = "unable to find backend library for backend '{}'"
_BACKEND_OF = {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG", ".JPG", ".PNG")


def model_dirs(repo, model: Optional[str] = None) -> List[Path]:
    """The model folders of ``repo`` (those with a config.pbtxt), or just ``model``."""
    repo = Path(repo)
    if not repo.is_dir():
        raise VitoptError(f"model repository not found: {repo}")
    if model is not None:
        d = repo / model
        if not (d / "config.pbtxt").is_file():
            raise VitoptError(f"no model {model!r} in {repo} (no {d}/config.pbtxt)")
        return [d]
    dirs = sorted(p for p in repo.iterdir() if (p / "config.pbtxt").is_file() and not p.name.startswith("."))
    if not dirs:
        raise VitoptError(f"{repo} holds no model (no NAME/config.pbtxt)")
    return dirs


def image_batch(model_dir: Path, shape: Sequence[int], count: int, images: Optional[str]) -> tuple:
    """(array (count, *shape) float32, description): images from ``images`` preprocessed with the
    model's preprocess.json (evenly spaced, sorted paths), else seeded random data."""
    if images:
        from .preprocess import preprocess_image
        spec_path = model_dir / PREPROCESS_FILE
        if not spec_path.is_file():
            raise VitoptError(f"{model_dir} has no {PREPROCESS_FILE}: cannot preprocess images for it")
        spec = json.loads(spec_path.read_text())
        files = sorted(p for p in Path(images).rglob("*") if p.suffix in IMAGE_SUFFIXES)
        if not files:
            raise VitoptError(f"no images (.jpg/.png/...) under {images}")
        step = max(1, len(files) // count)
        picked, arrays = files[::step], []
        for f in picked:
            try:
                arrays.append(preprocess_image(f, spec))
            except Exception:       # an unreadable file: skip it, the next one will do
                continue
            if len(arrays) == count:
                break
        if not arrays:
            raise VitoptError(f"no readable image under {images}")
        x = np.stack(arrays)
        if tuple(x.shape[1:]) != tuple(shape):
            raise VitoptError(f"preprocessed images have shape {x.shape[1:]}, {model_dir.name} expects {tuple(shape)}")
        return x.astype(np.float32), f"{len(arrays)} images from {images}"
    x = np.random.default_rng(0).standard_normal((count, *shape)).astype(np.float32)
    return x, f"{count} random inputs (seed 0; pass images for real ones)"


def _served_outputs(url: str, protocol: str, name: str, config, x: np.ndarray) -> dict:
    from ..runners.triton_runner import TritonRunner
    with TritonRunner(url, name, protocol=protocol) as r:
        return r.infer({config.input[0].name: x})


def _check_inference(server, model_dir: Path, config, version: int, images, count: int, atol: float) -> dict:
    from ..runners import OrtRunner
    from ..runners.compare import compare_outputs
    onnx_path = model_dir / str(version) / "model.onnx"
    batched = config.max_batch_size > 0
    dims = list(config.input[0].dims)
    if any(d < 0 for d in dims[(0 if batched else 1):]):
        raise VitoptError(f"{model_dir.name}: input dims {dims} are not fixed; cannot build a test batch")
    n = min(count, config.max_batch_size) if batched else dims[0]
    x, where = image_batch(model_dir, dims if batched else dims[1:], n, images)
    if not batched:
        x = x[:dims[0]]
    with OrtRunner(onnx_path, threads=1) as ref:
        expected = ref.infer({ref.input_name: x})
    out = {"inputs": where, "batch": int(x.shape[0])}
    for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        got = _served_outputs(url, protocol, model_dir.name, config, x)
        cmp = compare_outputs(expected, got, atol=atol, rtol=0.0)
        worst = max(c["max_abs"] for c in cmp.values())
        top1 = min((c["top1_agreement"] for c in cmp.values() if c["top1_agreement"] is not None), default=1.0)
        out[protocol] = {"max_abs_diff": worst, "top1_agreement": top1,
                         "passed": bool(worst <= atol and top1 == 1.0)}
    out["passed"] = all(out[p]["passed"] for p in ("http", "grpc"))
    return out


def check_repository(repo, model: Optional[str] = None, timeout_s: float = 120.0, images: Optional[str] = None,
                     count: int = 4, atol: float = 1e-4, http_port: Optional[int] = None) -> dict:
    """Validate every model in ``repo``, load them in the bundled Triton server, check each (module doc).

    Returns {"passed", "models": [{"name", "platform", "version", "status", "reason", "http", "grpc"}],
    "server": {"ports", "log_tail"}}. Raises VitoptError for an invalid config (before any server
    starts), a port in use, or a server that never becomes ready; the server is always stopped.
    Example: ``check_repository("repo", images="../shared/data/imagenet-mini/val")["passed"]``
    """
    dirs = model_dirs(repo, model)
    facts = {d.name: validate_model_dir(d) for d in dirs}
    results = []
    with TritonServer(repo, [d.name for d in dirs], timeout_s=timeout_s, http_port=http_port) as server:
        states = {}
        for s in server.model_states():
            states.setdefault(s["name"], []).append(s)
        for d in dirs:
            f = facts[d.name]
            version = f["versions"][-1]
            config = parse_config_text((d / "config.pbtxt").read_text(), str(d / "config.pbtxt"))
            st = next((s for s in states.get(d.name, []) if s.get("version") in (str(version), None, "")),
                      {"state": "UNKNOWN", "reason": "not in the server's repository index"})
            reason = (st.get("reason") or "").strip().splitlines()[0] if st.get("reason") else ""
            row = {"name": d.name, "platform": f["platform"], "version": version, "state": st.get("state"),
                   "reason": reason or (" | ".join(server.errors_about(d.name)[-2:]) or server.log_tail(3)
                                        if st.get("state") != "READY" else "")}
            if st.get("state") == "READY":
                if f["platform"] == "tensorrt":
                    row.update(status="served", passed=True, note="served; outputs not compared (no TensorRT here)")
                else:
                    res = _check_inference(server, d, config, version, images, count, atol)
                    row.update(res, status="served" if res["passed"] else "wrong outputs")
            elif f["platform"] in _BACKEND_OF and BACKEND_MISSING.format(_BACKEND_OF[f["platform"]]) in reason:
                row.update(status="config accepted, backend missing", passed=True)
            else:
                row.update(status="failed to load", passed=False)
            results.append(row)
        tail = server.log_tail()
        ports = {"http": server.http_port, "grpc": server.grpc_port, "metrics": server.metrics_port}
    return {"repo": str(repo), "passed": all(r["passed"] for r in results), "models": results,
            "server": {"ports": ports, "log_tail": tail}}
