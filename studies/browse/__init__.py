"""Browse: finding, showing, downloading, trashing and restoring studies (clinic pages and REST).

``selectors`` reads the index (always scoped to a clinic), ``services`` changes a study's state (trash,
restore, purge) and records searches, ``views`` and ``api`` are the page and REST doors, ``download``
streams ZIP archives and ``thumbnails`` renders the series previews the study page shows.
"""
