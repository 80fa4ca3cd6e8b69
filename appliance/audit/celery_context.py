"""Carries the audit context from whoever enqueues a task into the task itself."""

from __future__ import annotations

from typing import Any

from celery.signals import before_task_publish, task_postrun, task_prerun

from appliance.audit.choices import Origin
from appliance.audit.context import AuditContext, _current, current

_HEADER = "appliance_context"


@before_task_publish.connect
def _attach(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is None:
        return
    ctx = current()
    headers[_HEADER] = {"principal": ctx.resolved_principal(), "correlation_id": ctx.correlation_id}


_tokens: dict[str, Any] = {}


@task_prerun.connect
def _enter(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    carried = getattr(task.request, _HEADER, None) or {}
    name = getattr(task, "name", "task").rsplit(".", 1)[-1]
    principal = carried.get("principal", "system")
    ctx = AuditContext(
        origin=Origin.TASK,
        actor=f"task:{name} for {principal}",
        principal=principal,
        correlation_id=carried.get("correlation_id") or (task_id or ""),
    )
    _tokens[task_id or ""] = _current.set(ctx)


@task_postrun.connect
def _leave(task_id: str | None = None, **_: Any) -> None:
    token = _tokens.pop(task_id or "", None)
    if token is not None:
        _current.reset(token)
