"""The study viewer: one page on top of DICOMweb (QIDO for series and instances, WADO-RS rendered frames)."""
