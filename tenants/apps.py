from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"
    verbose_name = "Clinics and accounts"

    def ready(self) -> None:
        # Not a cycle: ready() runs once the models are loaded, which the receivers need.
        from tenants import signals  # noqa: F401  (connects the sign-in receivers)
