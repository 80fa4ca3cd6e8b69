from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from appliance.audit.choices import Origin
from appliance.audit.context import audit_context


class Command(BaseCommand):
    help = "Run the gRPC inference gateway (Triton's protocol, API-key authenticated)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", default="127.0.0.1:8100", help="host:port (loopback by default)")
        parser.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")

    def handle(self, *args: Any, **options: Any) -> None:
        from appliance.gateway.server import serve

        workers = max(1, options["workers"])
        children: list[int] = []
        # Fork before any gRPC or database object exists in this process.
        for _ in range(workers - 1):
            pid = os.fork()
            if pid == 0:
                children = []
                break
            children.append(pid)

        def stop(signum: int, frame: Any) -> None:
            for pid in children:
                os.kill(pid, signal.SIGTERM)
            sys.exit(0)

        signal.signal(signal.SIGTERM, stop)
        with audit_context(origin=Origin.GRPC, actor="gateway"):
            try:
                asyncio.run(serve(options["bind"], reuse_port=workers > 1))
            except KeyboardInterrupt:
                pass
            finally:
                for pid in children:
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
