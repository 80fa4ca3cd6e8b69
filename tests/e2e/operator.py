"""The platform operator of the end-to-end tests, driving the REST API."""

from __future__ import annotations

import json
from typing import Any

from django.core.files.uploadedfile import SimpleUploadedFile

from tests.e2e.fleet import Fleet, wait_for
from tests.factories import manifest


class Operator:
    """A platform operator (an admin) using the REST API."""

    def __init__(self, username: str) -> None:
        from django.contrib.auth import get_user_model
        from rest_framework.test import APIClient

        from appliance.accounts.models import AccountRole
        from appliance.accounts.services import operator_token_create

        user = get_user_model().objects.create_user(username, password=f"{username}-operator-pw")
        AccountRole.objects.create(user=user, role="admin")
        _, token = operator_token_create(user=user, name="e2e")
        self.client = APIClient()
        self.client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")

    def post(self, path: str, body: dict[str, Any], fmt: str = "json") -> dict[str, Any]:
        response = self.client.post(f"/api/v1/{path}", body, format=fmt)
        assert response.status_code in (200, 201, 202), (path, response.status_code, response.content)
        return dict(response.json())

    def get(self, path: str) -> dict[str, Any]:
        response = self.client.get(f"/api/v1/{path}")
        assert response.status_code == 200, response.content
        return dict(response.json())

    def upload(
        self, name: str, artifact: bytes, note: str = "", parent: str = "", change_kind: str = "", like: str = ""
    ) -> dict[str, Any]:
        """A new version of model `name`, described by the manifest of `like` (default: `name`)."""
        spec = manifest(like or name)
        body = {
            "model": name,
            "format": spec["format"],
            "signature": json.dumps(spec["signature"]),
            "max_batch_size": spec["max_batch_size"],
            "decoupled": spec["decoupled"],
            "change_note": note,
            "artifact": SimpleUploadedFile(f"{name}.tar.gz", artifact),
        }
        if parent:
            body.update(parent=parent, change_kind=change_kind or "new_weights")
        return self.post("versions/", body, fmt="multipart")

    def wait_ended(self, deployment_id: str, fleet: Fleet, timeout: float = 120) -> dict[str, Any]:
        """Until the rollout is live, failed or rolled back."""
        return dict(
            wait_for(
                f"deployment {deployment_id} to end",
                lambda: (d := self.get(f"deployments/{deployment_id}/"))["state"] in ("live", "failed", "rolled_back") and d,
                timeout=timeout,
                procs=fleet.procs,
            )
        )

    def deploy(self, version: dict[str, Any], nodes: list[str], fleet: Fleet, expect: str = "live") -> dict[str, Any]:
        deployment = self.post("deployments/", {"version": version["id"], "nodes": nodes})
        return dict(
            wait_for(
                f"deployment of {version['model']}:{version['number']} to be {expect}",
                lambda: (d := self.get(f"deployments/{deployment['id']}/"))["state"] in (expect, "failed" if expect == "live" else expect) and d,
                timeout=120,
                procs=fleet.procs,
            )
        )
