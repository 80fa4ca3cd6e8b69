from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "appliance.audit"
    label = "audit"

    def ready(self) -> None:
        from appliance.audit import celery_context, signals  # noqa: F401
