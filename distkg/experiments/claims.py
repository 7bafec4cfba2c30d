"""Claims on run folders, so several processes (one per core, or per node on a shared filesystem)
can share one grid of runs: a process claims a part (RUN/claim: "host pid") before running it,
leaves parts another live process holds, and takes over the claim of a dead process on its own
host. Claims are atomic file creations (O_EXCL), so two processes never both hold one."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from distkg.errors import DistkgError
from distkg.runfolder import read_metrics

log = logging.getLogger("distkg")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(holder: str) -> bool:
    """A claim this process may take: its own, or a dead process's on this host."""
    host, parts = socket.gethostname(), holder.split()
    return holder == f"{host} {os.getpid()}" or (
        len(parts) == 2 and parts[0] == host and parts[1].isdigit() and not _alive(int(parts[1])))


def held_elsewhere(run: Path) -> bool:
    """RUN is unfinished and claimed by another live process (nothing is claimed by asking)."""
    try:
        holder = (run / "claim").read_text().strip()
    except FileNotFoundError:
        return False
    return read_metrics(run) is None and not _stale(holder)


def claim(run: Path) -> str | None:
    """Claim RUN for this process (RUN/claim holds "host pid"); None when claimed, else the holder.
    A claim by a dead process on this host is taken over; one from another host is respected."""
    run.mkdir(parents=True, exist_ok=True)
    path = run / "claim"
    me = f"{socket.gethostname()} {os.getpid()}"
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = path.read_text().strip()
            except FileNotFoundError:
                continue  # released in between
            if _stale(holder):
                path.unlink(missing_ok=True)
                continue
            return holder or "a process that is writing its claim"
        try:
            with os.fdopen(fd, "w") as f:
                f.write(me)
        except BaseException:  # a full disk: an empty claim would read as "being written" forever
            path.unlink(missing_ok=True)
            raise
        return None


def release(run: Path) -> None:
    (run / "claim").unlink(missing_ok=True)


@contextmanager
def holding(run: Path) -> Iterator[None]:
    """Release the claim on RUN however its part ends: a part that raised (a NaN loss, a bad
    config) is free to retry at once, not only after this process has exited."""
    try:
        yield
    finally:
        release(run)


def wait_for(run: Path, what: str) -> None:
    """Wait for a part another process holds to finish (or to be left by a dead holder: then None)."""
    while read_metrics(run) is None and (holder := claim(run)) is not None:
        log.info("%s %s is being trained by %s; waiting (if that process is gone, on another host, remove %s)",
                 what, run, holder, run / "claim")
        time.sleep(30)


@contextmanager
def claimed(out: Path) -> Iterator[None]:
    """OUT for this process alone while a command trains in it, claimed as a grid's parts are (OUT/claim,
    "host pid"; a dead process's claim on this host is taken over): a second `distkg train|distill|llm
    train` (or distkg.api call) on the same OUT stops with one line instead of training the folder twice."""
    if (holder := claim(out)) is not None:
        raise DistkgError(f"{out} is being trained by another process ({holder}); wait for it to finish, or choose "
                          f"another --out (if that process is gone, remove {out / 'claim'})")
    with holding(out):
        yield
