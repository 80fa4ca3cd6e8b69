"""Runs and supervises one tritonserver process for a node agent.

On CPU machines the server binary comes from the nvidia-pytriton wheel installed
in .venv-triton (Triton 2.51 with the Python backend). On a GPU node set
APPLIANCE_TRITON_BIN / APPLIANCE_TRITON_BACKENDS to a Triton install instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from appliance.core.env import env_str
from appliance.core.process import with_parent_death_signal

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TritonInstall:
    """Where the server binary, its libraries and its backends are."""

    binary: Path
    backend_dir: Path
    library_dirs: tuple[Path, ...]
    python_bin_dir: Path | None  # the Python the Python-backend stub finds numpy through
    cache_dir: Path | None = None  # response-cache implementations (caches/local)

    @classmethod
    def discover(cls) -> TritonInstall:
        binary = env_str("TRITON_BIN", "")
        if binary:
            return cls(
                binary=Path(binary),
                backend_dir=Path(env_str("TRITON_BACKENDS", "/opt/tritonserver/backends")),
                library_dirs=(),
                python_bin_dir=None,
                cache_dir=Path(env_str("TRITON_CACHES", "/opt/tritonserver/caches")),
            )
        venv = Path(env_str("TRITON_VENV", str(settings.BASE_DIR / ".venv-triton")))
        site = next(iter(sorted((venv / "lib").glob("python3*/site-packages"))), None)
        if site is None or not (site / "pytriton").exists():
            raise RuntimeError(f"no Triton found: {venv} has no nvidia-pytriton (run `make venv`)")
        wheel = site / "pytriton" / "tritonserver"
        return cls(
            binary=wheel / "bin" / "tritonserver",
            backend_dir=_assemble_backends(wheel, venv),
            library_dirs=(site / "nvidia_pytriton.libs",),
            python_bin_dir=venv / "bin",
            cache_dir=wheel / "caches",
        )


def _assemble_backends(wheel: Path, venv: Path) -> Path:
    """The wheel keeps the Python-backend stub apart, one per Python version; Triton
    wants it beside libtriton_python.so. Build that directory once under var/."""
    py = sorted((venv / "lib").glob("python3*"))[0].name.removeprefix("python")
    target = settings.VAR_DIR / "triton-backends" / py
    stub = target / "python" / "triton_python_backend_stub"
    if not stub.exists():
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(wheel / "backends", tmp)
        shutil.copy2(wheel / "python_backend_stubs" / py / "triton_python_backend_stub", tmp / "python")
        try:
            os.rename(tmp, target)
        except OSError:  # another agent on this machine won the race
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass
class TritonPorts:
    http: int
    grpc: int
    metrics: int
    host: str = "127.0.0.1"

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc}"

    @property
    def http_address(self) -> str:
        return f"{self.host}:{self.http}"

    @property
    def metrics_address(self) -> str:
        return f"{self.host}:{self.metrics}"


@dataclass
class TritonSupervisor:
    """Starts tritonserver, restarts it when it dies, keeps its log."""

    node_name: str
    repository: Path
    ports: TritonPorts
    log_path: Path
    install: TritonInstall = field(default_factory=TritonInstall.discover)
    on_start: list = field(default_factory=list)  # callbacks run after each (re)start is ready
    # A second Triton of the node (one per MIG device): its own shared-memory prefix and device.
    instance: str = ""
    extra_env: dict = field(default_factory=dict)
    restarts: int = 0
    _process: subprocess.Popen | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def command(self) -> list[str]:
        p = self.ports
        return [
            str(self.install.binary),
            f"--model-repository={self.repository}",
            "--model-control-mode=explicit",
            f"--backend-directory={self.install.backend_dir}",
            # Several Tritons on one machine must not share Python-backend shared memory.
            f"--backend-config=python,shm-region-prefix-name=appliance-{self.node_name}-{self.instance}-",
            f"--http-address={p.host}",
            f"--http-port={p.http}",
            f"--grpc-address={p.host}",
            f"--grpc-port={p.grpc}",
            f"--metrics-address={p.host}",
            f"--metrics-port={p.metrics}",
            # Server readiness must not hinge on one model: a failed load of a new
            # version would otherwise take the whole node out of routing.
            "--strict-readiness=false",
            "--disable-auto-complete-config",
            # Triton's own response cache, used by models whose serving profile turns it on.
            *([f"--cache-directory={self.install.cache_dir}", f"--cache-config=local,size={settings.TRITON_CACHE_BYTES}"]
              if self.install.cache_dir is not None and settings.TRITON_CACHE_BYTES else []),
            "--exit-timeout-secs=10",
            "--log-verbose=0",
        ]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
        if self.install.library_dirs:
            extra = ":".join(str(d) for d in self.install.library_dirs)
            env["LD_LIBRARY_PATH"] = f"{extra}:{env['LD_LIBRARY_PATH']}" if env.get("LD_LIBRARY_PATH") else extra
        if self.install.python_bin_dir is not None:
            env["PATH"] = f"{self.install.python_bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"
            env.pop("PYTHONPATH", None)
            env.pop("VIRTUAL_ENV", None)
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        self.repository.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logfile = self.log_path.open("ab")
        log.info("starting tritonserver for node %s (grpc %s)", self.node_name, self.ports.grpc_address)
        self._process = subprocess.Popen(
            with_parent_death_signal(self.command()),
            stdout=logfile,
            stderr=subprocess.STDOUT,
            env=self.environment(),
        )
        logfile.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def watch(self, ready_check, interval: float = 0.5) -> None:
        """Runs in a thread: restarts Triton when it exits, with a capped back-off,
        and runs the on_start callbacks (reloading live models) once it is ready."""
        backoff = 1.0
        need_callbacks = True
        while not self._stop.is_set():
            try:
                if not self.alive():
                    code = self._process.returncode if self._process else None
                    if self._process is not None:
                        self.restarts += 1
                        log.warning("tritonserver of %s exited with %s; restarting in %.0fs", self.node_name, code, backoff)
                        if self._stop.wait(backoff):
                            return
                        backoff = min(backoff * 2, 30.0)
                    self.start()
                    need_callbacks = True
                if need_callbacks and ready_check():
                    backoff = 1.0
                    need_callbacks = False
                    self._run_callbacks()
            except Exception:  # the supervisor must outlive anything (a failed start is retried)
                log.exception("supervising tritonserver of %s", self.node_name)
            self._stop.wait(interval)

    def _run_callbacks(self) -> None:
        for callback in self.on_start:
            try:
                callback()
            except Exception:  # a failed reload is recorded by the callback itself
                log.exception("after-start callback failed on %s", self.node_name)

    def stop(self) -> None:
        self._stop.set()
        proc = self._process
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def triton_ready(address: str, timeout: float = 2.0) -> bool:
    """Does the Triton at address answer ready? Any failure is a no."""
    import tritonclient.grpc as triton_grpc

    try:
        client = triton_grpc.InferenceServerClient(address)
        try:
            return bool(client.is_server_ready(client_timeout=timeout))
        finally:
            client.close()
    except Exception:
        return False


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
