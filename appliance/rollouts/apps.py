from django.apps import AppConfig


class RolloutsConfig(AppConfig):
    name = "appliance.rollouts"
    label = "rollouts"
