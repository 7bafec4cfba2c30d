"""Run this part unless it is finished: the one mechanism of ``distkg run`` and ``distkg reproduce``.

A part is a run folder and the work that fills it (train a teacher, fine-tune the LLM teacher,
distil a student). It is finished when its metrics.json exists (distkg.runfolder.read_metrics) and
the part's config raises no budget of the one it ran with (epochs, LoRA steps: distkg.runfolder.
raised_budgets): then it is read, never run again. A raised budget runs it on from its checkpoints,
as `distkg train` continues a finished run; reading it instead would leave a folder whose
config.yaml no longer says what its metrics are of. Otherwise this process claims it (distkg.experiments.claims) so that
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

from distkg.config import RunConfig
from distkg.experiments.claims import claim, holding, wait_for
from distkg.runfolder import prepare_folder, raised_budgets, read_metrics

log = logging.getLogger("distkg")


@dataclass(frozen=True)
class Part:
    """One part of an experiment: a name for logs and reports, its run folder, and the work that
    fills the folder (returning the part's metrics)."""

    name: str
    folder: Path
    work: Callable[[], dict]
    config: RunConfig | None = None  # what the work runs with (None: finished whenever metrics.json exists)
    kind: str = "kg"  # of the run in ``folder`` (distkg.runfolder.SLICES), when ``config`` is given

    @property
    def budgets(self) -> tuple[str, ...]:
        return BUDGETS.get(self.kind, ())


# The budget keys of each kind of run: raised, a finished run of that kind runs on.
BUDGETS = {"kg": ("train.epochs",), "llm": ("llm.steps", "llm.max_minutes"), "student": ("distill.stages.*.epochs",)}


def finished(part: Part, say: bool = True) -> dict | None:
    """The part's metrics when it is finished for its config (module docstring), else None."""
    done = read_metrics(part.folder)
    if done is not None and part.config is not None and (raised := raised_budgets(part.folder, part.config, part.budgets)):
        if say:
            log.info("%s %s finished with a smaller budget (%s): it continues from its checkpoints", part.name,
                     part.folder, "; ".join(raised))
        return None
    return done


@dataclass(frozen=True)
class Outcome:
    """What became of a part: its metrics, and the wall seconds its work took here (None: it was
    finished before and only read)."""

    metrics: dict
    seconds: float | None


def run_part(part: Part, wait: bool = True, checked: bool = False) -> Outcome | None:
    """The part's metrics, running its work first unless it is finished (module docstring). None when
    another live process holds it and ``wait`` is false: it is left to that process. A part with a
    config has its folder checked first (distkg.runfolder.prepare_folders), unless ``checked`` (a
    pipeline checks all its parts before any runs); its work is then to be told checked=True."""
    if part.config is not None and not checked:
        prepare_folder(part.config, part.folder, part.kind, write=False)
    if finished(part, say=False) is None:
        if wait:
            wait_for(part.folder, part.name)
        elif (holder := claim(part.folder)) is not None:
            log.info("%s %s is being trained by %s; left to it", part.name, part.folder, holder)
            return None
    with holding(part.folder):  # released however the work ends, so a failed part may be retried at once
        if (done := finished(part)) is not None:
            return Outcome(done, None)
        started = time.perf_counter()
        metrics = part.work()
        return Outcome(metrics, round(time.perf_counter() - started, 1))
