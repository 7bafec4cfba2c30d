"""The second teacher: where the LLM terms (L2, L3, and ``llm_kd``) read P_LLM from, any finished run.

``distill.llm_run`` names a folder; the kind of run in it (distkg.runfolder.run_kind) decides:

  llm       a `distkg llm train` run: P_LLM proper (distkg.distill.teachers.LLMTables)
  kg        a `distkg train` run, e.g. the 400-d teacher of the OTHER backbone: softmax(scores / T)
  ensemble  a `distkg ensemble` run (distkg.experiments.ensemble): the mixture w P_a + (1 - w) P_b of
            its two members, each at its calibrated temperature times T, at the weight it chose on validation

Why one code path for all three: the strength sweep (docs/RESULTS.md) asks at which strength of the
second teacher the paper's terms start to pay; feeding them teachers of known strength (an LLM, a
different KG model ranking above the student, their ensemble) through exactly the path P_LLM takes
answers that without waiting for a better LLM.

Every kind gives ``probs(q, temperature, idx, rows)`` for the student's training queries (``idx``:
rows of ``training_queries``), read from one [queries, entities] matrix at ``distill.llm_temperature``
where it fits in memory (SCORE_CACHE_BYTES), computed per batch otherwise.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from distkg.data import TKGDataset
from distkg.training.softmax import Rows
from distkg.cachedir import DERIVED_SOURCES, derived_folder, file_sha1
from distkg.distill.teachers import SCORE_CACHE_BYTES, KGTeacher, LLMTables, _check_dataset, _load_keyed
from distkg.errors import DistkgError
from distkg.runfolder import MODEL_KINDS, open_finished
from distkg.training.checkpoint import atomic_save

log = logging.getLogger("distkg")

ENSEMBLE_FILE = "ensemble.json"  # what `distkg ensemble` writes beside metrics.json: members and weight


class KGProbs:
    """A `distkg train` run as a second teacher: P = softmax(scores / T) of the KG model."""

    def __init__(self, run: str | Path, ds: TKGDataset, queries: torch.Tensor, temperature: float = 1.0,
                 cache: bool = True) -> None:
        self.teacher = KGTeacher(run, ds, queries)
        if not cache:  # an ensemble member at its calibrated temperature: the mixture is what gets kept
            self.teacher.targets_folder = None
        self.temperature = temperature
        fits = self.teacher.temper(temperature)  # the run's soft-target cache at this temperature
        self.all_probs = self.teacher.tempered.probs if fits else None

    def probs(self, q: torch.Tensor, temperature: float = 1.0, idx: torch.Tensor | None = None,
              rows: bool = False, columns: torch.Tensor | None = None) -> torch.Tensor | Rows:
        """``columns``: the softmax over those entities only (a sampled loss's candidates)."""
        if idx is None:
            raise ValueError("a KG second teacher answers training queries by their index (idx)")
        if columns is None and self.all_probs is not None and temperature == self.temperature:
            return Rows(self.all_probs, idx) if rows else self.all_probs[idx]
        return torch.softmax(self.teacher.scores(idx, columns) / temperature, dim=1)


class EnsembleProbs:
    """A `distkg ensemble` run as a second teacher: w P_a + (1 - w) P_b, both at temperature T. The
    mixture of every training query is kept in the derived folder of RUN/ensemble.json
    (distkg.cachedir.derived_folder), so the members are opened only to make it, or where it
    does not fit in memory."""

    def __init__(self, run: str | Path, ds: TKGDataset, queries: torch.Tensor, temperature: float = 1.0) -> None:
        run = Path(run)
        spec = read_ensemble(run)
        _check_dataset(run, "distill.llm_run", spec["dataset"], ds)
        self.run, self.ds, self.queries = run, ds, queries
        self.weight, self.temperature, self.spec = float(spec["weight"]), temperature, spec
        self._members: list | None = None
        self.all_probs = self._mixture()

    @property
    def members(self) -> list:
        """The members as second teachers, each at its calibrated temperature times this one's."""
        if self._members is None:
            self._members = [open_second(m, self.ds, self.queries, self.temperature * t, f"{self.run}/{ENSEMBLE_FILE} member",
                                         cache=False) for m, t in zip(self.spec["members"], self.member_temperatures)]
        return self._members

    @property
    def member_temperatures(self) -> list[float]:
        return [float(t) for t in self.spec.get("temperatures", [1.0, 1.0])]

    def _mixture(self) -> torch.Tensor | None:
        """The mixture of every training query, read from or written to the ensemble's derived folder under
        a key of the members' weights files and the ensemble's weight; None where it does not fit in memory."""
        n, e = len(self.queries), self.ds.num_entities
        if n * e * 4 > SCORE_CACHE_BYTES:
            return None
        path = derived_folder(file_sha1(self.run / ENSEMBLE_FILE)) / f"probs-T{self.temperature:g}.pt"
        key = {"members": [_member_key(Path(m)) for m in self.spec["members"]], "weight": self.weight,
               "member_temperatures": self.member_temperatures, "queries": n, "entities": e,
               "temperature": float(self.temperature)}
        if (cached := _load_keyed(path, key)) is not None:
            return cached["probs"]
        if any(m.all_probs is None for m in self.members):
            return None
        a, b = (m.all_probs for m in self.members)
        mix = torch.empty(n, e)
        for rows, pa, pb in zip(mix.split(4096), a.split(4096), b.split(4096)):
            torch.add(pa * self.weight, pb, alpha=1 - self.weight, out=rows)
        log.info("writing the ensemble's mixture at T=%g -> %s (once per ensemble and temperature)", self.temperature, path)
        atomic_save({"key": key, "probs": mix}, path)
        return mix

    def probs(self, q: torch.Tensor, temperature: float = 1.0, idx: torch.Tensor | None = None,
              rows: bool = False, columns: torch.Tensor | None = None) -> torch.Tensor | Rows:
        """``columns``: the mixture restricted to those entities and renormalised (as a member's softmax
        over them is its whole row restricted and renormalised)."""
        if columns is not None:
            p = self.probs(q, temperature, idx)[:, columns]
            return p / p.sum(dim=1, keepdim=True)
        if idx is not None and self.all_probs is not None and temperature == self.temperature:
            return Rows(self.all_probs, idx) if rows else self.all_probs[idx]
        a, b = (torch.as_tensor(m.probs(q, temperature * t, idx)) for m, t in zip(self.members, self.member_temperatures))
        return a * self.weight + b * (1 - self.weight)


def _member_key(run: Path) -> str:
    """What identifies a member's outputs: its best weights (KG) or its exported tables (LLM)."""
    for name in DERIVED_SOURCES:
        if (run / name).is_file():
            return file_sha1(run / name)
    return str(run)


def read_ensemble(run: Path) -> dict:
    """A finished `distkg ensemble` run's spec (members, weight, dataset), or a clear error."""
    path = run / ENSEMBLE_FILE
    try:
        spec = json.loads(path.read_text())
        members, weight = spec["members"], float(spec["weight"])
        spec["dataset"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DistkgError(f"{path}: not a readable ensemble spec ({type(e).__name__}: {e}); run `distkg ensemble` "
                          f"again with --out {run}") from None
    if len(members) != 2 or not 0 <= weight <= 1:
        raise DistkgError(f"{path}: expected two members and a weight in [0, 1], got {members} and {weight}")
    return spec


def open_second(run: str | Path, ds: TKGDataset, queries: torch.Tensor, temperature: float = 1.0,
                what: str = "distill.llm_run", cache: bool = True):
    """The second teacher in ``run`` (module docstring), or an error naming the folder and what it holds.
    ``cache``: keep its [queries, entities] matrix in its derived folder (False: in memory only)."""
    run = Path(run)
    kind, _ = open_finished(run, what, ("llm", *MODEL_KINDS, "ensemble"))
    log.info("second teacher (P_LLM of the LLM terms): %s run %s", kind, run)
    if kind == "llm":
        return LLMTables(run, ds, queries, temperature, cache=cache)
    if kind in MODEL_KINDS:
        return KGProbs(run, ds, queries, temperature, cache=cache)
    return EnsembleProbs(run, ds, queries, temperature)
