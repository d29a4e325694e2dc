"""De-identification per DICOM PS3.15 Annex E: the profile (data), the engine, and the jobs."""
