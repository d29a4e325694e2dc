"""manage.py dicom_scp: the DIMSE listener (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET) for every clinic."""

from __future__ import annotations

import logging
import signal
import ssl
import threading
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from studies.dimse.scp import scp_start, tls_context

# On SIGTERM, associations in progress get this long to finish (an instance half received is not
# acknowledged, so the sender keeps it and sends it again).
DRAIN_SECONDS = 30


class Command(BaseCommand):
    help = (
        "Listen for DICOM associations. The called AE title selects the clinic; the calling AE title must "
        "be registered for it (manage.py add_dicom_node)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=None,
                            help="Address to listen on. Default: the DICOM_BIND_ADDRESS setting (127.0.0.1).")
        parser.add_argument("--port", type=int, default=None, help="Default: the DICOM_PORT setting (11112).")
        parser.add_argument("--tls-port", type=int, default=None,
                            help="DICOM TLS port. Default: the DICOM_TLS_PORT setting (0: no TLS listener).")
        parser.add_argument("--max-associations", type=int, default=32)

    def _tls_context(self) -> ssl.SSLContext:
        missing = [name for name in ("DICOM_TLS_CERTIFICATE", "DICOM_TLS_PRIVATE_KEY", "DICOM_TLS_CA_FILE")
                   if not getattr(settings, name)]
        if missing:
            raise CommandError(f"The DICOM TLS listener needs {', '.join(missing)} (file paths).")
        try:
            return tls_context(certificate=settings.DICOM_TLS_CERTIFICATE, private_key=settings.DICOM_TLS_PRIVATE_KEY,
                               ca_file=settings.DICOM_TLS_CA_FILE)
        except (OSError, ssl.SSLError) as exc:
            raise CommandError(f"Cannot load the DICOM TLS certificate, key or CA file: {exc}") from exc

    def handle(self, *args: Any, **options: Any) -> None:
        port = options["port"] or settings.DICOM_PORT
        host = options["host"] or settings.DICOM_BIND_ADDRESS
        # pynetdicom logs every request at INFO; our handlers log and audit what matters.
        if options["verbosity"] < 2:
            logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        tls_port = options["tls_port"] if options["tls_port"] is not None else settings.DICOM_TLS_PORT
        context = self._tls_context() if tls_port else None
        servers = []
        server = scp_start(host=host, port=port, ae_title=settings.DICOM_AE_TITLE,
                           max_associations=options["max_associations"], block=False)
        assert server is not None
        servers.append(server)
        self.stdout.write(f"DICOM listener on {host}:{port} (AE {settings.DICOM_AE_TITLE})")
        if context is not None:
            server = scp_start(host=host, port=tls_port, ae_title=settings.DICOM_AE_TITLE,
                               max_associations=options["max_associations"], block=False, ssl_context=context)
            assert server is not None
            servers.append(server)
            self.stdout.write(f"DICOM TLS listener on {host}:{tls_port}")
        self.stdout.flush()
        # Poll: a signal handler setting an Event the main thread blocks on can deadlock.
        while not stop.wait(timeout=0.5):
            pass
        # Stop accepting, then let the associations in progress finish their work.
        for server in servers:
            server.shutdown()
        deadline = time.monotonic() + DRAIN_SECONDS
        # Connections that never sent an association request (port probes) are not waited for.
        while (any(a.is_established for s in servers for a in s.active_associations)
               and time.monotonic() < deadline):
            time.sleep(0.2)
        self.stdout.write("DICOM listener stopped.")
