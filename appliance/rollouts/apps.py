from django.apps import AppConfig


class RolloutsConfig(AppConfig):
    name = "appliance.rollouts"
    label = "rollouts"

    def ready(self) -> None:
        # The nodes app reads what runs on its nodes through this hook (it must not import rollouts).
        from appliance.nodes import workloads
        from appliance.rollouts.selectors import workloads as resident_workloads

        workloads.register(resident_workloads)
