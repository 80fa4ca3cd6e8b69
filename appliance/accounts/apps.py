from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "appliance.accounts"
    label = "accounts"

    def ready(self) -> None:
        from appliance.accounts import schema  # noqa: F401  (registers the OpenAPI auth scheme)
