"""Self-service full export of a clinic for its owner: DICOM files with a DICOMDIR, in parts, made by a worker."""
