"""TKG models, one module each, registered by name (``model.name`` in a config)."""

from __future__ import annotations

from distkg.models.registry import MODELS
from distkg.models import frequency, tadistmult, tntcomplex, ttranse  # noqa: F401  (registers)
from distkg.models.base import TKGModel

__all__ = ["MODELS", "TKGModel"]
