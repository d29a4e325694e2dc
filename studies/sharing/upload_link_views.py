"""The upload page for outside senders (/u/<token>/): the clinic's upload page, scoped to one link.

The sender sees nothing already stored: every accepted file is answered "received", whether it was
new, already present or held in quarantine because it named a study, series or instance the clinic
already has (``studies.admission``), and no study address is given back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect

from portal.public_url import absolute_url
from studies.ingest import views as upload_views
from studies.sharing import services
from studies.sharing.forms import PinForm
from studies.sharing.models import UploadLink
from tenants.audit import Actor
from tenants.roles import Action


@dataclass(frozen=True)
class UploadGrant:
    """Stands in for a membership on upload-link requests: may upload, nothing else."""

    link: UploadLink

    def can(self, action: str) -> bool:
        return action == Action.UPLOAD

    @property
    def label(self) -> str:
        return f"upload_link:{self.link.uuid}"


# The clinic's upload page explains a full quota or unavailable storage; an outside sender learns
# nothing about the clinic's plan, usage or storage, only that the upload can be tried again later.
UNAVAILABLE_STATUSES = frozenset({HTTPStatus.INSUFFICIENT_STORAGE, HTTPStatus.SERVICE_UNAVAILABLE})
UNAVAILABLE_REASON = "The clinic cannot receive files right now; try again later."


def _grant_key(link: UploadLink) -> str:
    return f"upload-link-grant:{link.uuid}"


def _invalid(request: HttpRequest) -> HttpResponse:
    return render(request, "studies/share_invalid.html", status=404)


@never_cache
@csrf_protect
def upload_link_page(request: HttpRequest, link_token: str) -> HttpResponse:
    link = services.upload_link_resolve(token=link_token)
    if link is None:
        return _invalid(request)
    if link.has_pin and not request.session.get(_grant_key(link)):
        form = PinForm(request.POST or None)
        error = ""
        if request.method == "POST" and form.is_valid():
            try:
                if services.upload_link_pin_check(link=link, pin=form.cleaned_data["pin"],
                                                  base_url=absolute_url(request, "/")):
                    request.session.cycle_key()
                    request.session[_grant_key(link)] = True
                    return redirect("share:upload", link_token=link_token)
                error = services.wrong_pin_message(link=link)
            except services.ShareLocked as exc:
                error = exc.message
        return render(request, "studies/share_pin.html", {"form": form, "error": error, "upload_link": link},
                      status=400 if error else 200)
    return render(request, "studies/upload_page.html", {
        "file_url": reverse("share:upload-file", kwargs={"link_token": link_token}),
        "studies_url": "",
        "can_view": False,
        "upload_link": link,
    })


@never_cache
@csrf_protect
def upload_link_file(request: HttpRequest, link_token: str) -> HttpResponse:
    link = services.upload_link_resolve(token=link_token)
    if link is None or (link.has_pin and not request.session.get(_grant_key(link))):
        return JsonResponse({"outcome": "rejected", "reason": "This upload link is not valid."}, status=404)
    request.clinic = link.clinic  # type: ignore[attr-defined]
    request.membership = UploadGrant(link)  # type: ignore[attr-defined]
    request.upload_link = link  # type: ignore[attr-defined]
    response = upload_views.upload_file(request, clinic_slug=link.clinic.slug)  # type: ignore[arg-type]
    answer = json.loads(response.content)
    # Stored, already stored, or held for the clinic's review (it named a study, series or instance already
    # stored): one answer, so the link reveals nothing about what the clinic holds.
    if answer.get("outcome") in ("stored", "already_present") or answer.get("held"):
        if answer["outcome"] != "already_present":
            services.upload_link_received(link=link, by=Actor.from_request(request))
        return JsonResponse({"outcome": "stored", "reason": ""}, status=201)
    if answer.get("outcome") == "queued":
        # The archive is unpacked by a worker; its progress page belongs to the clinic.
        services.upload_link_received(link=link, by=Actor.from_request(request))
        return JsonResponse({"outcome": "stored", "reason": "Received; the clinic unpacks the archive."}, status=202)
    answer.pop("study", None)
    answer.pop("study_url", None)
    if response.status_code in UNAVAILABLE_STATUSES:
        answer["reason"] = UNAVAILABLE_REASON
    return JsonResponse(answer, status=response.status_code)
