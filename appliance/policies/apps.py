from django.apps import AppConfig


class PoliciesConfig(AppConfig):
    name = "appliance.policies"
    label = "policies"
