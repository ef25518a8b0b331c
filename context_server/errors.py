"""Domain errors of the composition root; the API maps them to HTTP statuses in one place.

    ContextServerError
    ├── SpecError          a YAML file (source, principals) is malformed or invalid
    ├── NotFoundError      a named thing (source) does not exist
    ├── ConflictError      the operation collides with one in progress
    ├── ForbiddenError     the caller is known but may not do this (agent, user, source)
    └── ServerError        talking to a running `serve` failed

Connector errors (connectors.errors) and indexing errors (indexing.errors) cross this layer
unchanged and are mapped beside these.
"""


class ContextServerError(Exception):
    pass


class SpecError(ContextServerError):
    pass


class NotFoundError(ContextServerError):
    pass


class ConflictError(ContextServerError):
    pass


class ForbiddenError(ContextServerError):
    pass


class ServerError(ContextServerError):
    pass
