"""The rollout state machine on PostgreSQL, without any worker."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.rollouts import services
from appliance.rollouts.choices import DeploymentState, ReplicaState
from appliance.rollouts.models import Deployment, Replica
from tests.conftest import assert_audited
from tests.factories import make_node, make_version

pytestmark = pytest.mark.django_db


def _deploy(version: Any, nodes: list[Any], capture: Any) -> Deployment:
    with capture(execute=False) as callbacks:
        deployment = services.deployment_create(version=version, nodes=nodes)
    assert len(callbacks) == 1, "the rollout task is enqueued once, after commit"
    return deployment


def test_versions_are_numbered_per_model() -> None:
    assert [make_version("a").number, make_version("a").number, make_version("b").number] == [1, 2, 1]


def test_a_second_rollout_of_the_same_model_is_refused_while_one_runs(django_capture_on_commit_callbacks: Any) -> None:
    node = make_node()
    _deploy(make_version(), [node], django_capture_on_commit_callbacks)
    with pytest.raises(services.RolloutBusy, match="already in progress"):
        services.deployment_create(version=make_version(), nodes=[node])


def test_claims_are_idempotent(django_capture_on_commit_callbacks: Any) -> None:
    deployment = _deploy(make_version(), [make_node()], django_capture_on_commit_callbacks)
    assert services.deployment_claim(deployment_id=str(deployment.pk)).state == DeploymentState.ROLLING_OUT
    assert services.deployment_claim(deployment_id=str(deployment.pk)).state == DeploymentState.ROLLING_OUT
    replica = deployment.replicas.get()
    first = services.replica_claim(replica_id=str(replica.pk))
    again = services.replica_claim(replica_id=str(replica.pk))  # a re-delivery after a crash
    assert (first.state, first.attempts, again.attempts) == (ReplicaState.LOADING, 1, 2)
    services.replica_mark_live(replica=again)
    assert services.replica_claim(replica_id=str(replica.pk)) is None, "a live replica is not loaded again"


def test_new_version_live_retires_the_old_and_supersedes_its_deployment(django_capture_on_commit_callbacks: Any) -> None:
    node = make_node()
    old = _deploy(make_version(), [node], django_capture_on_commit_callbacks)
    services.replica_mark_live(replica=services.replica_claim(replica_id=str(old.replicas.get().pk)))
    old.refresh_from_db()
    assert old.state == DeploymentState.LIVE
    new = _deploy(make_version(), [node], django_capture_on_commit_callbacks)
    retired = services.replica_mark_live(replica=services.replica_claim(replica_id=str(new.replicas.get().pk)))
    assert [r.deployment_id for r in retired] == [old.pk]
    old.refresh_from_db()
    new.refresh_from_db()
    assert (old.state, new.state) == (DeploymentState.SUPERSEDED, DeploymentState.LIVE)
    assert_audited("deployment.update", target_id=old.pk)


def test_a_failed_replica_fails_the_deployment_with_the_reason(django_capture_on_commit_callbacks: Any) -> None:
    a, b = make_node("node-a"), make_node("node-b")
    deployment = _deploy(make_version(), [a, b], django_capture_on_commit_callbacks)
    services.deployment_claim(deployment_id=str(deployment.pk))
    ra, rb = Replica.objects.filter(deployment=deployment).order_by("node__name")
    services.replica_mark_live(replica=services.replica_claim(replica_id=str(ra.pk)))
    services.replica_claim(replica_id=str(rb.pk))
    deployment.refresh_from_db()
    assert deployment.state == DeploymentState.ROLLING_OUT
    services.replica_mark_failed(replica=rb, error="Triton refused to load digits: boom")
    deployment.refresh_from_db()
    assert deployment.state == DeploymentState.FAILED
    assert "node-b: Triton refused to load digits: boom" in deployment.error
