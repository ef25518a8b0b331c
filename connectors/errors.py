"""Connector errors. Per-document problems are values (``base.Failure``), not these.

ConnectorError
├── ConfigError        the source's configuration is wrong (bad path, bad rule)
├── CredentialError    the source refused our credentials
├── SourceError        the source failed or answered with an error, after retries
└── UnknownKindError   no connector is registered for a ``kind``
"""


class ConnectorError(Exception):
    """Base of errors that stop a whole sync."""


class ConfigError(ConnectorError):
    pass


class CredentialError(ConnectorError):
    pass


class SourceError(ConnectorError):
    pass


class UnknownKindError(ConnectorError):
    pass
