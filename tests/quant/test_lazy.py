"""``import optimizer.quant`` and building the CLI parser stay light: no torch, ONNX or backends."""
import json
import subprocess
import sys

HEAVY = ["torch", "onnxruntime", "onnx", "tensorrt", "tensorrt_rtx", "onnx_graphsurgeon"]


def test_import_quant_loads_no_heavy_module():
    code = ("import sys, json; import optimizer.quant, optimizer.cli.cmd_quantize; "
            "from optimizer.quant import QuantConfig; QuantConfig(calibrator='mse'); "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
