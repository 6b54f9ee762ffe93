"""``vitopt compress --method gates``: config errors are one line and exit code 2."""
from __future__ import annotations

from optimizer.cli.main import main


def test_compress_gates_rejects_bad_macs(capsys, tmp_path):
    rc = main(["compress", "--method", "gates", "--model", "deit_tiny_patch16_224", "--macs", "1.5",
               "--calib", str(tmp_path), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "macs_ratio must be in (0, 1]" in err and len(err.strip().splitlines()) == 1


def test_compress_gates_rejects_unknown_option(capsys, tmp_path):
    rc = main(["compress", "--method", "gates", "--model", "deit_tiny_patch16_224", "--macs", "0.6",
               "--set", "group=16", "--calib", str(tmp_path), "-o", str(tmp_path / "out")])
    assert rc == 2
    assert "unknown gates option(s): group" in capsys.readouterr().err
