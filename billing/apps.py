from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        # A new clinic starts on the trial plan; tenants sits below billing, so billing plugs in here.
        # Not a cycle: ready() runs once the models are loaded, which these modules need.
        from billing import services
        from tenants import services as tenant_services

        tenant_services.clinic_created_register(services.subscription_start_trial)
