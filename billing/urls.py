from django.urls import path

from billing import views

app_name = "billing"
urlpatterns = [
    path("", views.overview, name="overview"),
    path("plan/", views.plan_change, name="plan-change"),
    path("cancel/", views.cancel, name="cancel"),
    path("portal/", views.customer_portal, name="portal"),
]
