"""docs/CONFIG.md is what scripts/config_reference.py writes from distkg/config.py: the reference cannot drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_configuration_reference_is_current():
    done = subprocess.run([sys.executable, "scripts/config_reference.py", "--check"], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def test_every_key_is_in_it():
    import dataclasses

    from distkg.config import RunConfig

    text = (REPO / "docs" / "CONFIG.md").read_text()
    for section in dataclasses.fields(RunConfig):
        value = getattr(RunConfig(), section.name)
        keys = [f.name for f in dataclasses.fields(value)] if dataclasses.is_dataclass(value) else [None]
        for key in keys:
            assert (f"`{section.name}.{key}`" if key else f"`{section.name}`") in text, (section.name, key)
