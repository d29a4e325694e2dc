"""DICOMweb routes (PS3.18), included at /dicomweb/<clinic_slug>/ by portal.urls."""

from __future__ import annotations

from django.urls import path, register_converter

from studies.dicomweb import views


class UidConverter:
    """A DICOM UID in a URL: digits and dots, at most 64 characters."""

    regex = r"[0-9][0-9.]{0,63}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


class FrameListConverter:
    regex = r"[0-9]+(?:,[0-9]+)*"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(UidConverter, "dicomuid")
register_converter(FrameListConverter, "framelist")

app_name = "dicomweb"

STUDY = "studies/<dicomuid:study_uid>"
SERIES = STUDY + "/series/<dicomuid:series_uid>"
INSTANCE = SERIES + "/instances/<dicomuid:sop_uid>"
FRAMES = INSTANCE + "/frames/<framelist:frame_list>"

urlpatterns = [
    path("studies", views.studies, name="studies"),
    path("series", views.series_search, name="series"),
    path("instances", views.instances_search, name="instances"),
    path(STUDY, views.study, name="study"),
    path(STUDY + "/metadata", views.metadata, name="study-metadata"),
    path(STUDY + "/rendered", views.rendered, name="study-rendered"),
    path(STUDY + "/thumbnail", views.thumbnail, name="study-thumbnail"),
    path(STUDY + "/series", views.series_search, name="study-series"),
    path(STUDY + "/instances", views.instances_search, name="study-instances"),
    path(SERIES, views.retrieve, name="series-retrieve"),
    path(SERIES + "/metadata", views.metadata, name="series-metadata"),
    path(SERIES + "/rendered", views.rendered, name="series-rendered"),
    path(SERIES + "/thumbnail", views.thumbnail, name="series-thumbnail"),
    path(SERIES + "/instances", views.instances_search, name="series-instances"),
    path(INSTANCE, views.retrieve, name="instance"),
    path(INSTANCE + "/metadata", views.metadata, name="instance-metadata"),
    path(INSTANCE + "/rendered", views.rendered, name="instance-rendered"),
    path(INSTANCE + "/thumbnail", views.thumbnail, name="instance-thumbnail"),
    path(INSTANCE + "/bulkdata/<path:tag_path>", views.bulkdata, name="instance-bulkdata"),
    path(FRAMES, views.frames, name="frames"),
    path(FRAMES + "/rendered", views.rendered, name="frames-rendered"),
    path(FRAMES + "/thumbnail", views.thumbnail, name="frames-thumbnail"),
]
