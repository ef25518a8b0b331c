"""The ``jira`` connector: Jira Cloud issues with project-role and security-level ACLs."""
