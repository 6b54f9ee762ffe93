"""CLI contract: bad input -> one line on stderr, exit 2, nothing half-written; eval on real data."""
import json
import subprocess
import sys

import pytest

from optimizer.cli.main import main


def run_cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv,msg", [
    (["eval", "--model", "nope_vit"], "unknown model 'nope_vit'"),
    (["eval", "--model", "deit_tiny_patch16_224", "--checkpoint", "/no/w.pth"], "checkpoint not found: /no/w.pth"),
    (["eval", "--model", "deit_tiny_patch16_224", "--batch-size", "0"], "--batch-size must be positive"),
    (["eval", "--model", "deit_tiny_patch16_224", "--data", "/no/dir"], "data directory not found"),
    (["compress", "--method", "nope", "--model", "deit_tiny_patch16_224", "-o", "x"], "unknown compression method"),
])
def test_errors_are_one_line(capsys, argv, msg):
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2
    assert err.strip().count("\n") == 0 or all(l.startswith("model:") for l in err.strip().splitlines()[:-1])
    assert msg in err.strip().splitlines()[-1]


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval"])
    assert e.value.code == 2
    assert "the following arguments are required: --model" in capsys.readouterr().err


def test_random_weights_never_print_accuracy(capsys, image_folder, tmp_path):
    j = tmp_path / "r.json"
    rc, out, err = run_cli(capsys, "eval", "--model", "deit_tiny_patch16_224", "--data", str(image_folder),
                           "--workers", "0", "--json", str(j))
    assert rc == 0 and "not reported (random weights)" in out and "top-1" not in out
    res = json.loads(j.read_text())
    assert res["eval"]["top1"] is None and res["model"]["random_weights"] is True
    assert res["eval"]["failed_count"] == 1 and "unreadable images: 1" in err


def test_no_traceback_from_the_installed_command(tmp_path):
    p = subprocess.run([sys.executable, "-m", "optimizer.cli.main", "eval", "--model", "deit_tiny_patch16_224",
                        "--checkpoint", str(tmp_path / "missing.pth")], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == f"vitopt eval: error: checkpoint not found: {tmp_path / 'missing.pth'}"


def test_import_is_light():
    code = ("import sys, optimizer, optimizer.compress, optimizer.cli.main as m; m.build_parser();"
            "bad=[k for k in ('onnxruntime','tensorrt','tensorrt_rtx','onnx','torch') if k in sys.modules];"
            "print(','.join(bad))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == ""


@pytest.mark.slow
def test_eval_deit_tiny_on_mini_val(capsys, shared_weights, mini_val, tmp_path):
    j = tmp_path / "e.json"
    rc, out, err = run_cli(capsys, "eval", "--model", "deit_tiny_patch16_224", "--checkpoint", shared_weights,
                           "--data", mini_val, "--json", str(j))
    assert rc == 0
    res = json.loads(j.read_text())
    assert res["eval"]["images"] == 491 and res["eval"]["failed_count"] == 0
    assert 81.2 <= res["eval"]["top1"] <= 81.8
    assert res["params_M"] == pytest.approx(5.717, abs=1e-3) and round(res["gmacs"], 2) == 1.26
