"""Errors a user can act on. The CLI prints them as one line (no traceback) and exits with code 2."""

from __future__ import annotations


class DistkgError(Exception):
    """Base class: bad input named precisely (file, line, key or value)."""


class DataError(DistkgError):
    """A data file is missing, malformed, or does not match its checksum."""


class ConfigError(DistkgError):
    """A config key is unknown or a value has the wrong type or range."""


class QueryError(DistkgError):
    """A query names an entity, relation or time the dataset does not have."""
