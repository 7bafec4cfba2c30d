"""Heap settings distkg applies to the processes it runs itself (the ``distkg`` command, its Ray Train
workers and scoring actors), so no user has to know a variable; ``import distkg`` leaves a host
process (a notebook, a Serve replica) as it is, and a library user opts in with ``apply_heap_settings()``.

Why: a 1-vs-all step allocates several [batch, entities] temporaries of 28-50 MB each. glibc serves
allocations above its mmap threshold (32 MB at most, adjusted dynamically) with a fresh mmap, and
returns the top of the heap to the kernel once more than M_TRIM_THRESHOLD is free, so every such
tensor is faulted in page by page on every step: on Wikidata12k most of a student's step was
kernel time (docs/RESULTS.md). Serving every allocation from the heap (M_MMAP_MAX = 0) and never
trimming it (M_TRIM_THRESHOLD at its maximum) keeps those pages mapped from one step to the next,
the effect of ``MALLOC_MMAP_THRESHOLD_=2147483647`` but without the 32 MB cap mallopt puts on
that threshold. The cost: freed memory stays in the process (peak, not current, resident size).

Only on glibc (Linux); elsewhere, or when the user set any ``MALLOC_*`` variable, ``GLIBC_TUNABLES`` or
``DISTKG_MALLOC=0``, nothing changes.

A ZeRO-3 worker is the opposite case (``return_freed_memory``): every forward call gathers whole layers
and frees them, in sizes that vary, so a heap that never shrinks keeps what was freed
(tests/test_allocator.py: 20 growing layers of 10-18 MB, gathered and freed, stay resident under the
settings above and are given back under ``return_freed_memory``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
_applied: bool | None = None


def _user_chose() -> bool:
    """True when the environment already says how malloc should behave (theirs wins)."""
    return os.environ.get("DISTKG_MALLOC", "1") == "0" or any(
        k.startswith("MALLOC_") for k in os.environ) or "GLIBC_TUNABLES" in os.environ


def _mallopt():
    """glibc's mallopt, or None where there is none."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def return_freed_memory(mmap_threshold: int = 1 << 16) -> bool:
    """Serve allocations of ``mmap_threshold`` bytes and more by mmap, so freeing them gives the memory
    back at once (a fixed threshold: glibc's dynamic one rises to 32 MB), and trim the heap: for a
    ZeRO-3 worker (module docstring). True when glibc took the settings; nothing when the user chose."""
    mallopt = _mallopt()
    if mallopt is None or _user_chose():
        return False
    return (bool(mallopt(M_MMAP_MAX, 65536)) and bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold))
            and bool(mallopt(M_TRIM_THRESHOLD, 128 * 1024)))


def apply_heap_settings() -> bool:
    """Keep large allocations on the heap and the heap mapped; True when glibc took the settings."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    mallopt = _mallopt()
    if mallopt is None or _user_chose():
        return False
    _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    return _applied
