"""`make run`'s demo deployment (core/launcher.py deploy_demo) against a real control plane
over HTTP: started again after a first start was interrupted mid-rollout, it waits for the
rollout under way instead of uploading another version (which that rollout would refuse)."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.catalog.models import ModelVersion
from appliance.rollouts import services as rollouts
from tests.factories import make_node, make_version
from tests.http_server import http_server


@pytest.mark.django_db
def test_a_demo_rollout_under_way_is_waited_for_not_uploaded_again(django_user_model: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from appliance.accounts.models import AccountRole
    from appliance.accounts.services import operator_token_create
    from appliance.core import launcher

    admin = django_user_model.objects.create_user("launcher-admin")
    AccountRole.objects.create(user=admin, role="admin")
    _, token = operator_token_create(user=admin, name="launcher")
    under_way = rollouts.deployment_create(version=make_version(launcher.DEMO_MODEL), nodes=[make_node(launcher.NODE)])
    with http_server() as url:
        monkeypatch.setattr(launcher, "API_PORT", int(url.rsplit(":", 1)[1]))
        app = launcher.Launcher()
        app.token = token
        with pytest.raises(SystemExit, match=f"timed out waiting for {launcher.DEMO_MODEL} to go live"):
            app.deploy_demo(timeout=1.0)
    assert ModelVersion.objects.filter(model__name=launcher.DEMO_MODEL).count() == 1, "no second upload"
    assert under_way.replicas.count() == 1
