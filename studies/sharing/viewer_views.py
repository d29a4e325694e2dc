"""The diagnostic viewer (OHIF) of a share link, under /s/<share_token>/viewer/: the viewer package serves
it, this module admits the link's recipient and logs the view."""

from __future__ import annotations

from uuid import UUID

from csp.decorators import csp_update
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse

from studies.models import Study
from studies.sharing import services
from studies.sharing.public_views import share_required
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
    return viewer_views.ohif_response(request, path, site)


@share_required
def share_study_ohif(request: HttpRequest, share_token: str, study_uuid: UUID) -> HttpResponse:
    """Open one shared study in the share's diagnostic viewer (the share page's button)."""
    study = (
        Study.objects.for_clinic(request.clinic)  # type: ignore[attr-defined]
        .filter(uuid=study_uuid, pk__in=request.study_scope, deleted_at__isnull=True)  # type: ignore[attr-defined]
        .first()
    )
    if study is None:
        raise Http404("No such study in this link.")
    services.share_log(share=request.share, action="viewed", by=Actor.from_request(request), study=study)  # type: ignore[attr-defined]
    public_url = reverse("share-viewer:ohif", kwargs={"share_token": share_token})
    return redirect(viewer_views.ohif_study_url(public_url=public_url, study=study))
