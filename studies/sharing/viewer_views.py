"""The diagnostic viewer (OHIF) of a share link, under /s/<share_token>/viewer/: the viewer package serves
it, this module admits the link's recipient and logs the view."""

from __future__ import annotations

from uuid import UUID

from csp.decorators import csp_update
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse

from studies.models import Study
from studies.sharing import services
from studies.sharing.public_views import share_required, shared_study
from studies.viewer import ohif
from studies.viewer import views as viewer_views
from tenants.audit import Actor


@csp_update(ohif.CSP_UPDATE)
@share_required
def ohif_share(request: HttpRequest, share_token: str, path: str = "") -> HttpResponse:
    """OHIF for a share link's recipient: reads only the link's read-only DICOMweb, shows nothing of the clinic."""
    dicomweb = reverse("share-dicomweb:studies", kwargs={"share_token": share_token})[: -len("/studies")]
    site = ohif.ViewerSite(
        public_url=reverse("share-viewer:ohif", kwargs={"share_token": share_token}),
        dicomweb_root=request.build_absolute_uri(dicomweb),
        name="Shared studies",
        show_study_list=False,
    )
    return viewer_views.ohif_response(request, path, site, opened=lambda uids: _log_opened(request, uids))


def _log_opened(request: HttpRequest, study_instance_uids: list[str]) -> None:
    """Log ``share.viewed`` for each named study the link shares (others name nothing)."""
    by = Actor.from_request(request)
    shared = Study.objects.for_clinic(request.clinic).filter(  # type: ignore[attr-defined]
        pk__in=request.study_scope, deleted_at__isnull=True, study_instance_uid__in=study_instance_uids,  # type: ignore[attr-defined]
    )
    for study in shared:
        services.share_log(share=request.share, action="viewed", by=by, study=study)  # type: ignore[attr-defined]


@share_required
def share_study_ohif(request: HttpRequest, share_token: str, study_uuid: UUID) -> HttpResponse:
    """Open one shared study in the share's diagnostic viewer by its portal id: a redirect to OHIF's route,
    whose page logs the view (the share page links to that route directly)."""
    study = shared_study(request, study_uuid)
    public_url = reverse("share-viewer:ohif", kwargs={"share_token": share_token})
    return redirect(ohif.study_url(public_url=public_url, study_instance_uid=study.study_instance_uid))
