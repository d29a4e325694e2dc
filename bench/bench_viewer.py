"""Benchmark: time to the first image of a 300-slice CT in both viewers (light and OHIF), and scrolling.

Runs standalone: `.venv/bin/python bench/bench_viewer.py [--slices 300] [--rounds 5]`.
It fills a PostgreSQL database (DATABASE_URL, default .../portal_bench_viewer) with one study of N
512x512 CT slices (about 0.5 MB each, encrypted in a temporary local store), serves the portal with
gunicorn, signs in through the login page in headless Chromium and measures, from the start of the
navigation to the viewer page, when the first slice is on screen; then how long each step of
scrolling through the series takes with prefetching. The same for the diagnostic viewer (OHIF), opened
from the study page's link, with a cold browser cache (every round a new browser context) and warm
(the same context opening the study again), scrolling with the arrow keys.

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


def ohif_open(page, slug: str, study_uuid: str) -> float:
    """Open the study in OHIF; return seconds from navigation start to the first image drawn."""
    page.goto(f"/c/{slug}/viewer/{study_uuid}/ohif/", wait_until="commit")
    poll(page, CANVAS_MEAN_JS, lambda mean: mean > 10)
    return page.evaluate("performance.now()") / 1000


def measure_ohif(base_url: str, slug: str, study_uuid: str, email: str, rounds: int, slices: int) -> dict[str, object]:
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"]
    cold: list[float] = []
    warm: list[float] = []
    steps: list[float] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=args)
        for round_number in range(rounds):
            context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
            page = context.new_page()
            sign_in(page, email)
            cold.append(ohif_open(page, slug, study_uuid))
            warm.append(ohif_open(page, slug, study_uuid))
            if round_number == 0:
                skip = page.locator("text=Skip all")
                if skip.count():
                    skip.first.click()
                page.locator(".cornerstone-canvas").first.click()
                for index in range(2, min(slices, 100) + 1):
                    started = time.perf_counter()
                    page.keyboard.press("ArrowDown")
                    poll(page, OHIF_SLICE_JS, lambda shown, index=index: shown >= index, timeout=10)
                    steps.append(time.perf_counter() - started)
            context.close()
        browser.close()
    return {"cold": cold, "warm": warm, "steps": steps}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    database_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB)
    with tempfile.TemporaryDirectory(prefix="bench-viewer-") as var_dir:
        setup(database_url, var_dir)
        started = time.perf_counter()
        slug, study_uuid, email = make_study(options.slices, Path(var_dir))
        print(f"stored {options.slices} slices in {time.perf_counter() - started:.1f} s")
        port = free_port()
        server = subprocess.Popen(
            [str(ROOT / ".venv/bin/gunicorn"), "portal.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "2",
             "--threads", "4"],
            cwd=ROOT, env={**os.environ, "DEBUG": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            result = measure(f"http://127.0.0.1:{port}", slug, study_uuid, email, options.rounds, options.slices)
            ohif = measure_ohif(f"http://127.0.0.1:{port}", slug, study_uuid, email, options.rounds, options.slices)
        finally:
            server.terminate()
            server.wait(10)
    first, steps = result["first_image"], result["steps"]
    print(f"first image of a {options.slices}-slice CT on screen (from navigation start), {len(first)} cold rounds:")
    print(f"  median {statistics.median(first) * 1000:.0f} ms, worst {max(first) * 1000:.0f} ms")
    if steps:
        steps_sorted = sorted(steps)
        print(f"scrolling, {len(steps)} steps: median {statistics.median(steps) * 1000:.0f} ms, "
              f"p95 {steps_sorted[int(0.95 * (len(steps_sorted) - 1))] * 1000:.0f} ms per slice")
    print(f"OHIF: first image of a {options.slices}-slice CT drawn (from navigation start), {len(ohif['cold'])} rounds:")
    for label in ("cold", "warm"):
        figures = ohif[label]
        print(f"  {label} browser cache: median {statistics.median(figures) * 1000:.0f} ms,"
              f" worst {max(figures) * 1000:.0f} ms")
    if ohif["steps"]:
        steps_sorted = sorted(ohif["steps"])
        print(f"OHIF scrolling, {len(steps_sorted)} steps: median {statistics.median(steps_sorted) * 1000:.0f} ms, "
              f"p95 {steps_sorted[int(0.95 * (len(steps_sorted) - 1))] * 1000:.0f} ms per slice")


if __name__ == "__main__":
    main()
