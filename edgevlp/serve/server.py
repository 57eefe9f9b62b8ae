"""Start and stop a real ``tritonserver`` on a repository (``edgevlp serve``).

The server binary comes from an installed ``nvidia-pytriton`` (its own venv: it pins numpy<2; made by
``make serve-env`` as ``.serve-venv``) or from a ``tritonserver`` on PATH (NVIDIA's container). For
pytriton's build, the Python backend and the stub of the venv's Python are laid out in a temp dir and
its bundled libraries put on ``LD_LIBRARY_PATH``, as pytriton itself does. HTTP on PORT, gRPC on
PORT+1, metrics on PORT+2, bound to 127.0.0.1 unless a host is given.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgevlp.errors import ServerError

__all__ = ["TritonInstall", "TritonServer", "find_tritonserver", "SERVE_VENV"]

#: Where ``make serve-env`` puts the serving venv (relative to the source tree or the working dir).
SERVE_VENV = ".serve-venv"
_HOW = ("make one with `make serve-env` (a venv with nvidia-pytriton, which ships tritonserver), point "
        "--triton-python (or EDGEVLP_SERVE_PYTHON) at a Python that has nvidia-pytriton, or put NVIDIA's "
        "tritonserver on PATH")


@dataclass(frozen=True)
class TritonInstall:
    """A runnable tritonserver: its binary, backends dir, extra library dir and the Python the Python
    backend's stub runs (its ``bin`` goes first on PATH)."""

    binary: Path
    backends: Path
    libs: Path | None = None
    python: Path | None = None
    stub: Path | None = None


def _pytriton(python: Path) -> TritonInstall | None:
    if not python.exists():
        return None
    probe = ("import importlib.util, sys; s = importlib.util.find_spec('pytriton'); "
             "print(s.submodule_search_locations[0] if s else ''); print('%d.%d' % sys.version_info[:2])")
    try:
        out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60,
                             check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    if len(out) != 2:
        return None
    root = Path(out[0]) / "tritonserver"
    stub = root / "python_backend_stubs" / out[1] / "triton_python_backend_stub"
    if not (root / "bin" / "tritonserver").is_file() or not stub.is_file():
        return None
    return TritonInstall(binary=root / "bin" / "tritonserver", backends=root / "backends",
                         libs=Path(out[0]).parent / "nvidia_pytriton.libs", python=python, stub=stub)


def find_tritonserver(python: str | os.PathLike[str] | None = None) -> TritonInstall:
    """The tritonserver to run: ``python``'s nvidia-pytriton, else EDGEVLP_SERVE_PYTHON's, else the
    ``.serve-venv`` of the working dir or the source tree, else a ``tritonserver`` on PATH."""
    if python is not None:
        found = _pytriton(Path(python))
        if found is None:
            raise ServerError(f"{python} has no nvidia-pytriton (or is not a Python); {_HOW}")
        return found
    here = Path(__file__).resolve().parents[2]
    candidates = [os.environ.get("EDGEVLP_SERVE_PYTHON"), Path.cwd() / SERVE_VENV / "bin" / "python",
                  here / SERVE_VENV / "bin" / "python", sys.executable]
    for c in candidates:
        if c and (found := _pytriton(Path(c))) is not None:
            return found
    binary = shutil.which("tritonserver")
    if binary:
        return TritonInstall(binary=Path(binary), backends=Path("/opt/tritonserver/backends"))
    raise ServerError(f"no tritonserver found; {_HOW}")


def _free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed server's TIME_WAIT is no user
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class TritonServer:
    """A tritonserver process on one or more repositories; a context manager (started on enter, stopped on exit).

    Example:
        >>> with TritonServer("triton-repo", port=8000) as server:      # doctest: +SKIP
        ...     Client(server.grpc_url).caption(frame).text
    """

    def __init__(self, repository: str | os.PathLike[str] | list[str | os.PathLike[str]], *, host: str = "127.0.0.1", port: int = 8000,
                 install: TritonInstall | None = None, on_log: Callable[[str], None] | None = None,
                 log_verbose: int = 0, exit_timeout: int = 10) -> None:
        if not 1 <= port <= 65533:
            raise ServerError(f"port {port} is out of range: HTTP uses PORT, gRPC PORT+1, metrics PORT+2")
        repos = repository if isinstance(repository, (list, tuple)) else [repository]
        self.repositories = [Path(r).resolve() for r in repos]
        self.host, self.port = host, port
        self.install = install or find_tritonserver()
        self.on_log = on_log
        self.log_verbose = log_verbose
        self.exit_timeout = exit_timeout  # seconds a stopping server waits for requests in flight
        self.log: collections.deque[str] = collections.deque(maxlen=400)
        self.process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self._client_host}:{self.port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self._client_host}:{self.port + 1}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.port + 2}/metrics"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    def log_tail(self, lines: int = 60) -> str:
        return "".join(list(self.log)[-lines:])

    def _backends(self) -> Path:
        inst = self.install
        if inst.stub is None:
            return inst.backends
        self._workdir = tempfile.TemporaryDirectory(prefix="edgevlp-triton-")
        dst = Path(self._workdir.name) / "backends"
        shutil.copytree(inst.backends, dst)
        shutil.copy(inst.stub, dst / "python" / "triton_python_backend_stub")
        return dst

    def start(self, timeout: float = 180.0) -> "TritonServer":
        busy = [p for p in (self.port, self.port + 1, self.port + 2) if not _free(self.host, p)]
        if busy:
            raise ServerError(f"port(s) {', '.join(map(str, busy))} on {self.host} are in use; pick another "
                              "--port (HTTP PORT, gRPC PORT+1, metrics PORT+2)")
        env = dict(os.environ)
        if self.install.libs is not None:
            env["LD_LIBRARY_PATH"] = ":".join(p for p in (env.get("LD_LIBRARY_PATH"), str(self.install.libs)) if p)
        if self.install.python is not None:
            env["PATH"] = f"{Path(self.install.python).parent}:{env.get('PATH', '')}"
        cmd = [str(self.install.binary), *(f"--model-repository={r}" for r in self.repositories),
               f"--backend-directory={self._backends()}", f"--http-address={self.host}",
               f"--grpc-address={self.host}", f"--metrics-address={self.host}", f"--http-port={self.port}",
               f"--grpc-port={self.port + 1}", f"--metrics-port={self.port + 2}", "--allow-metrics=true",
               "--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0", "--exit-on-error=true", "--strict-readiness=true",
               f"--exit-timeout-secs={self.exit_timeout}",
               f"--log-verbose={self.log_verbose}"]
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        threading.Thread(target=self._pump, daemon=True, name="tritonserver-log").start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._cleanup()
                raise ServerError(f"tritonserver exited with code {self.process.returncode} while starting; "
                                  f"its log ends:\n{self.log_tail(25)}")
            if self.ready() and self._answers(self.metrics_url):  # metrics start after HTTP and gRPC
                return self
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"tritonserver was not ready after {timeout:.0f} s; its log ends:\n{self.log_tail(25)}")

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", errors="replace")
            self.log.append(line)
            if self.on_log is not None:
                self.on_log(line)

    def ready(self) -> bool:
        return self._answers(f"{self.http_url}/v2/health/ready")

    @staticmethod
    def _answers(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` s; returns the exit code."""
        p = self.process
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait()
        self._cleanup()
        return None if p is None else p.returncode

    def _cleanup(self) -> None:
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
