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


def first_line(e: BaseException) -> str:
    """An exception as one short line for an error message, also when its message is empty (torch.load
    of a 0-byte file raises an EOFError with no message: its first line was an IndexError)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__
