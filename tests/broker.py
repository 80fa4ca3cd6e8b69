"""Messages read back from the real broker (RabbitMQ), as the worker consuming the queue
would receive them, for tests of what the control plane sends."""

from __future__ import annotations

from typing import Any


def received(queue: str, count: int) -> list[tuple[dict[str, Any], Any]]:
    """`count` messages of `queue` as (headers, decoded body), acknowledged; the queue is
    deleted after (tests use queues of their own)."""
    from appliance.celery import app

    with app.connection_for_write() as conn:
        simple = conn.SimpleQueue(queue)
        try:
            messages = []
            for _ in range(count):
                message = simple.get(block=True, timeout=10)
                messages.append((dict(message.headers), message.decode()))
                message.ack()
            return messages
        finally:
            simple.close()
            conn.default_channel.queue_delete(queue)
