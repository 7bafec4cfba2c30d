"""The model registry lives apart from the models so each model module can import it."""

from __future__ import annotations

from distkg.registry import Registry

MODELS: Registry = Registry("model")
