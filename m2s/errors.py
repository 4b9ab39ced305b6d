"""Exception types the CLI turns into one clear line and a non-zero exit code."""

from __future__ import annotations


class M2SError(Exception):
    """Base class of every error m2s raises on purpose (exit code 1 in the CLI)."""


class DataError(M2SError):
    """Input data is malformed or inconsistent (names the offending file)."""


class ArtifactError(M2SError):
    """An artifact is missing, of the wrong kind, incompatible or corrupted."""


class ConfigError(M2SError):
    """A configuration value is invalid or inconsistent with the inputs."""


class BackendUnavailable(M2SError):
    """The requested sparse-convolution backend cannot be used here."""
