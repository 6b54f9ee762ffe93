"""serve-prepare: Triton repositories parsed by Triton's own schema and checked against the model file."""
from __future__ import annotations

import json

import numpy as np
import pytest

from optimizer.errors import VitoptError
from optimizer.serve import ServeConfig, prepare_repository, validate_model_dir
from optimizer.serve.config import parse_config_text

from .conftest import needs_schema

pytestmark = needs_schema


def _config(repo, name):
    return parse_config_text((repo / name / "config.pbtxt").read_text())


def test_onnx_config_matches_the_file(tiny_onnx, tmp_path):
    _, path = tiny_onnx
    bench = {"format": "vitopt-bench", "rows": [
        {"backend": "onnxruntime", "batch": b, "throughput_ips": t, "p50_ms": b * 1000.0 / t}
        for b, t in ((1, 100.0), (4, 310.0), (8, 330.0), (16, 340.0))]}
    res = prepare_repository(path, tmp_path / "repo", ServeConfig("tiny", threads=2, instances=2), bench=bench)
    c = _config(tmp_path / "repo", "tiny")
    assert c.platform == "onnxruntime_onnx" and c.name == "tiny"
    assert c.max_batch_size == 16                       # the largest benchmarked batch
    assert [(i.name, list(i.dims)) for i in c.input] == [("input", [3, 32, 32])]
    assert [(o.name, list(o.dims), o.label_filename) for o in c.output] == [("logits", [10], "labels.txt")]
    assert list(c.dynamic_batching.preferred_batch_size) == [4, 8, 16]  # knee 4 (310 >= 0.9 * 340) .. peak 16
    assert c.dynamic_batching.max_queue_delay_microseconds == 1000     # a tenth of batch 1's 10 ms
    from optimizer.serve.config import model_config_pb2
    assert (c.instance_group[0].count, c.instance_group[0].kind) == (2, model_config_pb2().ModelInstanceGroup.KIND_CPU)
    assert c.parameters["intra_op_thread_count"].string_value == "2"
    assert c.model_warmup[0].batch_size == 1 and list(c.model_warmup[0].inputs["input"].dims) == [3, 32, 32]
    assert res.version == 1 and (tmp_path / "repo/tiny/1/model.onnx").read_bytes() == open(path, "rb").read()
    assert (tmp_path / "repo/tiny/labels.txt").read_text().splitlines() == [f"class_{i}" for i in range(10)]


def test_instance_kind_and_accelerator(tiny_onnx, tmp_path):
    from optimizer.serve.config import model_config_pb2
    pb = model_config_pb2()
    _, path = tiny_onnx
    prepare_repository(path, tmp_path, ServeConfig("g", kind="gpu", trt_accelerator=True, fp16=True, max_batch=8))
    c = _config(tmp_path, "g")
    assert c.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    acc = c.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"
    with pytest.raises(VitoptError, match="applies to --platform onnxruntime --kind gpu only"):
        ServeConfig("g", trt_accelerator=True)


def test_second_run_adds_a_version_and_keeps_the_first(tiny_onnx, tmp_path):
    _, path = tiny_onnx
    prepare_repository(path, tmp_path, ServeConfig("tiny", max_batch=8))
    before = (tmp_path / "tiny/1/model.onnx").stat()
    res = prepare_repository(path, tmp_path, ServeConfig("tiny", max_batch=8))
    assert res.version == 2
    assert (tmp_path / "tiny/1/model.onnx").stat().st_mtime_ns == before.st_mtime_ns
    assert validate_model_dir(tmp_path / "tiny")["versions"] == [1, 2]
    assert not [p for p in (tmp_path / "tiny").iterdir() if p.name.startswith(".")]  # no staging left


def test_existing_model_with_another_interface_is_refused(tiny_onnx, other_onnx, tmp_path):
    _, path = tiny_onnx
    prepare_repository(path, tmp_path, ServeConfig("m", max_batch=8))
    with pytest.raises(VitoptError, match=r"model 'm' in .* has different outputs .*choose another --name"):
        prepare_repository(other_onnx, tmp_path, ServeConfig("m", max_batch=8))
    assert sorted(p.name for p in (tmp_path / "m").iterdir() if p.is_dir()) == ["1"]


def test_existing_folder_naming_another_model_is_refused(tiny_onnx, tmp_path):
    _, path = tiny_onnx
    prepare_repository(path, tmp_path, ServeConfig("m", max_batch=8))
    cfg = tmp_path / "m" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('name: "m"', 'name: "other"'))
    with pytest.raises(VitoptError, match="names the model 'other', not 'm'"):
        prepare_repository(path, tmp_path, ServeConfig("m", max_batch=8))


def test_static_batch_onnx_gets_max_batch_zero_and_full_dims(static_onnx, tmp_path):
    res = prepare_repository(static_onnx, tmp_path, ServeConfig("s"))
    c = _config(tmp_path, "s")
    assert c.max_batch_size == 0 and not c.HasField("dynamic_batching")
    assert list(c.input[0].dims) == [2, 3, 32, 32] and list(c.output[0].dims) == [2, 10]
    assert res.config["max_batch_size"] == 0
    with pytest.raises(VitoptError, match=r"static batch \(2\); it cannot be served with max_batch_size 8"):
        prepare_repository(static_onnx, tmp_path, ServeConfig("s2", max_batch=8))


@pytest.mark.parametrize("name", ["has/slash", "", ".hidden", "-dash", "sp ace", "x" * 129])
def test_names_triton_rejects(name):
    with pytest.raises(VitoptError, match="is not valid for Triton"):
        ServeConfig(name)


def _fake_engine(tmp_path, profile=True, max_batch=16):
    eng = tmp_path / "m.engine"
    eng.write_bytes(b"not a real plan: the config is built from the sidecar")
    side = {"format": "vitopt-engine", "version": 1, "precision": "fp16",
            "io": [{"name": "input", "mode": "input", "shape": [-1, 3, 224, 224], "dtype": "float32"},
                   {"name": "logits", "mode": "output", "shape": [-1, 1000], "dtype": "float32"}]}
    if profile:
        side["profile"] = {"input": "input", "batch_sizes": [1, 8, max_batch], "min": [1, 3, 224, 224],
                           "opt": [8, 3, 224, 224], "max": [max_batch, 3, 224, 224]}
    (tmp_path / "m.engine.json").write_text(json.dumps(side))
    return eng


def test_engine_max_batch_comes_from_its_profile(tmp_path):
    eng = _fake_engine(tmp_path)
    prepare_repository(eng, tmp_path / "repo", ServeConfig("e", platform="tensorrt", kind="gpu"))
    c = _config(tmp_path / "repo", "e")
    assert c.platform == "tensorrt_plan" and c.max_batch_size == 16
    assert (tmp_path / "repo/e/1/model.plan").is_file()
    with pytest.raises(VitoptError, match="--max-batch 32 exceeds the engine profile's max batch 16"):
        prepare_repository(eng, tmp_path / "repo", ServeConfig("e2", platform="tensorrt", kind="gpu", max_batch=32))


def test_engine_without_a_batch_profile_is_refused(tmp_path):
    eng = _fake_engine(tmp_path, profile=False)
    with pytest.raises(VitoptError, match="has no batch profile"):
        prepare_repository(eng, tmp_path / "repo", ServeConfig("e", platform="tensorrt", kind="gpu"))
    assert not (tmp_path / "repo" / "e").exists()


def test_platform_must_fit_the_file(tiny_onnx, tmp_path):
    _, path = tiny_onnx
    with pytest.raises(VitoptError, match="--platform tensorrt serves a TensorRT engine, got an ONNX file"):
        prepare_repository(path, tmp_path, ServeConfig("x", platform="tensorrt", kind="gpu"))


def test_failure_while_staging_leaves_no_version_folder(tiny_onnx, tmp_path, monkeypatch):
    _, path = tiny_onnx
    prepare_repository(path, tmp_path, ServeConfig("m", max_batch=8))
    import optimizer.serve.repository as repo_mod

    def broken_copy(src, dst):
        open(dst, "wb").write(b"half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(repo_mod.shutil, "copyfile", broken_copy)
    with pytest.raises(VitoptError, match="No space left on device"):
        prepare_repository(path, tmp_path, ServeConfig("m", max_batch=8))
    assert sorted(p.name for p in (tmp_path / "m").iterdir() if p.is_dir()) == ["1"]
    with pytest.raises(VitoptError):
        prepare_repository(path, tmp_path, ServeConfig("fresh", max_batch=8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_validation_catches_configs_that_disagree_with_the_model(tiny_onnx, tmp_path):
    _, path = tiny_onnx
    prepare_repository(path, tmp_path, ServeConfig("m", max_batch=8, preferred=(4,)))
    cfg = tmp_path / "m" / "config.pbtxt"
    good = cfg.read_text()
    cfg.write_text(good.replace("dims: 10", "dims: 11"))
    with pytest.raises(VitoptError, match=r"output 'logits' has dims \[11\] in the config, the model needs \[10\]"):
        validate_model_dir(tmp_path / "m")
    cfg.write_text(good.replace("preferred_batch_size: 4", "preferred_batch_size: 16"))
    with pytest.raises(VitoptError, match=r"preferred_batch_size \[16\] not within 1..max_batch_size 8"):
        validate_model_dir(tmp_path / "m")
    cfg.write_text(good.replace("TYPE_FP32", "TYPE_FP16", 1))
    with pytest.raises(VitoptError, match="input 'input' is TYPE_FP16 in the config, TYPE_FP32 in the model"):
        validate_model_dir(tmp_path / "m")
    cfg.write_text(good.replace("max_batch_size: 8", "max_batch_size: 8 bogus_field: 1"))
    with pytest.raises(VitoptError, match="does not parse as a Triton model config"):
        validate_model_dir(tmp_path / "m")
    cfg.write_text(good)
    (tmp_path / "m/1/model.onnx").rename(tmp_path / "m/1/other.onnx")
    with pytest.raises(VitoptError, match="missing model.onnx for platform onnxruntime"):
        validate_model_dir(tmp_path / "m")


def test_python_ort_version_holds_model_py_and_its_onnx(tiny_onnx, tmp_path):
    import sys
    _, path = tiny_onnx
    prepare_repository(path, tmp_path, ServeConfig("p", platform="python-ort", max_batch=4))
    c = _config(tmp_path, "p")
    assert c.backend == "python" and not c.platform
    assert {p.name for p in (tmp_path / "p/1").iterdir()} == {"model.py", "model.onnx"}
    import numpy
    assert str(__import__("pathlib").Path(numpy.__file__).resolve().parent.parent) in \
        c.parameters["site_packages"].string_value.split(":")
    if sys.prefix != sys.base_prefix:
        assert c.parameters["EXECUTION_ENV_PATH"].string_value == sys.prefix


def test_client_preprocessing_equals_timm_eval_transform(tmp_path):
    """The numpy/PIL preprocessing written for clients reproduces timm's eval transform."""
    import timm
    from PIL import Image
    from optimizer.data.folder import eval_transform
    from optimizer.serve.preprocess import preprocess_image, spec_for_model
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=3, depth=1)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(((300, 257), (257, 400), (224, 224))):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        ref = eval_transform(model)(Image.open(p).convert("RGB")).numpy()
        got = preprocess_image(p, spec_for_model(model))
        assert got.shape == ref.shape == (3, 224, 224)
        np.testing.assert_allclose(got, ref, atol=1e-5)


def test_client_example_is_valid_python_with_the_preprocessing(tiny_onnx, tmp_path):
    import ast
    _, path = tiny_onnx
    prepare_repository(path, tmp_path, ServeConfig("m", max_batch=8))
    src = (tmp_path / "m/client_example.py").read_text()
    tree = ast.parse(src)
    assert {f.name for f in tree.body if isinstance(f, ast.FunctionDef)} == {"preprocess_image", "main"}
    spec = json.loads((tmp_path / "m/preprocess.json").read_text())
    assert spec["center_crop"] == [32, 32] and spec["input_size"] == [3, 32, 32]
