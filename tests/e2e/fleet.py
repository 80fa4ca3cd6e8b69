"""Starts a real fleet for end-to-end tests: node agents (each with its own
tritonserver), a control-plane Celery worker and the gateway, all as
subprocesses against the test database and the real RabbitMQ."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from appliance.core.process import ProcessTree, free_port, living_processes, stop_all

__all__ = ["Fleet", "Proc", "free_port", "wait_for"]

ROOT = Path(__file__).resolve().parents[2]
# Every process of a fleet, its children's children included, carries this in its environment
# (not an APPLIANCE_ variable: the agents hand their Tritons an environment without those).
FLEET_MARK = "E2E_FLEET_ID"


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 90.0, procs: list[Any] | None = None) -> Any:
    """Polls a condition (never a fixed sleep) until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        for proc in procs or []:
            if proc.popen.poll() is not None:
                raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # the thing is not up yet
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


@dataclass
class Proc:
    name: str
    tree: ProcessTree
    log: Path

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        assert self.tree.popen is not None
        return self.tree.popen

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Fleet:
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    gateway: str = ""
    openai: str = ""  # the gateway's OpenAI-compatible API, http://host:port/v1
    gateway_pid: int = 0  # the main gateway's run_gateway process (it exports the native front's snapshot)
    native_metrics: int = 0  # the main gateway's native front's metrics port
    node_ports: dict[str, dict[str, int]] = field(default_factory=dict)
    agent_args: dict[str, tuple[str, ...]] = field(default_factory=dict)

    runtime_role: str = ""

    @classmethod
    @contextmanager
    def running(cls, workdir: Path, agents: dict[str, tuple[str, ...]], env: dict[str, str] | None = None) -> Iterator[Fleet]:
        """A module's fleet: a control worker, beat, one agent per node (with its options) and
        the gateway; yields once every node is healthy, stops everything after."""
        from appliance.nodes.models import Node

        fleet = cls.create(workdir)
        fleet.env.update(env or {})
        try:
            fleet.start_worker()
            fleet.start_beat()
            for name, options in agents.items():
                fleet.start_agent(name, *options)
            fleet.start_gateway()
            wait_for("every node healthy",
                     lambda: Node.objects.filter(name__in=list(agents), health="healthy").count() == len(agents),
                     procs=fleet.procs)  # fmt: skip
            yield fleet
        finally:
            fleet.stop()

    @classmethod
    def create(cls, workdir: Path) -> Fleet:
        """The fleet's processes connect as an unprivileged runtime role, as in production."""
        from django.core.management import call_command

        db = settings.DATABASES["default"]
        assert str(db["NAME"]).startswith("test_"), "end-to-end tests run only against the test database"
        role = f"appliance_e2e_{uuid.uuid4().hex[:8]}"
        call_command("db_runtime_role", role, stdout=io.StringIO())
        env = dict(os.environ)
        env.update(
            APPLIANCE_DB_URL=f"postgresql://{role}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            APPLIANCE_VAR_DIR=str(settings.VAR_DIR),
            APPLIANCE_NODE_HEARTBEAT_S="0.5",
            APPLIANCE_GATEWAY_REFRESH_S="0.5",
            APPLIANCE_RETIRE_GRACE_S="1",
            APPLIANCE_HEALTH_PERIOD_S="0.5",
            APPLIANCE_HEALTH_PROBE_TIMEOUT_S="1",
            APPLIANCE_NODE_STALE_AFTER_S="5",
            APPLIANCE_ALLOW_FAULT_INJECTION="true",
            PYTHONUNBUFFERED="1",
        )
        env[FLEET_MARK] = uuid.uuid4().hex
        return cls(workdir=workdir, env=env, runtime_role=role)

    def spawn(self, name: str, argv: list[str]) -> Proc:
        log = self.workdir / f"{name}.log"
        tree = ProcessTree(name=name, argv=argv, cwd=ROOT, env=dict(self.env), log_path=log)
        tree.start()
        proc = Proc(name=name, tree=tree, log=log)
        self.procs.append(proc)
        return proc

    def start_worker(self) -> Proc:
        return self.spawn(
            "worker",
            [sys.executable, "-m", "celery", "-A", "appliance", "worker", "-Q", f"{settings.INSTANCE}.control",
             "-c", "1", "-P", "solo", "-n", f"control-{settings.INSTANCE}@%h", "--without-gossip", "--without-mingle"],
        )  # fmt: skip

    def start_optimiser(self) -> Proc:
        """The optimisation jobs' worker (settings.OPTIMISE_QUEUE)."""
        return self.spawn(
            "optimiser",
            [sys.executable, "-m", "celery", "-A", "appliance", "worker", "-Q", settings.OPTIMISE_QUEUE,
             "-c", "1", "-P", "solo", "-n", f"optimiser-{settings.INSTANCE}@%h", "--without-gossip", "--without-mingle"],
        )  # fmt: skip

    def start_beat(self) -> Proc:
        return self.spawn("beat", [sys.executable, "-m", "celery", "-A", "appliance", "beat",
                                   "-s", str(self.workdir / "celerybeat-schedule")])  # fmt: skip

    def start_agent(self, name: str, *extra: str) -> Proc:
        ports = self.node_ports.get(name) or {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
        self.node_ports[name] = ports
        self.agent_args[name] = extra
        return self.spawn(
            f"agent-{name}",
            [sys.executable, "manage.py", "node_agent", "--name", name, "--workdir", str(self.workdir / name),
             "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]), "--metrics-port", str(ports["metrics"]),
             *extra],
        )  # fmt: skip

    def start_gateway(self, *extra: str, name: str = "gateway", native: bool = True) -> tuple[Proc, str]:
        """The product's gateway: the native front on the address, the Python gateway behind it
        (native=False: the Python gateway alone on the address)."""
        address = f"127.0.0.1:{free_port()}"
        if name == "gateway":
            self.gateway = address
            openai = f"127.0.0.1:{free_port()}"
            self.openai = f"http://{openai}/v1"
            extra = ("--openai-bind", openai, *extra)
            if native:
                self.native_metrics = free_port()
                extra = ("--native-metrics-bind", f"127.0.0.1:{self.native_metrics}", *extra)
        argv = [sys.executable, "manage.py", "run_gateway", "--bind", address, *(["--native"] if native else []), *extra]
        proc = self.spawn(name, argv)
        if name == "gateway":
            self.gateway_pid = proc.popen.pid
        return proc, address

    def native_document(self) -> dict[str, Any] | None:
        """The newest snapshot the main gateway's Python plane exported, once the native front's
        metrics say it answers from that document (or a later one); None while it has not
        loaded it yet."""
        import json
        import urllib.request

        path = Path(self.env["APPLIANCE_VAR_DIR"]) / "run" / f"gateway-snapshot-{self.gateway_pid}.json"
        written = path.stat().st_mtime
        document: dict[str, Any] = json.loads(path.read_text())
        if path.stat().st_mtime != written:
            return None  # exported again while it was read
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.native_metrics}/metrics", timeout=5).read().decode()
        loaded = next(float(line.split()[1]) for line in text.splitlines()
                      if line.startswith("gateway_native_snapshot_written_seconds "))  # fmt: skip
        return document if loaded >= written - 1e-6 else None

    def native_routes(self, model: str) -> set[str] | None:
        """The nodes the main gateway's native front routes `model` to (native_document)."""
        document = self.native_document()
        if document is None:
            return None
        return {route["node"] for route in document["routes"].get(model, [])}

    def native_metrics_text(self) -> str:
        """The main gateway's native front's Prometheus exposition."""
        import urllib.request

        return urllib.request.urlopen(f"http://127.0.0.1:{self.native_metrics}/metrics", timeout=5).read().decode()

    def restart_agent(self, name: str) -> Proc:
        """Starts the node's agent again (same ports, directory and options) after it died."""
        old = next(p for p in reversed(self.procs) if p.name == f"agent-{name}")
        old.popen.wait(timeout=30)
        self.procs.remove(old)
        return self.start_agent(name, *self.agent_args[name])

    def triton_pid(self, node: str) -> int:
        port = self.node_ports[node]["grpc"]
        out = subprocess.run(["pgrep", "-f", "--", f"tritonserver.*--grpc-port={port}"], capture_output=True, text=True).stdout.split()
        return int(out[0])

    def log_tails(self, lines: int = 15) -> str:
        """The last lines of every process's log and every node's Triton log, with who is still running."""
        parts = []
        for proc in self.procs:
            state = "running" if proc.popen.poll() is None else f"EXITED with {proc.popen.returncode}"
            parts.append(f"--- {proc.name} ({state}) ---\n{proc.tail(lines)}")
        for triton_log in sorted(self.workdir.glob("*/logs/*.log")):
            tail = triton_log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {triton_log.relative_to(self.workdir)} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def native_front_pid(self, gateway: Proc) -> int:
        """The gatewayd that a run_gateway --native process runs now."""
        pids = [p.pid for p in living_processes() if p.ppid == gateway.popen.pid and b"gatewayd" in p.cmdline()]
        assert len(pids) == 1, f"{gateway.name} runs {len(pids)} native fronts"
        return pids[0]

    def leftovers(self) -> list[tuple[int, str]]:
        """Processes of this fleet still running: everything that carries its mark in its
        environment, or names its directory on its command line (a Triton's backend stub)."""
        mark = f"{FLEET_MARK}={self.env[FLEET_MARK]}".encode()
        workdir = f"{self.workdir}/".encode()
        found = []
        for process in living_processes():
            cmdline = process.cmdline()
            if process.pid != os.getpid() and (workdir in cmdline or mark in process.environ()):
                found.append((process.pid, cmdline.replace(b"\0", b" ").decode(errors="replace")[:300]))
        return found

    def stop(self) -> None:
        """Stops every process of the fleet, then asserts that none of them, nor anything
        they started (Tritons, their backend stubs, native fronts), outlives it."""
        stop_all([proc.tree for proc in self.procs], timeout=30)
        _delete_queues([f"{settings.INSTANCE}.control", *(f"{settings.INSTANCE}.node.{n}" for n in self.node_ports)])
        if self.runtime_role:
            _drop_role(self.runtime_role)
        # A killed agent's Triton stops on its parent-death signal and may take its exit timeout.
        try:
            wait_for("every process of the fleet to end", lambda: not self.leftovers(), timeout=30)
        except AssertionError:
            left = self.leftovers()
            for pid, _ in left:
                try:
                    os.kill(pid, signal.SIGKILL)  # nothing of it may disturb later tests
                except ProcessLookupError:
                    pass
            raise AssertionError("processes outlived the fleet:\n" + "\n".join(f"{pid} {cmd}" for pid, cmd in left)) from None


def _drop_role(role: str) -> None:
    import psycopg

    db = settings.DATABASES["default"]
    with psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"], autocommit=True) as conn:
        conn.execute(f'DROP OWNED BY "{role}"')
        conn.execute(f'DROP ROLE "{role}"')


def _delete_queues(names: list[str]) -> None:
    from appliance.celery import app

    try:
        with app.connection_for_write() as conn:
            channel = conn.channel()
            for name in names:
                try:
                    channel.queue_delete(name)
                except Exception:
                    channel = conn.channel()
    except Exception:
        pass
