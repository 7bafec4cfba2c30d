"""Checks of a whole run config that need a layer above the config layer, registered here.

Why: the model's name, arguments and dims must be checked when a config is read, before any data
is (a bad student dim must not wait for the teachers' training), but the config layer may not
import the models (the layering, tests/test_layering.py). So distkg.config runs whatever is in
RUN_CHECKS on every run config it builds, and the package (distkg/__init__.py) registers the
models' check, which imports the models only when a run config is first built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

RUN_CHECKS: list[Callable[[Any], None]] = []


def add_run_check(check: Callable[[Any], None]) -> None:
    """Run ``check`` on every RunConfig built from now on (it raises ConfigError naming the key)."""
    if check not in RUN_CHECKS:
        RUN_CHECKS.append(check)
