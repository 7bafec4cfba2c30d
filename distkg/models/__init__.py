"""TKG models, one module each, registered by name (``model.name`` in a config)."""

from __future__ import annotations

from distkg.models.registry import MODELS
from distkg.models import frequency  # noqa: F401  (registers)

__all__ = ["MODELS"]
