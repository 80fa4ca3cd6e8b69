"""The gateway's view of the control plane: keys, grants and live replicas.

Built from PostgreSQL in one short read and swapped atomically, so the request
path never touches the database. Refreshed every APPLIANCE_GATEWAY_REFRESH_S,
and at once (rate-limited) when a request names a key or model it does not know.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from appliance.accounts.models import ApiKey, ModelGrant, Tenant
from appliance.catalog.choices import ArtifactFormat
from appliance.catalog.generative import engine_spec
from appliance.catalog.models import Model, ModelVersion
from appliance.catalog.profile import normalise
from appliance.gateway import contract
from appliance.nodes.models import MigDevice, Node
from appliance.nodes.selectors import routable_nodes
from appliance.policies.choices import Operation
from appliance.policies.engine import check, current_rules
from appliance.rollouts.selectors import live_replicas


@dataclass(frozen=True)
class KeyEntry:
    tenant_id: str
    tenant_slug: str
    expires_at: float | None  # unix time
    models: frozenset[str] | None = None  # None: every model granted to the tenant
    priority: str = "standard"  # the tenant's class: critical, standard or batch
    rate: int = 0  # requests a second (0: no limit)
    burst: int = 0
    daily: int = 0  # requests a UTC day (0: no quota)
    tokens_per_minute: int = 0  # generative models: output tokens a minute (0: no limit)
    max_tokens: int = 0  # generative models: the most a request may ask for (0: no cap)


@dataclass(frozen=True)
class Route:
    """One place a model version can be served: a node's Triton and the version there."""

    node: str
    address: str
    version: str
    tenant: str | None = None  # a slice dedicated to this tenant (MIG device)


@dataclass(frozen=True)
class Snapshot:
    keys: dict[str, KeyEntry] = field(default_factory=dict)
    grants: dict[str, frozenset[str]] = field(default_factory=dict)
    routes: dict[str, tuple[Route, ...]] = field(default_factory=dict)
    # Residency: the nodes each tenant's data may be processed on, and why not elsewhere.
    permitted: dict[str, frozenset[str]] = field(default_factory=dict)
    denials: dict[tuple[str, str], str] = field(default_factory=dict)
    # Response cache: the models that opted in, and the tenants whose data the policy lets us cache here.
    cached_models: frozenset[str] = frozenset()
    cache_tenants: frozenset[str] = frozenset()
    # Semantic cache: the models that opted in, with their settings (gateway/semantic.py).
    semantic: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Traffic split during a rollout: {model: {version: percent}}; absent versions get 0
    # unless no weighted version has a live replica.
    weights: dict[str, dict[str, int]] = field(default_factory=dict)
    # Models scaled to zero: no live replica, but parked ones a request can wake.
    parked: frozenset[str] = frozenset()
    # Models whose serving profile has priority levels (the tenant's class is sent as Triton priority when ≥ 3).
    priority_levels: dict[str, int] = field(default_factory=dict)
    # Nodes with a GPU nearly out of memory: the gateway does not raise their concurrency limits.
    low_headroom: frozenset[str] = frozenset()
    # Generative models (a vllm version serves): token limits apply to their streams, and each
    # replica takes a fixed number of streams (admission.set_slots).
    generative: frozenset[str] = frozenset()
    engine_slots: dict[str, int] = field(default_factory=dict)
    # And their engines' context (max_model_len): what a request with max_tokens null may generate.
    engine_context: dict[str, int] = field(default_factory=dict)
    # Their chat templates, per version (each version's own), for the OpenAI-compatible chat API.
    chat_templates: dict[str, dict[str, str]] = field(default_factory=dict)
    # Where the engines' gauges are: the gRPC address of each Triton serving a generative model
    # (a node's main Triton, a MIG slice's) -> its metrics endpoint.
    engine_metrics: dict[str, str] = field(default_factory=dict)
    built_at: float = 0.0  # monotonic time the read began


def for_tenant(key: KeyEntry, routes: tuple[Route, ...]) -> tuple[Route, ...]:
    """Slices dedicated to a tenant serve that tenant only, and that tenant there first
    (native/snapshot.cc permitted_routes is the native twin of this and permitted_for)."""
    own = tuple(r for r in routes if r.tenant == key.tenant_id)
    return own or tuple(r for r in routes if r.tenant is None)


def permitted_for(snapshot: Snapshot, key: KeyEntry, routes: tuple[Route, ...]) -> tuple[Route, ...]:
    """The routes on nodes where the residency policy lets this tenant's data be processed."""
    allowed = snapshot.permitted.get(key.tenant_id, frozenset())
    return tuple(r for r in routes if r.node in allowed)


def build_snapshot() -> Snapshot:
    started = time.monotonic()
    now = timezone.now()
    keys = {
        row.key_hash: KeyEntry(
            tenant_id=str(row.tenant_id),
            tenant_slug=row.tenant.slug,
            expires_at=row.expires_at.timestamp() if row.expires_at else None,
            models=frozenset(m.name for m in row.allowed_models.all()) or None,
            priority=row.tenant.priority_class,
            rate=row.tenant.rate_limit_rps,
            burst=row.tenant.rate_burst,
            daily=row.tenant.daily_quota,
            tokens_per_minute=row.tenant.tokens_per_minute,
            max_tokens=row.tenant.max_tokens,
        )
        for row in ApiKey.objects.filter(revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .select_related("tenant")
        .prefetch_related("allowed_models")
    }
    grants: dict[str, set[str]] = defaultdict(set)
    for tenant_id, model_name in ModelGrant.objects.values_list("tenant_id", "model__name"):
        grants[str(tenant_id)].add(model_name)
    nodes = list(routable_nodes())
    routes: dict[str, list[Route]] = defaultdict(list)
    devices = {d.uuid: d for d in MigDevice.objects.filter(gpu__node__in=nodes).exclude(grpc_address="")}
    for replica in live_replicas().filter(node_id__in=[n.pk for n in nodes]):
        version = replica.deployment.version
        if replica.mig_uuid:
            device = devices.get(replica.mig_uuid)
            if device is None:
                continue  # its Triton is not (yet) known: never route blind
            address, tenant = device.grpc_address, str(device.tenant_id) if device.tenant_id else None
        else:
            address, tenant = replica.node.grpc_address, None
        routes[version.model.name].append(
            Route(node=replica.node.name, address=address, version=str(version.number), tenant=tenant)
        )
    weights, parked = _traffic()
    generative_versions = list(ModelVersion.objects.filter(format=ArtifactFormat.VLLM).order_by("number")
                               .values_list("model__name", "number", "generative"))  # fmt: skip
    generative = {name for name, _, _ in generative_versions}
    chat_templates: dict[str, dict[str, str]] = defaultdict(dict)
    for name, number, facts in generative_versions:
        if facts and facts.get("template"):
            chat_templates[name][str(number)] = str(facts["template"])
    engines = {name: engine_spec(normalise(profile))
               for name, profile in Model.objects.filter(name__in=generative).values_list("name", "serving_profile")}  # fmt: skip
    permitted, denials = _residency(nodes, set(grants))
    rules = current_rules()
    cache_tenants = frozenset(
        str(t.pk) for t in Tenant.objects.filter(pk__in=set(grants))
        if check(tenant=t, zone=settings.GATEWAY_ZONE, operation=Operation.CACHE, rules=rules).allowed
    )  # fmt: skip
    return Snapshot(
        keys=keys,
        grants={tenant: frozenset(models) for tenant, models in grants.items()},
        permitted=permitted,
        denials=denials,
        cached_models=frozenset(Model.objects.filter(response_cache=True).values_list("name", flat=True)),
        cache_tenants=cache_tenants,
        semantic={name: conf for name, conf in Model.objects.values_list("name", "semantic_cache") if conf},
        weights=weights,
        parked=parked,
        priority_levels={
            name: int((profile or {}).get("dynamic_batching", {}).get("priority_levels", 0))
            for name, profile in Model.objects.values_list("name", "serving_profile")
        },
        low_headroom=_low_headroom(nodes),
        generative=frozenset(generative),
        chat_templates=dict(chat_templates),
        engine_metrics={grpc: metrics for grpc, metrics in
                        [(n.grpc_address, n.metrics_address) for n in nodes] +
                        [(d.grpc_address, d.metrics_address) for d in devices.values()]
                        if metrics and any(r.address == grpc for model in generative for r in routes.get(model, ()))},  # fmt: skip
        engine_slots={name: contract.ENGINE_QUEUE_FACTOR * spec["max_num_seqs"] for name, spec in engines.items()},
        engine_context={name: int(spec["max_model_len"]) for name, spec in engines.items()},
        routes={model: tuple(sorted(r, key=lambda x: (x.node, x.address, x.version))) for model, r in routes.items()},
        built_at=started,
    )


def _low_headroom(nodes: list[Node]) -> frozenset[str]:
    """Nodes where some GPU's free memory is below GATEWAY_MIN_GPU_HEADROOM of its size."""
    from appliance.nodes.models import Gpu

    low = set()
    for node_name, total, used in Gpu.objects.filter(node__in=nodes, memory_used_mib__isnull=False).values_list(
        "node__name", "memory_mib", "memory_used_mib"
    ):
        if total and used is not None and (total - used) / total < settings.GATEWAY_MIN_GPU_HEADROOM:
            low.add(node_name)
    return frozenset(low)


def _traffic() -> tuple[dict[str, dict[str, int]], frozenset[str]]:
    """Each model's split between its serving deployment and a rollout in progress."""
    from appliance.rollouts.selectors import traffic_split

    return traffic_split()


def _residency(nodes: list[Node], tenant_ids: set[str]) -> tuple[dict[str, frozenset[str]], dict[tuple[str, str], str]]:
    """policies.check for every (tenant with grants, routable node) pair."""
    rules = current_rules()
    permitted: dict[str, frozenset[str]] = {}
    denials: dict[tuple[str, str], str] = {}
    for tenant in Tenant.objects.filter(pk__in=tenant_ids):
        allowed = set()
        for node in nodes:
            decision = check(tenant=tenant, node=node, operation=Operation.PROCESS, rules=rules)
            if decision.allowed:
                allowed.add(node.name)
            else:
                denials[(str(tenant.pk), node.name)] = decision.explain()
        permitted[str(tenant.pk)] = frozenset(allowed)
    return permitted, denials


def export_document(snapshot: Snapshot, engine_full: frozenset[tuple[str, str]] = frozenset()) -> dict[str, Any]:
    """What the native front needs of the snapshot: the document of contract.SNAPSHOT_FIELDS,
    version contract.SNAPSHOT_VERSION (the front refuses any other). `engine_full`: the
    (replica address, model) pairs whose engine last reported no room (admission.pressed)."""
    from appliance.accounts.choices import PRIORITY_LEVEL

    return {
        "version": contract.SNAPSHOT_VERSION,
        "config": {
            "instance": settings.INSTANCE,
            "cache_ttl_s": settings.CACHE_TTL_S,
            "queue_max": settings.GATEWAY_QUEUE_MAX,
            "queue_wait_s": settings.GATEWAY_QUEUE_WAIT_S,
            "initial_limit": settings.GATEWAY_INITIAL_LIMIT,
            "max_limit": settings.GATEWAY_MAX_LIMIT,
            "default_timeout_s": settings.GATEWAY_DEFAULT_TIMEOUT_S,
            "refresh_s": settings.GATEWAY_REFRESH_S,
            "eject_s": settings.GATEWAY_EJECT_S,
        },
        "keys": {
            digest: {
                "tenant_id": entry.tenant_id,
                "tenant": entry.tenant_slug,
                "expires_at": entry.expires_at,
                "models": sorted(entry.models) if entry.models is not None else None,
                "rank": contract.RANK.get(entry.priority, contract.DEFAULT_RANK),
                "triton_priority": PRIORITY_LEVEL.get(entry.priority, 2),
                "rate": entry.rate,
                "burst": entry.burst,
                "daily": entry.daily,
                "tokens_per_minute": entry.tokens_per_minute,
                "max_tokens": entry.max_tokens,
            }
            for digest, entry in snapshot.keys.items()
        },
        "grants": {tenant: sorted(models) for tenant, models in snapshot.grants.items()},
        "permitted": {tenant: sorted(nodes) for tenant, nodes in snapshot.permitted.items()},
        "routes": {
            model: [{"node": r.node, "address": r.address, "version": r.version, "tenant": r.tenant} for r in routes]
            for model, routes in snapshot.routes.items()
        },
        "weights": snapshot.weights,
        "priority_levels": snapshot.priority_levels,
        "cached_models": sorted(snapshot.cached_models),
        "semantic_models": sorted(snapshot.semantic),
        "cache_tenants": sorted(snapshot.cache_tenants),
        "low_headroom": sorted(snapshot.low_headroom),
        "generative": {
            model: {
                "slots": snapshot.engine_slots.get(model, 0),
                "context": snapshot.engine_context.get(model, contract.DEFAULT_MAX_TOKENS),
            }
            for model in sorted(snapshot.generative)
        },
        "engine_full": sorted([address, model] for address, model in engine_full),
    }


def export_snapshot(snapshot: Snapshot, path: Path, engine_full: frozenset[tuple[str, str]] = frozenset()) -> None:
    """Writes the native front's document (export_document) as JSON, atomically (a new file
    renamed over the old), so it never reads half a view."""
    document = export_document(snapshot, engine_full)
    text = json.dumps(document)
    if settings.GATEWAY_SNAPSHOT_FAULT == "garbage":  # drills only (settings.py)
        text = text[: len(text) // 2]
    elif settings.GATEWAY_SNAPSHOT_FAULT == "unknown-version":
        text = json.dumps({**document, "version": contract.SNAPSHOT_VERSION + 1})
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text)
    os.replace(partial, path)
