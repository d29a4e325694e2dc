"""Quarantine: instances held by admission (``studies.admission``), listed, filed or discarded by owners and
admins (``services``), copied to the replica and announced by ``tasks``."""
