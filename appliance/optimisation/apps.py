from django.apps import AppConfig


class OptimisationConfig(AppConfig):
    name = "appliance.optimisation"
    label = "optimisation"
