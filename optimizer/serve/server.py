"""``TritonServer``: the ``tritonserver`` binary bundled with ``nvidia-pytriton``, on loopback only.

The wheel ships the server (2.51), the Python backend and one backend stub per Python version
under ``python_backend_stubs/``; the stub must sit beside the backend. A private backend folder of
symlinks (no copy of the 30 MB server) puts the stub for this Python there. The server runs in
its own process group on 127.0.0.1 with free ports for HTTP, gRPC and metrics; ``stop`` sends
SIGTERM to the group, waits, then SIGKILLs it, so no server or stub process outlives it.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import List, Optional, Sequence

from ..errors import MissingDependency, VitoptError

HOST = "127.0.0.1"
LOG_TAIL = 15


def bundled_server() -> dict:
    """Paths of the bundled server: {"binary", "backends", "stub", "libs"}; MissingDependency when absent."""
    try:
        import importlib.util
        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency("the Triton server comes with nvidia-pytriton: pip install 'vitopt[serve]'")
    root = Path(list(spec.submodule_search_locations)[0])
    dist = root / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    paths = {"binary": dist / "bin" / "tritonserver", "backends": dist / "backends",
             "stub": dist / "python_backend_stubs" / version / "triton_python_backend_stub",
             "libs": root.parent / "nvidia_pytriton.libs"}
    if not paths["binary"].is_file():
        raise MissingDependency(f"nvidia-pytriton is installed without its tritonserver binary ({paths['binary']})")
    if not paths["stub"].is_file():
        raise MissingDependency(f"nvidia-pytriton has no Python-backend stub for Python {version}")
    return paths


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def check_port_free(port: int) -> int:
    """``port`` if it can be bound on 127.0.0.1, else VitoptError naming it."""
    if not isinstance(port, int) or not 0 < port < 65536:
        raise VitoptError(f"port must be in 1..65535, got {port!r}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            raise VitoptError(f"port {port} on {HOST} is in use; pick another or leave the port unset") from None
    return port


def _wait_group_gone(pgid: int, timeout_s: float) -> bool:
    """Poll until no process of group ``pgid`` is left (killed children die asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


class TritonServer:
    """The bundled Triton server serving ``repo`` on loopback; a context manager.

    Args:
        repo: model repository folder.
        models: load only these (explicit model control); None loads every model in ``repo``.
        timeout_s: how long ``start`` waits for the server to answer ready.
        http_port / grpc_port / metrics_port: fixed ports (checked free); default free ones.
        stop_timeout_s: grace after SIGTERM before SIGKILL.
    Raises (on start) MissingDependency without nvidia-pytriton, VitoptError for a port in use or
    a server that exits or never becomes ready (with its last log lines).
    Example: ``with TritonServer("repo", ["deit"]) as s: s.http_url`` -> "127.0.0.1:PORT"
    """

    def __init__(self, repo, models: Optional[Sequence[str]] = None, timeout_s: float = 60.0,
                 http_port: Optional[int] = None, grpc_port: Optional[int] = None,
                 metrics_port: Optional[int] = None, stop_timeout_s: float = 15.0):
        self.repo = Path(repo).resolve()
        if not self.repo.is_dir():
            raise VitoptError(f"model repository not found: {repo}")
        if not timeout_s > 0:
            raise VitoptError(f"server timeout must be positive, got {timeout_s}")
        self.models = list(models) if models is not None else None
        self.timeout_s = float(timeout_s)
        self.stop_timeout_s = float(stop_timeout_s)
        self._ports = (http_port, grpc_port, metrics_port)
        self.proc: Optional[subprocess.Popen] = None
        self._tmp: Optional[tempfile.TemporaryDirectory] = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def _backend_dir(self, paths: dict) -> Path:
        root = Path(self._tmp.name) / "backends"
        py = root / "python"
        py.mkdir(parents=True)
        for f in (paths["backends"] / "python").iterdir():
            if f.is_file():
                (py / f.name).symlink_to(f)
        (py / "triton_python_backend_stub").symlink_to(paths["stub"])
        return root

    def command(self) -> List[str]:
        return self._cmd

    def start(self) -> "TritonServer":
        paths = bundled_server()
        ports = [check_port_free(p) if p is not None else None for p in self._ports]
        self._tmp = tempfile.TemporaryDirectory(prefix="vitopt-triton-")
        try:
            backends = self._backend_dir(paths)
            chosen: List[int] = []
            for p in ports:
                while p is None or p in chosen:
                    p = free_port()
                    p = None if p in ports else p
                chosen.append(p)
            self.http_port, self.grpc_port, self.metrics_port = chosen
            self._cmd = [str(paths["binary"]), f"--model-repository={self.repo}", f"--backend-directory={backends}",
                         f"--http-address={HOST}", f"--grpc-address={HOST}", f"--metrics-address={HOST}",
                         f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
                         f"--metrics-port={self.metrics_port}", "--exit-on-error=false",
                         "--strict-readiness=false", "--log-verbose=0"]
            if self.models is not None:
                self._cmd += ["--model-control-mode=explicit"] + [f"--load-model={m}" for m in self.models]
            env = dict(os.environ)
            env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(paths["libs"]), env.get("LD_LIBRARY_PATH"))
                                                     if p)
            self.log_path = Path(self._tmp.name) / "tritonserver.log"
            self._log = open(self.log_path, "wb")
            self.proc = subprocess.Popen(self._cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self.proc.poll() is not None:
                raise VitoptError(f"tritonserver exited with code {self.proc.returncode} before it was ready: "
                                  + self.log_tail())
            if self._get("/v2/health/ready") == 200:
                return
            if time.monotonic() > deadline:
                raise VitoptError(f"tritonserver was not ready within {self.timeout_s:g} s: " + self.log_tail())
            time.sleep(0.2)

    def stop(self) -> Optional[int]:
        """SIGTERM the server's process group, wait ``stop_timeout_s``, SIGKILL what is left; idempotent.

        Returns the server's exit code (None if it never started).
        """
        code = None
        if self.proc is not None:
            pgid = self.proc.pid
            for sig, wait in ((signal.SIGTERM, self.stop_timeout_s), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(timeout=wait)
                    if sig == signal.SIGTERM:
                        # the server is gone; stubs it left in its group go too
                        try:
                            os.killpg(pgid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    break
                except subprocess.TimeoutExpired:
                    continue
            code = self.proc.returncode
            _wait_group_gone(pgid, 5.0)
            self.pgid = pgid
            self.proc = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
            try:
                self._last_log = self.log_path.read_text(errors="replace")
            except OSError:
                self._last_log = ""
            self._log = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        return code

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- queries -----------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"{HOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    def _get(self, path: str, data: Optional[bytes] = None) -> Optional[int]:
        try:
            req = urllib.request.Request(f"http://{self.http_url}{path}", data=data, method="POST" if data else "GET")
            with urllib.request.urlopen(req, timeout=2) as r:
                self._body = r.read()
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return None

    def model_states(self) -> List[dict]:
        """The repository index: [{"name", "version", "state", "reason"}] as the server reports it."""
        import json
        if self._get("/v2/repository/index", data=b"{}") != 200:
            raise VitoptError("tritonserver did not answer its repository index: " + self.log_tail())
        return json.loads(self._body)

    def errors_about(self, model: str) -> List[str]:
        """Error lines of the server log that name ``model`` (e.g. a config it refused to load)."""
        text = self._log_text()
        return [ln.strip() for ln in text.splitlines() if ln.startswith("E") and f"'{model}'" in ln]

    def _log_text(self) -> str:
        if getattr(self, "_log", None) is None:
            return getattr(self, "_last_log", "")
        self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL) -> str:
        """The server log's last ``lines`` non-table lines, joined with ' | '."""
        text = self._log_text()
        keep = deque((ln.strip() for ln in text.splitlines()
                      if ln.strip() and not ln.startswith(("|", "+"))), maxlen=lines)
        return " | ".join(keep) or "(empty log)"
