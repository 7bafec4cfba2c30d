"""Downloading the benchmarks from their public sources (distkg.data.sources), with sha256 checks.

``download_dataset(name)`` fetches every downloadable file of a dataset into a temporary folder
inside the data root (``root/.NAME.partial-XXXX``), verifies the sha256 of each file, and only then
renames the folder to ``root/NAME``. On any failure (HTTP or connection error, a checksum mismatch,
a bad archive) the temporary folder is removed and a DataError names the file, the URL and, for
checksums, the expected and actual sha256: a failed download never leaves a partial dataset.

A mirror (``mirror=`` or ``$DISTKG_DATA_MIRROR``) is a base URL that serves the dataset folders as
plain files, ``{mirror}/{name}/{relpath}`` (for ICEWS18 too: a mirror serves the extracted files,
not the zip). Any URL scheme urllib supports works, e.g. ``file:///srv/tkg-data``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable
from pathlib import Path

from distkg.data import sources
from distkg.data.sources import DatasetSpec, FileEntry
from distkg.errors import DataError

__all__ = ["download_dataset", "verify_dataset", "extract_members", "sha256_file", "MIRROR_ENV"]

MIRROR_ENV = "DISTKG_DATA_MIRROR"
_CHUNK = 1 << 20
_USER_AGENT = "distkg-data-download (python urllib)"


def _data_root(root: str | os.PathLike | None) -> Path:
    from distkg.data import resolve_data_root  # late import: distkg.data imports the readers

    return resolve_data_root(root)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------- verification
def verify_dataset(name: str, root: str | os.PathLike | None = None) -> list[str]:
    """Problems with ``root/name`` (root as in resolve_data_root): missing required files and
    sha256 mismatches of any listed file that is present. An empty list means the folder is good."""
    spec = sources.get_dataset(name)
    folder = _data_root(root) / spec.name
    if not folder.is_dir():
        return [f"{folder}: dataset folder not found"]
    problems = []
    for entry in spec.files:
        path = folder / entry.path
        if not path.is_file():
            if entry.required:
                problems.append(f"{entry.path}: required file missing")
            continue
        actual = sha256_file(path)
        if actual != entry.sha256:
            problems.append(f"{entry.path}: sha256 mismatch: expected {entry.sha256}, actual {actual}")
    return problems


# --------------------------------------------------------------------------------------- progress
class _Progress:
    """Byte progress on stderr: tqdm when available, else a line every few seconds with bytes/s."""

    def __init__(self, label: str, total: int | None, enabled: bool) -> None:
        self.label, self.total, self.enabled = label, total, enabled
        self.done = 0
        self.start = self.last = time.monotonic()
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                                file=sys.stderr, leave=True, dynamic_ncols=True)
            except ImportError:
                self.bar = None

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= 2.0:
            self.last = now
            self._line(now)

    def _line(self, now: float) -> None:
        rate = self.done / max(now - self.start, 1e-9)
        of = f" / {self.total / 1e6:.1f} MB" if self.total else ""
        print(f"{self.label}: {self.done / 1e6:.1f} MB{of} ({rate / 1e6:.2f} MB/s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        else:
            self._line(time.monotonic())


# ---------------------------------------------------------------------------------------- fetching
def _open(url: str, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http, https, file by design)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"cannot connect: {exc.reason}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def _fetch(url: str, dest: Path, what: str, size: int | None, progress: bool, timeout: float) -> str:
    """Stream ``url`` to ``dest``; returns the sha256 of what was written. DataError on any error."""
    try:
        with _open(url, timeout) as response:
            length = response.headers.get("Content-Length") if hasattr(response, "headers") else None
            total = int(length) if length and length.isdigit() else size
            bar = _Progress(what, total, progress)
            h = hashlib.sha256()
            try:
                with open(dest, "wb") as out:
                    while chunk := response.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                        bar.update(len(chunk))
            finally:
                bar.close()
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        # HTTPError is a URLError; timeouts are OSErrors; a cut connection is an HTTPException
        raise DataError(f"{what}: download from {url} failed: {_describe(e)}") from e
    return h.hexdigest()


def _check(entry: FileEntry, what: str, url: str, actual: str, nbytes: int) -> None:
    if actual != entry.sha256:
        raise DataError(
            f"{what}: sha256 mismatch for {url}: expected {entry.sha256}, actual {actual} "
            f"({nbytes} bytes, expected {entry.size}); the file is corrupt or was changed at the source"
        )


def _find_member(zf: zipfile.ZipFile, member: str, url: str) -> zipfile.ZipInfo:
    """The member named exactly ``member``, else the single member whose path ends in ``/member``
    (archives often wrap their files in a folder such as ``ICEWS18/``)."""
    infos = [i for i in zf.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX/")]
    for info in infos:
        if info.filename == member:
            return info
    matches = [i for i in infos if i.filename.endswith("/" + member)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        names = ", ".join(i.filename for i in infos[:20])
        raise DataError(f"archive {url} has no member {member!r} (members: {names})")
    raise DataError(f"archive {url}: member {member!r} is ambiguous: {', '.join(i.filename for i in matches)}")


def extract_members(archive: str | os.PathLike, entries: Iterable[FileEntry], dest: str | os.PathLike,
                    url: str = "", label: str = "") -> list[Path]:
    """Extract ``entry.member`` of the zip ``archive`` to ``dest/entry.path`` for each entry and verify
    each extracted file's sha256 (DataError naming member, archive URL, expected and actual hash).
    Only the listed members are written, and only to the sources' paths, never to member paths.
    ``url`` (for messages) defaults to each entry's URL."""
    written = []
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{label}archive from {url or archive} is not a readable zip file: {e}") from e
    with zf:
        for entry in entries:
            if not entry.member:
                raise DataError(f"{label}{entry.path}: its source has no archive member")
            source = url or entry.url or str(archive)
            info = _find_member(zf, entry.member, source)
            target = Path(dest) / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            h = hashlib.sha256()
            nbytes = 0
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                        nbytes += len(chunk)
            except (zipfile.BadZipFile, OSError, EOFError) as e:  # bad CRC, truncated archive, ...
                raise DataError(f"{label}{entry.path}: cannot extract member {info.filename!r} of {source}: {e}") from e
            _check(entry, f"{label}{entry.path} (member {info.filename!r})", source, h.hexdigest(), nbytes)
            written.append(target)
    return written


def _fetch_spec(spec: DatasetSpec, folder: Path, mirror: str | None, progress: bool, timeout: float) -> int:
    """Download and verify all downloadable files of ``spec`` into ``folder``; returns the byte count."""
    label = f"{spec.name}/"
    total = 0
    archives: dict[str, list[FileEntry]] = {}
    for entry in spec.downloadable_files:
        if entry.member and not mirror:
            archives.setdefault(entry.url, []).append(entry)
            continue
        if mirror:
            url = f"{mirror.rstrip('/')}/{spec.name}/{urllib.parse.quote(entry.path)}"
        else:
            url = entry.url
        dest = folder / entry.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        actual = _fetch(url, dest, label + entry.path, entry.size, progress, timeout)
        nbytes = dest.stat().st_size
        _check(entry, label + entry.path, url, actual, nbytes)
        total += nbytes
    for i, (url, entries) in enumerate(archives.items()):
        archive = folder / f".archive-{i}.zip"
        _fetch(url, archive, f"{label}{url.rsplit('/', 1)[-1]}", None, progress, timeout)
        extract_members(archive, entries, folder, url=url, label=label)
        archive.unlink()
        total += sum((folder / e.path).stat().st_size for e in entries)
    return total


# ---------------------------------------------------------------------------------------- install
def _install(tmp: Path, target: Path) -> bool:
    """Move the verified ``tmp`` folder to ``target``, replacing an existing one only after the
    download is complete (rename the old one aside, rename the new one in, then delete the old).
    Returns False when another process installed ``target`` meanwhile (the caller discards ``tmp``)."""
    if not target.exists():
        try:
            os.rename(tmp, target)
            return True
        except OSError as e:
            if target.is_dir():  # a concurrent download finished first
                return False
            raise DataError(f"cannot move the downloaded files to {target}: {e}") from e
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rmdir(old)
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException as e:
        os.rename(old, target)
        if isinstance(e, OSError):
            raise DataError(f"cannot move the downloaded files to {target}: {e}") from e
        raise
    shutil.rmtree(old, ignore_errors=True)
    return True


def download_dataset(name: str, root: str | os.PathLike | None = None, mirror: str | None = None,
                     force: bool = False, progress: bool = True, timeout: float = 60) -> Path:
    """Download dataset ``name`` into ``root/name`` (root as in resolve_data_root) and return that path.

    If ``root/name`` exists, its files are verified and it is returned without downloading; a
    folder that fails verification is an error unless ``force=True``, which downloads afresh and
    replaces the folder only once the new copy is complete and verified. ``mirror`` (or
    $DISTKG_DATA_MIRROR) replaces every public URL with ``{mirror}/{name}/{relpath}``.
    ``timeout`` is the socket timeout in seconds for each connect and read.
    """
    spec = sources.get_dataset(name)
    data_root = _data_root(root)
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    target = data_root / spec.name
    if target.exists() and not force:
        problems = verify_dataset(spec.name, data_root) if target.is_dir() else [f"{target} is not a folder"]
        if problems:
            raise DataError(
                f"{target} exists but does not match distkg/data/sources.py: {'; '.join(problems)}. "
                f"Download it again with force=True (`distkg data download {spec.name} --force`)"
            )
        return target
    try:
        data_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.partial-", dir=data_root))
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the dataset folder should not be private
    except OSError as e:
        raise DataError(f"cannot create a download folder in {data_root}: {e}") from e
    try:
        nbytes = _fetch_spec(spec, tmp, mirror, progress, timeout)
        installed = _install(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not installed:
        shutil.rmtree(tmp, ignore_errors=True)
        problems = verify_dataset(spec.name, data_root)
        if problems:
            raise DataError(f"{target} appeared during the download and does not verify: {'; '.join(problems)}")
    if progress:
        print(f"{spec.name}: {len(spec.downloadable_files)} files, {nbytes / 1e6:.1f} MB, sha256 verified -> {target}",
              file=sys.stderr, flush=True)
    return target
