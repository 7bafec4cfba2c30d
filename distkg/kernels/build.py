"""Compiling distkg's C kernels once per machine, into the cache, and loading them (ctypes).

The shared library's name is keyed by everything that decides what the compiler makes of the
source: the source's digest, the compiler's version line, the flags, and this CPU's model and
instruction-set flags (the library is built with -march=native: one built on another CPU model
sharing a home folder must never be loaded here). It is written under a temporary name and
renamed into place, so processes of a grid that compile at once never load a half-written file.
A cached library loads in milliseconds; the one compile takes about a second.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
from functools import lru_cache
from pathlib import Path

from distkg.cachedir import cache_root

SOURCE = Path(__file__).with_name("fused.c")
FLAGS = ("-O3", "-ffast-math", "-march=native", "-fPIC", "-shared")  # -ffast-math: libmvec's vector expf
LIBS = ("-lm", "-lpthread")


class BuildError(RuntimeError):
    """No compiler, or the compile failed: the message says which command and why."""


def compiler() -> str:
    """$CC, else cc."""
    return os.environ.get("CC") or "cc"


@lru_cache(maxsize=8)
def compiler_version(cc: str) -> str:
    """The compiler's first version line (part of the cache key)."""
    path = shutil.which(cc)
    if path is None:
        raise BuildError(f"no C compiler: {cc!r} is not on PATH (set CC to one)")
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"{path} --version failed: {e}") from e
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise BuildError(f"{path} --version exited {done.returncode}: {(done.stderr or done.stdout).strip()[:200]!r}")
    return lines[0]


def cpu_signature() -> str:
    """This CPU's model name and instruction-set flags (Linux), else the platform's processor string."""
    model = flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(value.split()))
                if model and flags:
                    break
    except OSError:
        pass
    return f"{platform.machine()}|{model or platform.processor()}|{flags}"


def cache_key(source: bytes, version: str, flags: tuple[str, ...], cpu: str) -> str:
    h = hashlib.sha256()
    for part in (source, version.encode(), " ".join(flags).encode(), cpu.encode()):
        h.update(len(part).to_bytes(8, "little") + part)
    return h.hexdigest()[:20]


def library_path(cc: str | None = None) -> Path:
    """Where the library for this source, compiler, flags and CPU lives in the cache."""
    cc = cc or compiler()
    key = cache_key(SOURCE.read_bytes(), compiler_version(cc), FLAGS + LIBS, cpu_signature())
    return cache_root() / "kernels" / f"distkg-fused-{key}.so"


def build(cc: str | None = None) -> tuple[Path, float | None]:
    """(the library's path, seconds the compile took, or None when it was cached)."""
    cc = cc or compiler()
    target = library_path(cc)
    if target.is_file():
        return target, None
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".distkg-fused-", suffix=".so", dir=target.parent)
    os.close(fd)
    t0 = time.perf_counter()
    cmd = [shutil.which(cc) or cc, *FLAGS, "-o", tmp, str(SOURCE), *LIBS]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise BuildError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()[-500:]!r}")
        os.replace(tmp, target)  # atomic: another process sees no file or the whole one
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"{' '.join(cmd)} failed: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target, time.perf_counter() - t0


def load(path: Path) -> ctypes.CDLL:
    try:
        return ctypes.CDLL(str(path))
    except OSError as e:
        raise BuildError(f"cannot load {path}: {e}") from e
