"""The part runner both `distkg run` and `distkg reproduce` use (distkg.experiments.parts): a finished
part is read and never run, an unfinished one runs under a claim that is released however it ends,
and a part another live process holds is left to it or waited for. The work is a small function
writing metrics.json (it stands in for training a model into the folder)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from distkg.experiments import claims
from distkg.experiments.parts import Part, run_part


def writes(folder: Path, mrr: float, calls: list):
    def work() -> dict:
        calls.append(folder)
        assert (folder / "claim").read_text() == f"{socket.gethostname()} {os.getpid()}"  # held while it runs
        metrics = {"mrr": mrr}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        return metrics

    return work


def test_a_part_runs_once_then_is_read(tmp_path):
    calls: list = []
    part = Part("teacher", tmp_path / "t", writes(tmp_path / "t", 0.5, calls))
    first = run_part(part)
    assert first.metrics == {"mrr": 0.5} and first.seconds is not None and calls == [part.folder]
    again = run_part(part)
    assert again.metrics == {"mrr": 0.5} and again.seconds is None and calls == [part.folder]  # read, not run
    assert not (part.folder / "claim").exists()


def test_a_part_another_live_process_holds_is_left_or_waited_for(tmp_path, monkeypatch):
    calls: list = []
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "claim").write_text(f"{socket.gethostname()} {os.getppid()}")  # the parent process: alive
    part = Part("student", folder, writes(folder, 0.25, calls))
    assert run_part(part, wait=False) is None and calls == []  # left to its holder
    monkeypatch.setattr(claims.time, "sleep", lambda s: (folder / "claim").unlink())  # the holder gives it up
    assert run_part(part, wait=True).metrics == {"mrr": 0.25} and calls == [folder]


def test_a_part_that_raises_releases_its_claim(tmp_path):
    def fails() -> dict:
        raise FloatingPointError("loss is NaN")

    part = Part("student", tmp_path / "s", fails)
    with pytest.raises(FloatingPointError):
        run_part(part, wait=False)
    assert not (part.folder / "claim").exists()  # free to retry at once


def test_a_claim_that_cannot_be_written_leaves_no_claim(tmp_path, monkeypatch):
    """A full disk while writing OUT/claim: the error is raised and no empty claim is left (one would
    read as "a process that is writing its claim" to every later command)."""
    import errno

    def full(fd, mode):
        os.close(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(claims.os, "fdopen", full)
    with pytest.raises(OSError, match="No space"):
        claims.claim(tmp_path / "run")
    assert not (tmp_path / "run" / "claim").exists()
    monkeypatch.undo()
    assert claims.claim(tmp_path / "run") is None
