"""DIMSE services (pynetdicom): one listener for every clinic, selected by the called AE title.

``scp`` builds the application entity and decides which associations to accept, ``handlers`` answers
C-ECHO, C-STORE, C-FIND, C-MOVE and C-GET, ``find`` matches C-FIND identifiers against the index,
``move`` loads the instances a C-MOVE or C-GET retrieves and ``nodes`` manages the registered remote
nodes. Run it with ``manage.py dicom_scp``.
"""
