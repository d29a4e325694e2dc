from django.urls import path

from studies.viewer import views

app_name = "viewer"
urlpatterns = [
    path("<uuid:study_uuid>/", views.study_viewer, name="study"),
]
