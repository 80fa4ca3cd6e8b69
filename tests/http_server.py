"""Django's WSGI server for API tests that need a real HTTP client (schemathesis, a command
that fetches over urllib): in a thread of the test's process, on the test's own database
connection, so it sees the test's rows and rolls back with them.

Why not pytest-django's `live_server`: it needs a transactional test, whose flush
(TRUNCATE) the append-only audit trail refuses by design."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.core.signals import request_finished, request_started
from django.db import close_old_connections, connections


@contextmanager
def http_server(host: str = "127.0.0.1") -> Iterator[str]:
    """Django's WSGI server on a free port, one request at a time, in a thread that uses
    this thread's database connection (so it sees, and rolls back with, the test's rows)."""
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.servers.basehttp import WSGIServer
    from django.test.testcases import QuietWSGIRequestHandler

    httpd = WSGIServer((host, 0), QuietWSGIRequestHandler, allow_reuse_address=False)
    httpd.set_app(WSGIHandler())
    shared = connections["default"]

    def serve() -> None:
        connections["default"] = shared
        httpd.serve_forever(poll_interval=0.05)

    # As Django's test client does: a connection inside a transaction looks "obsolete"
    # (autocommit off) to the per-request clean-up, which would close it.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    shared.inc_thread_sharing()
    thread = threading.Thread(target=serve, name="test-http", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        thread.join()
        httpd.server_close()
        shared.dec_thread_sharing()
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
