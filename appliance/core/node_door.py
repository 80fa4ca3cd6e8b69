"""A provisioned node's way into the control plane's doors for nodes (`/api/v1/node-self/`,
`/api/v1/node-artifacts/…`, `/api/v1/agent/<op>/`): authenticated requests with the node's own
credential as `Authorization: Bearer` and the control plane's CA. Callers map urllib's errors
to their own."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any


def _open(request: urllib.request.Request, *, ca_file: str, timeout: float) -> Any:
    context = ssl.create_default_context(cafile=ca_file or None)
    return urllib.request.urlopen(request, timeout=timeout, context=context)  # noqa: S310 (the control plane's URL)


def node_get(base_url: str, path: str, *, credential: str, ca_file: str = "", timeout: float = 60.0,
             limit: int = -1) -> bytes:  # fmt: skip
    """The body of GET base_url + path (at most `limit` bytes when given); raises
    urllib.error.HTTPError for an answer that is not 2xx, OSError when nothing answered."""
    request = urllib.request.Request(f"{base_url.rstrip('/')}{path}", headers={"Authorization": f"Bearer {credential}"})
    with _open(request, ca_file=ca_file, timeout=timeout) as response:
        return bytes(response.read(limit))


def node_post_json(base_url: str, path: str, body: object, *, credential: str, ca_file: str = "",
                   timeout: float = 30.0, headers: dict[str, str] | None = None) -> tuple[int, Any]:  # fmt: skip
    """(status, decoded JSON answer) of POST base_url + path with a JSON body, whatever the
    status; raises OSError when nothing answered (or the answer is not JSON: ValueError)."""
    request = urllib.request.Request(
        f"{base_url.rstrip('/')}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {credential}", "Content-Type": "application/json",
                 "Accept": "application/json", **(headers or {})},
    )  # fmt: skip
    try:
        with _open(request, ca_file=ca_file, timeout=timeout) as response:
            return int(response.status), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw or b"null")
        except ValueError:
            return exc.code, {"detail": raw[:500].decode(errors="replace") or exc.reason}
