"""The HTTP API: app factory, dependencies, routes, and the one place errors become statuses."""
