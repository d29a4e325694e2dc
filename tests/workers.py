"""Which pytest-xdist worker this process is (0 when the suite runs in one process).

Each worker takes resources of its own from this number, as it takes a test database of its own: a
Redis database (``tests/conftest.py``) and a range of DICOM ports (``tests/studies/dimse_support.py``).
"""

from __future__ import annotations

import os

WORKER_INDEX = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
