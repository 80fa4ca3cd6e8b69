from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.core.management.base import BaseCommand, CommandError, CommandParser

from appliance.audit.choices import Origin
from appliance.audit.context import audit_context
from appliance.core.env import env_path, env_str
from appliance.core.process import ProcessTree, Supervisor, listening


class Command(BaseCommand):
    help = "Run the gRPC inference gateway (Triton's protocol, API-key authenticated)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", default="127.0.0.1:8100", help="host:port (loopback by default)")
        parser.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
        parser.add_argument("--metrics-bind", default=env_str("GATEWAY_METRICS_BIND", ""),
                            help="host:port of the Prometheus endpoint (the sum over all workers); empty: none")  # fmt: skip
        parser.add_argument(
            "--native", action="store_true", default=env_str("GATEWAY_NATIVE", "") == "1",
            help="the native front (var/build/gatewayd, `make native`) owns --bind and answers the hot path; "
            "the Python gateway behind it, on a loopback port, answers everything else",
        )  # fmt: skip
        parser.add_argument("--native-metrics-bind", default=env_str("GATEWAY_NATIVE_METRICS_BIND", ""),
                            help="host:port of the native front's Prometheus endpoint; empty: none")  # fmt: skip
        parser.add_argument("--openai-bind", default=env_str("GATEWAY_OPENAI_BIND", ""),
                            help="host:port of the OpenAI-compatible HTTP API (empty: off; loopback by default)")  # fmt: skip
        parser.add_argument("--tls-cert", type=Path, default=env_path("GATEWAY_TLS_CERT_FILE"), help="PEM certificate chain")
        parser.add_argument("--tls-key", type=Path, default=env_path("GATEWAY_TLS_KEY_FILE"), help="PEM private key")
        parser.add_argument(
            "--tls-client-ca", type=Path, default=env_path("GATEWAY_TLS_CLIENT_CA_FILE"),
            help="PEM CA bundle; when given, clients must present a certificate it signed (mutual TLS)",
        )  # fmt: skip

    def handle(self, *args: Any, **options: Any) -> None:
        from django.conf import settings

        from appliance.gateway.multiproc import prepare_multiprocess_dir

        # Before anything imports prometheus_client's metrics: every worker writes into this directory.
        metrics_dir = Path(settings.VAR_DIR) / "run" / f"gateway-metrics-{os.getpid()}"
        prepare_multiprocess_dir(metrics_dir)
        from appliance.gateway.server import TlsFiles, serve

        tls = None
        if options["tls_cert"] or options["tls_key"]:
            if not (options["tls_cert"] and options["tls_key"]):
                raise CommandError("TLS needs both --tls-cert and --tls-key")
            for path in (options["tls_cert"], options["tls_key"], options["tls_client_ca"]):
                if path is not None and not path.is_file():
                    raise CommandError(f"{path}: no such file")
            tls = TlsFiles(cert=options["tls_cert"], key=options["tls_key"], client_ca=options["tls_client_ca"])
        elif options["tls_client_ca"]:
            raise CommandError("--tls-client-ca needs --tls-cert and --tls-key")

        bind, native, export_path = options["bind"], None, None
        if options["native"]:
            binary = Path(settings.GATEWAY_NATIVE_BINARY)
            if not binary.is_file():
                raise CommandError(f"{binary}: the native front is not built; run `make native`")
            public_tls, tls = tls, None  # the front terminates TLS; the hop behind it is loopback only
            reservation = _reserve_port()  # held open for the life of the gateway
            bind = f"127.0.0.1:{reservation.getsockname()[1]}"
            export_path = Path(settings.VAR_DIR) / "run" / f"gateway-snapshot-{os.getpid()}.json"
            native = _NativeFront(binary, options["bind"], bind, export_path, public_tls, options["native_metrics_bind"])

        workers = max(1, options["workers"])
        children: list[int] = []
        parent = True
        # Fork before any gRPC or database object exists in this process.
        for _ in range(workers - 1):
            pid = os.fork()
            if pid == 0:
                children = []
                parent = False
                break
            children.append(pid)

        def stop(signum: int, frame: Any) -> None:
            for pid in children:
                os.kill(pid, signal.SIGTERM)
            sys.exit(1 if native is not None and native.gave_up else 0)

        signal.signal(signal.SIGTERM, stop)
        with audit_context(origin=Origin.GRPC, actor="gateway"):
            try:
                asyncio.run(serve(bind, reuse_port=workers > 1 or native is not None, tls=tls,
                                  metrics_bind=options["metrics_bind"] if parent else "",
                                  export_path=export_path if parent else None,
                                  on_started=native.start if parent and native else None,
                                  openai_bind=options["openai_bind"]))  # fmt: skip
            except KeyboardInterrupt:
                pass
            finally:
                if parent and native:
                    native.stop()
                for pid in children:
                    try:
                        os.kill(pid, signal.SIGTERM)
                        os.waitpid(pid, 0)
                    except (ProcessLookupError, ChildProcessError):
                        pass
                if parent:
                    shutil.rmtree(metrics_dir, ignore_errors=True)


def _reserve_port() -> socket.socket:
    """A loopback port for the Python gateway behind the front: bound (SO_REUSEPORT, never
    listening, so it takes no connections) and kept open, so no other process can be handed
    it between now and the moment the gateway binds it too."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class _NativeFront:
    """The gatewayd process, supervised (appliance/core/process.py): started once the Python
    gateway behind it listens and has exported its first snapshot, and started again at
    once (0.2 s, doubling while it keeps failing) whenever it dies. The Python gateway, its
    snapshot export and its reserved port stay up meanwhile, so a front killed under load
    costs clients the time it takes to start again (about a second), where stopping the
    whole gateway would leave the port dead until an outer supervisor noticed (if one is
    there at all: `make run` has none). A front that dies `GIVE_UP_AFTER` times in a row
    without ever listening (a port taken, a broken binary) is not retried for ever: the
    whole gateway then exits with a failure, so that its own supervisor sees it (a front
    that hangs instead of exiting when it cannot listen counts after 10 s)."""

    GIVE_UP_AFTER = 5

    def __init__(self, binary: Path, public: str, full: str, snapshot: Path, tls: Any, metrics_bind: str) -> None:
        from django.conf import settings

        redis = urlsplit(settings.REDIS_URL)
        if redis.scheme != "redis" or redis.password:
            raise CommandError("the native front supports REDIS_URL redis://host:port/db (no password) only")
        command = [
            str(binary), "--listen", public, "--full", full, "--snapshot", str(snapshot),
            "--redis", f"{redis.hostname or '127.0.0.1'}:{redis.port or 6379}/{(redis.path or '/0').strip('/') or 0}",
        ]  # fmt: skip
        if metrics_bind:
            command += ["--metrics-bind", metrics_bind]
        if tls is not None:
            command += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
            if tls.client_ca:
                command += ["--tls-client-ca", str(tls.client_ca)]
        self.snapshot = snapshot
        port = int(public.rpartition(":")[2])
        # The parent-death signal (setpriv): if run_gateway dies, even by SIGKILL, the front
        # must not serve on without it (a snapshot nobody refreshes).
        tree = ProcessTree(name="gatewayd", argv=command)
        self.supervisor = Supervisor(
            tree,
            ready=lambda: tree.pid is not None and listening(tree.pid, port),  # gatewayd itself, not whoever else holds it
            on_ready=[self._listening],
            first_backoff_s=0.2,
            max_backoff_s=5.0,
            interval_s=0.05,
            ready_timeout_s=10.0,  # it listens within a fraction of a second; one that hangs instead is stopped
            give_up_after=self.GIVE_UP_AFTER,
            on_give_up=self._give_up,
        )
        self.gave_up = False

    def start(self) -> None:
        self.supervisor.start()

    def _listening(self) -> None:
        if self.supervisor.restarts:
            logging.getLogger(__name__).warning("the native front listens again (restart %d)", self.supervisor.restarts)

    def _give_up(self) -> None:
        self.gave_up = True
        os.kill(os.getpid(), signal.SIGTERM)  # the main thread stops the gateway (exit status 1)

    def stop(self) -> None:
        self.supervisor.stop(timeout=10)
        self.snapshot.unlink(missing_ok=True)
