"""The ``confluence`` connector: pages of Confluence Cloud spaces, with their read ACLs."""
