"""Who is acting, from where, under which correlation id.

HTTP middleware, the gRPC gateway, management commands and Celery tasks each set
this context once at their entry point; audit rows and log lines read it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from appliance.audit.choices import Origin


@dataclass(frozen=True)
class AuditContext:
    """The actor and provenance of the work being done right now."""

    origin: str = Origin.SYSTEM
    actor: str = "system"
    source_address: str = ""
    correlation_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # The person or system the whole chain of work is for (kept across tasks).
    principal: str = ""
    # HTTP authenticates lazily (DRF resolves the user inside the view), so the
    # middleware hands a resolver instead of a name.
    actor_resolver: Callable[[], str] | None = None

    def resolved_principal(self) -> str:
        return self.principal or self.resolved_actor()

    def resolved_actor(self) -> str:
        if self.actor_resolver is not None:
            return self.actor_resolver()
        return self.actor


_current: contextvars.ContextVar[AuditContext | None] = contextvars.ContextVar("audit_context", default=None)


def current() -> AuditContext:
    ctx = _current.get()
    return ctx if ctx is not None else AuditContext()


@contextlib.contextmanager
def audit_context(**values: object) -> Iterator[AuditContext]:
    """Set the audit context for the enclosed block (CLI, gRPC, tasks, tests)."""
    base = _current.get() or AuditContext()
    ctx = replace(base, **values)  # type: ignore[arg-type]
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


class CorrelationFilter(logging.Filter):
    """Adds the current correlation id to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _current.get()
        record.correlation_id = ctx.correlation_id if ctx else "-"
        return True
