from django.urls import path

from tenants import views

app_name = "tenants"
urlpatterns = [
    path("login/", views.login_view, name="login"),
    path("logout/", views.logout_view, name="logout"),
    path("two-factor/", views.two_factor, name="two-factor"),
    path("keepalive/", views.keepalive, name="keepalive"),
    path("switch/", views.switch_clinic, name="switch-clinic"),
    path("account/", views.account, name="account"),
]
