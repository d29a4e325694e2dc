"""DICOMweb (PS3.18) per clinic at ``/dicomweb/<clinic>/``: STOW-RS, QIDO-RS and WADO-RS."""
