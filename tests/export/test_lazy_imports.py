"""Importing vitopt (and its export/graph/engine packages) must not import heavy backends."""
from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["onnxruntime", "tensorrt", "tensorrt_rtx", "onnx", "onnx_graphsurgeon"]


def test_import_does_not_load_backends():
    code = ("import sys, json; import optimizer, optimizer.export, optimizer.graph, optimizer.engine, "
            "optimizer.cli.main; optimizer.cli.main.build_parser(); "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
