"""kill -TERM (what schedulers and ``timeout`` send) or Ctrl-C at several points of export, compress
and run: exit 128 + signal (143 / 130), one line saying so, nothing left in the target or $TMPDIR,
and a previous output untouched. A second signal exits at once, still removing the temporaries.

These run the real command in a subprocess (signals need their own process); the signal is sent
a delay after the command printed a line that says its work has started.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import ARCH, snapshot

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--set", "batch_size=2", "--set", "recovery=none", "--workers", "0"]


def _commands(broken, out: Path) -> dict:
    recipe = out.parent / "recipe.yaml"
    recipe.write_text(f"model: {ARCH}\ncalib: {broken['data']}\nworkers: 0\nsteps:\n"
                      "  - slim: {macs: 0.7, steps: 400, batch_size: 2, recovery: none}\n  - export: {}\n")
    return {
        "export": (["export", "--model", ARCH, "-o", out / "m.onnx"], "model:"),
        "compress": (["compress", "--method", "slim", "--model", ARCH, "--calib", broken["data"], "--macs", "0.7",
                      "-o", out / "slim", "--set", "steps=400", *FAST], "model:"),
        "run": (["run", recipe, "-o", out / "run"], "[1/"),
    }


def _signal_during(argv, marker: str, delay: float, sandbox, signals=(signal.SIGTERM,), group: bool = False):
    """Start ``vitopt argv``; ``delay`` s after ``marker`` appears on stderr send ``signals`` (to the
    whole process group with ``group``, as coreutils ``timeout`` does, data workers included).
    Returns (was it still running when signalled, exit code, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(sandbox.tmpdir))
    env.pop("VITOPT_DEBUG", None)
    p = subprocess.Popen([sys.executable, "-m", "optimizer.cli.main", *map(str, argv)], cwd=sandbox.root, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=group)
    lines, started = [], threading.Event()

    def read():
        for line in p.stderr:
            lines.append(line)
            if marker in line:
                started.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(timeout=600), "".join(lines)
        time.sleep(delay)
        running = p.poll() is None
        for s in signals:
            os.killpg(p.pid, s) if group else p.send_signal(s)
        rc = p.wait(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    reader.join(timeout=10)
    return running, rc, "".join(lines)


@pytest.mark.parametrize("command", ["export", "compress", "run"])
@pytest.mark.parametrize("delay", [0.0, 1.5])
def test_sigterm_leaves_nothing_behind(command, delay, broken, sandbox):
    out = sandbox.root / "out"
    out.mkdir()
    (out / "keep.txt").write_text("the user's")
    before = snapshot(out)
    argv, marker = _commands(broken, out)[command]
    running, rc, err = _signal_during(argv, marker, delay, sandbox)
    if not running:
        pytest.skip(f"{command} finished within {delay} s, before the signal (a faster machine)")
    assert rc == 143, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"vitopt {command}: stopped by SIGTERM; temporary files removed", err
    assert snapshot(out) == before           # no output, no temporary file: only the user's own file
    # the sandbox fixture then checks that $TMPDIR and the whole working directory hold no temporaries


def test_sigint_exits_130(broken, sandbox):
    out = sandbox.root / "out"
    out.mkdir()
    argv, marker = _commands(broken, out)["export"]
    running, rc, err = _signal_during(argv, marker, 0.5, sandbox, signals=(signal.SIGINT,))
    assert running and rc == 130, err
    assert err.strip().splitlines()[-1] == "vitopt export: stopped by SIGINT; temporary files removed"
    assert list(out.iterdir()) == []


def test_second_signal_exits_at_once(broken, sandbox):
    out = sandbox.root / "out"
    out.mkdir()
    argv, marker = _commands(broken, out)["compress"]
    running, rc, err = _signal_during(argv, marker, 0.5, sandbox, signals=(signal.SIGTERM, signal.SIGTERM))
    assert running and rc == 143, err
    assert list(out.iterdir()) == []


def test_sigterm_to_the_group_with_data_workers(broken, sandbox):
    """``timeout`` signals the whole group: the data loader's workers die quietly, the command reports the stop."""
    out = sandbox.root / "out"
    out.mkdir()
    argv = ["compress", "--method", "slim", "--model", ARCH, "--calib", broken["data"], "--macs", "0.7",
            "-o", out / "slim", "--set", "steps=400", "--set", "batch_size=2", "--set", "recovery=none",
            "--workers", "1"]
    running, rc, err = _signal_during(argv, "model:", 1.5, sandbox, group=True)
    assert running and rc == 143, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "vitopt compress: stopped by SIGTERM; temporary files removed", err
    assert list(out.iterdir()) == []
