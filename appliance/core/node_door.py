"""A provisioned node's way into the control plane's doors for nodes (`/api/v1/node-self/`,
`/api/v1/node-artifacts/…`): one authenticated GET, with the node's own credential as
`Authorization: Bearer` and the control plane's CA. Callers map urllib's errors to their own."""

from __future__ import annotations

import ssl
import urllib.request


def node_get(base_url: str, path: str, *, credential: str, ca_file: str = "", timeout: float = 60.0,
             limit: int = -1) -> bytes:  # fmt: skip
    """The body of GET base_url + path (at most `limit` bytes when given); raises
    urllib.error.HTTPError for an answer that is not 2xx, OSError when nothing answered."""
    request = urllib.request.Request(f"{base_url.rstrip('/')}{path}", headers={"Authorization": f"Bearer {credential}"})
    context = ssl.create_default_context(cafile=ca_file or None)
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310 (the control plane's URL)
        return bytes(response.read(limit))
