from django.apps import AppConfig


class AgentConfig(AppConfig):
    """The node agent: what runs on a node (its Tritons, their model repositories, the
    node queue's tasks). No models of its own; it reaches the control plane only
    through appliance/agent/control.py."""

    name = "appliance.agent"
    label = "agent"
