"""Continuous backup: replication to the replica store, verification, alerts and disaster recovery.

- ``replication``: byte-for-byte copies primary -> replica (still encrypted), the per-minute sweep, the
  synchronous mode, replica protection (versioning, Object Lock) and the replica purge.
- ``verification``: reads replica objects back, decrypts them and checks the SHA-256 against the index.
- ``recovery``: repair of single objects, ``restore`` (replica -> primary) and ``rebuild_index``.
- ``alerts``: rate-limited e-mails to clinic owners/admins and operators; ``/readyz`` degradation.
- ``selectors``: the numbers the backup page and the API show.
"""
