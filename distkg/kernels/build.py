"""Compiling distkg's kernels once per machine, into the cache, and loading them as torch operators.

The C loops (fused.c, plain C with -ffast-math and -march=native) and the operator registrations that
call them (ops.cpp, C++ against torch's headers: torch.ops.distkg.*) are linked into one shared
library. Its name is keyed by everything that decides what the compilers make of the sources: the
sources' digest, the compilers' version lines, torch's version, the flags, and this CPU's model and
instruction-set flags (one built on another CPU model sharing a home folder must never be loaded
here). It is written under a temporary name and renamed into place, so processes of a grid that
compile at once never load a half-written file. A cached library loads in milliseconds; the one
build takes a few seconds (most of it ops.cpp reading torch's headers).
"""

from __future__ import annotations

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

HERE = Path(__file__).parent
SOURCE, HEADER, OPS = HERE / "fused.c", HERE / "fused.h", HERE / "ops.cpp"
FLAGS = ("-O3", "-ffast-math", "-march=native", "-fPIC")  # the C loops; -ffast-math: libmvec's vector expf
CXXFLAGS = ("-O2", "-std=c++17", "-fPIC")  # the registrations: no loop of note
LIBS = ("-lm", "-lpthread")


class BuildError(RuntimeError):
    """No compiler, or the compile failed: the message says which command and why."""


def compiler() -> str:
    """$CC, else cc."""
    return os.environ.get("CC") or "cc"


def cxx_compiler() -> str:
    """$CXX, else c++."""
    return os.environ.get("CXX") or "c++"


def torch_flags() -> tuple[list[str], list[str]]:
    """(compile flags, link flags) for code against this torch: its headers, C++ ABI and libraries."""
    import torch

    root = Path(torch.__file__).parent
    compile_flags = [f"-I{root / 'include'}", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    return compile_flags, [f"-L{root / 'lib'}", f"-Wl,-rpath,{root / 'lib'}", "-lc10", "-ltorch_cpu"]


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


def library_path(cc: str | None = None, cxx: str | None = None) -> Path:
    """Where the library for these sources, compilers, torch, flags and CPU lives in the cache."""
    import torch

    cc, cxx = cc or compiler(), cxx or cxx_compiler()
    sources = b"".join(p.read_bytes() for p in (SOURCE, HEADER, OPS))
    versions = f"{compiler_version(cc)}|{compiler_version(cxx)}|torch {torch.__version__}"
    key = cache_key(sources, versions, FLAGS + CXXFLAGS + LIBS, cpu_signature())
    return cache_root() / "kernels" / f"distkg-ops-{key}.so"


def _run(cmd: list[str]) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"{' '.join(cmd)} failed: {e}") from e
    if done.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()[-500:]!r}")


def build(cc: str | None = None, cxx: str | None = None) -> tuple[Path, float | None]:
    """(the library's path, seconds the build took, or None when it was cached)."""
    cc, cxx = cc or compiler(), cxx or cxx_compiler()
    target = library_path(cc, cxx)
    if target.is_file():
        return target, None
    target.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=".distkg-build-", dir=target.parent))  # this process's objects
    try:
        compile_flags, link_flags = torch_flags()
        c_obj, cxx_obj, lib = work / "fused.o", work / "ops.o", work / "lib.so"
        _run([shutil.which(cc) or cc, *FLAGS, "-c", str(SOURCE), "-o", str(c_obj)])
        _run([shutil.which(cxx) or cxx, *CXXFLAGS, *compile_flags, "-c", str(OPS), "-o", str(cxx_obj)])
        _run([shutil.which(cxx) or cxx, "-shared", str(c_obj), str(cxx_obj), "-o", str(lib), *link_flags, *LIBS])
        os.replace(lib, target)  # atomic: another process sees no file or the whole one
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target, time.perf_counter() - t0


def load(path: Path) -> Path:
    """Register the library's operators in this process (once: a second library of the same operators,
    built into another cache, is not loaded over them)."""
    import torch

    if hasattr(torch.ops, "distkg") and hasattr(torch.ops.distkg, "fused_rows"):
        return path
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError) as e:
        raise BuildError(f"cannot load {path}: {e}") from e
    return path
