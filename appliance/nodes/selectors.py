from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from appliance.nodes.choices import ROUTABLE_STATES
from appliance.nodes.models import Node


def routable_nodes() -> QuerySet[Node]:
    """Nodes that are ready and whose agent spoke recently."""
    fresh = timezone.now() - timedelta(seconds=settings.NODE_STALE_AFTER_S)
    return Node.objects.filter(state__in=ROUTABLE_STATES, last_heartbeat__gte=fresh)
