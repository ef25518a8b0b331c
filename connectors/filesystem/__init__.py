"""The ``filesystem`` connector: a folder tree on local disk or a mounted share."""
