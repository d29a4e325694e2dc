"""Tenant isolation, shown by walking every URL pattern of the project.

Nothing here lists the clinic URLs: the walk reads them from Django's resolver, so routes added later
are covered the day they are added. For every route with a ``clinic_slug`` argument:

- a member (owner) of clinic A asking for clinic B's URL gets 404, for GET and POST, by session and by
  API token, and the answer carries none of clinic B's data;
- the same member asking for their *own* clinic's URL with clinic B's objects in it (B's study, series,
  member, token...) gets exactly the answer given for an object that exists nowhere (404 as a rule),
  never clinic B's data, and clinic B's objects are unchanged afterwards;
- an anonymous visitor is sent to the sign-in page (pages) or gets 401 JSON (/api/, /dicomweb/).

Every other route must also send anonymous visitors to sign in, unless it is in ``PUBLIC_ROUTES`` with
the reason it is public. Share-link routes are public, so they get their own check: a valid link of
clinic A naming clinic B's objects answers as if they did not exist. A self-test runs the checks on a
URLconf with a deliberately unscoped view (tests/isolation_leaky_urls.py) to show they catch it.

Other URL arguments are filled in through ``OBJECT_ARGS`` (an identifier of a real object of clinic B),
``VALUE_ARGS`` (a plain value such as a frame number), a generic lookup (``<model>_uuid`` finds clinic
B's row of that model, made by ``tests.factories.make_<model>`` if none exists yet), or else a random
value the converter accepts. A new kind of argument works without changes; add it to ``OBJECT_ARGS``
to have it checked with a real object of clinic B.
"""

from __future__ import annotations

import inspect
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http import HTTPStatus
from typing import Any

import pytest
from django.apps import apps
from django.db import models
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.urls.resolvers import RoutePattern
from django.utils import timezone

from studies.anonymize.services import job_create, project_create
from studies.models import DicomNode, Instance, Patient, Series, Study, UploadBatch
from studies.sharing.services import share_create, upload_link_create
from tenants import services
from tenants.models import ApiToken, Clinic, Invitation, User
from tenants.roles import Role
from tests import factories
from tests.factories import make_clinic, make_member, make_user

# Routes that answer without a signed-in user, on purpose. (regex on the route, reason)
PUBLIC_ROUTES: list[tuple[str, str]] = [
    (r"^favicon\.ico$", "the site's icon, which browsers ask for on every site; no data"),
    (r"^healthz$|^readyz$", "probes for load balancers and orchestrators; they reveal no tenant data"),
    (r"^accounts/login/", "the sign-in page itself, and its second (two-factor code) step"),
    (r"^accounts/logout/$", "signing out needs no valid session"),
    (r"^accounts/signup/", "sign-up creates a clinic and its first user"),
    (r"^accounts/password/reset/", "password reset by e-mail is for people who cannot sign in"),
    (r"^accounts/invitations/", "an invitee may have no account yet; the single-use token is the credential"),
    (r"^s/", "share links: the share token (and PIN) is the credential, for referring doctors without account"),
    (r"^access/$", "where a referring doctor types a share's access code; no account"),
    (r"^u/", "upload links: an outside site sends studies in; the link's token is the credential"),
    (r"^billing/stripe/webhook/$", "Stripe calls it; the request is authenticated by its signature"),
    (r"^api/v1/(schema|docs)/$", "the OpenAPI description of the public contract, no data"),
    (r"^admin/", "Django admin: staff only, with its own sign-in page (checked separately below)"),
    (r"^static/|^media/", "static assets"),
]

API_PREFIXES = ("/api/", "/dicomweb/")
LOGIN_PREFIX = "/accounts/login/"


@dataclass
class Route:
    """One URL pattern of the project, with everything needed to build URLs for it."""

    route: str
    name: str
    parts: list[Any]
    converters: dict[str, Any] = field(default_factory=dict)

    @property
    def arg_names(self) -> list[str]:
        return list(self.converters)

    @property
    def is_api(self) -> bool:
        return ("/" + self.route).startswith(API_PREFIXES)


def walk(resolver: URLResolver | None = None, parts: tuple[Any, ...] = (), namespace: str = "") -> Iterator[Route]:
    """Yield every URL pattern reachable from the root URLconf, however deeply included."""
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            inner = f"{namespace}:{entry.namespace}" if namespace and entry.namespace else (
                entry.namespace or namespace)
            yield from walk(entry, (*parts, entry.pattern), inner or "")
        elif isinstance(entry, URLPattern):
            chain = [*parts, entry.pattern]
            converters: dict[str, Any] = {}
            for pattern in chain:
                converters.update(getattr(pattern, "converters", {}) or {})
                if not isinstance(pattern, RoutePattern):
                    for group in pattern.regex.groupindex:
                        converters.setdefault(group, None)
            name = f"{namespace}:{entry.name}" if namespace and entry.name else (entry.name or "")
            yield Route("".join(str(p) for p in chain), name, chain, converters)


def is_public(route: Route) -> bool:
    return any(re.search(pattern, route.route) for pattern, _ in PUBLIC_ROUTES)


_PLACEHOLDER = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<name>\w+)>")


def build_url(route: Route, values: dict[str, str]) -> str:
    """Fill the route's arguments in (through each converter's to_url) and return the path."""
    pieces = []
    for pattern in route.parts:
        if not isinstance(pattern, RoutePattern):
            text = pattern.regex.pattern.lstrip("^").rstrip("$")
            if pattern.regex.groupindex or re.search(r"[\\()\[\]*+?|{}]", text):
                raise ValueError(f"route {route.route!r} uses a regular expression; use path() or list it")
            pieces.append(text)
            continue

        def fill(match: re.Match[str], converters: dict[str, Any] = pattern.converters) -> str:
            return converters[match["name"]].to_url(values[match["name"]])

        pieces.append(_PLACEHOLDER.sub(fill, str(pattern)))
    return "/" + "".join(pieces)


# --- Arguments ---------------------------------------------------------------------------------------

@dataclass
class OtherClinic:
    """Clinic B and one of each of its objects."""

    clinic: Clinic
    member: User
    patient: Patient
    study: Study
    series: Series
    instance: Instance
    invitation: Invitation
    token: ApiToken
    node: DicomNode
    secrets: list[str]
    # Objects of later capabilities (share, upload link, anonymization project and job, upload batch).
    extra: dict[str, Any] = field(default_factory=dict)


# kwarg name -> clinic B's identifier for it.
OBJECT_ARGS: dict[str, Callable[[OtherClinic], object]] = {
    "study_uuid": lambda b: b.study.uuid,
    "study_uid": lambda b: b.study.study_instance_uid,
    "study": lambda b: b.study.study_instance_uid,
    "series_uuid": lambda b: b.series.uuid,
    "series_uid": lambda b: b.series.series_instance_uid,
    "series": lambda b: b.series.series_instance_uid,
    "instance_uuid": lambda b: b.instance.uuid,
    "sop_uid": lambda b: b.instance.sop_instance_uid,
    "instance_uid": lambda b: b.instance.sop_instance_uid,
    "sop_instance_uid": lambda b: b.instance.sop_instance_uid,
    "instance": lambda b: b.instance.sop_instance_uid,
    "patient_uuid": lambda b: b.patient.uuid,
    "user_uuid": lambda b: b.member.uuid,
    "member_uuid": lambda b: b.member.uuid,
    "invitation_uuid": lambda b: b.invitation.uuid,
    "token_uuid": lambda b: b.token.uuid,
    "node_uuid": lambda b: b.node.uuid,
    "dicom_node_uuid": lambda b: b.node.uuid,
    "share_uuid": lambda b: b.extra["share"].uuid,
    "share_id": lambda b: b.extra["share"].uuid,
    "link_uuid": lambda b: b.extra["upload_link"].uuid,
    "project_uuid": lambda b: b.extra["project"].uuid,
    "job_uuid": lambda b: b.extra["job"].uuid,
    "batch_uuid": lambda b: b.extra["batch"].uuid,
}
# kwarg name -> a plain value that names no object (a frame number, an attribute tag...).
VALUE_ARGS: dict[str, str] = {
    "frame_list": "1",
    "frames": "1",
    "frame": "1",
    "tag_path": "7FE00010",
    "format": "json",
}
_RANDOM_CANDIDATES = ["2.25.{int}", "{uuid}", "{int}", "no-such-{hex}", "x{hex}"]


def random_value(converter: Any) -> str:
    """A value that the converter accepts and that names nothing."""
    regex = getattr(converter, "regex", r"[^/]+")
    for template in _RANDOM_CANDIDATES:
        value = template.format(int=uuid.uuid4().int % 10**30, uuid=uuid.uuid4(), hex=uuid.uuid4().hex[:12])
        if re.fullmatch(regex, value):
            return value
    raise AssertionError(f"no random value fits the converter {converter!r}; add its argument to VALUE_ARGS")


def _clinic_model(prefix: str) -> type[models.Model] | None:
    """The tenant-owned model with a public uuid that `<prefix>_uuid` names: `share` is Share, `link` is
    UploadLink (by the last word of its name, when only one model ends so)."""
    exact, by_last_word = [], []
    for model in apps.get_models():
        if not {"clinic", "uuid"} <= {f.name for f in model._meta.get_fields()}:
            continue
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", model.__name__).lower()
        if prefix in (snake, model.__name__.lower()):
            exact.append(model)
        elif snake.endswith(f"_{prefix}"):
            by_last_word.append(model)
    if len(exact) == 1:
        return exact[0]
    return by_last_word[0] if len(by_last_word) == 1 else None


def _generic_object(name: str, other: OtherClinic) -> object | None:
    """For `share_uuid`, `upload_batch_uuid`...: clinic B's row of that model, made by a factory if needed."""
    match = re.fullmatch(r"(?P<model>\w+?)_(uuid|id)", name)
    if not match:
        return None
    model = _clinic_model(match["model"])
    if model is None:
        return None
    # Cross-clinic on purpose: we pick clinic B's row.
    row = model._default_manager.filter(clinic=other.clinic).first()
    factory = getattr(factories, f"make_{match['model']}", None)
    if row is None and factory is not None:
        available = {"clinic": other.clinic, "study": other.study, "series": other.series,
                     "instance": other.instance, "user": other.member, "created_by": other.member}
        accepted = inspect.signature(factory).parameters
        row = factory(**{key: value for key, value in available.items() if key in accepted})
    return getattr(row, "uuid", None)


def fill_args(
    route: Route, other: OtherClinic, fixed: tuple[str, ...] = ("clinic_slug",)
) -> tuple[dict[str, str], bool]:
    """Values for the route's arguments but ``fixed`` ones; and whether all of them name real objects of B."""
    values: dict[str, str] = {}
    all_real = True
    for name, converter in route.converters.items():
        if name in fixed:
            continue
        if name in OBJECT_ARGS:
            values[name] = str(OBJECT_ARGS[name](other))
        elif name in VALUE_ARGS:
            values[name] = VALUE_ARGS[name]
        elif (found := _generic_object(name, other)) is not None:
            values[name] = str(found)
        else:
            values[name] = random_value(converter)
            all_real = False
    return values, all_real


# --- Fixtures ----------------------------------------------------------------------------------------

@pytest.fixture
def clinic_b(db) -> OtherClinic:
    clinic = make_clinic(name="Clinic Bravo Secret", slug="clinic-b")
    member = make_member(clinic=clinic, role=Role.CLINICIAN, user=make_user(email="bravo-doctor@clinic-b.example"))
    patient = Patient.objects.create(clinic=clinic, patient_id="BRAVO-PID-4711", patient_name="BRAVO^SECRET")
    study = Study.objects.create(
        clinic=clinic, patient=patient, study_instance_uid="1.2.826.0.1.3680043.8.498.1001",
        study_description="Bravo confidential study", accession_number="BRAVOACC9",
    )
    series = Series.objects.create(clinic=clinic, study=study, series_instance_uid="1.2.826.0.1.3680043.8.498.1002",
                                   modality="CT", number_of_instances=1, series_description="Bravo secret series")
    instance = Instance.objects.create(
        clinic=clinic, series=series, sop_instance_uid="1.2.826.0.1.3680043.8.498.1003",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1", size_bytes=10,
        sha256="0" * 64, object_key=f"clinics/{clinic.uuid}/objects/{uuid.uuid4()}", key_id="k1",
    )
    invitation = Invitation.objects.create(
        clinic=clinic, email="invitee@clinic-b.example", role=Role.CLINICIAN, token_hash=uuid.uuid4().hex,
        expires_at=timezone.now() + timedelta(days=3),
    )
    token = services.api_token_create(clinic=clinic, name="bravo-ris", role=Role.ADMIN).token
    node = DicomNode.objects.create(clinic=clinic, ae_title="BRAVOCT", host="10.0.0.5", port=104)
    project = project_create(clinic=clinic, name="Bravo research", created_by=member)
    extra = {
        "share": share_create(clinic=clinic, studies=[study], created_by=member).share,
        "upload_link": upload_link_create(clinic=clinic, created_by=member).link,
        "project": project,
        "job": job_create(clinic=clinic, project=project, studies=[study], requested_by=member),
        "batch": UploadBatch.objects.create(clinic=clinic, created_by=member, archive_name="bravo.zip"),
    }
    return OtherClinic(clinic, member, patient, study, series, instance, invitation, token, node, extra=extra,
                       secrets=["Clinic Bravo Secret", "BRAVO^SECRET", "BRAVO-PID-4711", "Bravo confidential",
                                "BRAVOACC9", "bravo-doctor@clinic-b.example", "Bravo secret series"])


@pytest.fixture
def member_a(owner, clinic) -> User:
    """The owner of clinic A: every right there, so a refusal can only come from isolation."""
    return owner


@pytest.fixture
def token_a(clinic, owner) -> str:
    return services.api_token_create(clinic=clinic, name="alpha", role=Role.OWNER, created_by=owner).secret


def clinic_routes(only: Callable[[Route], bool] = lambda route: True) -> list[Route]:
    return [r for r in walk() if "clinic_slug" in r.converters and not is_public(r) and only(r)]


def _snapshot(other: OtherClinic) -> dict[str, Any]:
    """What a request must not change about clinic B."""
    clinic = other.clinic
    return {
        "studies": list(Study.objects.for_clinic(clinic).values_list("uuid", "deleted_at")),
        "series": list(Series.objects.for_clinic(clinic).values_list("uuid", flat=True)),
        "instances": list(Instance.objects.for_clinic(clinic).values_list("uuid", flat=True)),
        "members": sorted(clinic.memberships.values_list("user__email", "role")),
        "invitations": list(Invitation.objects.for_clinic(clinic).values_list("uuid", "revoked_at")),
        "tokens": list(ApiToken.objects.for_clinic(clinic).values_list("uuid", "revoked_at")),
        "nodes": list(DicomNode.objects.for_clinic(clinic).values_list("uuid", "host")),
        "clinic": Clinic.objects.filter(pk=clinic.pk).values().get(),
    }


def _leaks(response: Any, other: OtherClinic) -> list[str]:
    if getattr(response, "streaming", False):
        body = b"".join(response.streaming_content)
    else:
        body = response.content
    text = body.decode("utf-8", "replace")
    return [secret for secret in other.secrets if secret in text]


# --- Tests -------------------------------------------------------------------------------------------

def test_the_walk_sees_the_whole_project():
    names = {route.name for route in walk()}

    # A broken walk must not pass by finding nothing; these exist since the foundation.
    assert {"clinic:dashboard", "clinic:audit", "tenants-api:audit", "healthz", "tenants:login"} <= names
    assert len(clinic_routes()) >= 4


def other_clinic_url_failures(client, member_a: User, clinic_b: OtherClinic, token_a: str) -> list[str]:
    """Ask for clinic B's URLs as a member of clinic A; return every answer that is not a bare 404."""
    client.force_login(member_a)
    failures = []
    for route in clinic_routes():
        values, _ = fill_args(route, clinic_b)
        url = build_url(route, {**values, "clinic_slug": clinic_b.clinic.slug})
        methods = ["get", "post", "delete"] if route.is_api else ["get", "post"]
        for method in methods:
            answers = {"session": getattr(client, method)(url)}
            if route.is_api:
                answers["token"] = getattr(client, method)(url, HTTP_AUTHORIZATION=f"Bearer {token_a}")
            for how, response in answers.items():
                if response.status_code != HTTPStatus.NOT_FOUND:
                    failures.append(f"{method.upper()} {url} ({route.name}, {how}): {response.status_code}")
                elif leaked := _leaks(response, clinic_b):
                    failures.append(f"{method.upper()} {url} ({route.name}, {how}): shows {leaked}")
    return failures


def foreign_object_failures(
    client, member_a: User, clinic: Clinic, clinic_b: OtherClinic, token_a: str,
    only: Callable[[Route], bool] = lambda route: True,
) -> tuple[list[str], list[str]]:
    """Ask for clinic A's URLs naming clinic B's objects; return (routes checked, failures).

    The answer must be exactly the one for objects that exist nowhere, and show none of B's data.
    """
    client.force_login(member_a)
    checked, failures = [], []
    for route in clinic_routes(only):
        values, all_real = fill_args(route, clinic_b)
        if not all_real or not values:
            continue  # only routes naming objects, all of them clinic B's
        checked.append(route.name)
        url = build_url(route, {**values, "clinic_slug": clinic.slug})
        # The same route naming objects that exist nowhere: what "not found" looks like on this route.
        nowhere = {name: (value if name in VALUE_ARGS else random_value(route.converters[name]))
                   for name, value in values.items()}
        baseline_url = build_url(route, {**nowhere, "clinic_slug": clinic.slug})
        methods = ["get", "post", "delete"] if route.is_api else ["get", "post"]
        for method in methods:
            auths: dict[str, dict[str, str]] = {"session": {}}
            if route.is_api:
                auths["token"] = {"HTTP_AUTHORIZATION": f"Bearer {token_a}"}
            for how, headers in auths.items():
                response = getattr(client, method)(url, **headers)
                baseline = getattr(client, method)(baseline_url, **headers)
                label = f"{method.upper()} {url} ({route.name}, {how})"
                if response.status_code != baseline.status_code or response.status_code >= 500:
                    failures.append(f"{label}: {response.status_code}, but {baseline.status_code} for an object "
                                    "that does not exist")
                elif leaked := _leaks(response, clinic_b):
                    failures.append(f"{label}: shows {leaked}")
    return checked, failures


def anonymous_failures(
    client, clinic_b: OtherClinic, only: Callable[[Route], bool] = lambda route: True
) -> list[str]:
    """Visit every non-public route anonymously; return each that does not ask to sign in."""
    client.logout()
    failures = []
    for route in walk():
        if is_public(route) or not only(route):
            continue
        values, _ = fill_args(route, clinic_b)
        try:
            url = build_url(route, {**values, "clinic_slug": clinic_b.clinic.slug})
        except ValueError as exc:
            failures.append(str(exc))
            continue
        methods = ["get", "post"] if "clinic_slug" in route.converters else ["get"]
        for method in methods:
            response = getattr(client, method)(url)
            if response.status_code == HTTPStatus.METHOD_NOT_ALLOWED and method == "get":
                response = client.post(url)  # a POST-only action (sign out everywhere...)
            if route.is_api:
                ok = response.status_code == HTTPStatus.UNAUTHORIZED and response["Content-Type"].startswith(
                    "application/json")
            else:
                ok = response.status_code == HTTPStatus.FOUND and response["Location"].startswith(LOGIN_PREFIX)
            if not ok:
                where = response.get("Location", "")
                failures.append(f"{method.upper()} {url} ({route.name}): {response.status_code} {where}".rstrip())
            elif leaked := _leaks(response, clinic_b):
                failures.append(f"{method.upper()} {url} ({route.name}): shows {leaked}")
    return failures


def test_member_of_another_clinic_gets_404_for_every_clinic_url(client, member_a, clinic_b, token_a):
    before = _snapshot(clinic_b)

    failures = other_clinic_url_failures(client, member_a, clinic_b, token_a)

    assert not failures, "clinic B answered a member of clinic A:\n" + "\n".join(failures)
    assert _snapshot(clinic_b) == before


def test_own_clinic_url_with_another_clinics_object_answers_as_if_it_did_not_exist(
    client, member_a, clinic, clinic_b, token_a
):
    before = _snapshot(clinic_b)

    checked, failures = foreign_object_failures(client, member_a, clinic, clinic_b, token_a)

    assert checked, "no route names an object; the registry no longer matches the URLconf"
    assert not failures, "clinic A's URLs reached clinic B's objects:\n" + "\n".join(failures)
    assert _snapshot(clinic_b) == before


def test_anonymous_visitor_is_sent_to_sign_in_everywhere_but_public_routes(client, clinic_b):
    failures = anonymous_failures(client, clinic_b)

    assert not failures, (
        "routes that answer anonymous visitors (sign them in, or add the route to PUBLIC_ROUTES with a reason):\n"
        + "\n".join(failures)
    )


def test_share_link_of_clinic_a_does_not_reach_clinic_b_objects(client, clinic, owner, clinic_b):
    """Share links are public routes; a valid link of clinic A must still not open clinic B's objects."""
    patient = Patient.objects.create(clinic=clinic, patient_id="ALPHA-1", patient_name="ALPHA^PATIENT")
    study = Study.objects.create(clinic=clinic, patient=patient, study_instance_uid="1.2.826.0.1.3680043.8.498.2001")
    token = share_create(clinic=clinic, studies=[study], created_by=owner, allow_download=True).token
    before = _snapshot(clinic_b)
    checked, failures = [], []

    for route in walk():
        if "share_token" not in route.converters:
            continue
        values, all_real = fill_args(route, clinic_b, fixed=("share_token",))
        if not all_real or not values:
            continue
        checked.append(route.name)
        nowhere = {name: (value if name in VALUE_ARGS else random_value(route.converters[name]))
                   for name, value in values.items()}
        url = build_url(route, {**values, "share_token": token})
        baseline_url = build_url(route, {**nowhere, "share_token": token})
        response, baseline = client.get(url), client.get(baseline_url)
        if response.status_code != baseline.status_code or response.status_code >= 500:
            failures.append(f"GET {url} ({route.name}): {response.status_code}, but {baseline.status_code} for an "
                            "object that does not exist")
        elif leaked := _leaks(response, clinic_b):
            failures.append(f"GET {url} ({route.name}): shows {leaked}")

    if not checked:
        pytest.skip("no share-link route names an object")
    assert not failures, "clinic A's share link reached clinic B's objects:\n" + "\n".join(failures)
    assert _snapshot(clinic_b) == before


def test_urls_built_by_the_walk_resolve_to_their_own_route(clinic_b):
    mismatched = []
    for route in clinic_routes():
        values, _ = fill_args(route, clinic_b)
        url = build_url(route, {**values, "clinic_slug": clinic_b.clinic.slug})
        if resolve(url).route != route.route:
            mismatched.append(f"{url} resolves to {resolve(url).route}, not {route.route}")

    assert not mismatched, "\n".join(mismatched)


def test_admin_sends_anonymous_visitors_to_its_own_sign_in(client, db):
    response = client.get("/admin/")

    assert response.status_code == HTTPStatus.FOUND
    assert response["Location"].startswith("/admin/login/")


def test_the_walk_catches_a_view_that_forgets_tenant_scoping(client, settings, member_a, clinic, clinic_b, token_a):
    """The walk itself is tested: routes added by tests/isolation_leaky_urls.py are found and flagged."""
    settings.ROOT_URLCONF = "tests.isolation_leaky_urls"
    added = lambda route: route.name.startswith("leaky-")  # noqa: E731 - the project's routes are tested above

    checked, foreign = foreign_object_failures(client, member_a, clinic, clinic_b, token_a, only=added)
    anonymous = anonymous_failures(client, clinic_b, only=added)

    assert checked == ["leaky-study", "leaky-scoped"]
    assert any("leaky-study" in failure for failure in foreign), foreign
    assert any("leaky-open" in failure for failure in anonymous), anonymous
    assert not any("leaky-scoped" in failure for failure in foreign + anonymous)
