from django.apps import AppConfig


class MetricsConfig(AppConfig):
    name = "appliance.metrics"
    label = "metrics"
