"""The bundled Triton server: loads what serve-prepare wrote, serves it equal to ONNX Runtime, stops clean."""
from __future__ import annotations

import json
import os
import socket
import time

import pytest

from optimizer.cli.main import main
from optimizer.errors import VitoptError

from .conftest import needs_server

pytestmark = needs_server


@pytest.fixture
def images(image_folder):
    """Real images: ../shared's imagenet-mini when present, else the small generated folder."""
    from tests.conftest import MINI
    return str(MINI / "val") if (MINI / "val").is_dir() else str(image_folder)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_serve_check_round_trip_http_and_grpc_and_backend_missing(tiny_onnx, tmp_path, images, capsys):
    """python-ort serves real images equal to in-process ONNX Runtime over HTTP and gRPC; an
    onnxruntime_onnx model passes only as 'config accepted, backend missing' with the server's message."""
    _, path = tiny_onnx
    repo = tmp_path / "repo"
    assert main(["serve-prepare", path, "-o", str(repo), "--name", "tiny_py", "--platform", "python-ort",
                 "--threads", "1", "--max-batch", "8"]) == 0
    assert main(["serve-prepare", path, "-o", str(repo), "--name", "tiny_ort", "--max-batch", "8"]) == 0
    out = tmp_path / "check.json"
    assert main(["serve-check", str(repo), "--images", images, "--count", "4", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    by = {m["name"]: m for m in res["models"]}
    py = by["tiny_py"]
    assert py["status"] == "served" and py["batch"] == 4 and "images from" in py["inputs"]
    for proto in ("http", "grpc"):
        assert py[proto]["max_abs_diff"] <= 1e-4 and py[proto]["top1_agreement"] == 1.0
    ort = by["tiny_ort"]
    assert ort["status"] == "config accepted, backend missing"
    assert "unable to find backend library for backend 'onnxruntime'" in ort["reason"]
    assert res["passed"] is True


def test_config_error_found_by_the_server_is_not_backend_missing(tiny_onnx, tmp_path):
    """A config our schema check accepts but the server refuses fails the check with the server's reason."""
    _, path = tiny_onnx
    repo = tmp_path / "repo"
    assert main(["serve-prepare", path, "-o", str(repo), "--name", "m", "--max-batch", "8"]) == 0
    cfg = repo / "m" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("max_queue_delay_microseconds: 1000",
                                           "max_queue_delay_microseconds: 1000 priority_levels: 2 "
                                           "default_priority_level: 3"))
    out = tmp_path / "check.json"
    assert main(["serve-check", str(repo), "--json", str(out)]) == 1
    m = json.loads(out.read_text())["models"][0]
    assert m["status"] == "failed to load" and m["passed"] is False
    assert "default priority level must be in range [1, 2]" in m["reason"]


def test_server_stops_within_bounds_and_leaves_no_process(tiny_onnx, tmp_path):
    import psutil
    from optimizer.serve import ServeConfig, prepare_repository
    from optimizer.serve.server import TritonServer
    _, path = tiny_onnx
    prepare_repository(path, tmp_path, ServeConfig("p", platform="python-ort", max_batch=2, threads=1))
    server = TritonServer(tmp_path, ["p"], timeout_s=120, stop_timeout_s=10)
    server.start()
    pgid = server.proc.pid
    procs = [psutil.Process(pgid)] + psutil.Process(pgid).children(recursive=True)
    assert len(procs) >= 2, "the python-ort model runs in a backend stub process"
    assert all(p.pid != os.getpid() for p in procs)
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 < 10 + 10 + 5       # SIGTERM grace + SIGKILL wait + slack
    assert not _group_alive(pgid)
    assert not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert server.stop() is None                     # idempotent


def test_port_in_use_is_one_line_error(tmp_path):
    from optimizer.serve.server import TritonServer
    (tmp_path / "repo").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(VitoptError, match=f"port {port} on 127.0.0.1 is in use"):
            TritonServer(tmp_path / "repo", http_port=port).start()


def test_server_never_ready_times_out_with_its_log_and_is_gone(tiny_onnx, tmp_path):
    from optimizer.serve import ServeConfig, prepare_repository
    from optimizer.serve.server import TritonServer
    _, path = tiny_onnx
    prepare_repository(path, tmp_path, ServeConfig("p", platform="python-ort", max_batch=2, threads=1))
    server = TritonServer(tmp_path, ["p"], timeout_s=0.3)
    with pytest.raises(VitoptError, match=r"tritonserver was not ready within 0.3 s: .+"):
        server.start()
    assert server.proc is None and not _group_alive(server.pgid)


def test_bench_triton_rows_per_concurrency(tiny_onnx, tmp_path):
    _, path = tiny_onnx
    out = tmp_path / "bench.json"
    assert main(["bench", path, "--backend", "triton", "--batch", "2", "--concurrency", "1,3", "--iters", "6",
                 "--min-time", "0", "--warmup", "1", "--threads", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["backend"], r["batch"], r["concurrency"]) for r in rows] == [("triton", 2, 1), ("triton", 2, 3)]
    for r in rows:
        assert r["iters"] >= 6 and r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["throughput_ips"] > 0
        assert r["env"]["server"] == "tritonserver" and r["env"]["protocol"] == "http"
