"""Writes for nodes: registration by operators or agents, heartbeats, state."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from appliance.accounts.secrets import hash_secret, make_secret
from appliance.core.engine_gauges import EngineReading
from appliance.core.errors import ConflictError, DomainError
from appliance.core.services import update_locked
from appliance.nodes import broker, dispatch, workloads
from appliance.nodes.choices import RECONFIGURATION_STEPS, AdminState, ReconfigurationState
from appliance.nodes.inventory.base import GpuHealth, GpuInfo
from appliance.nodes.mig.catalog import gpu_model
from appliance.nodes.mig.planner import plan
from appliance.nodes.models import (
    Gpu,
    JoinToken,
    MigDevice,
    Node,
    NodeHealthChange,
    Reconfiguration,
    ReconfigurationStep,
)

log = logging.getLogger(__name__)


@transaction.atomic
def node_create(
    *,
    name: str,
    zone: str = "default",
    site: str = "",
    compliance_tags: list[str] | None = None,
    grpc_address: str = "",
    http_address: str = "",
) -> Node:
    node = Node(name=name, zone=zone, site=site, compliance_tags=compliance_tags or [], grpc_address=grpc_address,
                http_address=http_address)  # fmt: skip
    node.full_clean()
    node.save()
    return node


@transaction.atomic
def node_register(
    *, name: str, zone: str, grpc_address: str, http_address: str, metrics_address: str, triton_version: str = "",
    tensorrt_version: str = "", backends: list[str] | None = None, memory_bytes: int = 0, credential: str = "",
) -> Node:
    """Called by a node agent at start: creates the node or updates its endpoints, and
    the backends its Triton has (None: leave them as they are). An enrolled node's agent
    must present the node's own credential (a revoked one is refused, 401); its zone is
    the one it enrolled with."""
    node = Node.objects.select_for_update().filter(name=name).first()
    if credential:
        if node is None or node.pk != node_authenticate(credential=credential).pk:
            raise EnrolmentRefused(f"the node credential is not node {name}'s")
    elif node is not None and node.credential_hash:
        raise EnrolmentRefused(f"node {name} is enrolled: its agent must present the node's credential")
    if node is None:
        node = Node(name=name, zone=zone)
    node.grpc_address = grpc_address
    node.http_address = http_address
    node.metrics_address = metrics_address
    if triton_version:
        node.triton_version = triton_version
    node.tensorrt_version = tensorrt_version
    if backends is not None:
        node.backends = sorted(set(backends))
    if memory_bytes:
        node.memory_bytes = memory_bytes
    node.full_clean()
    node.save()
    return node


def node_heartbeat(*, node_id: UUID | str, triton_ready: bool) -> bool:
    """Records that the agent is alive and what it sees of its Triton. Not audited
    (it changes every few seconds); health changes are, through node_set_health.
    False: the node is revoked (or gone), and its agent must stop serving."""
    alive = Node.objects.filter(pk=node_id).exclude(admin_state=AdminState.REVOKED)
    return alive.update(last_heartbeat=timezone.now(), triton_ready=triton_ready) == 1


@transaction.atomic
def node_set_admin_state(*, node: Node, admin_state: str) -> Node:
    """Drain, maintenance or back to active: an operator's decision, audited."""
    locked = Node.objects.select_for_update().get(pk=node.pk)
    if locked.admin_state == AdminState.REVOKED:
        raise ConflictError(f"node {locked.name}'s credential was revoked; it returns only by enrolling again "
                            "with a join token")  # fmt: skip
    if locked.admin_state != admin_state:
        locked.admin_state = admin_state
        locked.save(update_fields=["admin_state", "updated"])
    return locked


@transaction.atomic
def node_set_health(*, node_id: UUID | str, health: str, reasons: list[str]) -> bool:
    """Stores the sweep's verdict; a change is audited and kept in the history. True if it changed."""
    locked = Node.objects.select_for_update().get(pk=node_id)
    now = timezone.now()
    changed = locked.health != health
    if changed:
        NodeHealthChange.objects.create(node=locked, time=now, previous=locked.health, health=health, reasons=reasons)
        locked.health = health
        locked.health_reasons = reasons
        locked.health_checked = now
        locked.save(update_fields=["health", "health_reasons", "health_checked", "updated"])
    else:
        Node.objects.filter(pk=node_id).update(health_reasons=reasons, health_checked=now)
    return changed


def node_report_gpu_health(*, node_id: UUID | str, readings: list[GpuHealth]) -> None:
    """Health read-outs of every GPU, each heartbeat (not audited: they change constantly)."""
    now = timezone.now()
    for reading in readings:
        Gpu.objects.filter(node_id=node_id, index=reading.index).update(
            temperature_c=reading.temperature_c, ecc_corrected=reading.ecc_corrected,
            ecc_uncorrected=reading.ecc_uncorrected, xid_events=reading.xid_events,
            ecc_uncorrected_aggregate=reading.ecc_uncorrected_aggregate,
            retired_pages_pending=reading.retired_pages_pending,
            throttle_reasons=reading.throttle_reasons, memory_used_mib=reading.memory_used_mib,
            remapped_rows_pending=reading.remapped_rows_pending, remap_failed=reading.remap_failed,
            readout_error=reading.readout_error[:500], readout_time=now,
        )  # fmt: skip
    if readings:
        from appliance.metrics.collect import record_gpu

        name = Node.objects.filter(pk=node_id).values_list("name", flat=True).first()
        totals = dict(Gpu.objects.filter(node_id=node_id).values_list("index", "memory_mib"))
        if name:
            record_gpu(node=name, readings=readings, totals=totals, at=now)


@transaction.atomic
def node_report_engines(*, node_id: UUID | str, readings: list[EngineReading]) -> None:
    """The node's generative engines as its agent read them, each heartbeat (measurements:
    not audited)."""
    if readings:
        from appliance.metrics.collect import record_engines

        name = Node.objects.filter(pk=node_id).values_list("name", flat=True).first()
        if name:
            record_engines(node=name, readings=readings)


@transaction.atomic
def node_update(
    *, node: Node, zone: str | None = None, site: str | None = None, compliance_tags: list[str] | None = None
) -> Node:
    return update_locked(node, zone=zone, site=site, compliance_tags=compliance_tags)


@transaction.atomic
def node_delete(*, node: Node) -> None:
    name, enrolled = node.name, bool(node.credential_hash)
    node.delete()
    if enrolled:
        _withdraw_broker_identity(name)


@transaction.atomic
def node_report_inventory(*, node_id: UUID | str, gpus: list[GpuInfo]) -> None:
    """Makes the database's GPUs and MIG devices of a node match what its agent reports."""
    node = Node.objects.select_for_update().get(pk=node_id)
    reported = {g.index for g in gpus}
    for stale in node.gpus.exclude(index__in=reported):
        stale.delete()
    for info in gpus:
        gpu = Gpu.objects.filter(node=node, index=info.index).first() or Gpu(node=node, index=info.index)
        gpu.uuid, gpu.product, gpu.model = info.uuid, info.product, info.model or ""
        gpu.memory_mib, gpu.mig_enabled, gpu.mig_pending = info.memory_mib, info.mig_current, info.mig_pending
        gpu.save()
        seen = set()
        for device in info.mig_devices:
            seen.add(device.uuid)
            row = MigDevice.objects.filter(gpu=gpu, uuid=device.uuid).first()
            if row is None:
                MigDevice.objects.filter(gpu=gpu, start=device.start).delete()
                MigDevice.objects.create(gpu=gpu, uuid=device.uuid, profile=device.profile, start=device.start,
                                         size=device.size, gpu_instance_id=device.gpu_instance_id,
                                         memory_mib=device.memory_mib)  # fmt: skip
        for gone in gpu.mig_devices.exclude(uuid__in=seen):
            gone.delete()


# --- MIG reconfiguration: the state machine (the node agent runs the steps) ---------------


class ReconfigurationBusy(ConflictError):
    """Another reconfiguration of the node is pending or running."""


def reconfiguration_create(*, node: Node, gpu_index: int, layout: list[str], inject_failure_at: str = "") -> Reconfiguration:
    """Validates and plans (nothing changes on the node yet), records the run and
    enqueues it on the node's queue after commit, with the row id as task id."""
    gpu = node.gpus.filter(index=gpu_index).first()
    if gpu is None:
        raise DomainError(f"node {node.name} has no GPU {gpu_index}")
    if not gpu.model:
        raise DomainError(f"GPU {gpu_index} of {node.name} ({gpu.product}) is not a MIG-capable model we know")
    if inject_failure_at:
        step = inject_failure_at.removeprefix("kill:")
        if not settings.ALLOW_FAULT_INJECTION:
            raise DomainError("fault injection is off (APPLIANCE_ALLOW_FAULT_INJECTION)")
        if step not in RECONFIGURATION_STEPS:
            raise DomainError(f"inject_failure_at must name a step: {', '.join(RECONFIGURATION_STEPS)}")
    result = plan(gpu_model(gpu.model), layout)
    if not result.ok:
        raise DomainError(f"layout refused for {gpu.model}: {result.reason}")
    placements = [{"profile": p.profile, "start": p.start} for p in result.placements]
    moves, problem = plan_moves(gpu, placements)
    if problem:
        raise ConflictError(problem)
    try:
        with transaction.atomic():
            reconfiguration = Reconfiguration.objects.create(
                node=node, gpu_index=gpu_index, layout=list(layout), inject_failure_at=inject_failure_at,
                placements=placements, moves=moves,
                previous=[{"profile": d.profile, "start": d.start, "uuid": d.uuid,
                           "tenant": str(d.tenant_id) if d.tenant_id else None} for d in gpu.mig_devices.all()],  # fmt: skip
            )  # fmt: skip
            run_id = str(reconfiguration.pk)
            transaction.on_commit(lambda: dispatch.reconfigure(node_name=node.name, reconfiguration_id=run_id))
    except IntegrityError as exc:
        raise ReconfigurationBusy(f"a reconfiguration of node {node.name} is already pending or running") from exc
    return reconfiguration


def reconfiguration_claim(*, reconfiguration_id: str) -> tuple[Reconfiguration | None, bool]:
    """(the run, True if it was already running: a re-delivery after the agent died)."""
    with transaction.atomic():
        run = Reconfiguration.objects.select_for_update().filter(pk=reconfiguration_id).first()
        if run is None or run.state not in (ReconfigurationState.PENDING, ReconfigurationState.RUNNING):
            return None, False
        if run.state == ReconfigurationState.RUNNING:
            return run, True
        run.state = ReconfigurationState.RUNNING
        run.previous_admin_state = run.node.admin_state
        run.save(update_fields=["state", "previous_admin_state"])
        return run, False


@transaction.atomic
def reconfiguration_step_start(*, run: Reconfiguration, name: str) -> ReconfigurationStep:
    Reconfiguration.objects.filter(pk=run.pk).update(step=name)
    return ReconfigurationStep.objects.create(reconfiguration=run, name=name, state="running")


@transaction.atomic
def reconfiguration_step_end(*, step: ReconfigurationStep, state: str, detail: str = "") -> None:
    step.state = state
    step.detail = detail[:4000]
    step.finished = timezone.now()
    step.save(update_fields=["state", "detail", "finished"])


@transaction.atomic
def reconfiguration_finish(*, run: Reconfiguration, succeeded: bool, error: str = "") -> None:
    """Ends the run. A failure leaves a fault on the node (degraded until cleared).

    The node's row is locked first: an audited save takes the audit chain's lock, and
    heartbeats and the health sweep lock the node row before theirs; the other order
    deadlocked against them (seen in CI)."""
    node = Node.objects.select_for_update().get(pk=run.node_id)
    locked = Reconfiguration.objects.select_for_update().get(pk=run.pk)
    locked.state = ReconfigurationState.SUCCEEDED if succeeded else ReconfigurationState.FAILED
    locked.error = error[:4000]
    locked.finished = timezone.now()
    locked.save(update_fields=["state", "error", "finished"])
    node.fault = "" if succeeded else f"MIG reconfiguration of GPU {locked.gpu_index} failed and was rolled back: {error}"[:500]
    node.save(update_fields=["fault", "updated"])


@transaction.atomic
def node_clear_fault(*, node: Node) -> Node:
    locked = Node.objects.select_for_update().get(pk=node.pk)
    if locked.fault:
        locked.fault = ""
        locked.save(update_fields=["fault", "updated"])
    return locked


def node_set_mig_endpoints(*, node_id: UUID | str, addresses: dict[str, str],
                           metrics: dict[str, str] | None = None) -> None:  # fmt: skip
    """Where the Triton of each MIG device listens, and its metrics endpoint (not audited: it
    follows the devices)."""
    for what, given in (("addresses", addresses), ("metrics", metrics or {})):
        if not isinstance(given, dict) or not all(isinstance(k, str) and isinstance(v, str) and len(v) <= 255
                                                  for k, v in given.items()):  # fmt: skip
            raise ValueError(f"{what}: an object of MIG device uuid -> host:port (at most 255 characters)")
    with transaction.atomic():
        for device_uuid, address in addresses.items():
            fields = {"grpc_address": address}
            if metrics is not None:
                fields["metrics_address"] = metrics.get(device_uuid, "")
            MigDevice.objects.filter(gpu__node_id=node_id, uuid=device_uuid).update(**fields)


@transaction.atomic
def mig_device_dedicate(*, device: MigDevice, tenant: Any) -> MigDevice:
    """Dedicate a MIG slice to one tenant (None: shared again); audited."""
    if tenant is not None:
        return update_locked(device, tenant=tenant)
    locked = MigDevice.objects.select_for_update().get(pk=device.pk)
    locked.tenant = None
    locked.save(update_fields=["tenant"])
    return locked


def plan_moves(gpu: Gpu, placements: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Every slice in use (serving replicas, or dedicated to a tenant) gets a slice of
    the new layout with at least its memory — the same profile first, else the
    smallest that fits. Returns (moves, '') or ([], why it cannot be done)."""
    catalog = gpu_model(gpu.model)
    in_use = []
    for device in gpu.mig_devices.select_related("tenant"):
        serving = sorted({str(w) for w in workloads.resident(node_id=gpu.node_id, mig_uuid=device.uuid)})
        if serving or device.tenant_id:
            in_use.append((device, serving))
    free = list(range(len(placements)))
    moves = []
    memory = {p.name: p.memory_gib for p in catalog.profiles}
    for device, serving in sorted(in_use, key=lambda item: -memory[item[0].profile]):
        need = memory[device.profile]
        fits = sorted((i for i in free if memory[placements[i]["profile"]] >= need),
                      key=lambda i: (placements[i]["profile"] != device.profile, memory[placements[i]["profile"]]))  # fmt: skip
        if not fits:
            what = ", ".join(serving) if serving else f"dedicated to {device.tenant.slug}"  # type: ignore[union-attr]
            return [], (f"the new layout has no slice for {device.profile}@{device.start} ({what}), "
                        f"which needs at least {need} GiB")  # fmt: skip
        free.remove(fits[0])
        moves.append({"from": device.uuid, "to": fits[0], "tenant": str(device.tenant_id) if device.tenant_id else None})
    return moves, ""


@transaction.atomic
def mig_dedication_move(*, node_id: UUID | str, to_uuid: str, tenant_id: str | None) -> None:
    """A tenant's dedication follows its slice to the slice's new MIG device; audited."""
    if not tenant_id:
        return
    target = MigDevice.objects.filter(gpu__node_id=node_id, uuid=to_uuid).first()
    if target is not None and str(target.tenant_id) != tenant_id:
        update_locked(target, tenant_id=tenant_id)


def reconfiguration_record_moved(*, run: Reconfiguration, moved: dict[str, str]) -> None:
    Reconfiguration.objects.filter(pk=run.pk).update(moved=moved)
    run.moved = moved


# --- enrolment: join tokens and node credentials --------------------------------------------------


class EnrolmentRefused(DomainError):
    """A join token or node credential that does not admit the request (401: the secret is wrong)."""

    http_status = 401


class JoinTokenSpent(DomainError):
    """A real join token that can no longer be used (used, expired or revoked): 403, saying which."""

    http_status = 403


def join_token_create(*, ttl_s: int, note: str = "", created_by: str = "") -> tuple[JoinToken, str]:
    """A one-time token valid for ttl_s seconds; the plaintext is returned once, only its hash kept."""
    if not settings.JOIN_TOKEN_MIN_TTL_S <= ttl_s <= settings.JOIN_TOKEN_MAX_TTL_S:
        raise DomainError(f"a join token lives {settings.JOIN_TOKEN_MIN_TTL_S} to {settings.JOIN_TOKEN_MAX_TTL_S} s, "
                          f"not {ttl_s}")  # fmt: skip
    secret = make_secret("jt")
    token = JoinToken.objects.create(prefix=secret.prefix, token_hash=secret.digest, note=note, created_by=created_by,
                                     expires_at=timezone.now() + timedelta(seconds=ttl_s))  # fmt: skip
    return token, secret.plaintext


def join_token_revoke(*, token: JoinToken) -> JoinToken:
    """Withdraws an unused token (a used one has done its work: revoke the node's credential instead)."""
    with transaction.atomic():
        token = JoinToken.objects.select_for_update().get(pk=token.pk)
        if token.used_at is not None:
            raise ConflictError(f"{token} was already used by node {token.used_by}; revoke that node's credential")
        if token.revoked_at is None:
            token.revoked_at = timezone.now()
            token.save()
    return token


@dataclass(frozen=True)
class Enrolment:
    node: Node
    credential: str  # plaintext, shown once (to the enrolling playbook)


def node_enrol(*, token: str, name: str, zone: str, site: str = "", compliance_tags: list[str] | None = None,
               machine_id: str = "") -> Enrolment:  # fmt: skip
    """A new server joins with a one-time join token: the node is created with the zone, site
    and compliance tags its inventory gives, the token is spent, and the node gets a credential
    of its own. A token that is wrong (401), used, expired or revoked (403, saying which) admits
    nothing; a name held by an enrolled node is refused (409), so a re-run cannot make a second
    node (the playbook presents the node's credential instead of a token on re-runs)."""
    with transaction.atomic():
        found = JoinToken.objects.select_for_update().filter(token_hash=hash_secret(token)).first()
        if found is None:
            raise EnrolmentRefused("the join token is not valid (ask an operator for a new one)")
        if found.used_at is not None:
            raise JoinTokenSpent(f"{found} was already used at {found.used_at:%Y-%m-%d %H:%M:%S} UTC "
                                 f"(by node {found.used_by or 'since deleted'}); a join token enrols one node")  # fmt: skip
        if found.revoked_at is not None:
            raise JoinTokenSpent(f"{found} was revoked at {found.revoked_at:%Y-%m-%d %H:%M:%S} UTC")
        if found.expires_at <= timezone.now():
            raise JoinTokenSpent(f"{found} expired at {found.expires_at:%Y-%m-%d %H:%M:%S} UTC")
        node = Node.objects.select_for_update().filter(name=name).first()
        if node is not None and node.credential_hash and node.credential_revoked is None:
            raise ConflictError(f"a node named '{name}' is already enrolled; re-provisioning it presents its own "
                                "credential, and a new server needs a name of its own")  # fmt: skip
        if node is None:
            node = Node(name=name)
        # A node an operator pre-registered (or one whose credential was revoked) takes the enrolment.
        node.zone, node.site, node.compliance_tags = zone, site, sorted(set(compliance_tags or []))
        node.machine_id = machine_id
        secret = make_secret("nc")
        node.credential_prefix, node.credential_hash = secret.prefix, secret.digest
        node.credential_issued, node.credential_revoked = timezone.now(), None
        if node.admin_state == AdminState.REVOKED:
            node.admin_state = AdminState.ACTIVE
        node.full_clean()
        node.save()
        found.used_at, found.used_by = timezone.now(), node
        found.save()
        if broker.enabled():  # inside the transaction: no broker identity, no enrolment (503, nothing spent)
            broker.grant(node.name, secret.plaintext)
    return Enrolment(node=node, credential=secret.plaintext)


def node_authenticate(*, credential: str) -> Node:
    """The node a credential belongs to; a wrong or revoked one is refused (401)."""
    node = Node.objects.filter(credential_hash=hash_secret(credential)).first() if credential else None
    if node is None:
        raise EnrolmentRefused("the node credential is not valid")
    if node.credential_revoked is not None:
        raise EnrolmentRefused(f"node {node.name}'s credential was revoked at "
                               f"{node.credential_revoked:%Y-%m-%d %H:%M:%S} UTC; enrol it again with a join token")  # fmt: skip
    return node


def node_revoke_credential(*, node: Node) -> Node:
    """Cuts a node off: its credential stops working, and the node is REVOKED, so the gateway
    routes nothing to it from its next snapshot (seconds) and no rollout places anything there.
    It comes back only by enrolling again with a new join token."""
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=node.pk)
        if not node.credential_hash:
            raise DomainError(f"node {node.name} holds no credential of its own (it was not enrolled)")
        if node.credential_revoked is None:
            node.credential_revoked = timezone.now()
        node.admin_state = AdminState.REVOKED
        node.save()
    _withdraw_broker_identity(node.name)
    return node


def _withdraw_broker_identity(name: str) -> None:
    """After the revocation is committed (it never waits on the broker): the node's broker user
    goes, and its open connections with it. A broker that cannot be reached is logged; the
    node is cut off anyway (its requests are refused, its agent stops at its next heartbeat,
    nothing is routed or placed there) and a later revocation or deletion withdraws it again."""
    if not broker.enabled():
        return
    try:
        broker.withdraw(name)
    except broker.BrokerUnavailable:
        log.exception("node %s was revoked, but its broker identity could not be withdrawn", name)
