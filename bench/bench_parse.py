"""CPU cost of parse_instance per file, and of the DICOM JSON header built before and after issue 12.

Usage: ``.venv/bin/python bench/bench_parse.py [--repeat N] [--before REV] [FILE...]``

Measures ``time.process_time`` (CPU, so the figure holds on a loaded machine) for three files by default:
the bench CT (512 x 512 x 16 bit, as bench_ingest and bench_rebuild write), pydicom's ``CT_small.dcm``
(a scanner's header: about 250 elements, private tags, sequences; what the DR drill copies) and
``MR_small.dcm``. For each it prints the whole ``parse_instance`` and the header step alone, the header
both as built now (``studies.dicom._metadata``) and by the former generic pydicom path kept below as the
reference (``reference_metadata``), and checks they give the same JSON. ``--before REV`` (default
``f0d42d8``, the last commit before issue 12's change) also loads ``studies/dicom.py`` as it was at that
commit (``git show``) and times its whole ``parse_instance`` in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")


def reference_metadata(ds: Any, layout: Any, meta: Any) -> dict[str, Any]:
    """The header as parse_instance built it before issue 12: every element through pydicom's to_json_dict."""
    from pydicom.dataset import Dataset

    from studies.dicom import _BINARY_VRS, BULK_DATA_THRESHOLD, MAX_INLINE_VALUE

    small = Dataset()
    placeholders: dict[str, dict[str, str]] = {}
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        vr = str(getattr(raw, "VR", "") or "")
        length = getattr(raw, "length", None)
        if length is None:
            value = getattr(raw, "value", None)
            length = len(value) if isinstance(value, (bytes, str)) else 0
        key = f"{int(tag):08X}"
        if length > MAX_INLINE_VALUE or (vr in _BINARY_VRS and length > BULK_DATA_THRESHOLD):
            placeholders[key] = {"vr": vr if vr and vr != "UN" else "UN", "BulkDataURI": key}
            continue
        small.add(ds[tag])
    result: dict[str, Any] = {}
    for tag in small.keys():
        key = f"{int(tag):08X}"
        try:
            result[key] = small[tag].to_json_dict(
                bulk_data_element_handler=lambda element: f"{int(element.tag):08X}",
                bulk_data_threshold=BULK_DATA_THRESHOLD,
            )
        except Exception:  # noqa: BLE001 - as before: an element DICOM JSON cannot express is left out
            pass
    result.update(placeholders)
    if layout.pixel is not None:
        key = f"{layout.pixel.tag:08X}"
        result[key] = {"vr": layout.pixel.vr, "BulkDataURI": key}
    ts = meta.get("TransferSyntaxUID")
    if ts:
        result["00020010"] = {"vr": "UI", "Value": [str(ts)]}
    return dict(sorted(result.items()))


def load_before(revision: str, temp: Path) -> Any:
    """``studies/dicom.py`` as it was at ``revision``, imported as a module of its own."""
    import importlib.util
    import subprocess

    source = subprocess.run(
        ["git", "show", f"{revision}:studies/dicom.py"], check=True, capture_output=True, text=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    path = temp / "dicom_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("dicom_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["dicom_before"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def read_for_header(path: str) -> tuple[Any, Any, Any]:
    """What parse_instance hands to the header step: the dataset as read, its layout and file meta."""
    import pydicom
    from pydicom.dataset import Dataset

    from studies import dicom

    size = os.path.getsize(path)
    with open(path, "rb") as fp:
        head = fp.read(132)
    preamble = len(head) == 132 and head[128:132] == b"DICM"
    layout, _ = dicom._walk_file(path, size, preamble)
    with open(path, "rb") as fp:
        ds = pydicom.dcmread(fp, defer_size=dicom._DEFER_SIZE, stop_before_pixels=True, force=not preamble)
    meta = ds.file_meta if hasattr(ds, "file_meta") else Dataset()
    return ds, layout, meta


def cpu_ms(function: Any, repeat: int) -> float:
    start = time.process_time()
    for _ in range(repeat):
        function()
    return (time.process_time() - start) / repeat * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--before", default="f0d42d8", help="commit whose parse_instance to time too ('' for none)")
    parser.add_argument("files", nargs="*")
    args = parser.parse_args()
    import django

    django.setup()
    from studies import dicom
    from tests.dicom_files import sample_path, write_ct

    temp = Path(tempfile.mkdtemp(prefix="bench-parse-"))
    files = args.files or [
        str(write_ct(temp / "ct-512.dcm", rows=512, columns=512)),
        str(sample_path("CT_small.dcm")),
        str(sample_path("MR_small.dcm")),
    ]
    before_module = load_before(args.before, temp) if args.before else None
    print(f"parse_instance CPU per file ({args.repeat} runs each, load average {os.getloadavg()[0]:.1f})")
    print(f"{'file':<16} {'KB':>6} {'elements':>8} {'parse before':>13} {'parse now':>10} "
          f"{'header before':>14} {'header now':>11}")
    for path in files:
        dicom.parse_instance(path)
        parse_now = cpu_ms(lambda: dicom.parse_instance(path), args.repeat)  # noqa: B023
        parse_before = float("nan")
        if before_module is not None:
            before_module.parse_instance(path)
            parse_before = cpu_ms(lambda: before_module.parse_instance(path), args.repeat)  # noqa: B023
        # The header step alone, each time on a freshly read dataset (conversion caches into it).
        fresh = iter([read_for_header(path) for _ in range(args.repeat)])
        before = cpu_ms(lambda: reference_metadata(*next(fresh)), args.repeat)  # noqa: B023
        fresh = iter([read_for_header(path) for _ in range(args.repeat)])
        now = cpu_ms(lambda: dicom._metadata(*next(fresh)), args.repeat)  # noqa: B023
        same = reference_metadata(*read_for_header(path)) == dicom._metadata(*read_for_header(path))
        elements = len(read_for_header(path)[0])
        print(f"{Path(path).name[:16]:<16} {os.path.getsize(path) // 1024:>6} {elements:>8} "
              f"{parse_before:>11.2f}ms {parse_now:>8.2f}ms {before:>12.2f}ms {now:>9.2f}ms"
              f"{'' if same else '  HEADER DIFFERS'}")


if __name__ == "__main__":
    main()
