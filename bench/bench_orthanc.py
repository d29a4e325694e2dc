"""Benchmark: this portal side by side with a private Orthanc, same data, same machine; prints ratios.

Starts Orthanc from Debian's packages (`orthanc`, `orthanc-dicomweb`; `/usr/sbin/Orthanc` with its
DICOMweb plugin) on free ports with a scratch folder, and the portal as an operator runs it (gunicorn
2 workers x 4 threads, `manage.py dicom_scp`, encryption on, asynchronous replication, DEBUG off with its
own secrets as the README's deployment section says; `--debug` for DEBUG on as in the default run), on the
SQLite default or on PostgreSQL with `--database-url`. Then, against both:

- STOW-RS, 4 clients, 10 instances per request (instances/s);
- C-STORE over one association, TCP_NODELAY on the client (instances/s);
- WADO-RS of the whole study, one client (MB/s);
- QIDO-RS series of one study, p95 (ms).

Run: `make bench-orthanc` or `.venv/bin/python bench/bench_orthanc.py [--instances 200] [--only wado]
[--database-url postgres://...] [--pairs 3]`. With `--pairs N` the two sides run N times each, alternated
(portal, Orthanc, portal, ...), and each figure is the median over the runs, with the ratio of every pair:
a host whose speed drifts during the run then moves both sides alike. Data: 512 x 512 x 16-bit CT
instances (0.53 MB), written once in a temporary folder removed at the end. Ratios above 1 mean the portal is faster (for QIDO: Orthanc's p95
divided by ours).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_dicomweb import ORTHANC_BINARY, ORTHANC_PLUGINS, percentile, stow, wait_for  # noqa: E402
from bench.common import database_create_if_missing, process_tree_cpu_seconds, production_environment  # noqa: E402

SCU_AE = "BENCHSCU"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_files(folder: Path, count: int, study_uid: str) -> list[Path]:
    from tests.dicom_files import write_ct

    series = study_uid + ".1"
    return [
        write_ct(
            folder / f"{i:05d}.dcm",
            study_uid=study_uid,
            series_uid=series,
            rows=512,
            columns=512,
            instance_number=i + 1,
            pixel_seed=i,
        )
        for i in range(count)
    ]


def c_store(host: str, port: int, called: str, paths: list[Path]) -> dict[str, float]:
    """Send every file over one association, one C-STORE after the other; instances/s."""
    from pydicom import dcmread
    from pynetdicom import AE, _config

    _config.STORE_SEND_CHUNKED_DATASET = True  # stream the files from disk, as a modality would
    ae = AE(ae_title=SCU_AE)
    meta = dcmread(paths[0], stop_before_pixels=True).file_meta
    ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    ae.maximum_pdu_size = 0
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        raise RuntimeError(f"association to {called} refused")
    sock = assoc.dul.socket.socket
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    started = time.perf_counter()
    try:
        for path in paths:
            status = assoc.send_c_store(path)
            if getattr(status, "Status", None) != 0:
                raise RuntimeError(f"C-STORE answered {status}")
    finally:
        elapsed = time.perf_counter() - started
        assoc.release()
    return {"instances_per_s": len(paths) / elapsed}


def server_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by a server process and its live children (gunicorn workers)."""
    return process_tree_cpu_seconds(pid)


def wado_study(
    base: str, headers: dict[str, str], study_uid: str, rounds: int = 3, server_pid: int | None = None
) -> dict[str, float]:
    """Whole-study WADO-RS, one client: MB/s (wall), and CPU seconds per 100 MB of the server and the client."""
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*', **headers}
    size, seconds = 0, 0.0
    server_started = server_cpu_seconds(server_pid) if server_pid else 0.0
    client_started = time.process_time()
    with requests.Session() as session:
        for _ in range(rounds):
            started = time.perf_counter()
            with session.get(f"{base}/studies/{study_uid}", headers=accept, timeout=600, stream=True) as response:
                if response.status_code != 200:
                    raise RuntimeError(f"WADO-RS answered {response.status_code}")
                for chunk in response.iter_content(1024 * 1024):
                    size += len(chunk)
            seconds += time.perf_counter() - started
    result = {"wado_mb_per_s": size / seconds / 1e6, "wado_client_cpu": (time.process_time() - client_started) / size * 1e8}
    if server_pid:
        result["wado_server_cpu"] = (server_cpu_seconds(server_pid) - server_started) / size * 1e8
    return result


def qido_series(
    base: str, headers: dict[str, str], study_uid: str, rounds: int = 200, server_pid: int | None = None
) -> dict[str, float]:
    """QIDO-RS series of one study, one client: p50 and p95 (ms), and the server's CPU ms per request."""
    times = []
    with requests.Session() as session:
        session.headers.update({"Accept": "application/dicom+json", **headers})
        # Warm-up, the same for both: every server thread has met the query once (and, for the portal,
        # opened its database connection, which it then keeps, as it does in steady state).
        for _ in range(20):
            session.get(f"{base}/studies/{study_uid}/series", timeout=60)
        server_started = server_cpu_seconds(server_pid) if server_pid else 0.0
        for _ in range(rounds):
            started = time.perf_counter()
            response = session.get(f"{base}/studies/{study_uid}/series", timeout=60)
            times.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"QIDO answered {response.status_code}")
    result = {"qido_series_p50_ms": percentile(times, 0.5), "qido_series_p95_ms": percentile(times, 0.95)}
    if server_pid:
        result["qido_server_cpu_ms"] = (server_cpu_seconds(server_pid) - server_started) / rounds * 1000
    return result


def workload(
    *,
    base: str,
    headers: dict[str, str],
    dimse: tuple[str, int, str],
    stow_files: list[Path],
    store_files: list[Path],
    study_uid: str,
    only: set[str],
    server_pid: int | None = None,
    rounds: int = 3,
) -> dict[str, float]:
    # STOW-RS always runs: it stores the study the WADO-RS and QIDO-RS figures read.
    server_started = server_cpu_seconds(server_pid) if server_pid else 0.0
    result = {"stow": stow(base, headers, stow_files, 10, 4)["instances_per_s"]}
    if server_pid:
        # CPU, unlike instances/s, barely depends on what else the machine runs.
        result["stow_server_cpu_ms"] = (server_cpu_seconds(server_pid) - server_started) / len(stow_files) * 1000
    if "c_store" in only:
        result["c_store"] = c_store(*dimse, store_files)["instances_per_s"]
    if "wado" in only:
        result.update(wado_study(base, headers, study_uid, rounds=rounds, server_pid=server_pid))
    if "qido" in only:
        result.update(qido_series(base, headers, study_uid, server_pid=server_pid))
    return result


def run_portal(
    work: Path,
    database_url: str | None,
    stow_files: list[Path],
    store_files: list[Path],
    study_uid: str,
    only: set[str],
    rounds: int = 3,
    debug: bool = False,
) -> dict[str, float]:
    var = work / "portal"
    var.mkdir()
    http_port, dicom_port = free_port(), free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "PORTAL_VAR_DIR": str(var),
        "PRIMARY_STORE_URL": (var / "primary").as_uri(),
        "REPLICA_STORE_URL": (var / "replica").as_uri(),
        "CELERY_BROKER_URL": "memory://",
        "LOG_LEVEL": "WARNING",
        "REPLICATION_MODE": "async",
        # The benchmark's node calls from 127.0.0.1: an internal address a node may have only if allowed.
        "DICOM_NODE_ALLOWED_NETWORKS": "127.0.0.0/8",
    }
    env["DATABASE_URL"] = database_url or f"sqlite:///{var / 'portal.sqlite3'}"
    if not debug:
        env.update(production_environment(f"http://127.0.0.1:{http_port}"))
    if database_url:
        database_create_if_missing(database_url)
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    slug = f"bench-{uuid.uuid4().hex[:6]}"
    ae_title = slug.upper()[:16]
    setup = (
        "from tenants import services; from tenants.models import Clinic, User; "
        "from studies.dimse import nodes; "
        f"owner = User.objects.create_user('{slug}@example.org', '{uuid.uuid4().hex}'); "
        f"clinic = services.clinic_create(name='Bench', slug='{slug}', owner=owner); "
        f"Clinic.objects.filter(pk=clinic.pk).update(quota_bytes=10**15, ae_title='{ae_title}'); "
        f"nodes.dicom_node_create(clinic=clinic, ae_title='{SCU_AE}', host='127.0.0.1', port=104); "
        "print(services.api_token_create(clinic=clinic, name='bench', role='owner').secret)"
    )
    token = (
        subprocess.run([*manage, "shell", "-c", setup], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    web = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "portal.wsgi",
            "--bind",
            f"127.0.0.1:{http_port}",
            "--workers",
            "2",
            "--threads",
            "4",
            "--timeout",
            "600",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    scp = subprocess.Popen(
        [*manage, "dicom_scp", "--host", "127.0.0.1", "--port", str(dicom_port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for(f"http://127.0.0.1:{http_port}/healthz")
        time.sleep(2)  # the listener's start-up
        return workload(
            base=f"http://127.0.0.1:{http_port}/dicomweb/{slug}",
            headers={"Authorization": f"Bearer {token}"},
            dimse=("127.0.0.1", dicom_port, ae_title),
            stow_files=stow_files,
            store_files=store_files,
            study_uid=study_uid,
            only=only,
            server_pid=web.pid,
            rounds=rounds,
        )
    finally:
        for process in (web, scp):
            process.terminate()
            process.wait(timeout=30)


def run_orthanc(
    work: Path, stow_files: list[Path], store_files: list[Path], study_uid: str, only: set[str], rounds: int = 3
) -> dict[str, float]:
    plugins = [p for p in ORTHANC_PLUGINS if Path(p).is_dir()]
    if not Path(ORTHANC_BINARY).exists() or not plugins:
        raise SystemExit("Orthanc is not installed: apt-get install orthanc orthanc-dicomweb")
    storage = work / "orthanc"
    storage.mkdir()
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": plugins,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomAlwaysAllowStore": True,
        "TcpNoDelay": True,
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    server = subprocess.Popen(
        [ORTHANC_BINARY, str(work / "orthanc.json")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(f"http://127.0.0.1:{http_port}/system")
        return workload(
            base=f"http://127.0.0.1:{http_port}/dicom-web",
            headers={},
            dimse=("127.0.0.1", dicom_port, "ORTHANC"),
            stow_files=stow_files,
            store_files=store_files,
            study_uid=study_uid,
            only=only,
            server_pid=server.pid,
            rounds=rounds,
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=200, help="instances per workload (default 200)")
    parser.add_argument("--database-url", default=None, help="PostgreSQL URL (default: the SQLite default run)")
    parser.add_argument(
        "--only", default="stow,c_store,wado,qido",
        help="comma-separated workloads to report (stow always runs: it loads the study); default all",
    )
    parser.add_argument("--wado-rounds", type=int, default=3, help="whole-study retrievals per side (default 3)")
    parser.add_argument("--pairs", type=int, default=1,
                        help="runs of each side, alternated (default 1); the figures are then medians")
    parser.add_argument("--skip-orthanc", action="store_true", help="the portal only (while tuning it)")
    parser.add_argument("--debug", action="store_true",
                        help="run the portal with DEBUG on, as the default run (make run) does, not as deployed")
    args = parser.parse_args()
    only = set(args.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench-orthanc-"))
    pairs: list[tuple[dict[str, float], dict[str, float]]] = []
    try:
        study_uid = "1.2.826.0.1.3680043.8.498." + str(uuid.uuid4().int)[:20]
        stow_files = write_files(work / "stow", args.instances, study_uid)
        store_files = write_files(work / "store", args.instances, study_uid + ".2")
        # One after the other, never at once: they share the machine's cores. Alternating them, pair after
        # pair, spreads the host's drift in speed over both sides instead of favouring whichever ran first.
        for number in range(args.pairs):
            folder = work / f"pair-{number}"
            folder.mkdir()
            portal = run_portal(
                folder, args.database_url, stow_files, store_files, study_uid, only, args.wado_rounds, args.debug
            )
            if args.skip_orthanc:
                print(json.dumps(portal, indent=1), f"load average {os.getloadavg()[0]:.1f}")
                continue
            orthanc = run_orthanc(folder, stow_files, store_files, study_uid, only, args.wado_rounds)
            pairs.append((portal, orthanc))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if pairs:
        report(pairs, instances=args.instances, only=only, postgresql=bool(args.database_url), debug=args.debug)


def report(
    pairs: list[tuple[dict[str, float], dict[str, float]]], *, instances: int, only: set[str], postgresql: bool,
    debug: bool,
) -> None:
    """Print each figure for both sides (medians over the pairs) and the ratio (median, and its range)."""
    load = os.getloadavg()[0]
    print(
        f"\n{instances} instances of 0.53 MB per workload; database {'PostgreSQL' if postgresql else 'SQLite'}; "
        f"DEBUG {'on' if debug else 'off'}; {len(pairs)} pair(s) of runs, alternated; "
        f"load average at the end {load:.1f}"
    )
    each_header = "  ratio per pair" if len(pairs) > 1 else ""
    print(f"{'figure':<36}{'portal':>12}{'Orthanc':>12}{'ratio':>8}{each_header}")
    rows = [("STOW-RS, 4 clients (inst/s)", "stow", False), ("  server CPU ms per instance", "stow_server_cpu_ms", True)]
    if "c_store" in only:
        rows.append(("C-STORE, one association (inst/s)", "c_store", False))
    if "wado" in only:
        rows += [
            ("WADO-RS whole study (MB/s)", "wado_mb_per_s", False),
            ("  server CPU s per 100 MB", "wado_server_cpu", True),
            ("  client CPU s per 100 MB", "wado_client_cpu", True),
        ]
    if "qido" in only:
        rows += [
            ("QIDO series of a study, p50 (ms)", "qido_series_p50_ms", True),
            ("QIDO series of a study, p95 (ms)", "qido_series_p95_ms", True),
            ("  server CPU ms per request", "qido_server_cpu_ms", True),
        ]
    for name, key, lower_is_better in rows:
        ratios = [
            (theirs[key] / ours[key] if lower_is_better else ours[key] / theirs[key]) for ours, theirs in pairs
        ]
        ours_median = statistics.median(ours[key] for ours, _ in pairs)
        theirs_median = statistics.median(theirs[key] for _, theirs in pairs)
        each = "  " + ", ".join(f"{r:.2f}" for r in ratios) if len(pairs) > 1 else ""
        print(f"{name:<36}{ours_median:>12.3g}{theirs_median:>12.3g}{statistics.median(ratios):>8.2f}{each}")


if __name__ == "__main__":
    main()
