from django.apps import AppConfig


class ProvisioningConfig(AppConfig):
    name = "appliance.provisioning"
    label = "provisioning"
    default_auto_field = "django.db.models.BigAutoField"
