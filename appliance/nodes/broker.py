"""A node's own identity on the message broker: a RabbitMQ user named after the node's queue,
whose password is the node's credential, allowed to use that one queue and nothing else.

An enrolled node's agent consumes its tasks with it (the node role composes the URL from the
credential; ansible/roles/node_agent), so a provisioned server holds no broker key that reads
another node's tasks or sends the control plane's. The control plane manages these users
through RabbitMQ's management API (`APPLIANCE_BROKER_ADMIN_URL`, with an administrator's
credentials, read from a file in production); where it is not set, enrolment makes no broker
user and the operator gives each node a broker URL of their own.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from django.conf import settings

from appliance.core.errors import DomainError
from appliance.nodes.dispatch import node_queue


class BrokerUnavailable(DomainError):
    """The broker's management API did not do what enrolment or revocation needs (503)."""

    http_status = 503


def enabled() -> bool:
    return bool(settings.BROKER_ADMIN_URL)


def user_name(node_name: str) -> str:
    """The node's broker user: its queue's name (one name to read in the broker's console)."""
    return node_queue(node_name)


def vhost() -> str:
    """The virtual host of the appliance's broker URL ('/' when the URL names none)."""
    path = urllib.parse.urlsplit(settings.CELERY_BROKER_URL).path
    return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"


def permissions(node_name: str) -> dict[str, str]:
    """Configure, write and read on the node's queue (and the direct exchange of the same name
    Celery declares for it), nothing else: not the control queue, not another node's."""
    only = f"^{re.escape(node_queue(node_name))}$"
    return {"configure": only, "write": only, "read": only}


def grant(node_name: str, credential: str) -> None:
    """Creates (or re-keys, on a new enrolment) the node's broker user with its permissions."""
    user = urllib.parse.quote(user_name(node_name), safe="")
    _request("PUT", f"/api/users/{user}", {"password": credential, "tags": ""})
    _request("PUT", f"/api/permissions/{urllib.parse.quote(vhost(), safe='')}/{user}", permissions(node_name))


def withdraw(node_name: str) -> None:
    """Deletes the node's broker user and closes its connections (a revoked node's agent loses
    its queue at once, whatever its heartbeat does)."""
    user = urllib.parse.quote(user_name(node_name), safe="")
    _request("DELETE", f"/api/users/{user}", missing_ok=True)
    _request("DELETE", f"/api/connections/username/{user}", missing_ok=True)


def _request(method: str, path: str, body: dict[str, Any] | None = None, *, missing_ok: bool = False) -> None:
    parts = urllib.parse.urlsplit(settings.BROKER_ADMIN_URL)
    base = f"{parts.scheme}://{parts.hostname or '127.0.0.1'}" + (f":{parts.port}" if parts.port else "")
    login = base64.b64encode(f"{urllib.parse.unquote(parts.username or '')}:"
                             f"{urllib.parse.unquote(parts.password or '')}".encode()).decode()  # fmt: skip
    request = urllib.request.Request(
        f"{base}{path}", method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Basic {login}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (the operator's broker)
            response.read()
    except urllib.error.HTTPError as exc:
        if missing_ok and exc.code == 404:
            return
        raise BrokerUnavailable(f"the broker's management API answered {exc.code} to {method} "
                                f"{path.split('/')[2]}: {exc.read()[:200].decode(errors='replace')}") from exc  # fmt: skip
    except OSError as exc:
        raise BrokerUnavailable(f"the broker's management API ({base}) cannot be reached: {exc}") from exc
