"""Benchmark: time to the first image of a 300-slice CT in both viewers (light and OHIF), and scrolling.

Runs standalone: `.venv/bin/python bench/bench_viewer.py [--slices 300] [--rounds 5] [--waterfall]`.
It fills a PostgreSQL database (BENCH_DATABASE_URL, default .../portal_bench_viewer) with one study of N
512x512 CT slices (about 0.5 MB each, encrypted in a temporary local store), serves the portal as
`make run` does (nginx from bin/web-front in front of gunicorn, 2 workers x 4 threads, on a Unix
socket; `--front gunicorn` for gunicorn alone on TCP), signs in through the login page in headless
Chromium and measures, from the start of the navigation to the viewer page, when the first slice is
on screen; then how long each step of scrolling through the series takes with prefetching.

The same for the diagnostic viewer (OHIF), opened at the address the study page links to (OHIF's route,
`/c/<clinic>/viewer/ohif/viewer?StudyInstanceUIDs=<uid>`; before 3 Dec the link went through the audited
redirect `/c/<clinic>/viewer/<study>/ohif/`), the server warm (the study opened once before any round), in
these cases:
- cold: a new browser context every round, service workers blocked, straight to the viewer (empty
  cache: every script downloaded and compiled);
- warm: the same context opening the study again, twice; the figure is the second (Chromium keeps
  the compiled code of a script only from its second run on), the first is printed too;
- in OHIF: OHIF already loaded on its study list, from the click on "Basic Viewer" (no page load);
- from the studies list: another new context, service workers allowed, that signs in, shows the
  studies list (which installs the viewer's service worker: OHIF's files downloaded and compiled into
  Cache Storage; the time it took is printed) and then opens the study, as its "View" link does, and
  opens it a second time. Both kinds of context run in every round, so they compare under one load.
Every OHIF opening starts, as a reader's does, from the clinic's studies list, the server idle: the
page left behind was still prefetching the series (25 frames at a time). (README's OHIF figures from
before 2 Dec's fourth session were taken right after the previous first image, with that prefetch running.)
Each OHIF figure comes with the page's main-thread CPU for that opening (Chromium's Performance metrics,
TaskDuration in thread ticks), which a loaded machine inflates less than the wall clock.
Scrolling: the arrow key until the overlay's slice number changes. `--waterfall` prints every request
of one cold and one warm opening (start, time to first byte, end, size) to show where the time goes.

Pages run under the portal's Content-Security-Policy, which forbids eval: waits poll with evaluate().
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/portal_bench_viewer"
PASSWORD = "Bench-Viewer-2026!"
# Between two openings: long enough for the server to finish the requests the left page had in flight.
IDLE_PAUSE_MS = 1500


def setup(database_url: str, var_dir: str) -> None:
    sys.path.insert(0, str(ROOT))
    from bench.common import django_setup

    django_setup(database_url, var_dir)


def make_study(slices: int, workdir: Path) -> tuple[str, str, str]:
    """Store a synthetic CT series; return (clinic slug, study uuid, owner e-mail)."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    from studies.ingest import instance_ingest
    from tenants import services
    from tenants.models import User

    owner = User.objects.create_user("bench@viewer.example", PASSWORD)
    clinic = services.clinic_create(name="Bench viewer", slug="bench-viewer", owner=owner)
    study_uid, series_uid = generate_uid(), generate_uid()
    y, x = np.mgrid[0:512, 0:512]
    for number in range(1, slices + 1):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientName, ds.PatientID, ds.Modality = "BENCH^VIEWER", "BENCH-1", "CT"
        ds.StudyDescription, ds.SeriesDescription = "CT CHEST", "AXIAL 1.0"
        ds.SeriesNumber, ds.InstanceNumber = 1, number
        ds.Rows = ds.Columns = 512
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        body = ((x - 256) ** 2 + (y - 256) ** 2 < (200 - number % 40) ** 2) * 1064
        ds.PixelData = (body + (np.random.default_rng(number).integers(0, 60, (512, 512)))).astype("int16").tobytes()
        path = workdir / f"slice-{number}.dcm"
        ds.save_as(path, enforce_file_format=True)
        instance = instance_ingest(clinic=clinic, source_path=str(path)).instance
        path.unlink()
    return clinic.slug, str(instance.series.study.uuid), owner.email


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Mean grey level of the centre of OHIF's viewport canvas (more than a black canvas can have once drawn).
CANVAS_MEAN_JS = """() => {
  const canvas = document.querySelector('.cornerstone-canvas');
  if (!canvas || !canvas.width) return -1;
  const probe = document.createElement('canvas');
  probe.width = 32; probe.height = 32;
  const context = probe.getContext('2d');
  context.drawImage(canvas, canvas.width / 4, canvas.height / 4, canvas.width / 2, canvas.height / 2, 0, 0, 32, 32);
  const data = context.getImageData(0, 0, 32, 32).data;
  let sum = 0;
  for (let i = 0; i < data.length; i += 4) sum += data[i];
  return sum / (data.length / 4);
}"""
OHIF_SLICE_JS = """() => {
  const box = document.querySelector('[data-cy=viewport-overlay-bottom-right]');
  const found = box && box.textContent.match(/I:\\s*(\\d+)/);
  return found ? parseInt(found[1], 10) : 0;
}"""


def poll(page, script: str, done, timeout: float = 30.0) -> object:
    """Evaluate ``script`` until ``done(value)``; return the value (wait_for_function would need eval)."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(script)
        if done(value):
            return value
        if time.monotonic() > deadline:
            status = page.evaluate("() => (document.getElementById('status') || {}).textContent")
            raise TimeoutError(f"still {value!r} after {timeout} s on {page.url} ({status!r})")
        page.wait_for_timeout(5)


def sign_in(page, email: str) -> None:
    page.goto("/accounts/login/")
    page.fill("#id_username", email)
    page.fill("#id_password", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_load_state()


# The page's main-thread CPU (Chromium's Performance domain, its tasks timed in thread ticks): what the
# opening cost the browser, which a loaded machine inflates much less than the wall-clock figure.
MAIN_THREAD_CPU: dict[str, list[float]] = {}


def main_thread_seconds(session) -> float:
    metrics = {metric["name"]: metric["value"] for metric in session.send("Performance.getMetrics")["metrics"]}
    return float(metrics.get("TaskDuration", 0.0))


def from_studies_list(page, slug: str) -> None:
    """Go back to the studies list, as a reader does between two studies, and let the server go idle.

    The previous opening's page was still prefetching the series (25 frames at a time) when its first
    image was drawn: without this pause the next opening would compete with that leftover work.
    """
    page.goto(f"/c/{slug}/studies/")
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(IDLE_PAUSE_MS)


def ohif_open(page, slug: str, link: str, requests: list | None = None, case: str = "") -> float:
    """Open the study in OHIF; return seconds from navigation start to the first image drawn.

    With ``case``, the main thread's busy seconds of the opening are added to MAIN_THREAD_CPU[case].
    """
    session = None
    if case:
        session = page.context.new_cdp_session(page)
        session.send("Performance.enable", {"timeDomain": "threadTicks"})
        busy_before = main_thread_seconds(session)
    listener = None
    if requests is not None:
        def listener(request) -> None:
            requests.append(request)
        page.on("requestfinished", listener)
    page.goto(link, wait_until="commit")
    poll(page, CANVAS_MEAN_JS, lambda mean: mean > 10, timeout=120)
    seconds = page.evaluate("performance.now()") / 1000
    if session is not None:
        MAIN_THREAD_CPU.setdefault(case, []).append(main_thread_seconds(session) - busy_before)
        session.detach()
    if listener is not None:
        page.remove_listener("requestfinished", listener)
        waterfall_print(page, requests)
    return seconds


def waterfall_print(page, requests: list) -> None:
    """Every request of one opening: start (ms from navigation), time to first byte, end, size, path."""
    origin = page.evaluate("performance.timeOrigin")
    total = 0
    lines = []
    for request in requests:
        timing = request.timing
        try:
            size = request.sizes()["responseBodySize"]
        except Exception:  # noqa: BLE001 - a request whose response is gone has no size
            size = 0
        total += max(size, 0)
        path = request.url.split("/", 3)[-1]
        lines.append((timing["startTime"] - origin, timing["responseStart"], timing["responseEnd"], size, path))
    print(f"  {len(lines)} requests, {total / 1e6:.1f} MB transferred (from cache: size -1)")
    for start, first_byte, end, size, path in sorted(lines):
        print(f"  {start:7.0f} ms  ttfb {first_byte:6.0f}  end {end:6.0f}  {size / 1000:8.0f} kB  /{path}")


SERVICE_WORKER_ACTIVE_JS = """async (scope) => {
  const registration = await navigator.serviceWorker.getRegistration(scope);
  return !!(registration && registration.active && registration.active.state === 'activated');
}"""


def studies_list_install(page, slug: str) -> float:
    """Show the studies list and wait until the viewer's service worker is active; return the seconds it took."""
    started = time.monotonic()
    page.goto(f"/c/{slug}/studies/")
    scope = f"/c/{slug}/viewer/ohif/"
    deadline = time.monotonic() + 300
    while not page.evaluate(SERVICE_WORKER_ACTIVE_JS, scope):
        if time.monotonic() > deadline:
            raise TimeoutError("the viewer's service worker was not installed in 300 s")
        page.wait_for_timeout(20)
    return time.monotonic() - started


def ohif_open_in_app(page, slug: str) -> float:
    """OHIF already loaded on its study list: seconds from the click on the study's viewer to its first image."""
    page.goto(f"/c/{slug}/viewer/ohif/")
    page.wait_for_selector("text=BENCH", timeout=120_000)
    page.locator("text=BENCH").first.click()
    button = page.locator("button[title='Basic Viewer']").first
    button.wait_for()
    started = page.evaluate("performance.now()")
    button.click()
    poll(page, CANVAS_MEAN_JS, lambda mean: mean > 10, timeout=120)
    return (page.evaluate("performance.now()") - started) / 1000


def measure_ohif(
    base_url: str, slug: str, link: str, email: str, rounds: int, slices: int, waterfall: bool = False
) -> dict[str, object]:
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"]
    cold: list[float] = []
    warm_first: list[float] = []
    warm: list[float] = []
    in_app: list[float] = []
    installs: list[float] = []
    listed: list[float] = []
    listed_second: list[float] = []
    steps: list[float] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=args)
        for round_number in range(rounds):
            context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900},
                                          service_workers="allow")
            page = context.new_page()
            sign_in(page, email)
            installs.append(studies_list_install(page, slug))
            listed.append(ohif_open(page, slug, link, case="listed" if round_number else ""))
            from_studies_list(page, slug)
            listed_second.append(ohif_open(page, slug, link, case="listed_second" if round_number else ""))
            context.close()
            # OHIF's page installs the service worker too, some seconds after it loaded: blocked here,
            # so that these rows measure what the browser's own caches do.
            context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900},
                                          service_workers="block")
            page = context.new_page()
            sign_in(page, email)
            show = waterfall and round_number == 1  # round 0 also warms the server
            if show:
                print("OHIF, cold browser cache:")
            counted = "cold" if round_number else ""
            from_studies_list(page, slug)
            cold.append(ohif_open(page, slug, link, [] if show else None, case=counted))
            from_studies_list(page, slug)
            warm_first.append(ohif_open(page, slug, link, case="warm_first" if round_number else ""))
            if show:
                print("OHIF, warm browser cache:")
            from_studies_list(page, slug)
            warm.append(ohif_open(page, slug, link, [] if show else None, case="warm" if round_number else ""))
            from_studies_list(page, slug)
            in_app.append(ohif_open_in_app(page, slug))
            if round_number == 0:
                page.locator(".cornerstone-canvas").first.click()
                for index in range(2, min(slices, 100) + 1):
                    started = time.perf_counter()
                    page.keyboard.press("ArrowDown")
                    poll(page, OHIF_SLICE_JS, lambda shown, index=index: shown >= index, timeout=10)
                    steps.append(time.perf_counter() - started)
            context.close()
        browser.close()
    # Round 0 ran on a cold server (its first queries, its first reads of the files): left out.
    keep = slice(1, None) if rounds > 1 else slice(None)
    return {"cold": cold[keep], "warm_first": warm_first[keep], "warm": warm[keep], "in_app": in_app[keep],
            "installs": installs[keep], "listed": listed[keep], "listed_second": listed_second[keep], "steps": steps}


def ohif_link(slug: str, study_uuid: str) -> str:
    """The address the studies list's "View" and the study page's "Diagnostic viewer" link to: OHIF's route."""
    from django.urls import reverse

    from studies.models import Study
    from studies.viewer import ohif

    study = Study.objects.get(uuid=study_uuid)
    public_url = reverse("viewer:ohif", kwargs={"clinic_slug": slug})
    return ohif.study_url(public_url=public_url, study_instance_uid=study.study_instance_uid)


def measure(base_url: str, slug: str, study_uuid: str, email: str, rounds: int, slices: int) -> dict[str, object]:
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"]
    first_image: list[float] = []
    steps: list[float] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=args)
        for round_number in range(rounds):
            context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
            page = context.new_page()
            sign_in(page, email)
            page.goto(f"/c/{slug}/viewer/{study_uuid}/", wait_until="commit")
            poll(page, "() => { const i = document.getElementById('image');"
                       " return !!(i && i.dataset.slice === '1' && i.complete && i.naturalWidth > 0); }", bool)
            first_image.append(page.evaluate("performance.now()") / 1000)
            if round_number == 0:
                page.locator("#viewport").focus()
                for index in range(2, min(slices, 100) + 1):
                    started = time.perf_counter()
                    page.keyboard.press("ArrowDown")
                    poll(page, "() => document.getElementById('image').dataset.slice",
                         lambda shown, index=index: shown == str(index))
                    steps.append(time.perf_counter() - started)
            context.close()
        browser.close()
    return {"first_image": first_image, "steps": steps}


def serve(var_dir: str, front: str) -> tuple[str, list[subprocess.Popen]]:
    """Start the portal as `make run` does (nginx in front of gunicorn) or gunicorn alone; return its URL."""
    port = free_port()
    env = {**os.environ, "DEBUG": "1", "PORT": str(port), "BIND_HOST": "127.0.0.1"}
    quiet = {"cwd": ROOT, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    gunicorn = [str(ROOT / ".venv/bin/gunicorn"), "portal.wsgi", "--workers", "2", "--threads", "4", "--timeout", "600"]
    if front == "gunicorn":
        processes = [subprocess.Popen([*gunicorn, "--bind", f"127.0.0.1:{port}"], env=env, **quiet)]
    else:
        socket_path = Path(var_dir) / "run" / "app.sock"
        socket_path.parent.mkdir(mode=0o700, exist_ok=True)
        processes = [
            subprocess.Popen([*gunicorn, "--bind", f"unix:{socket_path}"], env=env, **quiet),
            subprocess.Popen([sys.executable, str(ROOT / "bin/web-front")], env=env, **quiet),
        ]
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            if front == "gunicorn" or (Path(var_dir) / "run" / "app.sock").exists():
                break
        except OSError:
            pass
        time.sleep(0.1)
    return f"http://127.0.0.1:{port}", processes


def median_ms(figures: list[float], case: str = "") -> str:
    text = f"median {statistics.median(figures) * 1000:.0f} ms, worst {max(figures) * 1000:.0f} ms"
    if MAIN_THREAD_CPU.get(case):
        text += f" (main-thread CPU: median {statistics.median(MAIN_THREAD_CPU[case]) * 1000:.0f} ms)"
    return text


def p95_ms(steps: list[float]) -> str:
    ordered = sorted(steps)
    return (f"median {statistics.median(ordered) * 1000:.0f} ms, "
            f"p95 {ordered[int(0.95 * (len(ordered) - 1))] * 1000:.0f} ms per slice")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5, help="OHIF: the first round warms the server and is left out")
    parser.add_argument("--front", choices=["nginx", "gunicorn"], default="nginx")
    parser.add_argument("--only", choices=["light", "ohif"], help="measure one viewer only")
    parser.add_argument("--waterfall", action="store_true", help="print OHIF's requests of one cold and warm opening")
    options = parser.parse_args()
    database_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB)
    with tempfile.TemporaryDirectory(prefix="bench-viewer-") as var_dir:
        setup(database_url, var_dir)
        from django.core.management import call_command

        call_command("ohif_prepare")  # what `make ohif` does; nothing when the prepared files are current
        started = time.perf_counter()
        slug, study_uuid, email = make_study(options.slices, Path(var_dir))
        print(f"stored {options.slices} slices in {time.perf_counter() - started:.1f} s")
        base_url, processes = serve(var_dir, options.front)
        print(f"load average before measuring: {os.getloadavg()[0]:.1f} (1 min), portal behind {options.front}")
        result = ohif = None
        try:
            if options.only != "ohif":
                result = measure(base_url, slug, study_uuid, email, options.rounds, options.slices)
            if options.only != "light":
                ohif = measure_ohif(base_url, slug, ohif_link(slug, study_uuid), email, options.rounds, options.slices,
                                    options.waterfall)
        finally:
            for process in reversed(processes):
                process.terminate()
                process.wait(10)
        print(f"load average after measuring: {os.getloadavg()[0]:.1f} (1 min)")
    if result is not None:
        first, steps = result["first_image"], result["steps"]
        print(f"first image of a {options.slices}-slice CT on screen (from navigation start), {len(first)} cold rounds:")
        print(f"  {median_ms(first)}")
        if steps:
            print(f"scrolling, {len(steps)} steps: {p95_ms(steps)}")
    if ohif is not None:
        print(f"OHIF: first image of a {options.slices}-slice CT drawn, {len(ohif['cold'])} rounds, warm server:")
        print("  new browser context, no service worker, from navigation start:")
        print(f"    cold browser cache (first opening): {median_ms(ohif['cold'], 'cold')}")
        print(f"    warm browser cache, second opening: {median_ms(ohif['warm_first'], 'warm_first')}")
        print(f"    warm browser cache, third opening: {median_ms(ohif['warm'], 'warm')}")
        print("  new browser context, opened after the studies list installed the viewer's service worker"
              f" (install: {median_ms(ohif['installs'])}), from navigation start:")
        print(f"    first opening: {median_ms(ohif['listed'], 'listed')}")
        print(f"    second opening: {median_ms(ohif['listed_second'], 'listed_second')}")
        print(f"  OHIF already loaded, from the click in its study list: {median_ms(ohif['in_app'])}")
        if ohif["steps"]:
            print(f"OHIF scrolling, {len(ohif['steps'])} steps: {p95_ms(ohif['steps'])}")


if __name__ == "__main__":
    main()
