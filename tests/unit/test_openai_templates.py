"""The OpenAI API renders a chat with the chat template of the version that will answer it: an
upload not deployed yet changes nothing, and during a rollout whose versions differ in
templates, the version is drawn by the traffic split and the request pinned to it (the gateway's
own choose_version, on a snapshot written here)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from appliance.gateway.openai_api import OpenAIApi
from appliance.gateway.server import Gateway
from appliance.gateway.snapshot import Route


def _template(templates: dict[str, str], live: list[str], weights: dict[str, int]) -> tuple[str | None, str]:
    snapshot = SimpleNamespace(chat_templates={"llm": templates}, weights={"llm": weights},
                               routes={"llm": tuple(Route(node="n", address=f"n:{v}", version=v) for v in live)})  # fmt: skip
    gateway: Any = SimpleNamespace(snapshot=snapshot)
    gateway.permitted_for = lambda key, routes: routes
    gateway.choose_version = lambda model, routes: Gateway.choose_version(gateway, model, routes)
    return OpenAIApi(gateway, None)._template("key", "llm")


def test_an_upload_not_deployed_does_not_change_the_live_version_s_template() -> None:
    assert _template({"1": "A", "2": "B"}, live=["1"], weights={}) == ("A", "")


def test_a_rollout_whose_versions_share_a_template_pins_nothing() -> None:
    assert _template({"1": "A", "2": "A"}, live=["1", "2"], weights={"1": 50, "2": 50}) == ("A", "")


def test_a_rollout_whose_versions_differ_pins_the_version_the_split_draws() -> None:
    assert _template({"1": "A", "2": "B"}, live=["1", "2"], weights={"1": 0, "2": 100}) == ("B", "2")
    assert _template({"1": "A", "2": "B"}, live=["1", "2"], weights={"1": 100, "2": 0}) == ("A", "1")
    assert _template({"2": "B"}, live=["1", "2"], weights={"1": 100, "2": 0}) == (None, "1"), "v1 has none"


def test_with_nothing_routable_the_newest_template_is_used() -> None:
    assert _template({"1": "A", "10": "B"}, live=[], weights={}) == ("B", "")
    assert _template({}, live=[], weights={}) == (None, "")
