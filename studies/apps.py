from __future__ import annotations

from django.apps import AppConfig


class StudiesConfig(AppConfig):
    name = "studies"
    verbose_name = "Studies and archive"

    def ready(self) -> None:
        # The layers point down (ingest and the archive never import backup or the thumbnails); what
        # they must trigger is registered here, once, in every process (web, worker, DIMSE listener).
        # The hooks send tasks by name: their modules must be loaded in every process, not only in workers.
        # Every package's tasks are loaded here: services queue their own package's tasks by name.
        # Not a cycle: ready() runs once the models are loaded, which every module imported here needs.
        from studies.anonymize import services as anonymize
        from studies.anonymize import tasks as anonymize_tasks  # noqa: F401
        from studies.archive import objects
        from studies.backup import recovery, replication
        from studies.backup import tasks as backup_tasks  # noqa: F401
        from studies.browse import tasks as browse_tasks  # noqa: F401
        from studies.browse import thumbnails
        from studies.exports import tasks as exports_tasks  # noqa: F401
        from studies.ingest import hooks
        from studies.ingest import tasks as ingest_tasks  # noqa: F401
        from studies.quarantine import tasks as quarantine_tasks  # noqa: F401

        hooks.object_writer_register(replication.object_write_for_ingest)
        hooks.after_commit_register(replication.instances_replication_start)
        hooks.replica_copy_register(replication.object_copy)
        hooks.after_commit_register(thumbnails.series_thumbnails_schedule)
        hooks.anonymizer_register(
            hooks.Anonymizer(
                rule=anonymize.project_for_ingest,
                anonymize=anonymize.anonymize_for_ingest,
                link=anonymize.ingest_result_link,
            )
        )
        objects.read_failure_hook_register(recovery.object_repair_schedule)
        # Routing deliveries are written in the index transaction, so one exists exactly when its instance
        # does; the outbound tasks are loaded so that services queue them by name in every process.
        from studies.outbound import routing
        from studies.outbound import tasks as outbound_tasks  # noqa: F401

        hooks.indexed_register(routing.instances_route_indexed)

        # Readiness (/readyz, in portal below this app) asks the stores and the backup health from here.
        from portal import health
        from studies.archive import stores
        from studies.backup import alerts

        for store_name in stores.STORE_NAMES:
            health.readiness_check_register(f"{store_name}_store", lambda name=store_name: stores.get_store(name).check())
        health.degradation_check_register("backup", alerts.backup_problems)

        # Every SQLite connection gets the functions matching compares with (unicode_upper), web, worker
        # and DIMSE listener threads alike.
        from django.db.backends.signals import connection_created

        from studies import matching

        connection_created.connect(matching.sqlite_functions_register, dispatch_uid="studies.matching.sqlite_functions")
