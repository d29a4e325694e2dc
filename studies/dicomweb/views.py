"""DICOMweb views: parse the request, call qido/wado/stow, write the answer.

ClinicMiddleware has already resolved the clinic and the caller (Bearer token or session) from the
URL's ``clinic_slug``; an unknown clinic, or one the caller does not belong to, is a 404 before these
run. Studies, series and instances are looked up through ``for_clinic``, so another clinic's UID is
a 404 too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import zlib
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import orjson
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET, require_http_methods

from portal.exceptions import PortalError
from portal.public_url import absolute_url
from studies import matching, transcoding
from studies.dicomweb import dicomjson, multipart, qido, rendering, stow, wado
from studies.models import Instance, Study
from tenants import permissions
from tenants.audit import Actor, audit_record, read_first_in_window
from tenants.middleware import ClinicRequest
from tenants.roles import Action

DICOM_JSON = "application/dicom+json"
GZIP_MIN_BYTES = 64 * 1024
# Bulk data tag paths that name an instance's pixel data (native, float, double float).
PIXEL_DATA_TAGS = ("7FE00010", "7FE00008", "7FE00009")


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": code, "message": message}, status=status)


def dicomweb_view(action: str) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Check the caller's right for ``action`` and answer domain errors as JSON."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @functools.wraps(view)
        def wrapper(request: ClinicRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                permissions.action_check(request, action)
            except PermissionDenied:  # DICOMweb clients get the JSON error, not the 403 page
                return _error(HTTPStatus.FORBIDDEN, "not_allowed", f"Your role does not allow '{action}' here.")
            try:
                return view(request, *args, **kwargs)
            except (Study.DoesNotExist, Instance.DoesNotExist):
                return _error(HTTPStatus.NOT_FOUND, "not_found", "No such study, series or instance in this clinic.")
            except PortalError as exc:
                return _error(exc.status, exc.code, exc.message)

        return wrapper

    return decorate


def _base_url(request: ClinicRequest) -> str:
    """The absolute DICOMweb root this request came through (a clinic's, or a share link's)."""
    # Share links mount these views at /s/<token>/dicomweb/; answers must point back there.
    root = request.path[: request.path.index("/dicomweb/") + len("/dicomweb/")]
    if request.path.startswith("/dicomweb/"):
        # The clinic's root, /dicomweb/<slug>/, read off the path as reverse() would write it (a slug
        # needs no quoting) at a tenth of its cost.
        root += request.clinic.slug + "/"
    return absolute_url(request, root)


def _audit(request: ClinicRequest, action: str, *, study: Study | None = None, details: dict | None = None) -> None:
    """Record a DICOMweb access, at most once per caller, study and action per window.

    Behind a share link the entry names the link (its page lists the read: studies.sharing.dicomweb_urls).
    """
    object_id = str(study.uuid) if study is not None else ""
    share = getattr(request, "share", None)
    by = Actor.from_request(request)
    if share is not None:
        # The data goes out through the link: a visitor signed in to the portal (a member of another
        # clinic, say) is not who this clinic gave access to, so the link is the actor, not that user.
        by = dataclasses.replace(by, user=None, token_label="", label=f"share:{share.uuid}")
    if not read_first_in_window("dicomweb", request.clinic.pk, by.reader_key(), action, object_id):
        return
    anonymous = by.user is None and not by.token_label
    audit_record(
        clinic=request.clinic, action=action, by=by, object_type="study" if study else "",
        object_id=object_id, details=details or {},
        actor_label=str(getattr(request.membership, "label", "")) if anonymous else "",
    )


def _study(request: ClinicRequest, study_uid: str) -> Study:
    study = wado.study_get(clinic=request.clinic, study_uid=study_uid)
    if study is None or not _in_scope(request, study):
        raise Study.DoesNotExist
    return study


def _in_scope(request: ClinicRequest, study: Study) -> bool:
    scope = getattr(request, "study_scope", None)  # set by share links: only the shared studies
    return scope is None or study.pk in scope


def _instance(request: ClinicRequest, study_uid: str, series_uid: str, sop_uid: str) -> tuple[Study, Instance]:
    """The study (id and uuid) and the instance a URL names, in the clinic or the share; else DoesNotExist."""
    found = wado.instance_get(clinic=request.clinic, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid)
    if found is None or not _in_scope(request, found[0]):
        raise Instance.DoesNotExist
    return found


def _json(body: str | list | dict, *, status: int = HTTPStatus.OK) -> HttpResponse:
    text = body if isinstance(body, str) else orjson.dumps(body)
    return HttpResponse(text, content_type=DICOM_JSON, status=status)


def _multipart_response(parts: list[bytes], *, part_type: str) -> HttpResponse:
    """Answer small parts (frames, rendered images, bulk data) as one multipart/related body."""
    boundary = multipart.new_boundary()
    body = b"".join(multipart.parts_write((({"Content-Type": part_type}, [part]) for part in parts), boundary=boundary))
    main_type = part_type.split(";")[0]
    return HttpResponse(body, content_type=f'multipart/related; type="{main_type}"; boundary={boundary}')


def _json_accepted(request: ClinicRequest) -> bool:
    return _accept_allows_json(request.META.get("HTTP_ACCEPT", ""))


# Clients send the same few Accept headers again and again: parse each once, not on every search.
@functools.lru_cache(maxsize=256)
def _accept_allows_json(accept: str) -> bool:
    ranges = wado.accept_parse(accept)
    return not ranges or any(
        r.media_type in ("*/*", "application/*", DICOM_JSON, "application/json") for r in ranges if r.quality > 0
    )


# QIDO-RS and STOW-RS on the studies resource ------------------------------------------------------


def _search(
    request: ClinicRequest, level: str, study_uid: str | None = None, series_uid: str | None = None
) -> HttpResponse:
    if not _json_accepted(request):
        return _error(HTTPStatus.NOT_ACCEPTABLE, "not_acceptable", "Search results are application/dicom+json.")
    query = qido.query_parse(level=level, params=request.GET)
    # Inside one study the search reads that study's rows only: no budget to set (on PostgreSQL a
    # transaction and its SETs, three round trips for a query of a few milliseconds).
    budget = matching.search_budget() if study_uid is None else contextlib.nullcontext()
    with budget:
        results, has_more = qido.search(
            clinic=request.clinic, query=query, study_uid=study_uid, series_uid=series_uid,
            base_url=_base_url(request), study_ids=getattr(request, "study_scope", None),
        )
    if not results and study_uid is not None:
        # 404 for an unknown (or trashed, or not shared) study rather than an empty list; asked only
        # when nothing matched, so that a search that finds something costs no lookup of its own.
        _study(request, study_uid)
        if series_uid is not None and not qido.series_exists(
            clinic=request.clinic, study_uid=study_uid, series_uid=series_uid
        ):
            raise Study.DoesNotExist
    _audit(request, "dicomweb.search", details={"level": level})
    response = _json(results)
    warnings = list(query.warnings)
    if has_more:
        warnings.append("299 dicomweb: There are more results; ask again with a larger offset.")
    for warning in warnings:
        response.headers["Warning"] = warning if "Warning" not in response.headers else (
            response.headers["Warning"] + ", " + warning
        )
    return response


@require_http_methods(["GET", "POST"])
def studies(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    if request.method == "POST":
        return _store(request, None)
    return _qido_studies(request)


@dicomweb_view(Action.VIEW)
def _qido_studies(request: ClinicRequest) -> HttpResponse:
    return _search(request, qido.STUDY)


def _xml_preferred(request: ClinicRequest) -> bool:
    """Whether the client asks for the XML Store Instances Response (PS3.18 allows JSON and XML)."""
    ranges = [r for r in wado.accept_parse(request.headers.get("Accept", "")) if r.quality > 0]
    for media in ranges:
        if media.media_type in ("application/dicom+xml", "application/xml"):
            return True
        if media.media_type in (DICOM_JSON, "application/json", "*/*", "application/*"):
            return False
    return False


@dicomweb_view(Action.UPLOAD)
def _store(request: ClinicRequest, study_uid: str | None) -> HttpResponse:
    result = stow.stow(request=request, clinic=request.clinic, base_url=_base_url(request), study_uid=study_uid)
    audit_record(
        clinic=request.clinic, action="dicomweb.store", request=request,
        result="success" if not result.failed and not result.warning else ("partial" if result.stored else "failure"),
        details={"stored": len(result.stored), "failed": len(result.failed)},
    )
    body = result.body(base_url=_base_url(request), study_uid=study_uid)
    if _xml_preferred(request):
        response = HttpResponse(dicomjson.to_native_xml(body), content_type="application/dicom+xml",
                                status=result.status)
    else:
        response = _json(body, status=result.status)
    if result.warning:
        response.headers["Warning"] = result.warning
    if result.status == HTTPStatus.SERVICE_UNAVAILABLE:
        response.headers["Retry-After"] = "30"  # storage down or full: the sender keeps its copy and retries
    return response


@require_GET
@dicomweb_view(Action.VIEW)
def series_search(request: ClinicRequest, clinic_slug: str, study_uid: str | None = None) -> HttpResponse:
    return _search(request, qido.SERIES, study_uid=study_uid)


@require_GET
@dicomweb_view(Action.VIEW)
def instances_search(
    request: ClinicRequest, clinic_slug: str, study_uid: str | None = None, series_uid: str | None = None
) -> HttpResponse:
    return _search(request, qido.INSTANCE, study_uid=study_uid, series_uid=series_uid)


# WADO-RS -------------------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
def study(request: ClinicRequest, clinic_slug: str, study_uid: str) -> HttpResponse:
    if request.method == "POST":
        return _store(request, study_uid)
    return retrieve(request, clinic_slug, study_uid)


@require_GET
@dicomweb_view(Action.VIEW)
def retrieve(
    request: ClinicRequest,
    clinic_slug: str,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> HttpResponse:
    found = _study(request, study_uid)
    instances = wado.instances_to_send(clinic=request.clinic, study=found, series_uid=series_uid, sop_uid=sop_uid)
    target = wado.instances_negotiate(
        request.headers.get("Accept", ""), stored_syntaxes={i.transfer_syntax_uid for i in instances}
    )
    _audit(request, "dicomweb.retrieve", study=found, details={"what": "instances"})
    boundary = multipart.new_boundary()
    parts = wado.instance_parts(clinic=request.clinic, instances=instances, target=target)
    body = multipart.parts_write(parts, boundary=boundary)
    response = StreamingHttpResponse(
        body, content_type=f'multipart/related; type="application/dicom"; boundary={boundary}'
    )
    length = wado.instances_body_length(instances=instances, target=target, boundary=boundary)
    if length is not None:
        response["Content-Length"] = str(length)
    return response


@require_GET
@dicomweb_view(Action.VIEW)
def metadata(
    request: ClinicRequest,
    clinic_slug: str,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> HttpResponse:
    if not _json_accepted(request):
        return _error(HTTPStatus.NOT_ACCEPTABLE, "not_acceptable", "Metadata is application/dicom+json.")
    found = _study(request, study_uid)
    body = wado.metadata_body(
        clinic=request.clinic, study=found, base_url=_base_url(request), series_uid=series_uid, sop_uid=sop_uid
    )
    if body is None:
        raise Instance.DoesNotExist
    _audit(request, "dicomweb.retrieve", study=found, details={"what": "metadata"})
    return _json_compressed(request, body)


def _json_compressed(request: ClinicRequest, body: str) -> HttpResponse:
    """Answer DICOM JSON, gzipped when it is large and the client accepts gzip.

    A 1,000-instance study's metadata is megabytes of JSON that gzip shrinks about fifteenfold at a
    cost of a few milliseconds per megabyte; on a real network that is what makes big studies open fast.
    """
    data = body.encode()
    accepts_gzip = "gzip" in request.headers.get("Accept-Encoding", "").lower()
    if not accepts_gzip or len(data) < GZIP_MIN_BYTES:
        return HttpResponse(data, content_type=DICOM_JSON)
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    response = HttpResponse(compressor.compress(data) + compressor.flush(), content_type=DICOM_JSON)
    response["Content-Encoding"] = "gzip"
    response["Vary"] = "Accept-Encoding"
    return response


def _open_dataset(request: ClinicRequest, instance: Instance):
    from studies.archive import objects

    # The instance was found through the clinic in the database just before: only then may the
    # process's cache of decrypted objects answer (frames of one instance are decrypted once).
    return rendering.dataset_open(
        objects.object_read_cached(clinic=request.clinic, key=instance.object_key, size_bytes=instance.size_bytes)
    )


def _frame_numbers(text: str) -> list[int]:
    try:
        numbers = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise PortalError("Frame numbers are whole numbers separated by commas, counted from 1.") from None
    if not numbers:
        raise PortalError("Name at least one frame.")
    return numbers


@require_GET
@dicomweb_view(Action.VIEW)
def frames(
    request: ClinicRequest, clinic_slug: str, study_uid: str, series_uid: str, sop_uid: str, frame_list: str
) -> HttpResponse:
    numbers = _frame_numbers(frame_list)
    found, instance = _instance(request, study_uid, series_uid, sop_uid)
    choice = wado.frames_negotiate(request.headers.get("Accept", ""), stored_syntax=instance.transfer_syntax_uid)
    with _open_dataset(request, instance) as ds:
        if choice.encode:
            rendering.frames_stored(ds, numbers)  # a missing frame is a 404, before any encoding work
            transcoding.dataset_transcode(ds, choice.encode)
        data = rendering.frames_native(ds, numbers) if choice.decode else rendering.frames_stored(ds, numbers)
    _audit(request, "dicomweb.retrieve", study=found, details={"what": "frames"})
    return _multipart_response(data, part_type=choice.part_type)


@require_GET
@dicomweb_view(Action.VIEW)
def bulkdata(
    request: ClinicRequest, clinic_slug: str, study_uid: str, series_uid: str, sop_uid: str, tag_path: str
) -> HttpResponse:
    found, instance = _instance(request, study_uid, series_uid, sop_uid)
    with _open_dataset(request, instance) as ds:
        if tag_path.strip("/").upper() in PIXEL_DATA_TAGS and "PixelData" in ds:
            choice = wado.frames_negotiate(
                request.headers.get("Accept", ""), stored_syntax=instance.transfer_syntax_uid
            )
            numbers = list(range(1, rendering.frame_count(ds) + 1))
            if choice.encode:
                transcoding.dataset_transcode(ds, choice.encode)
            data = rendering.frames_native(ds, numbers) if choice.decode else rendering.frames_stored(ds, numbers)
            part_type = choice.part_type
            if choice.decode or instance.transfer_syntax_uid in rendering.NATIVE_SYNTAXES:
                data, part_type = [b"".join(data)], wado.OCTET
        else:
            data, part_type = [rendering.bulkdata_value(ds, tag_path)], wado.OCTET
    _audit(request, "dicomweb.retrieve", study=found, details={"what": "bulkdata"})
    return _multipart_response(data, part_type=part_type)


def _render_options(request: ClinicRequest, *, thumbnail: bool = False) -> rendering.RenderOptions:
    media_type = wado.rendered_negotiate(request.headers.get("Accept", ""), request.GET.get("accept"))
    window = None
    if request.GET.get("window"):
        parts = request.GET["window"].split(",")
        try:
            center, width = float(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            raise PortalError("window is center,width[,function], e.g. window=40,400,linear.") from None
        function = parts[2].strip().lower() if len(parts) > 2 else "linear"
        if function not in ("linear", "linear_exact", "sigmoid") or width <= 0:
            raise PortalError("window function is linear, linear_exact or sigmoid, with a positive width.")
        window = (center, width, function)
    viewport = (128, 128) if thumbnail else None
    if request.GET.get("viewport"):
        try:
            vw, vh = (int(v) for v in request.GET["viewport"].split(",")[:2])
        except ValueError:
            raise PortalError("viewport is width,height in pixels, e.g. viewport=512,512.") from None
        if not (0 < vw <= 4096 and 0 < vh <= 4096):
            raise PortalError("viewport sizes run from 1 to 4096 pixels.")
        viewport = (vw, vh)
    try:
        quality = int(request.GET.get("quality", 90))
    except ValueError:
        raise PortalError("quality is a number from 1 to 100.") from None
    if not 1 <= quality <= 100:
        raise PortalError("quality is a number from 1 to 100.")
    return rendering.RenderOptions(media_type=media_type, window=window, viewport=viewport, quality=quality)


@require_GET
@dicomweb_view(Action.VIEW)
def rendered(
    request: ClinicRequest,
    clinic_slug: str,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    frame_list: str | None = None,
) -> HttpResponse:
    options = _render_options(request)
    if sop_uid is not None and series_uid is not None:  # the light viewer's slices, one request each
        found, instance = _instance(request, study_uid, series_uid, sop_uid)
        instances = [instance]
    else:
        found = _study(request, study_uid)
        instances = wado.instances_for(clinic=request.clinic, study=found, series_uid=series_uid, sop_uid=sop_uid)
    _audit(request, "dicomweb.retrieve", study=found, details={"what": "rendered"})
    limits = rendering.RenderLimits.from_settings()
    if sop_uid is not None:
        numbers = _frame_numbers(frame_list) if frame_list else [1]
        rendering.render_request_check(frames=len(numbers), options=options, limits=limits)
        with _open_dataset(request, instances[0]) as ds:
            images = [rendering.render(ds, frame=n, options=options) for n in numbers]
        if len(images) == 1:
            return HttpResponse(images[0], content_type=options.media_type)
    else:
        # Study and series level: the first frame of each instance that holds an image, as parts.
        rendering.render_request_check(
            frames=sum(1 for instance in instances if instance.rows is not None), options=options, limits=limits
        )
        images = []
        for instance in instances:
            if instance.rows is None:
                continue
            with _open_dataset(request, instance) as ds:
                images.append(rendering.render(ds, frame=1, options=options))
        if not images:
            raise rendering.RenderError("Nothing here holds an image to render.")
    return _multipart_response(images, part_type=options.media_type)


@require_GET
@dicomweb_view(Action.VIEW)
def thumbnail(
    request: ClinicRequest,
    clinic_slug: str,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    frame_list: str | None = None,
) -> HttpResponse:
    options = _render_options(request, thumbnail=True)
    found = _study(request, study_uid)
    instance = wado.representative_instance(
        clinic=request.clinic, study=found, series_uid=series_uid, sop_uid=sop_uid
    )
    if instance is None:
        if sop_uid is not None and not Instance.objects.for_clinic(request.clinic).filter(
            series__study=found, sop_instance_uid=sop_uid
        ).exists():
            raise Instance.DoesNotExist
        return HttpResponse(status=HTTPStatus.NO_CONTENT)
    frame = _frame_numbers(frame_list)[0] if frame_list else max(instance.number_of_frames // 2, 1)
    with _open_dataset(request, instance) as ds:
        image = rendering.render(ds, frame=frame, options=options)
    _audit(request, "dicomweb.retrieve", study=found, details={"what": "thumbnail"})
    return HttpResponse(image, content_type=options.media_type)
