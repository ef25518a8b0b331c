"""The ``markdown_wiki`` connector: a folder or git checkout of markdown pages."""
