from django.apps import AppConfig


class CatalogConfig(AppConfig):
    name = "appliance.catalog"
    label = "catalog"
