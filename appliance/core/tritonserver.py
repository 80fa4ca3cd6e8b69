"""Runs and supervises one tritonserver process: a node agent's (one per node and per MIG
device), or the optimiser's private one for a profile search; and what a Triton install
has (its backends).

On CPU machines the server binary comes from the nvidia-pytriton wheel installed
in .venv-triton (Triton 2.51 with the Python backend). On a GPU node set
APPLIANCE_TRITON_BIN / APPLIANCE_TRITON_BACKENDS to a Triton install instead.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from appliance.core.env import env_str
from appliance.core.process import ProcessTree, Supervisor

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
    host: str = "127.0.0.1"  # where Triton binds (and the agent itself calls it)
    # Where the control plane and the gateways reach it, where that differs (a NAT, a routed network):
    # what the agent registers; '' is `host`.
    advertise: str = ""

    def advertised(self) -> TritonPorts:
        return TritonPorts(http=self.http, grpc=self.grpc, metrics=self.metrics, host=self.advertise or self.host)

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
    """One tritonserver of the node, kept running by the shared supervisor
    (appliance/core/process.py): restarted with a capped back-off when it dies, after what
    it left behind (its Python-backend stubs) is killed; `on_start` callbacks (reloading the
    live models: EXPLICIT mode starts empty) run once each start is ready."""

    node_name: str
    repository: Path
    ports: TritonPorts
    log_path: Path
    install: TritonInstall = field(default_factory=TritonInstall.discover)
    on_start: list[Callable[[], None]] = field(default_factory=list)
    # A second Triton of the node (one per MIG device): its own shared-memory prefix and device.
    instance: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    _supervisor: Supervisor | None = None

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

    @property
    def supervisor(self) -> Supervisor:
        if self._supervisor is None:
            tree = ProcessTree(name=f"tritonserver of {self.node_name}{f' ({self.instance})' if self.instance else ''}",
                               argv=self.command(), env=self.environment(), log_path=self.log_path)  # fmt: skip
            self._supervisor = Supervisor(tree, ready=lambda: triton_ready(self.ports.grpc_address), on_ready=self.on_start)
        return self._supervisor

    def start(self) -> None:
        """Starts Triton and keeps it running (in a thread of the supervisor's own)."""
        self.repository.mkdir(parents=True, exist_ok=True)
        log.info("starting tritonserver for node %s (grpc %s)", self.node_name, self.ports.grpc_address)
        self.supervisor.start()

    @property
    def pid(self) -> int | None:
        return self.supervisor.tree.pid

    @property
    def restarts(self) -> int:
        return self.supervisor.restarts

    def alive(self) -> bool:
        return self.supervisor.alive()

    def stop(self) -> None:
        """Triton stops gracefully (in-flight work finishes, models unload; up to
        --exit-timeout-secs), then anything left of its process group is killed."""
        if self._supervisor is not None:
            self._supervisor.stop(timeout=15)


def installed_backends(backend_dir: Path) -> tuple[str, ...]:
    """The backends a Triton has: the subdirectories of its backend directory."""
    if not backend_dir.is_dir():
        return ()
    return tuple(sorted(p.name for p in backend_dir.iterdir() if p.is_dir() and not p.name.startswith(".")))


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
