from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "appliance.gateway"
    label = "gateway"
