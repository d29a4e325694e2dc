"""Outbound DICOM: sending studies to registered nodes, migrating an old archive in, routing rules."""
