from django.contrib import admin

from billing.models import Plan, StripeEvent, Subscription


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = ("name", "code", "storage_bytes", "price_cents", "currency", "stripe_price_id", "is_active")
    list_editable = ("stripe_price_id", "is_active")


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = ("clinic", "plan", "status", "trial_ends_at", "grace_ends_at", "read_only_until")
    list_filter = ("status", "plan")
    readonly_fields = ("last_event_at",)


@admin.register(StripeEvent)
class StripeEventAdmin(admin.ModelAdmin):
    list_display = ("event_id", "type", "created", "received_at")
    search_fields = ("event_id",)
