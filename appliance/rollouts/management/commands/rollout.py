"""Drives rollouts from a terminal, through the same services as the REST API.

    python manage.py rollout start digits 3 --strategy canary --steps 5,25,100 --step-seconds 60
    python manage.py rollout start digits 3 --strategy blue_green --step-seconds 300 --replicas 2
    python manage.py rollout status digits
    python manage.py rollout pause|resume|abort|rollback <deployment id>

Exit status: 0 done, 1 refused (the reason is printed), 2 bad arguments.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from appliance.audit.choices import Origin
from appliance.audit.context import audit_context
from appliance.catalog.models import ModelVersion
from appliance.core.errors import DomainError
from appliance.nodes.models import Node
from appliance.rollouts import services
from appliance.rollouts.choices import Strategy
from appliance.rollouts.models import Deployment


def _percentages(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise CommandError(f"--steps takes comma-separated percentages, e.g. 5,25,100 (got {text!r})") from exc


def _gate(pairs: list[str]) -> dict[str, float]:
    gate = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            gate[name] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise CommandError(f"--gate takes name=number, e.g. max_error_rate_increase=0.005 (got {pair!r})")
    return gate


class Command(BaseCommand):
    help = "Start, watch, pause, resume, abort or roll back a model rollout."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        start = sub.add_parser("start", help="roll a version out")
        start.add_argument("model")
        start.add_argument("version", type=int, help="the version number")
        start.add_argument("--strategy", choices=Strategy.values, default=Strategy.ALL_AT_ONCE)
        start.add_argument("--steps", type=_percentages, help="canary traffic steps, e.g. 5,25,100")
        start.add_argument("--step-seconds", type=int, help="how long each step is held under the gate")
        start.add_argument("--nodes", help="comma-separated node names (default: where the model serves now)")
        start.add_argument("--replicas", type=int, help="or: this many replicas on nodes the placement picks")
        start.add_argument("--gate", action="append", default=[], help="gate override name=number (repeatable)")
        status = sub.add_parser("status", help="the model's recent deployments as JSON lines")
        status.add_argument("model")
        for name in ("pause", "resume", "abort", "rollback"):
            sub.add_parser(name).add_argument("deployment", help="deployment id")

    def handle(self, *args: Any, **options: Any) -> None:
        actor = f"cli:{os.environ.get('USER', 'root')}"
        try:
            with audit_context(origin=Origin.CLI, actor=actor):
                deployment = self._act(options, actor)
        except (DomainError, Deployment.DoesNotExist, ModelVersion.DoesNotExist, Node.DoesNotExist) as exc:
            self.stderr.write(str(exc))
            sys.exit(1)
        except ValidationError as exc:
            self.stderr.write("; ".join(exc.messages))
            sys.exit(1)
        if deployment is not None:
            self.stdout.write(json.dumps(_summary(deployment)))

    def _act(self, options: dict[str, Any], actor: str) -> Deployment | None:
        action = options["action"]
        if action == "start":
            version = ModelVersion.objects.select_related("model").get(
                model__name=options["model"], number=options["version"]
            )
            nodes = [Node.objects.get(name=n) for n in options["nodes"].split(",")] if options["nodes"] else []
            return services.deployment_create(
                version=version, nodes=nodes, replicas=options["replicas"], strategy=options["strategy"],
                steps=options["steps"], step_seconds=options["step_seconds"], gate=_gate(options["gate"]),
            )  # fmt: skip
        if action == "status":
            for deployment in Deployment.objects.filter(version__model__name=options["model"]).select_related(
                "version__model", "previous__version"
            )[:10]:
                self.stdout.write(json.dumps(_summary(deployment)))
            return None
        deployment_id = options["deployment"]
        if action == "pause":
            return services.deployment_pause(deployment_id=deployment_id)
        if action == "resume":
            return services.deployment_resume(deployment_id=deployment_id)
        if action == "abort":
            return services.deployment_abort(deployment_id=deployment_id, actor=actor)
        return services.deployment_rollback(deployment_id=deployment_id, actor=actor)


def _summary(deployment: Deployment) -> dict[str, Any]:
    deployment = Deployment.objects.select_related("version__model", "previous__version").get(pk=deployment.pk)
    return {
        "id": str(deployment.pk),
        "model": deployment.version.model.name,
        "version": deployment.version.number,
        "previous_version": deployment.previous.version.number if deployment.previous else None,
        "strategy": deployment.strategy,
        "state": deployment.state,
        "paused": deployment.paused,
        "steps": deployment.steps,
        "step_index": deployment.step_index,
        "traffic_percent": deployment.traffic_percent,
        "error": deployment.error,
    }
