"""Benchmark: C-STORE ingest throughput (instances/s, MB/s) of 0.5 MB CT instances into ``dicom_scp``.

Run: `.venv/bin/python bench/bench_dimse.py [--count 400] [--associations 1,4] [--database-url URL]`
(`--database-url sqlite` for the SQLite default in the benchmark's temporary folder).
It starts ``manage.py dicom_scp`` as its own process (as the Procfile runs it) on PostgreSQL (default:
the scratch database `portal_bench_dimse` on 127.0.0.1, created if missing), with encrypted local
stores, keys and broker in a temporary folder removed at the end. DCMTK's storescu sends the files:
once over one association, then split over several simultaneous associations (one storescu each).
Besides the throughput it prints the listener process's CPU time per instance (all its threads), which a
loaded machine distorts far less than wall-clock figures.
Every instance takes the whole ingest path: validation, dedupe, quota, streamed encryption into the
primary store (fsync'd), index rows; the SCP answers only after that.

With the Debian package `orthanc` installed, the same storescu runs against a local Orthanc (default
settings: SQLite index, plain files) on the same machine, and the ratio is printed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORTHANC_BINARY = "/usr/sbin/Orthanc"
SCU_AE = "BENCHSCU"


def setup_django(database_url: str, var_dir: Path) -> dict[str, str]:
    """Configure Django for the benchmark; return the environment the SCP process needs too."""
    sys.path.insert(0, str(ROOT))
    env = {
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "PORTAL_VAR_DIR": str(var_dir),
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": "memory://",
        "MASTER_KEYS": "bench:" + base64.b64encode(os.urandom(32)).decode(),
        "PRIMARY_STORE_URL": (var_dir / "primary").as_uri(),
        "REPLICA_STORE_URL": (var_dir / "replica").as_uri(),
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
        # storescu, the benchmark's node, calls from 127.0.0.1: an internal address a node may have only if allowed.
        "DICOM_NODE_ALLOWED_NETWORKS": "127.0.0.0/8",
    }
    os.environ.update(env)
    if database_url.startswith("postgres"):
        name = database_url.rsplit("/", 1)[1]
        subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", name], capture_output=True, check=False)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    return env


def clinic_prepare() -> str:
    """Create a fresh clinic with a large quota and the benchmark's node; return its AE title."""
    from studies.dimse import nodes
    from tenants.models import Clinic, User
    from tenants.services import clinic_create

    suffix = uuid.uuid4().hex[:8]
    owner = User.objects.create_user(f"bench-{suffix}@example.org", None)
    clinic = clinic_create(name=f"Bench {suffix}", slug=f"bench-{suffix}", owner=owner,
                           ae_title=f"BENCH{suffix}".upper()[:16])
    Clinic.objects.filter(pk=clinic.pk).update(quota_bytes=10**15)
    nodes.dicom_node_create(clinic=clinic, ae_title=SCU_AE, host="127.0.0.1", port=104)
    return clinic.ae_title


def write_files(folder: Path, count: int) -> list[Path]:
    from pydicom.uid import generate_uid

    from tests.dicom_files import write_ct

    study = generate_uid()
    series = generate_uid()
    # 512 x 512 x 16 bit: the 0.5 MB of one CT slice.
    return [
        write_ct(folder / f"{i:05d}.dcm", study_uid=study, series_uid=series, rows=512, columns=512,
                 instance_number=i + 1, pixel_seed=i)
        for i in range(count)
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on port {port}")


def store(port: int, called_ae: str, paths: list[Path], associations: int) -> dict[str, float]:
    """Send the files with storescu over N simultaneous associations; return the throughput."""
    chunks = [paths[i::associations] for i in range(associations)]
    started = time.perf_counter()
    runs = [
        subprocess.Popen(["/usr/bin/storescu", "-aet", SCU_AE, "-aec", called_ae, "127.0.0.1", str(port), *map(str, chunk)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for chunk in chunks if chunk
    ]
    for run in runs:
        _, err = run.communicate(timeout=3600)
        if run.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-500:]}")
    elapsed = time.perf_counter() - started
    size = sum(p.stat().st_size for p in paths)
    return {"instances_per_s": len(paths) / elapsed, "mb_per_s": size / elapsed / 1e6, "seconds": elapsed}


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a process used so far, all its threads together."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_portal(env: dict[str, str], files: dict[int, list[Path]]) -> dict[int, dict[str, float]]:
    from studies.models import Instance
    from tenants.models import Clinic

    port = free_port()
    results = {}
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "dicom_scp", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )
    try:
        wait_for_port(port)
        for associations, paths in files.items():
            called_ae = clinic_prepare()
            cpu_before = process_cpu_seconds(server.pid)
            results[associations] = store(port, called_ae, paths, associations)
            results[associations]["cpu_ms_per_instance"] = (
                (process_cpu_seconds(server.pid) - cpu_before) / len(paths) * 1000
            )
            clinic = Clinic.objects.get(ae_title=called_ae)
            stored = Instance.objects.for_clinic(clinic).count()
            if stored != len(paths):
                raise RuntimeError(f"only {stored} of {len(paths)} instances were stored")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return results


def run_orthanc(work: Path, files: dict[int, list[Path]]) -> dict[int, dict[str, float]] | None:
    if not Path(ORTHANC_BINARY).exists():
        return None
    results = {}
    for associations, paths in files.items():
        storage = work / f"orthanc-{associations}"
        storage.mkdir()
        http_port, dicom_port = free_port(), free_port()
        config = {
            "Name": "bench", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "ORTHANC", "DicomCheckCalledAet": False,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
        }
        config_path = work / f"orthanc-{associations}.json"
        config_path.write_text(json.dumps(config))
        server = subprocess.Popen([ORTHANC_BINARY, str(config_path)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            wait_for_port(dicom_port)
            results[associations] = store(dicom_port, "ORTHANC", paths, associations)
        finally:
            server.terminate()
            server.wait(timeout=30)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/portal_bench_dimse")
    parser.add_argument("--count", type=int, default=400, help="instances per run")
    parser.add_argument("--associations", default="1,4", help="comma-separated simultaneous associations")
    parser.add_argument("--no-orthanc", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-dimse-"))
    try:
        database_url = f"sqlite:///{work / 'portal.sqlite3'}" if args.database_url == "sqlite" else args.database_url
        env = setup_django(database_url, work)
        # Fresh files (new UIDs) per run, so no run finds its instances already stored.
        files = {int(n): write_files(work / f"files-{n}", args.count) for n in args.associations.split(",")}
        portal = run_portal(env, files)
        orthanc = None if args.no_orthanc else run_orthanc(work, files)
        size_mb = sum(p.stat().st_size for p in next(iter(files.values()))) / args.count / 1e6
        print(f"\nC-STORE of {args.count} CT instances of {size_mb:.2f} MB each (DCMTK storescu)")
        for associations, result in portal.items():
            line = (f"portal, {associations} association(s): {result['instances_per_s']:.1f} instances/s, "
                    f"{result['mb_per_s']:.1f} MB/s, listener CPU {result['cpu_ms_per_instance']:.1f} ms/instance")
            if orthanc:
                other = orthanc[associations]
                line += (f" | Orthanc: {other['instances_per_s']:.1f} instances/s, {other['mb_per_s']:.1f} MB/s"
                         f" | ratio portal/Orthanc {result['instances_per_s'] / other['instances_per_s']:.2f}")
            print(line)
        if orthanc is None:
            print("(Orthanc is not installed: no side-by-side run.)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
