"""distkg keeps [batch, entities] temporaries on a mapped heap (distkg.allocator): real processes, real faults."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import resource, sys
if sys.argv[1] == "import":
    import distkg.allocator
    print(distkg.allocator.apply_heap_settings())
else:
    print(None)
import torch
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):  # the heap settles after a few
    torch.ones(1000, 12500).sum()  # 50 MB, above glibc's mmap threshold
before = faults()
for _ in range(10):
    torch.ones(1000, 12500).sum()
print((faults() - before) / 10)
"""


def _probe(mode: str, **env: str) -> tuple[str, float]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environ.update(env, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=environ, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_importing_distkg_stops_page_faults_of_large_temporaries():
    applied, with_settings = _probe("import")
    _, without = _probe("bare")
    assert applied == "True"
    page = os.sysconf("SC_PAGE_SIZE")
    assert without > 0.5 * 50e6 / page  # glibc maps each 50 MB tensor fresh: one fault per page
    assert with_settings < 0.05 * without


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_a_users_malloc_choice_wins():
    assert _probe("import", DISTKG_MALLOC="0")[0] == "False"
    assert _probe("import", MALLOC_ARENA_MAX="2")[0] == "False"
