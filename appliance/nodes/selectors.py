from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from appliance.nodes.choices import ROUTABLE_HEALTH, AdminState
from appliance.nodes.models import Node


def routable_nodes() -> QuerySet[Node]:
    """Active nodes the last sweep found healthy or degraded, whose agent spoke recently."""
    fresh = timezone.now() - timedelta(seconds=settings.NODE_STALE_AFTER_S)
    return Node.objects.filter(admin_state=AdminState.ACTIVE, health__in=ROUTABLE_HEALTH, last_heartbeat__gte=fresh)
