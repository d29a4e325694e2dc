"""Continuous backup: replication to the replica store, verification, alerts and disaster recovery.

- ``replication``: byte-for-byte copies primary -> replica (still encrypted), the per-minute sweep, the
  synchronous mode, replica protection (versioning, Object Lock) and the replica purge.
- ``verification``: reads replica objects back, decrypts them and checks the SHA-256 against the index.
- ``recovery``: repair of single objects, ``restore`` (replica -> primary) and ``rebuild_index``.
- ``alerts``: rate-limited e-mails to clinic owners/admins and operators; ``/readyz`` degradation.
- ``selectors``: the numbers the backup page and the API show.
- ``database``: the control plane: encrypted SQLite snapshots and audit chain anchors in the replica store;
  ``pgbackrest``: PostgreSQL's WAL archiving, base backups and point-in-time restore with pgBackRest.
- ``study_state``: trash and purge state of studies in the replica, re-applied by ``rebuild_index``.
- ``drill``: scheduled restore tests (sample studies and the latest database backup into a scratch area).
"""
