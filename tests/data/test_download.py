"""distkg.data.download against a local HTTP server (127.0.0.1 only; no internet needed).

The server serves per-test copies of the reference data (found as tests/conftest.py data_roots says)
as a mirror; the zip-archive path is tested with a tiny registry entry and a zip built here.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import shutil
import socket
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from distkg.data import load_dataset, sources
from distkg.data.download import MIRROR_ENV, download_dataset, extract_members, verify_dataset
from distkg.data.sources import DatasetSpec, FileEntry
from distkg.errors import DataError
from tests.conftest import shared_data_root

SHARED = shared_data_root() or Path(os.environ.get("DISTKG_TEST_SHARED_DATA", "shared/data"))  # where the CLI finds data
YAGO_FILES = [f.path for f in sources.DATASETS["yago11k"].files]


@pytest.fixture(autouse=True)
def _no_env_mirror(monkeypatch):
    monkeypatch.delenv(MIRROR_ENV, raising=False)


@pytest.fixture
def shared() -> Path:
    if not (SHARED / "yago11k").is_dir():
        pytest.skip(f"reference data not found at {SHARED} (set DISTKG_TEST_SHARED_DATA to the shared/data folder)")
    return SHARED


@dataclass
class Server:
    docroot: Path
    url: str
    requests: list[str] = field(default_factory=list)

    def mirror(self, tag: str, datasets: list[str], source: Path) -> str:
        """Serve copies of ``source/<dataset>`` under ``/<tag>/``; returns the mirror base URL."""
        for name in datasets:
            shutil.copytree(source / name, self.docroot / tag / name)
        return f"{self.url}/{tag}"

    def seen(self, tag: str) -> list[str]:
        return [p for p in self.requests if p.startswith(f"/{tag}/")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    docroot = tmp_path_factory.mktemp("www")
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # keep the test output quiet
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(docroot)))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(docroot, f"http://127.0.0.1:{httpd.server_address[1]}", requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def leftovers(root: Path, name: str) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(f".{name}.")) if root.exists() else []


# ------------------------------------------------------------------------------------- registry
def test_registry_matches_reference_copies(shared):
    for name, spec in sources.DATASETS.items():
        assert verify_dataset(name, shared) == [], name
        for entry in spec.files:
            path = shared / name / entry.path
            assert path.is_file() and path.stat().st_size == entry.size, (name, entry.path)
            if entry.url is not None:  # pinned to a commit on a public repository
                assert re.match(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/[0-9a-f]{40}/", entry.url), entry.url
        assert all(f.required for f in spec.files if f.path in {"train.txt", "valid.txt", "test.txt"})
    assert not sources.DATASETS["wikidata12k"].file("entity_labels_partial_fb15k.tsv").downloadable
    assert {f.member for f in sources.DATASETS["icews18"].files} >= {"train.txt", "entity2id.txt"}


def test_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match=r"unknown dataset 'nope'; known: icews14, icews18, wikidata12k, yago11k"):
        download_dataset("nope", tmp_path, mirror="http://127.0.0.1:9", progress=False)
    with pytest.raises(DataError, match="known: icews14"):
        verify_dataset("nope", tmp_path)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ downloads
def test_download_from_mirror_and_load(server, shared, tmp_path):
    mirror = server.mirror("ok", ["yago11k"], shared)
    root = tmp_path / "data"
    folder = download_dataset("yago11k", root, mirror=mirror, progress=False)
    assert folder == root / "yago11k"
    assert sorted(server.seen("ok")) == sorted(f"/ok/yago11k/{p}" for p in YAGO_FILES)
    for rel in YAGO_FILES:
        assert (folder / rel).read_bytes() == (shared / "yago11k" / rel).read_bytes(), rel
    assert leftovers(root, "yago11k") == []
    assert verify_dataset("yago11k", root) == []
    ds = load_dataset("yago11k", root)
    assert [len(ds.splits[s]) for s in ("train", "valid", "test")] == [16408, 2050, 2051]


def test_corrupt_file_is_rejected_and_nothing_is_left(server, shared, tmp_path):
    mirror = server.mirror("corrupt", ["yago11k"], shared)
    served = server.docroot / "corrupt" / "yago11k" / "train.txt"
    data = bytearray(served.read_bytes())
    data[1000] = ord("7") if data[1000] != ord("7") else ord("8")
    served.write_bytes(bytes(data))
    root = tmp_path / "data"
    with pytest.raises(DataError) as info:
        download_dataset("yago11k", root, mirror=mirror, progress=False)
    msg = str(info.value)
    assert "train.txt" in msg and "sha256" in msg and f"{mirror}/yago11k/train.txt" in msg
    assert sources.DATASETS["yago11k"].file("train.txt").sha256 in msg
    assert hashlib.sha256(bytes(data)).hexdigest() in msg
    assert not (root / "yago11k").exists()
    assert leftovers(root, "yago11k") == []


def test_http_404_gives_clear_error_and_leaves_nothing(server, shared, tmp_path):
    mirror = server.mirror("missing", ["yago11k"], shared)
    (server.docroot / "missing" / "yago11k" / "relation2id.txt").unlink()
    root = tmp_path / "data"
    with pytest.raises(DataError, match=r"yago11k/relation2id\.txt: download from http://.*/relation2id\.txt failed: HTTP 404"):
        download_dataset("yago11k", root, mirror=mirror, progress=False)
    assert not (root / "yago11k").exists()
    assert leftovers(root, "yago11k") == []


def test_connection_refused_leaves_nothing(tmp_path):
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match=r"yago11k/.*cannot connect"):
        download_dataset("yago11k", tmp_path, mirror=f"http://127.0.0.1:{port}", progress=False, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_existing_dataset_is_not_downloaded_again_and_force_replaces_it(server, shared, tmp_path):
    mirror = server.mirror("again", ["yago11k"], shared)
    root = tmp_path / "data"
    download_dataset("yago11k", root, mirror=mirror, progress=False)
    n = len(server.seen("again"))
    assert download_dataset("yago11k", root, mirror=mirror, progress=False) == root / "yago11k"
    assert len(server.seen("again")) == n  # verified locally, no request

    # a damaged copy is an error without force ...
    (root / "yago11k" / "valid.txt").write_text("damaged\n")
    with pytest.raises(DataError, match=r"valid\.txt: sha256 mismatch.*force=True"):
        download_dataset("yago11k", root, mirror=mirror, progress=False)
    assert len(server.seen("again")) == n
    # ... and force downloads afresh and replaces it
    download_dataset("yago11k", root, mirror=mirror, force=True, progress=False)
    assert len(server.seen("again")) == 2 * n
    assert verify_dataset("yago11k", root) == []
    assert leftovers(root, "yago11k") == []


def test_failed_forced_download_keeps_the_existing_copy(server, shared, tmp_path):
    mirror = server.mirror("keep", ["yago11k"], shared)
    root = tmp_path / "data"
    download_dataset("yago11k", root, mirror=mirror, progress=False)
    (server.docroot / "keep" / "yago11k" / "test.txt").write_text("not the test split\n")
    with pytest.raises(DataError, match=r"test\.txt: sha256 mismatch"):
        download_dataset("yago11k", root, mirror=mirror, force=True, progress=False)
    assert verify_dataset("yago11k", root) == []
    assert leftovers(root, "yago11k") == []


def test_env_mirror_env_root_and_progress(server, shared, tmp_path, monkeypatch, capsys):
    mirror = server.mirror("env", ["yago11k"], shared)
    monkeypatch.setenv(MIRROR_ENV, mirror)
    monkeypatch.setenv("DISTKG_DATA", str(tmp_path / "envroot"))
    folder = download_dataset("yago11k")
    assert folder == tmp_path / "envroot" / "yago11k"
    assert len(server.seen("env")) == len(YAGO_FILES)
    err = capsys.readouterr().err
    assert "yago11k/train.txt" in err and "sha256 verified" in err


def test_icews18_from_mirror_uses_plain_files(server, shared, tmp_path):
    mirror = server.mirror("plain", ["icews18"], shared)
    folder = download_dataset("icews18", tmp_path, mirror=mirror, progress=False)
    assert sorted(server.seen("plain")) == sorted(f"/plain/icews18/{f.path}" for f in sources.DATASETS["icews18"].files)
    assert verify_dataset("icews18", tmp_path) == []
    assert not (folder / "stat.txt").exists()


def test_verify_reports_missing_folder_and_files(shared, tmp_path):
    assert verify_dataset("yago11k", tmp_path)[0].endswith("dataset folder not found")
    shutil.copytree(shared / "wikidata12k", tmp_path / "wikidata12k")
    (tmp_path / "wikidata12k" / "entity2id.txt").unlink()
    (tmp_path / "wikidata12k" / "entity_labels_partial_fb15k.tsv").unlink()  # optional: not a problem
    assert verify_dataset("wikidata12k", tmp_path) == ["entity2id.txt: required file missing"]


# -------------------------------------------------------------------------------------- archives
TINY = {"train.txt": b"0\t0\t1\t0\n1\t0\t0\t24\n", "valid.txt": b"0\t0\t1\t48\n", "entity2id.txt": b"a\t0\r\nb\t1\r\n"}


def tiny_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tiny_spec(url: str) -> DatasetSpec:
    files = tuple(
        FileEntry(name, hashlib.sha256(data).hexdigest(), len(data), True, url, member=name) for name, data in TINY.items()
    )
    return DatasetSpec(name="tinyzip", files=files, source="test", license="test")


def test_extract_members_verifies_each_member(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(tiny_zip({f"TINY/{k}": v for k, v in TINY.items()} | {"TINY/stat.txt": b"2\t1"}))
    spec = tiny_spec("http://example.invalid/a.zip")
    out = tmp_path / "out"
    written = extract_members(archive, spec.files, out, url="http://example.invalid/a.zip")
    assert sorted(p.name for p in written) == sorted(TINY)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == TINY  # only the listed members

    bad = FileEntry("valid.txt", "0" * 64, 1, True, "http://example.invalid/a.zip", member="valid.txt")
    with pytest.raises(DataError, match=r"valid\.txt \(member 'TINY/valid\.txt'\): sha256 mismatch for "
                                        r"http://example\.invalid/a\.zip: expected 0{64}, actual [0-9a-f]{64}"):
        extract_members(archive, [bad], tmp_path / "out2")
    absent = FileEntry("test.txt", "0" * 64, 1, True, "x", member="test.txt")
    with pytest.raises(DataError, match=r"has no member 'test\.txt'"):
        extract_members(archive, [absent], tmp_path / "out3")


def test_archive_download_through_registry(server, tmp_path, monkeypatch):
    (server.docroot / "zip").mkdir()
    (server.docroot / "zip" / "data.zip").write_bytes(tiny_zip({f"TINY/{k}": v for k, v in TINY.items()}))
    url = f"{server.url}/zip/data.zip"
    monkeypatch.setitem(sources.DATASETS, "tinyzip", tiny_spec(url))
    folder = download_dataset("tinyzip", tmp_path, progress=False)
    assert server.seen("zip") == ["/zip/data.zip"]  # one request for all members
    assert sorted(p.name for p in folder.iterdir()) == sorted(TINY)  # the zip itself is gone
    assert verify_dataset("tinyzip", tmp_path) == []

    # a member that does not match its hash: nothing is left behind
    (server.docroot / "zip" / "data.zip").write_bytes(tiny_zip({f"TINY/{k}": v + b"x" for k, v in TINY.items()}))
    with pytest.raises(DataError, match=r"tinyzip/train\.txt \(member 'TINY/train\.txt'\): sha256 mismatch"):
        download_dataset("tinyzip", tmp_path / "other", progress=False)
    assert leftovers(tmp_path / "other", "tinyzip") == [] and not (tmp_path / "other" / "tinyzip").exists()

    # not a zip at all
    (server.docroot / "zip" / "data.zip").write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match=r"archive from http://.*/data\.zip is not a readable zip"):
        download_dataset("tinyzip", tmp_path / "third", progress=False)
    assert list((tmp_path / "third").iterdir()) == []
