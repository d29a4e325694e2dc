"""manage.py add_dicom_node --clinic S --ae AE --host H --port P: register a remote DICOM node."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal.exceptions import PortalError
from studies.dimse import nodes
from tenants.models import Clinic


class Command(BaseCommand):
    help = (
        "Register a remote DICOM node for a clinic: by default it may call in (C-ECHO, C-STORE, C-FIND, "
        "C-MOVE, C-GET) and is a C-MOVE destination at HOST:PORT."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--clinic", required=True, help="The clinic's slug.")
        parser.add_argument("--ae", required=True, help="The node's AE title (its calling AE title, and the "
                                                         "move destination name).")
        parser.add_argument("--host", required=True, help="Host name or IP address C-MOVE connects to.")
        parser.add_argument("--port", required=True, type=int)
        parser.add_argument("--description", default="")
        parser.add_argument("--allowed-address", default="",
                            help="Accept calls from this node only from this IP address or network (CIDR). "
                                 "Default: from HOST's own address only.")
        parser.add_argument("--any-address", action="store_true",
                            help="Accept calls from any address (not recommended: the AE title alone then "
                                 "protects the clinic).")
        parser.add_argument("--tls-certificate", default="",
                            help="The node's TLS client certificate (PEM file): it must then call over DICOM TLS "
                                 "presenting it.")
        parser.add_argument("--calling-ae", default="",
                            help="Our calling AE title when we call this node (default: the clinic's AE title).")
        parser.add_argument("--no-inbound", action="store_true", help="A move destination only; it may not call in.")
        parser.add_argument("--no-move", action="store_true", help="May call in, but is not a C-MOVE destination.")

    def handle(self, *args: Any, **options: Any) -> None:
        clinic = Clinic.objects.filter(slug=options["clinic"]).first()
        if clinic is None:
            raise CommandError(f"No clinic with slug '{options['clinic']}'.")
        pem = ""
        if options["tls_certificate"]:
            try:
                with open(options["tls_certificate"], encoding="ascii") as handle:
                    pem = handle.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise CommandError(f"Cannot read the certificate file: {exc}") from exc
        try:
            node = nodes.dicom_node_create(
                clinic=clinic, ae_title=options["ae"], host=options["host"], port=options["port"],
                description=options["description"], allowed_address=options["allowed_address"],
                allow_inbound=not options["no_inbound"], is_move_destination=not options["no_move"],
                calling_ae_title=options["calling_ae"],
                allow_any_address=options["any_address"], tls_certificate_pem=pem,
            )
        except PortalError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"Registered {node.ae_title} at {node.host}:{node.port} for {clinic.slug} "
                          f"(calls to AE title {clinic.ae_title}).")
        if node.allow_any_address and node.allow_inbound:
            self.stderr.write(f"WARNING: {nodes.ANY_ADDRESS_WARNING}")
