"""The diagnostic viewer (OHIF) as the portal serves it: page, config, assets, CSP, sessions and share links."""

from __future__ import annotations

import re
from http import HTTPStatus

import pytest
from django.test import Client
from pydicom.uid import generate_uid

from studies.sharing import services as sharing_services
from studies.sharing.models import ShareAccess
from studies.viewer import ohif
from tenants.models import AuditEvent
from tests.dicom_files import write_instance
from tests.factories import ingest_files
from tests.studies.dicomweb_support import multipart_body

pytestmark = pytest.mark.django_db
PREFIX = "/c/clinic-a/viewer/ohif/"


@pytest.fixture
def study(clinic, tmp_path):
    return ingest_files(clinic, [write_instance(tmp_path, study_uid=generate_uid(), series_uid=generate_uid())])[
        0
    ].series.study


def test_reader_gets_ohif_with_its_config_in_scripts_the_policy_admits_by_nonce(client, clinician):
    client.force_login(clinician)

    page = client.get(PREFIX + "viewer?StudyInstanceUIDs=1.2.3")

    assert page.status_code == HTTPStatus.OK
    html = page.content.decode()
    nonce = re.search(r"'nonce-([^']+)'", page["Content-Security-Policy"]).group(1)
    inline = re.findall(r"<script(?![^>]*\bsrc=)([^>]*)>", html)
    assert inline and all(f'nonce="{nonce}"' in attributes for attributes in inline)
    assert f'src="{PREFIX}app.bundle' in html and 'src="/app.bundle' not in html
    assert "init-service-worker" not in html
    # Deferred scripts run in order: OHIF's bundle does not wait for our session script.
    assert html.index(f'src="{PREFIX}app.bundle') < html.index("portal/session.js")
    assert '"qidoRoot": "http://testserver/dicomweb/clinic-a"' in html
    assert '"routerBasename": "/c/clinic-a/viewer/ohif"' in html
    assert "Bearer" not in html and "Authorization" not in html
    assert "no-cache" in page["Cache-Control"] or "no-store" in page["Cache-Control"]


def test_each_page_gets_a_nonce_of_its_own(client, clinician):
    client.force_login(clinician)

    first, second = (client.get(PREFIX + "viewer")["Content-Security-Policy"] for _ in range(2))

    assert "'nonce-" in first and first != second


def test_clinic_name_cannot_end_the_config_script(client, clinician, clinic):
    clinic.name = "Clinic </script><script>alert(1)</script>"
    clinic.save()
    client.force_login(clinician)

    html = client.get(PREFIX + "viewer").content.decode()

    assert "alert(1)</script>" not in html
    assert "Clinic \\u003c/script\\u003e" in html


def test_csp_is_widened_for_ohif_only(client, clinician):
    client.force_login(clinician)

    viewer = client.get(PREFIX + "viewer")
    studies = client.get("/c/clinic-a/studies/")

    assert "'wasm-unsafe-eval'" in viewer["Content-Security-Policy"]
    assert "blob:" in viewer["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in viewer["Content-Security-Policy"]
    assert "wasm-unsafe-eval" not in studies["Content-Security-Policy"]
    assert "unsafe-eval'" not in viewer["Content-Security-Policy"].replace("'wasm-unsafe-eval'", "")


MINIFIED_PORTAL_PUBLIC_PATH = b'.p=(typeof window<"u"?window.PUBLIC_URL:self.location.href.replace(/[^/]*$/,""))||"/"'


def test_bundles_load_their_chunks_from_the_prefix(client, clinician):
    client.force_login(clinician)
    bundle = next(ohif.dist_dir().glob("app.bundle.*.js")).name

    response = client.get(PREFIX + bundle)

    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert response.status_code == HTTPStatus.OK
    # The runtime's public path as prepare() serves it, minified (OHIF's own code reads
    # window.PUBLIC_URL elsewhere too, so that name alone proves nothing).
    assert b'.p="/"' not in body
    assert MINIFIED_PORTAL_PUBLIC_PATH in body
    assert "immutable" in response["Cache-Control"]


def test_paths_outside_the_viewer_files_are_not_served(client, clinician):
    client.force_login(clinician)

    assert client.get(PREFIX + "../../../../portal/settings.py").status_code == HTTPStatus.NOT_FOUND
    assert client.get(PREFIX + "no-such-chunk.js").status_code == HTTPStatus.NOT_FOUND


def test_outsider_gets_404_and_anonymous_is_sent_to_sign_in(client, outsider, clinic):
    assert client.get(PREFIX + "viewer").status_code == HTTPStatus.FOUND
    client.force_login(outsider)

    assert client.get(PREFIX + "viewer").status_code == HTTPStatus.NOT_FOUND
    assert client.get(PREFIX + "viewer?StudyInstanceUIDs=1.2.3").status_code == HTTPStatus.NOT_FOUND


def test_study_link_by_portal_id_redirects_to_ohifs_route_whose_page_is_audited(client, clinician, study):
    client.force_login(clinician)

    response = client.get(f"/c/clinic-a/viewer/{study.uuid}/ohif/")
    redirected = AuditEvent.objects.filter(action="study.viewer_opened").count()
    client.get(response["Location"])

    assert response.status_code == HTTPStatus.FOUND
    assert response["Location"] == f"{PREFIX}viewer?StudyInstanceUIDs={study.study_instance_uid}"
    assert redirected == 0
    assert AuditEvent.objects.filter(clinic=study.clinic, action="study.viewer_opened").count() == 1


def test_studies_list_and_study_page_link_straight_to_ohifs_route(client, clinician, study):
    client.force_login(clinician)
    route = f'href="{PREFIX}viewer?StudyInstanceUIDs={study.study_instance_uid}"'

    studies_page = client.get("/c/clinic-a/studies/").content.decode()
    study_page = client.get(f"/c/clinic-a/studies/{study.uuid}/").content.decode()

    assert route in studies_page
    assert route in study_page


def test_every_opening_of_ohifs_page_is_audited_for_the_clinics_studies_it_names(
    client, clinician, study, other_clinic, tmp_path,
):
    elsewhere = ingest_files(other_clinic, [write_instance(tmp_path, study_uid=generate_uid(), series_uid=generate_uid())])[
        0
    ].series.study
    client.force_login(clinician)
    opened = AuditEvent.objects.filter(clinic=study.clinic, action="study.viewer_opened")

    client.get(f"{PREFIX}viewer?StudyInstanceUIDs={study.study_instance_uid}")
    client.get(f"{PREFIX}viewer?StudyInstanceUIDs={study.study_instance_uid}")  # a reload
    client.get(f"{PREFIX}viewer?StudyInstanceUIDs={elsewhere.study_instance_uid},1.2.3")
    client.get(PREFIX)  # OHIF's study list names no study
    client.get(PREFIX + ohif.SERVICE_WORKER)

    assert opened.count() == 2
    assert set(opened.values_list("object_id", flat=True)) == {str(study.uuid)}
    assert not AuditEvent.objects.filter(clinic=other_clinic, action="study.viewer_opened").exists()


def test_outsider_cannot_open_a_study_in_ohif(client, outsider, study):
    client.force_login(outsider)

    assert client.get(f"/c/clinic-a/viewer/{study.uuid}/ohif/").status_code == HTTPStatus.NOT_FOUND


def test_stow_with_the_session_needs_the_csrf_token_ohif_sends(clinician, tmp_path):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(clinician)
    config = browser.get(PREFIX + "viewer").content.decode()
    token = re.search(r'"csrfToken": "([^"]+)"', config).group(1)
    body, content_type = multipart_body([write_instance(tmp_path, study_uid=generate_uid(), series_uid=generate_uid())])

    refused = browser.post("/dicomweb/clinic-a/studies", body, content_type=content_type)
    stored = browser.post("/dicomweb/clinic-a/studies", body, content_type=content_type, HTTP_X_CSRFTOKEN=token)

    assert refused.status_code == HTTPStatus.FORBIDDEN
    assert stored.status_code == HTTPStatus.OK


def test_share_viewer_reads_only_the_link_and_names_nothing_of_the_clinic(client, clinic, study):
    created = sharing_services.share_create(clinic=clinic, studies=[study], created_by=None)
    prefix = f"/s/{created.token}/viewer/ohif/"

    page = client.get(prefix + "viewer?StudyInstanceUIDs=" + study.study_instance_uid)
    config = client.get(prefix + "viewer").content.decode()
    opened = client.get(f"/s/{created.token}/viewer/{study.uuid}/ohif/")

    assert page.status_code == HTTPStatus.OK
    assert f'"qidoRoot": "http://testserver/s/{created.token}/dicomweb"' in config
    assert clinic.slug not in config + page.content.decode()
    assert clinic.name not in config
    assert "session.js" not in page.content.decode()
    assert opened["Location"].startswith(prefix + "viewer?StudyInstanceUIDs=")


def test_share_viewers_page_logs_the_view_and_the_share_page_links_straight_to_it(client, clinic, study):
    created = sharing_services.share_create(clinic=clinic, studies=[study], created_by=None)
    route = f"/s/{created.token}/viewer/ohif/viewer?StudyInstanceUIDs={study.study_instance_uid}"
    viewed = ShareAccess.objects.filter(share=created.share, action="viewed", study=study)

    share_page = client.get(f"/s/{created.token}/").content.decode()
    client.get(f"/s/{created.token}/viewer/{study.uuid}/ohif/")
    redirected = viewed.count()
    client.get(route)
    client.get(f"/s/{created.token}/viewer/ohif/viewer?StudyInstanceUIDs=1.2.3")

    assert f'href="{route}"' in share_page
    assert redirected == 0
    assert viewed.count() == 1
    assert AuditEvent.objects.filter(clinic=clinic, action="share.viewed", object_id=str(study.uuid)).count() == 1


def test_clinic_viewer_installs_the_service_worker_and_a_share_viewer_does_not(client, clinician, clinic, study):
    created = sharing_services.share_create(clinic=clinic, studies=[study], created_by=None)
    client.force_login(clinician)

    clinic_config = client.get(PREFIX + "viewer").content.decode()
    share_config = client.get(f"/s/{created.token}/viewer/ohif/viewer").content.decode()
    studies_page = client.get("/c/clinic-a/studies/").content.decode()

    assert f'"serviceWorker": "{PREFIX}{ohif.SERVICE_WORKER}"' in clinic_config
    assert '"serviceWorker": ""' in share_config
    assert f'data-viewer-scope="{PREFIX}"' in studies_page


def test_pin_link_viewer_needs_the_grant(client, clinic, study):
    created = sharing_services.share_create(clinic=clinic, studies=[study], created_by=None, pin="8642")

    response = client.get(f"/s/{created.token}/viewer/ohif/viewer")

    assert response.status_code == HTTPStatus.FOUND
    assert response["Location"] == f"/s/{created.token}/"


def test_revoked_link_viewer_is_gone(client, clinic, study):
    created = sharing_services.share_create(clinic=clinic, studies=[study], created_by=None)
    sharing_services.share_revoke(share=created.share, user=None)

    assert client.get(f"/s/{created.token}/viewer/ohif/viewer").status_code == HTTPStatus.NOT_FOUND


def test_share_pages_show_nothing_of_the_clinic(client, clinic, study):
    created = sharing_services.share_create(clinic=clinic, studies=[study], created_by=None)

    pages = [client.get(f"/s/{created.token}/"), client.get(f"/s/{created.token}/studies/{study.uuid}/")]

    for page in pages:
        html = page.content.decode()
        assert page.status_code == HTTPStatus.OK
        assert 'class="sidenav"' not in html
        assert f"/c/{clinic.slug}" not in html
        assert f"dicomweb/{clinic.slug}" not in html


# --- OHIF's files served from the prepared folder ---------------------------------------------------

BUNDLE = "app.bundle.0123456789abcdef.js"
CHUNK = "12.bundle.fedcba9876543210.js"
LARGE_WORKER_CHUNK = "34.bundle.00112233445566ff.js"


@pytest.fixture
def prepared(tmp_path, settings):
    """A small stand-in for OHIF's dist/, prepared as `make ohif` does."""
    dist = tmp_path / "app" / "dist"
    (dist / "assets").mkdir(parents=True)
    (tmp_path / "app" / "package.json").write_text('{"version": "9.9.9"}')
    (dist / "index.html").write_text('<html><script src="/app-config.js"></script></html>')
    (dist / "app-config.js").write_text("window.config = {};")
    (dist / "sw.js").write_text("self.addEventListener('fetch', () => {});")
    (dist / BUNDLE).write_text("var a = 1;" * 300 + ohif.WEBPACK_PUBLIC_PATH + "__webpack_require__.e(12);")
    (dist / CHUNK).write_text("var b = 2;")
    (dist / "12.css").write_text(".b {}")
    (dist / LARGE_WORKER_CHUNK).write_text(" " * (ohif.WORKER_SCRIPT_MAX_BYTES + 1))
    (dist / (BUNDLE + ".map")).write_text("{}")
    (dist / "assets" / "logo.png").write_bytes(b"\x89PNG" + bytes(2000))
    settings.OHIF_DIST_DIR = dist
    settings.OHIF_PREPARED_DIR = tmp_path / "prepared"
    ohif.prepare()
    return settings.OHIF_PREPARED_DIR


def test_prepared_files_are_served_gzipped_and_cached_without_sign_in_or_queries(
    client, prepared, django_assert_num_queries
):
    import gzip

    with django_assert_num_queries(0):
        packed = client.get(PREFIX + BUNDLE, HTTP_ACCEPT_ENCODING="gzip, deflate, br")
        plain = client.get(f"/s/any-link/viewer/ohif/{BUNDLE}")
        image = client.get(PREFIX + "assets/logo.png", HTTP_ACCEPT_ENCODING="gzip")

    body = gzip.decompress(b"".join(packed.streaming_content))
    assert packed.status_code == HTTPStatus.OK and packed["Content-Encoding"] == "gzip"
    # The prefix read from the page, and the bundle minified (OHIF ships it unminified).
    assert b'__webpack_require__.p="/"' not in body
    assert b"__webpack_require__" + MINIFIED_PORTAL_PUBLIC_PATH in body
    assert b"var a = 1;" not in body and len(body) < len("var a = 1;" * 300)
    assert packed["Content-Type"] == "text/javascript"
    assert "immutable" in packed["Cache-Control"] and "Accept-Encoding" in packed["Vary"]
    # A worker takes its Content-Security-Policy from its script: the viewer's, with WebAssembly.
    assert "'wasm-unsafe-eval'" in packed["Content-Security-Policy"]
    assert b"".join(plain.streaming_content) == body and not plain.has_header("Content-Encoding")
    assert image.status_code == HTTPStatus.OK and not image.has_header("Content-Encoding")
    assert "immutable" not in image["Cache-Control"]


def test_page_config_and_anything_not_prepared_still_need_the_reader(client, prepared):
    for path in ["viewer", "app-config.js", "index.html", "sw.js", ohif.PREPARED_STAMP, BUNDLE + ".map",
                 "assets/../" + BUNDLE]:
        response = client.get(PREFIX + path)
        assert response.status_code in (HTTPStatus.FOUND, HTTPStatus.NOT_FOUND), path
    assert (prepared / "sw.js").exists() is False and (prepared / "index.html").exists() is False


def test_a_prepared_folder_of_another_dist_is_not_used(client, prepared, settings):
    import os

    index = settings.OHIF_DIST_DIR / "index.html"
    os.utime(index, ns=(index.stat().st_atime_ns, index.stat().st_mtime_ns + 10**9))

    assert client.get(PREFIX + BUNDLE).status_code == HTTPStatus.FOUND  # to sign in: the view answers
    assert ohif.prepared_current() is False


def test_service_worker_keeps_ohif_files_by_name_and_nothing_else(client, prepared, django_assert_num_queries):
    import json

    with django_assert_num_queries(0):
        response = client.get(PREFIX + ohif.SERVICE_WORKER)

    body = b"".join(response.streaming_content).decode()
    precache = json.loads(body.split("\n", 1)[0].removeprefix("self.portalPrecache = ").removesuffix(";"))
    assert response.status_code == HTTPStatus.OK and response["Content-Type"] == "text/javascript"
    assert "immutable" not in response["Cache-Control"]  # the browser checks it for a new OHIF
    assert set(precache["files"]) == {BUNDLE, CHUNK, "12.css"}
    assert "caches.open" in body and "/dicomweb/" in body


def test_service_worker_without_a_prepared_folder_comes_from_the_view(client, clinician, settings, prepared):
    settings.OHIF_PREPARED_DIR = prepared.parent / "nothing-here"
    client.force_login(clinician)

    response = client.get(PREFIX + ohif.SERVICE_WORKER)

    assert response.status_code == HTTPStatus.OK
    assert BUNDLE in response.content.decode()


def test_nginx_gets_the_viewer_policy_for_the_prepared_files(prepared):
    headers = (prepared / ohif.NGINX_HEADERS).read_text()

    assert "add_header Content-Security-Policy" in headers and "'wasm-unsafe-eval'" in headers
    assert "$ohif_cache_control" in headers
