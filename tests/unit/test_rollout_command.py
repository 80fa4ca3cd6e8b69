"""`manage.py rollout` drives every strategy through the same services as the API."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.core.management import call_command

from appliance.audit.models import AuditEvent
from appliance.rollouts.choices import DeploymentState
from appliance.rollouts.models import Deployment
from tests.factories import make_node, make_version

pytestmark = pytest.mark.django_db


def _run(*args: str) -> tuple[int, list[dict[str, Any]], str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("rollout", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


@pytest.mark.parametrize(("strategy", "extra", "steps"), [
    ("all_at_once", [], [100]),
    ("blue_green", ["--step-seconds", "120"], [100]),
    ("canary", ["--steps", "5,25", "--gate", "max_error_rate_increase=0.005"], [5, 25, 100]),
])  # fmt: skip
def test_start_each_strategy(strategy: str, extra: list[str], steps: list[int], django_capture_on_commit_callbacks: Any) -> None:
    make_node()
    make_version()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        code, lines, err = _run("start", "digits", "1", "--strategy", strategy, "--nodes", "node-a", *extra)
    assert (code, err) == (0, "")
    assert len(callbacks) == 1, "the rollout task is sent once, after commit"
    assert (lines[0]["strategy"], lines[0]["steps"], lines[0]["state"]) == (strategy, steps, "pending")
    deployment = Deployment.objects.get(pk=lines[0]["id"])
    if strategy == "canary":
        assert deployment.gate["max_error_rate_increase"] == 0.005
    event = AuditEvent.objects.filter(action="deployment.create").latest("time")
    assert (event.origin, event.actor.startswith("cli:")) == ("cli", True)


def test_pause_resume_abort_and_status(django_capture_on_commit_callbacks: Any) -> None:
    make_node()
    make_version()
    with django_capture_on_commit_callbacks(execute=False):
        _, [started], _ = _run("start", "digits", "1", "--strategy", "canary", "--nodes", "node-a")
        assert _run("pause", started["id"])[1][0]["paused"] is True
        assert _run("resume", started["id"])[1][0]["paused"] is False
    code, [aborted], _ = _run("abort", started["id"])
    assert (code, aborted["state"], aborted["error"].startswith("aborted by cli:")) == (0, DeploymentState.ROLLED_BACK, True)
    code, status, _ = _run("status", "digits")
    assert [s["id"] for s in status] == [started["id"]]


@pytest.mark.parametrize(("args", "message"), [
    (["start", "digits", "9", "--nodes", "node-a"], "does not exist"),
    (["start", "digits", "1", "--strategy", "canary", "--steps", "50,10", "--nodes", "node-a"], "must increase"),
    (["start", "digits", "1", "--nodes", "node-zz"], "does not exist"),
    (["abort", "not-a-uuid"], "not a valid UUID"),
])  # fmt: skip
def test_refusals_exit_1_with_the_reason(args: list[str], message: str) -> None:
    make_node()
    make_version()
    code, lines, err = _run(*args)
    assert code == 1 and message in err and lines == []
    assert not Deployment.objects.exists()
