"""Benchmark: DICOMweb over real HTTP (gunicorn), and the same calls against Orthanc when it is installed.

Measures STOW-RS ingest throughput, QIDO-RS latency (p50/p95) with 100,000 studies in the clinic,
WADO-RS retrieve MB/s, and WADO-RS metadata latency of a 1,000-instance study.

Run: `.venv/bin/python bench/bench_dicomweb.py [--database-url postgres://...] [--studies 100000]
[--instances 1000]`. It needs PostgreSQL (default: the `portal_bench_dicomweb` database on
127.0.0.1, created if missing and reused on later runs, so the 100,000 index rows are seeded once).
Stores, keys and the broker live in a temporary folder removed at the end. The searched studies are
index rows inserted in bulk (searching reads the index only); the 1,000-instance study is stored
for real through STOW-RS, so its metadata and retrieve numbers come from encrypted objects.

With the Debian packages `orthanc` and `orthanc-dicomweb` installed, the same STOW-RS upload,
metadata, retrieve and search calls run against a local Orthanc (SQLite index, default settings)
holding the same 1,000 instances. Orthanc's QIDO numbers are on that small archive only.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
BOUNDARY = "bench-boundary-5f0c2"
ORTHANC_BINARY = "/usr/sbin/Orthanc"
ORTHANC_PLUGINS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins")


def _master_keys(database_url: str) -> str:
    """A master key kept beside the reused benchmark database, so its clinic key stays readable."""
    path = ROOT / "var" / f"bench-master-keys-{database_url.rsplit('/', 1)[1]}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("bench:" + base64.b64encode(os.urandom(32)).decode())
        path.chmod(0o600)
    return path.read_text().strip()


def setup_django(database_url: str, var_dir: Path) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.update(
        DJANGO_SETTINGS_MODULE="portal.settings",
        PORTAL_VAR_DIR=str(var_dir),
        DATABASE_URL=database_url,
        CELERY_BROKER_URL="memory://",
        MASTER_KEYS=_master_keys(database_url),
        PRIMARY_STORE_URL=(var_dir / "primary").as_uri(),
        REPLICA_STORE_URL=(var_dir / "replica").as_uri(),
        LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"),
    )
    name = database_url.rsplit("/", 1)[1]
    # Create the benchmark database on first use (ignore "already exists").
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", name], capture_output=True, check=False)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def clinic_prepare(studies: int) -> tuple[str, str]:
    """Create (or reuse) the benchmark clinic with ``studies`` searchable studies; return slug and token."""
    from django.db import transaction

    from studies.models import Patient, Study
    from tenants import services
    from tenants.models import Clinic, User

    slug = "bench-dicomweb"
    clinic = Clinic.objects.filter(slug=slug).first()
    if clinic is None:
        owner = User.objects.filter(email="bench-dicomweb@example.org").first() or User.objects.create_user(
            "bench-dicomweb@example.org", uuid.uuid4().hex
        )
        clinic = services.clinic_create(name="DICOMweb bench", slug=slug, owner=owner)
    Clinic.objects.filter(pk=clinic.pk).update(quota_bytes=10**15)
    token = services.api_token_create(clinic=clinic, name=f"bench-{uuid.uuid4().hex[:6]}", role="owner").secret
    existing = Study.objects.for_clinic(clinic).count()
    if existing < studies:
        print(f"seeding {studies - existing} studies (index rows)...", flush=True)
        rng = random.Random(existing)
        surnames = ["SMITH", "JOHNSON", "WILLIAMS", "BROWN", "JONES", "GARCIA", "MILLER", "DAVIS", "DOE", "ROE"]
        given = ["JANE", "JOHN", "ANNA", "PETER", "MARIA", "LUCAS", "EMMA", "NOAH"]
        modalities = ["CT", "MR", "CR", "US", "DX", "MG", "PT\\CT", "CT\\SR"]
        base = date(2000, 1, 1)
        batch = 5000
        for start in range(existing, studies, batch):
            count = min(batch, studies - start)
            with transaction.atomic():
                patients = Patient.objects.bulk_create(
                    Patient(
                        clinic=clinic, patient_id=f"BP{start + i:07d}",
                        patient_name=f"{rng.choice(surnames)}^{rng.choice(given)}^{start + i}",
                        patient_birth_date=base - timedelta(days=rng.randint(0, 30000)), patient_sex=rng.choice("FM"),
                    )
                    for i in range(count)
                )
                Study.objects.bulk_create(
                    Study(
                        clinic=clinic, patient=patients[i], study_instance_uid=f"2.25.{uuid.uuid4().int}",
                        study_date=base + timedelta(days=rng.randint(0, 9300)), accession_number=f"A{start + i:08d}",
                        study_description=rng.choice(["HEAD", "CHEST", "ABDOMEN", "KNEE"]),
                        modalities_in_study=rng.choice(modalities), number_of_series=1, number_of_instances=1,
                    )
                    for i in range(count)
                )
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    return slug, token


def write_files(folder: Path, count: int) -> tuple[str, list[Path]]:
    """Write ``count`` instances of one study (four series) from pydicom's CT sample, fresh UIDs."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    template = dcmread(get_testdata_file("CT_small.dcm"))
    study_uid = generate_uid()
    series = [generate_uid() for _ in range(4)]
    paths = []
    for number in range(count):
        template.StudyInstanceUID = study_uid
        template.SeriesInstanceUID = series[number % 4]
        template.SeriesNumber = number % 4 + 1
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        template.InstanceNumber = number // 4 + 1
        template.PatientName = "BENCH^LARGE"
        path = folder / f"{number:05d}.dcm"
        template.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study_uid, paths


def wait_for(url: str, *, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=10)
            return
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def stow(base: str, headers: dict[str, str], paths: list[Path], batch: int, concurrency: int) -> dict[str, float]:
    """POST the files in batches of ``batch`` instances, ``concurrency`` requests at a time."""
    from concurrent.futures import ThreadPoolExecutor

    total_bytes = sum(p.stat().st_size for p in paths)
    content_type = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'

    def post(chunk: list[Path]) -> None:
        body = b"".join(
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
            for p in chunk
        ) + f"--{BOUNDARY}--\r\n".encode()
        response = requests.post(f"{base}/studies", data=body, timeout=600, headers={
            **headers, "Content-Type": content_type, "Accept": "application/dicom+json"})
        if response.status_code != 200:
            raise RuntimeError(f"STOW-RS answered {response.status_code}: {response.text[:300]}")

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(post, [paths[i : i + batch] for i in range(0, len(paths), batch)]))
    elapsed = time.perf_counter() - started
    return {"instances_per_s": len(paths) / elapsed, "mb_per_s": total_bytes / elapsed / 1e6, "seconds": elapsed}


def timed(call: Callable[[], requests.Response], rounds: int) -> list[float]:
    call()  # warm-up
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        response = call()
        times.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"answered {response.status_code}: {response.text[:300]}")
    return times


def measure(base: str, headers: dict[str, str], study_uid: str, queries: int, *, rng_seed: int = 7) -> dict:
    session = requests.Session()
    session.headers.update(headers)
    rng = random.Random(rng_seed)
    result: dict[str, object] = {}
    meta_times = timed(lambda: session.get(f"{base}/studies/{study_uid}/metadata", timeout=60), 20)
    result["metadata_ms"] = {"p50": statistics.median(meta_times), "p95": percentile(meta_times, 0.95)}
    result["metadata_instances"] = len(session.get(f"{base}/studies/{study_uid}/metadata", timeout=60).json())
    searches = [
        lambda: {"limit": 101, "includefield": "all"},
        lambda: {"PatientName": rng.choice(["SMITH*", "DOE*", "*JANE*", "GARCIA^?ARIA*"]), "limit": 101},
        lambda: {"StudyDate": f"{rng.randint(2000, 2024)}0101-{rng.randint(2000, 2024)}1231", "limit": 101},
        lambda: {"AccessionNumber": f"A{rng.randint(0, 99999):08d}"},
        lambda: {"ModalitiesInStudy": rng.choice(["CT", "MR", "US"]), "limit": 101},
        lambda: {"PatientID": f"BP{rng.randint(0, 99999):07d}"},
    ]
    times = []
    for index in range(queries):
        params = searches[index % len(searches)]()
        started = time.perf_counter()
        response = session.get(f"{base}/studies", params=params, timeout=60)
        times.append((time.perf_counter() - started) * 1000)
        if response.status_code not in (200, 204):
            raise RuntimeError(f"QIDO answered {response.status_code}: {response.text[:300]}")
    result["qido_ms"] = {"p50": statistics.median(times), "p95": percentile(times, 0.95), "queries": queries}
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    sizes, seconds = 0, 0.0
    for _ in range(3):
        started = time.perf_counter()
        with session.get(f"{base}/studies/{study_uid}", headers=accept, timeout=600, stream=True) as response:
            if response.status_code != 200:
                raise RuntimeError(f"WADO-RS answered {response.status_code}")
            for chunk in response.iter_content(1024 * 1024):
                sizes += len(chunk)
        seconds += time.perf_counter() - started
    result["wado_mb_per_s"] = sizes / seconds / 1e6
    return result


def _backend_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_costs(slug: str, study_uid: str, rounds: int = 10) -> dict[str, float]:
    """CPU time (PostgreSQL backend + Python) per metadata and per search call, measured in-process.

    Wall-clock latency depends on how busy the machine is; CPU time does not, so this is the number
    to compare with the latency targets on a loaded machine.
    """
    from django.db import connection
    from django.http import QueryDict

    from studies.dicomweb import qido, wado
    from studies.models import Study
    from tenants.models import Clinic

    clinic = Clinic.objects.get(slug=slug)
    study = Study.objects.for_clinic(clinic).get(study_instance_uid=study_uid)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]

    def cost(action: Callable[[], object]) -> float:
        action()
        backend, python = _backend_cpu_seconds(pid), time.process_time()
        for _ in range(rounds):
            action()
        return ((_backend_cpu_seconds(pid) - backend) + (time.process_time() - python)) / rounds * 1000

    base = "http://bench/dicomweb/bench-dicomweb/"
    queries = [QueryDict(q) for q in ("limit=101&includefield=all", "PatientName=SMITH*&limit=101",
                                       "StudyDate=20100101-20121231&limit=101", "AccessionNumber=A00000010",
                                       "ModalitiesInStudy=CT&limit=101", "PatientID=BP0001234")]

    def searches() -> None:
        for params in queries:
            qido.search(clinic=clinic, query=qido.query_parse(level=qido.STUDY, params=params), base_url=base)

    return {
        "metadata_cpu_ms": cost(lambda: wado.metadata_body(clinic=clinic, study=study, base_url=base)),
        "qido_cpu_ms": cost(searches) / len(queries),
    }


def run_portal(args: argparse.Namespace, work: Path, paths: list[Path], study_uid: str) -> dict:
    slug, token = clinic_prepare(args.studies)
    env = dict(os.environ)
    server = subprocess.Popen(
        [str(ROOT / ".venv/bin/gunicorn"), "portal.wsgi", "--bind", f"127.0.0.1:{args.port}", "--workers", "2",
         "--threads", "4", "--timeout", "600", "--log-level", "warning"],
        cwd=ROOT, env=env,
    )
    try:
        wait_for(f"http://127.0.0.1:{args.port}/healthz")
        base = f"http://127.0.0.1:{args.port}/dicomweb/{slug}"
        headers = {"Authorization": f"Bearer {token}"}
        result = {"stow": stow(base, headers, paths, args.batch, args.concurrency)}
        result.update(measure(base, headers, study_uid, args.queries))
        result.update(cpu_costs(slug, study_uid))
        return result
    finally:
        server.terminate()
        server.wait(timeout=30)


def run_orthanc(args: argparse.Namespace, work: Path, paths: list[Path], study_uid: str) -> dict | None:
    plugins = [p for p in ORTHANC_PLUGINS if Path(p).is_dir()]
    if not Path(ORTHANC_BINARY).exists() or not plugins:
        return None
    storage = work / "orthanc"
    storage.mkdir()
    config = {
        "Name": "bench", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "HttpPort": args.port + 1, "DicomPort": args.port + 2, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "Plugins": plugins,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    server = subprocess.Popen([ORTHANC_BINARY, str(work / "orthanc.json")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http://127.0.0.1:{args.port + 1}/system")
        base = f"http://127.0.0.1:{args.port + 1}/dicom-web"
        result = {"stow": stow(base, {}, paths, args.batch, args.concurrency)}
        result.update(measure(base, {}, study_uid, args.queries))
        return result
    finally:
        server.terminate()
        server.wait(timeout=30)


def report(name: str, result: dict) -> None:
    print(f"\n## {name}")
    stow_result = result["stow"]
    print(f"STOW-RS ingest: {stow_result['instances_per_s']:.1f} instances/s, {stow_result['mb_per_s']:.2f} MB/s")
    print(f"QIDO-RS studies: p50 {result['qido_ms']['p50']:.1f} ms, p95 {result['qido_ms']['p95']:.1f} ms "
          f"({result['qido_ms']['queries']} queries)")
    print(f"WADO-RS metadata of a {result['metadata_instances']}-instance study: "
          f"p50 {result['metadata_ms']['p50']:.1f} ms, p95 {result['metadata_ms']['p95']:.1f} ms")
    print(f"WADO-RS retrieve: {result['wado_mb_per_s']:.1f} MB/s")
    if "metadata_cpu_ms" in result:
        print(f"CPU per call (PostgreSQL + Python, load-independent): metadata {result['metadata_cpu_ms']:.0f} ms, "
              f"QIDO search {result['qido_cpu_ms']:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/portal_bench_dicomweb")
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=50, help="instances per STOW-RS request")
    parser.add_argument("--concurrency", type=int, default=4, help="STOW-RS requests in flight at once")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--no-orthanc", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-dicomweb-"))
    load = os.getloadavg()[0]
    try:
        setup_django(args.database_url, work)
        study_uid, paths = write_files(work / "files", args.instances)
        portal = run_portal(args, work, paths, study_uid)
        print(f"\n{args.instances} CT instances, STOW-RS in batches of {args.batch}, {args.concurrency} requests "
              f"in flight; machine load average at start {load:.1f} on {os.cpu_count()} CPUs")
        report("portal (gunicorn, 2 workers x 4 threads, PostgreSQL, encrypted local store)", portal)
        orthanc = None if args.no_orthanc else run_orthanc(args, work, paths, study_uid)
        if orthanc is None:
            print("\n(Orthanc with the DICOMweb plugin is not installed: no side-by-side run.)")
        else:
            report("Orthanc (Debian package, default SQLite index)", orthanc)
            print("\n## ratio portal / Orthanc")
            print(f"STOW-RS instances/s: {portal['stow']['instances_per_s'] / orthanc['stow']['instances_per_s']:.2f}")
            print(f"QIDO p95 (portal on {args.studies} studies, Orthanc on 1): "
                  f"{portal['qido_ms']['p95'] / orthanc['qido_ms']['p95']:.2f}")
            print(f"metadata p95: {portal['metadata_ms']['p95'] / orthanc['metadata_ms']['p95']:.2f}")
            print(f"WADO-RS MB/s: {portal['wado_mb_per_s'] / orthanc['wado_mb_per_s']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
