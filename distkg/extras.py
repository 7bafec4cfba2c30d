"""The optional parts of distkg and the packages each needs (pyproject.toml's extras), so that a core
install (train, distill, evaluate, predict, export --format hf) that reaches one of them stops with one
line naming the extra to install, not a ModuleNotFoundError from deep inside."""

from __future__ import annotations

import importlib.util

from distkg.errors import DistkgError

EXTRAS = {"llm": "transformers", "ray": "ray", "serve": "ray.serve", "export": "onnxscript", "plots": "matplotlib"}


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing (ray for ray.serve)
        return False


def require(extra: str, what: str) -> None:
    """Stop with one line when ``extra``'s package is not installed; ``what`` names what needs it."""
    module = EXTRAS[extra]
    if not installed(module):
        raise DistkgError(f"{what} needs {module.split('.')[0]}, which is not installed: pip install 'distkg[{extra}]' "
                          "(or scripts/setup.sh, which installs every extra)")
