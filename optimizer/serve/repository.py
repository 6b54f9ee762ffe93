"""``prepare_repository``: write (or add a version to) a Triton model in a model repository.

Layout::

    REPO/NAME/config.pbtxt          platform/backend, batching, instances, I/O, warm-up
    REPO/NAME/labels.txt            class names (label_filename of the logits output)
    REPO/NAME/preprocess.json       what the client applies to an image
    REPO/NAME/client_example.py     a short client (HTTP) using that preprocessing
    REPO/NAME/<version>/model.onnx | model.plan (+ its sidecar model.plan.json) | model.py (+ model.onnx
                                     for python-ort)

A new model is staged in a hidden folder beside REPO/NAME and renamed into place; a new version of
an existing model is staged inside REPO/NAME and renamed to the next free version number. No
version folder is ever overwritten, and a failure leaves no half-written one.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from ..errors import VitoptError
from .batching import knee_batch_sizes, queue_delay_us, throughput_by_batch
from .config import LABELS_FILE, ServeConfig, build_model_config, config_text, parse_config_text
from .signature import ModelSignature, signature_of

DEFAULT_MAX_BATCH = 32
PREPROCESS_FILE = "preprocess.json"
CLIENT_FILE = "client_example.py"


@dataclass
class PrepareResult:
    """What ``prepare_repository`` wrote."""
    repo: str
    name: str
    version: int
    config: dict                 # resolved settings (max_batch_size, preferred sizes, ...)
    signature: dict
    files: List[str] = field(default_factory=list)   # relative to the repository
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def resolve_config(cfg: ServeConfig, sig: ModelSignature, bench: Optional[dict] = None,
                   notes: Optional[list] = None) -> ServeConfig:
    """``cfg`` with max_batch and preferred sizes decided from the model and the benchmark.

    - static batch in the file: max_batch_size 0 (full dims, no dynamic batching); an explicit
      larger --max-batch is an error;
    - engine: the profile's max (an explicit --max-batch must not exceed it);
    - ONNX with a dynamic batch: --max-batch, else the largest benchmarked batch, else 32;
    - preferred sizes: the knee of the benchmark (``batching.knee_batch_sizes``), else none.
    """
    notes = notes if notes is not None else []
    kind_needed = {"tensorrt": "engine", "onnxruntime": "onnx", "python-ort": "onnx"}[cfg.platform]
    if sig.kind != kind_needed:
        raise VitoptError(f"--platform {cfg.platform} serves a{'n ONNX file' if kind_needed == 'onnx' else ' TensorRT engine'}"
                          f", got a{'n ONNX file' if sig.kind == 'onnx' else ' TensorRT engine'}")
    perf = throughput_by_batch(bench) if bench is not None else None
    if not sig.dynamic_batch:
        if cfg.max_batch:
            raise VitoptError(f"the model has a static batch ({sig.inputs[0].shape[0]}); it cannot be served with "
                              f"max_batch_size {cfg.max_batch} (re-export with a dynamic batch)")
        notes.append("static batch in the model file: max_batch_size 0, dims include the batch axis")
        return dataclasses.replace(cfg, max_batch=0, preferred=())
    max_batch = cfg.max_batch
    if sig.profile_max is not None:
        if max_batch is not None and max_batch > sig.profile_max:
            raise VitoptError(f"--max-batch {max_batch} exceeds the engine profile's max batch {sig.profile_max}")
        max_batch = max_batch or sig.profile_max
    elif max_batch is None:
        max_batch = max(perf) if perf else DEFAULT_MAX_BATCH
    if max_batch == 0:
        return dataclasses.replace(cfg, max_batch=0, preferred=())
    preferred = cfg.preferred
    delay = cfg.max_queue_delay_us
    if perf is not None:
        if preferred is None:
            knee, preferred = knee_batch_sizes({b: t for b, (t, _) in perf.items()}, max_batch)
            notes.append(f"benchmark knee at batch {knee}: preferred_batch_size {list(preferred) or 'none'}")
        if 1 in perf:
            delay = queue_delay_us(perf[1][1])
    return dataclasses.replace(cfg, max_batch=max_batch, preferred=tuple(preferred or ()), max_queue_delay_us=delay)


def label_output(sig: ModelSignature) -> Optional[str]:
    """The output that holds class scores: (batch, classes) with more than one class."""
    for o in sig.outputs:
        if len(o.shape) == 2 and o.shape[1] > 1:
            return o.name
    return None


def class_names(count: int, synsets: Optional[str] = None) -> List[str]:
    """Names for ``count`` classes: from a synset list (optimizer.data.labels) or class_<i>."""
    if synsets is None:
        return [f"class_{i}" for i in range(count)]
    from ..data.labels import read_synset_list
    names = read_synset_list(synsets).names
    if len(names) != count:
        raise VitoptError(f"label list {synsets} has {len(names)} classes, the model outputs {count}")
    return names


def client_example(name: str, input_name: str, output_name: str) -> str:
    """Source of a short HTTP client applying ``preprocess.json`` (the function is ``preprocess_image``)."""
    from .preprocess import preprocess_image
    return f'''"""Classify one image with the Triton model {name!r}.

Usage: python {CLIENT_FILE} IMAGE [URL]   (URL default localhost:8000; needs numpy, pillow, tritonclient[http])
"""
import json
import sys
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

HERE = Path(__file__).resolve().parent
SPEC = json.loads((HERE / "{PREPROCESS_FILE}").read_text())


{inspect.getsource(preprocess_image)}

def main():
    image, url = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "localhost:8000")
    x = preprocess_image(image, SPEC)[None]
    client = httpclient.InferenceServerClient(url)
    inp = httpclient.InferInput("{input_name}", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = client.infer("{name}", [inp], outputs=[httpclient.InferRequestedOutput("{output_name}")])
    logits = out.as_numpy("{output_name}")[0]
    labels = (HERE / "{LABELS_FILE}").read_text().splitlines()
    for i in np.argsort(-logits)[:5]:
        print(f"{{logits[i]:8.3f}}  {{labels[i]}}")


if __name__ == "__main__":
    main()
'''


def _site_packages() -> str:
    """Folders holding numpy and onnxruntime, for the python-ort model's own sys.path."""
    import numpy
    import onnxruntime
    dirs = []
    for mod in (numpy, onnxruntime):
        d = str(Path(mod.__file__).resolve().parent.parent)
        if d not in dirs:
            dirs.append(d)
    return os.pathsep.join(dirs)


def _existing_versions(model_dir: Path) -> List[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _check_existing(model_dir: Path, config) -> None:
    """An existing REPO/NAME may get a new version only if it serves the same model interface."""
    cfg_path = model_dir / "config.pbtxt"
    if not cfg_path.is_file():
        raise VitoptError(f"{model_dir} exists but has no config.pbtxt: not a model this command wrote; "
                          "choose another --name or repository")
    old = parse_config_text(cfg_path.read_text(), str(cfg_path))
    if old.name and old.name != model_dir.name:
        raise VitoptError(f"{cfg_path} names the model {old.name!r}, not {model_dir.name!r}")

    def iface(c):
        return (c.platform, c.backend, c.max_batch_size > 0,
                [(t.name, t.data_type, list(t.dims)) for t in c.input],
                [(t.name, t.data_type, list(t.dims)) for t in c.output])
    if iface(old) != iface(config):
        a, b = iface(old), iface(config)
        what = ("platform/backend" if a[:2] != b[:2] else "batching" if a[2] != b[2] else
                "inputs" if a[3] != b[3] else "outputs")
        raise VitoptError(f"model {model_dir.name!r} in {model_dir.parent} has different {what} "
                          f"({a[3] if what == 'inputs' else a[4] if what == 'outputs' else a[:3]}); "
                          f"this model would serve {b[3] if what == 'inputs' else b[4] if what == 'outputs' else b[:3]}: "
                          "choose another --name")


def prepare_repository(model_file, repo, cfg: ServeConfig, *, bench: Optional[dict] = None,
                       labels: Optional[str] = None, preprocess: Optional[dict] = None) -> PrepareResult:
    """Write ``model_file`` as a new version of model ``cfg.name`` in the Triton repository ``repo``.

    Args:
        model_file: an ONNX file (onnxruntime, python-ort) or an engine with its sidecar (tensorrt).
        repo: the model repository folder (created if missing).
        cfg: serving choices; max_batch / preferred None are resolved by ``resolve_config``.
        bench: a ``vitopt bench --json`` result for the preferred batch sizes and queue delay.
        labels: a synset list (``optimizer.data.labels`` formats) for labels.txt; default class_<i>.
        preprocess: the client's preprocessing spec (``optimizer.serve.preprocess``); default from
            the ONNX metadata key ``vitopt.preprocess`` or timm's defaults at the input size.
    Returns a PrepareResult. Raises VitoptError for a model the platform cannot serve, an existing
    model of another interface under the same name, or bad settings; nothing is left half-written.
    Example: ``prepare_repository("deit.onnx", "repo", ServeConfig("deit", platform="python-ort"))``
    """
    from .preprocess import spec_default
    from .validate import validate_model_dir
    sig = signature_of(model_file)
    notes: list = []
    cfg = resolve_config(cfg, sig, bench, notes)
    logits = label_output(sig)
    config = build_model_config(sig, cfg, label_output=logits)
    text = config_text(config)
    parse_config_text(text)       # what we write must parse with Triton's schema
    if preprocess is None and sig.metadata.get("vitopt.preprocess"):
        preprocess = json.loads(sig.metadata["vitopt.preprocess"])
    if preprocess is None:
        shape = sig.inputs[0].shape[1:]
        if len(shape) == 3 and all(d > 0 for d in shape):
            preprocess = spec_default(shape)
            notes.append("preprocessing: timm defaults at the input size (pass --data-config NAME for the model's)")
    repo = Path(repo)
    try:
        repo.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VitoptError(f"cannot create repository {repo}: {e.strerror}") from None
    if not repo.is_dir():
        raise VitoptError(f"repository {repo} is not a directory")
    model_dir = repo / cfg.name
    exists = model_dir.exists()
    if exists:
        _check_existing(model_dir, config)
        version = (_existing_versions(model_dir) or [0])[-1] + 1
        stage_root = Path(tempfile.mkdtemp(prefix=f".v{version}.", suffix=".staging", dir=model_dir))
        vdir = stage_root
    else:
        version = 1
        stage_root = Path(tempfile.mkdtemp(prefix=f".{cfg.name}.", suffix=".staging", dir=repo))
        vdir = stage_root / str(version)
        vdir.mkdir()
    os.chmod(stage_root, 0o755)       # mkdtemp's 0700 would hide the model from a server running as another user
    try:
        if cfg.platform == "python-ort":
            from . import python_ort_model
            shutil.copyfile(python_ort_model.__file__, vdir / "model.py")
            shutil.copyfile(model_file, vdir / "model.onnx")
            config.parameters["site_packages"].string_value = _site_packages()
            if sys.prefix != sys.base_prefix:
                # the stub imports numpy before model.py runs: it must start inside this venv
                config.parameters["EXECUTION_ENV_PATH"].string_value = sys.prefix
            text = config_text(config)
        else:
            shutil.copyfile(model_file, vdir / cfg.model_file)
            if sig.kind == "engine":     # the sidecar keeps the profile and I/O for validation beside the plan
                from ..engine.build import sidecar_path
                shutil.copyfile(sidecar_path(model_file), sidecar_path(vdir / cfg.model_file))
        extras = {"config.pbtxt": text}
        if logits is not None:
            count = [o for o in sig.outputs if o.name == logits][0].shape[1]
            extras[LABELS_FILE] = "\n".join(class_names(count, labels)) + "\n"
        if preprocess is not None:
            extras[PREPROCESS_FILE] = json.dumps(preprocess, indent=2) + "\n"
            if logits is not None:
                extras[CLIENT_FILE] = client_example(cfg.name, sig.inputs[0].name, logits)
        if exists:
            final = model_dir / str(version)
            os.rename(stage_root, final)          # fails rather than replace an existing version
            stage_root = None
            from ..fileio import write_text
            for fname, content in extras.items():
                write_text(model_dir / fname, content)
                os.chmod(model_dir / fname, 0o644)
        else:
            for fname, content in extras.items():
                (stage_root / fname).write_text(content)
            os.rename(stage_root, model_dir)
            stage_root = None
    except OSError as e:
        raise VitoptError(f"cannot write {model_dir}: {e.strerror or e}") from None
    finally:
        if stage_root is not None:
            shutil.rmtree(stage_root, ignore_errors=True)
    validate_model_dir(model_dir)
    files = sorted(str(p.relative_to(repo)) for p in model_dir.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(model_dir).parts))
    return PrepareResult(str(repo), cfg.name, version,
                         {"platform": cfg.platform, "max_batch_size": cfg.max_batch,
                          "preferred_batch_size": list(cfg.preferred), "dynamic_batching": cfg.dynamic_batching
                          and cfg.max_batch > 0, "max_queue_delay_us": cfg.max_queue_delay_us,
                          "instances": cfg.instances, "kind": cfg.kind, "threads": cfg.threads},
                         sig.to_dict(), files, notes)
