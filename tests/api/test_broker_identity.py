"""A node's own broker identity (appliance/nodes/broker.py), against the real RabbitMQ and its
management API: enrolment makes a broker user named after the node's queue, whose password is
the node's credential, that may use that queue and nothing else (not the control plane's queue,
not another node's); revocation deletes it; a new enrolment re-keys it; a broker whose
management API cannot be reached fails the enrolment with 503 and spends nothing.

Needs RabbitMQ's management plugin (.ci/run enables it: `rabbitmq-plugins enable rabbitmq_management`)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import amqp
import pytest
from django.conf import settings
from django.test import override_settings
from kombu import Connection, Exchange, Queue
from rest_framework.test import APIClient

from appliance.nodes import broker, services
from appliance.nodes.dispatch import node_queue
from appliance.nodes.models import JoinToken, Node

pytestmark = pytest.mark.django_db

ADMIN = "http://guest:guest@127.0.0.1:15672"


def _admin(path: str) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:15672{path}", headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def _exists(user: str) -> bool:
    try:
        _admin(f"/api/users/{urllib.parse.quote(user, safe='')}")
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
        return False
    return True


@pytest.fixture
def management() -> Iterator[None]:
    try:
        _admin("/api/overview")
    except OSError as exc:
        pytest.fail(f"RabbitMQ's management API is not on 127.0.0.1:15672 ({exc}): "
                    "rabbitmq-plugins enable rabbitmq_management")  # fmt: skip
    with override_settings(BROKER_ADMIN_URL=ADMIN):
        yield
        for name in ("gpu-07",):
            broker.withdraw(name)


def _enrol(name: str = "gpu-07") -> str:
    _, token = services.join_token_create(ttl_s=600)
    return services.node_enrol(token=token, name=name, zone="eu-fra", machine_id="m").credential


def _connect(name: str, password: str) -> Connection:
    host = urllib.parse.urlsplit(settings.CELERY_BROKER_URL)
    user = urllib.parse.quote(broker.user_name(name), safe="")
    connection = Connection(f"amqp://{user}:{urllib.parse.quote(password, safe='')}@{host.hostname}:{host.port or 5672}/"
                            f"{urllib.parse.quote(broker.vhost(), safe='')}", connect_timeout=5)  # fmt: skip
    connection.connect()
    return connection


def test_a_node_s_broker_user_may_use_its_own_queue_and_nothing_else(management: None) -> None:
    credential = _enrol()
    user = broker.user_name("gpu-07")
    assert user == node_queue("gpu-07") and _exists(user)
    granted = _admin(f"/api/users/{urllib.parse.quote(user, safe='')}/permissions")
    assert len(granted) == 1 and granted[0]["vhost"] == broker.vhost()
    for pattern in (granted[0]["configure"], granted[0]["write"], granted[0]["read"]):
        assert re.search(pattern, user)
        others = (node_queue("gpu-070"), node_queue("gpu-0"), settings.CELERY_TASK_DEFAULT_QUEUE, "amq.default", "")
        assert not any(re.search(pattern, other) for other in others), pattern
    with _connect("gpu-07", credential) as connection:
        # What the agent's Celery worker does: declare its queue (and the exchange of that name), read it.
        own = Queue(user, Exchange(user, type="direct"), routing_key=user)
        own(connection.channel()).declare()
        with connection.Producer() as producer:
            producer.publish({"probe": 1}, exchange=own.exchange, routing_key=user)
        message = own(connection.channel()).get(no_ack=True)
        assert message is not None and message.payload == {"probe": 1}
        refusals = {
            "read another node's queue": lambda ch: ch.basic_get(node_queue("gpu-08")),
            "read the control plane's queue": lambda ch: ch.basic_get(settings.CELERY_TASK_DEFAULT_QUEUE),
            "declare the control plane's exchange": lambda ch: ch.exchange_declare(settings.CELERY_TASK_DEFAULT_QUEUE,
                                                                                   "direct"),
            "declare a queue of its own choosing": lambda ch: ch.queue_declare("anything-else"),
        }  # fmt: skip
        for what, attempt in refusals.items():
            with pytest.raises(amqp.exceptions.AccessRefused):
                attempt(connection.channel())
            print("refused:", what)


def test_revocation_deletes_the_user_and_a_new_enrolment_re_keys_it(management: None) -> None:
    credential = _enrol()
    services.node_revoke_credential(node=Node.objects.get(name="gpu-07"))
    assert not _exists(broker.user_name("gpu-07"))
    with pytest.raises(amqp.exceptions.AccessRefused):
        _connect("gpu-07", credential)
    fresh = _enrol()
    _connect("gpu-07", fresh).release()
    with pytest.raises(amqp.exceptions.AccessRefused):
        _connect("gpu-07", credential)


def test_a_broker_that_cannot_be_reached_fails_the_enrolment_and_spends_nothing() -> None:
    made, token = services.join_token_create(ttl_s=600)
    with override_settings(BROKER_ADMIN_URL="http://guest:guest@127.0.0.1:9"):
        response = APIClient().post("/api/v1/enrol/", {"token": token, "name": "gpu-07", "zone": "eu-fra"},
                                    format="json")  # fmt: skip
    assert response.status_code == 503 and "management API" in response.json()["detail"]
    assert not Node.objects.filter(name="gpu-07").exists()
    assert JoinToken.objects.get(pk=made.pk).used_at is None
