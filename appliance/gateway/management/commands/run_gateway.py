from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from appliance.audit.choices import Origin
from appliance.audit.context import audit_context
from appliance.core.env import env_path, env_str


class Command(BaseCommand):
    help = "Run the gRPC inference gateway (Triton's protocol, API-key authenticated)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", default="127.0.0.1:8100", help="host:port (loopback by default)")
        parser.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
        parser.add_argument("--metrics-bind", default=env_str("GATEWAY_METRICS_BIND", ""),
                            help="host:port of the Prometheus endpoint (the sum over all workers); empty: none")  # fmt: skip
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
            sys.exit(0)

        signal.signal(signal.SIGTERM, stop)
        with audit_context(origin=Origin.GRPC, actor="gateway"):
            try:
                asyncio.run(serve(options["bind"], reuse_port=workers > 1, tls=tls,
                                  metrics_bind=options["metrics_bind"] if parent else ""))  # fmt: skip
            except KeyboardInterrupt:
                pass
            finally:
                for pid in children:
                    try:
                        os.kill(pid, signal.SIGTERM)
                        os.waitpid(pid, 0)
                    except (ProcessLookupError, ChildProcessError):
                        pass
                if parent:
                    shutil.rmtree(metrics_dir, ignore_errors=True)
