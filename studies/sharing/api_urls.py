from django.urls import path

from studies.sharing import api

app_name = "sharing-api"
urlpatterns = [
    path("shares/", api.ShareListApi.as_view(), name="list"),
    path("shares/<uuid:share_id>/", api.ShareDetailApi.as_view(), name="detail"),
]
