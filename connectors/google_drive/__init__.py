"""The ``google_drive`` connector: Google Drive files (Docs, Sheets, Slides, uploads) with
their sharing permissions, incrementally through the Drive changes API."""
