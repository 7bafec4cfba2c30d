"""Run this part unless it is finished: the one mechanism of ``distkg run`` and ``distkg reproduce``.

A part is a run folder and the work that fills it (train a teacher, fine-tune the LLM teacher,
distil a student). It is finished when its metrics.json exists (distkg.runfolder.read_metrics): then
it is read, never run again. Otherwise this process claims it (distkg.experiments.claims) so that
processes sharing the folders never run one part twice, and runs it; the work resumes from the part's
own checkpoints, so an interrupted part continues where it stopped. A part another live process
holds is waited for (``wait``: a teacher everything after it needs) or left to its holder (a student).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from distkg.experiments.claims import claim, holding, wait_for
from distkg.runfolder import read_metrics

log = logging.getLogger("distkg")


@dataclass(frozen=True)
class Part:
    """One part of an experiment: a name for logs and reports, its run folder, and the work that
    fills the folder (returning the part's metrics)."""

    name: str
    folder: Path
    work: Callable[[], dict]


@dataclass(frozen=True)
class Outcome:
    """What became of a part: its metrics, and the wall seconds its work took here (None: it was
    finished before and only read)."""

    metrics: dict
    seconds: float | None


def run_part(part: Part, wait: bool = True) -> Outcome | None:
    """The part's metrics, running its work first unless it is finished (module docstring). None when
    another live process holds it and ``wait`` is false: it is left to that process."""
    if read_metrics(part.folder) is None:
        if wait:
            wait_for(part.folder, part.name)
        elif (holder := claim(part.folder)) is not None:
            log.info("%s %s is being trained by %s; left to it", part.name, part.folder, holder)
            return None
    with holding(part.folder):  # released however the work ends, so a failed part may be retried at once
        if (done := read_metrics(part.folder)) is not None:
            return Outcome(done, None)
        started = time.perf_counter()
        metrics = part.work()
        return Outcome(metrics, round(time.perf_counter() - started, 1))
