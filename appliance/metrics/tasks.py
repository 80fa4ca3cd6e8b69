from __future__ import annotations

from celery import shared_task

from appliance.metrics.collect import collect


@shared_task(name="metrics.collect")
def metrics_collect() -> dict[str, int]:
    """Periodic (Celery beat): finished minutes of gateway traffic into PostgreSQL, roll-ups, retention."""
    return collect()
