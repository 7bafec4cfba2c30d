"""What a student reads from its teachers, computed once per teacher run and reused by every method and seed.

Why representations and not scores: a 1-vs-all soft target is a [queries, entities] matrix (65k x
12.5k floats = 3.3 GB on Wikidata12k, 1.2 TB on ICEWS18's train set), but it is the product of a
[queries, D] query table and an [entities, D] candidate table. Those two are cached (104 MB at
400-d on Wikidata12k) and each batch's scores are one matmul, exact, with no top-k truncation
(or, where the whole matrix fits in SCORE_CACHE_BYTES, one row gather from it, built at start-up).

  KGTeacher   a `distkg train` run: its best weights' query representation of every training
              query (both directions) and its candidate table.
  LLMTables   a `distkg llm train` run: E(p) of every entity, relation and time text plus the
              scoring form, which the fine-tuning wrote to RUN/teacher/tables.pt; P_LLM of any
              query is then a lookup, a product and a softmax.

Where the caches live (distkg.cachedir.derived_folder): not in the teacher's folder, which belongs
to the run that made it, but under the user's cache root in derived/SHA1, SHA1 being the digest of
the file they derive from (the best weights, the exported tables). So a student writes only its own
folder, every student of one teacher shares the caches, a retrained teacher gets new ones, and the
teacher's ``--restart`` removes them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from distkg.cachedir import derived_folder, file_sha1
from distkg.data import TKGDataset
from distkg.training.softmax import Rows
from distkg.distill.losses import TemperedTargets, temper
from distkg.errors import ConfigError, DistkgError
from distkg.llm.teacher import scaled_match
from distkg.models import scoring_form
from distkg.runfolder import MODEL_KINDS, open_finished
from distkg.training.checkpoint import atomic_save

log = logging.getLogger("distkg")

# Below this size (4 GB: every YAGO11k / Wikidata12k / ICEWS14 training query x entity in fp32) the
# teacher's whole score matrix is kept in memory for the run, computed from the cached tables in
# seconds; above it (ICEWS18) each batch's scores are one matmul.
SCORE_CACHE_BYTES = 4 * 2**30


def score_matrix(score: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor,
                 num_entities: int) -> torch.Tensor | None:
    """``score`` of every row in chunks, kept as one [rows, entities] matrix when it fits in
    SCORE_CACHE_BYTES (a row gather beats a 400-d matmul a batch); None when it does not."""
    if len(rows) * num_entities * 4 > SCORE_CACHE_BYTES:
        return None
    with torch.no_grad():
        return torch.cat([score(chunk) for chunk in rows.split(4096)])


def soften_(matrix: torch.Tensor, temperature: float) -> torch.Tensor:
    """matrix <- softmax(matrix / T) row by row, in place and in chunks (a score matrix of GBs has no
    room for a second copy); returns each row's sum of p log p."""
    plogp = torch.empty(len(matrix))
    with torch.no_grad():
        for rows, out in zip(matrix.split(4096), plogp.split(4096)):
            p, out[:] = temper(rows, temperature)
            rows.copy_(p)
    return plogp


class QueryRows:
    """A KG teacher's query representations of the training queries, computed when read (by index,
    or in chunks): what KGTeacher holds instead of the whole [queries, D] table when that would not
    fit in SCORE_CACHE_BYTES (a million-entity graph's 16M training queries at 400-d: 26 GB)."""

    def __init__(self, model: torch.nn.Module, queries: torch.Tensor) -> None:
        self.model, self.queries = model, queries
        self.shape = (len(queries), model.dim)

    def __len__(self) -> int:
        return len(self.queries)

    @torch.no_grad()
    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model.query_repr(self.queries[idx])

    def split(self, n: int):
        return (self[torch.arange(i, min(i + n, len(self)))] for i in range(0, len(self), n))


def _check_dataset(run: Path, what: str, trained_on: str, ds: TKGDataset) -> None:
    if trained_on != ds.name:
        raise ConfigError(f"{what} {run} was trained on {trained_on!r}, but the student's data is {ds.name!r}")


class KGTeacher:
    """A trained KG teacher's outputs on the training queries (``idx`` = row of ``training_queries``).

    Nothing [queries, entities]-sized is built until a loss asks for it: FitNet and RKD read only
    the query and candidate tables. The score matrix is built on the first ``scores`` call, and
    the tempered soft targets (``temper``) are read from soft-targets-T*.pt in the teacher's
    derived folder, written once per (teacher weights, temperature) by whichever run needs them first.
    """

    def __init__(self, run: str | Path, ds: TKGDataset, queries: torch.Tensor) -> None:
        from distkg.runfolder import run_config
        from distkg.training.checkpoint import Checkpoints
        from distkg.training.trainer import build_model

        run = Path(run)
        _, trained = open_finished(run, "distill.teacher_run", MODEL_KINDS)
        _check_dataset(run, "distill.teacher_run", trained["dataset"], ds)
        cfg = run_config(run)
        self.model = build_model(cfg, ds)
        Checkpoints(run / "checkpoints").load_best(self.model)
        self.model.eval().requires_grad_(False)
        # every cache of this teacher is keyed by the weights' bytes themselves: a retrained or copied-over
        # teacher differs there even where the file's size and mtime agree
        best = file_sha1(run / "checkpoints" / "best.pt")
        key = {"best_sha1": best, "queries": len(queries)}
        path = derived_folder(best) / "train_queries.pt"
        cached = torch.load(path, weights_only=True) if path.is_file() else None
        if len(queries) * self.model.dim * 4 > SCORE_CACHE_BYTES:  # e.g. 16M queries x 400-d: 26 GB
            log.info("the teacher's %d training-query representations would not fit in %.0f GB: computed per batch",
                     len(queries), SCORE_CACHE_BYTES / 2**30)
            self.query, self.table = QueryRows(self.model, queries), self.model.candidate_table()
        elif cached is not None and cached["key"] == key:
            self.query, self.table = cached["query"], cached["table"]
        else:
            log.info("computing teacher outputs for %d training queries -> %s (once per teacher run)", len(queries), path)
            self._compute_tables(queries)
            atomic_save({"key": key, "query": self.query, "table": self.table}, path)
        self._start(ds, path.parent, {**key, "entities": ds.num_entities})

    @classmethod
    def from_model(cls, model: torch.nn.Module, ds: TKGDataset, queries: torch.Tensor) -> KGTeacher:
        """A teacher from weights in memory, with no run folder and no cache on disk (benchmarks)."""
        self = cls.__new__(cls)
        self.model = model.eval().requires_grad_(False)
        self._compute_tables(queries)
        self._start(ds, None, {})
        return self

    def _compute_tables(self, queries: torch.Tensor) -> None:
        with torch.no_grad():
            self.query = torch.cat([self.model.query_repr(c) for c in queries.split(4096)])
            self.table = self.model.candidate_table()

    def _start(self, ds: TKGDataset, targets_folder: Path | None, targets_key: dict) -> None:
        self.num_entities = ds.num_entities
        self.targets_folder, self.targets_key = targets_folder, targets_key
        self._all_scores: torch.Tensor | None = None
        self._built = False
        self.tempered: TemperedTargets | None = None

    @property
    def all_scores(self) -> torch.Tensor | None:
        """The [queries, entities] score matrix when it fits in SCORE_CACHE_BYTES, built on first use."""
        if not self._built:
            self._built = True
            self._all_scores = score_matrix(lambda q: self.model.match(q, self.table), self.query, self.num_entities)
        return self._all_scores

    @torch.no_grad()
    def scores(self, idx: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """[B, E] teacher scores of the training queries ``idx`` over all entities; ``columns``: over
        those entities only, [B, C] (a sampled loss's candidates)."""
        if columns is not None:
            return self.model.match(self.query[idx], self.table[columns])
        if self.all_scores is not None:
            return self.all_scores[idx]
        return self.model.match(self.query[idx], self.table)

    def temper(self, temperature: float) -> bool:
        """Soft targets softmax(scores / T) of every training query, so a run whose only reader of
        teacher scores is kd at T gathers them instead of computing them each step: read from the
        teacher's derived folder when the key matches, else computed (in place of the score matrix)
        and written there. Scores are then recomputed per batch if asked for; False when the matrix
        does not fit in SCORE_CACHE_BYTES."""
        if len(self.query) * self.num_entities * 4 > SCORE_CACHE_BYTES:
            return False
        path = self.targets_folder / f"soft-targets-T{temperature:g}.pt" if self.targets_folder else None
        key = {**self.targets_key, "temperature": float(temperature)}
        cached = _load_keyed(path, key) if path is not None else None
        if cached is not None:
            self.tempered = TemperedTargets(temperature, cached["probs"], cached["plogp"])
            self._all_scores, self._built = None, True
            return True
        probs = self.all_scores
        self._all_scores, self._built = None, True  # the matrix becomes the targets (no room for two)
        self.tempered = TemperedTargets(temperature, probs, soften_(probs, temperature))
        if path is not None:
            log.info("writing the teacher's soft targets at T=%g -> %s (once per teacher and temperature)", temperature, path)
            atomic_save({"key": key, "probs": probs, "plogp": self.tempered.plogp}, path)
        return True

    def targets(self, idx: torch.Tensor, device: torch.device | str = "cpu", rows: bool = False) -> TemperedTargets:
        """The tempered soft targets of training queries ``idx`` (after ``temper``), on ``device``;
        ``rows``: left unread in the cache (distkg.training.softmax.Rows, read in place by the
        losses' kernel instead of copied into a [B, E] tensor each step; on the CPU only)."""
        t = self.tempered
        if rows and torch.device(device).type == "cpu":
            return TemperedTargets(t.temperature, Rows(t.probs, idx), t.plogp[idx])
        return TemperedTargets(t.temperature, t.probs[idx].to(device), t.plogp[idx].to(device))

    def entities(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]


def _load_keyed(path: Path, key: dict) -> dict | None:
    """A cache file's contents when its key is ``key``, memory-mapped (processes of a grid share the
    pages); None when it is missing, unreadable or stale."""
    if not path.is_file():
        return None
    try:
        cached = torch.load(path, weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError) as err:
        log.warning("ignoring unreadable cache %s (%s); it is rebuilt", path, err)
        return None
    return cached if cached.get("key") == key else None


class LLMTables:
    """P_LLM for any query from a fine-tuned LLM teacher's exported embedding tables."""

    def __init__(self, run: str | Path, ds: TKGDataset, queries: torch.Tensor | None = None,
                 temperature: float = 1.0, cache: bool = True) -> None:
        """``cache``: keep P_LLM of every training query in the tables' derived folder, probs-T*.pt
        (False: in memory only)."""
        run = Path(run)
        path = run / "teacher" / "tables.pt"
        if not path.is_file():
            open_finished(run, "distill.llm_run", ("llm",))
            raise DistkgError(f"distill.llm_run={str(run)!r}: {path} is missing (`distkg llm train` writes it "
                              "before metrics.json); fine-tune that teacher again with --restart")
        t = torch.load(path, weights_only=True)
        _check_dataset(run, "distill.llm_run", t["dataset"], ds)
        if t["entity"].shape[0] != ds.num_entities:
            raise ConfigError(f"distill.llm_run {run}: {t['entity'].shape[0]} entities, the data has {ds.num_entities}")
        self._start(t, ds, queries, temperature, path if cache else None)

    @classmethod
    def from_tables(cls, tables: dict, ds: TKGDataset, queries: torch.Tensor | None = None,
                    temperature: float = 1.0) -> LLMTables:
        """Tables in memory (entity, relation, time, form, logit_scale), no run folder, no cache on disk (benchmarks)."""
        self = cls.__new__(cls)
        self._start(tables, ds, queries, temperature, None)
        return self

    def _start(self, t: dict, ds: TKGDataset, queries: torch.Tensor | None, temperature: float,
               path: Path | None) -> None:
        self.query_mode = t.get("query_mode", "composed")
        self.entity = t["entity"]
        if self.query_mode == "text":  # E(p_q) of every training query by its row, of the others by their key
            self.train_query = t["train_query"]
            self.query_table = QueryTable(t["query_keys"], t["query"], ds)
        else:
            self.relation, self.time = t["relation"], t["time"]
        self.form, self.log_scale = t["form"], t["logit_scale"]
        self.scoring = scoring_form(self.form)  # the backbone's own scoring, as the teacher scored in fine-tuning
        # P_LLM of every training query x entity at ``temperature``, when queries are given and it fits
        self.temperature = temperature
        self.all_probs = self._all_probs(path, queries, ds.num_entities) if queries is not None else None

    def _all_probs(self, tables: Path | None, queries: torch.Tensor, num_entities: int) -> torch.Tensor | None:
        """P_LLM of every training query, read from probs-T*.pt in the tables' derived folder when it was
        made from these tables, these queries and this temperature, else computed and written there."""
        digest = file_sha1(tables) if tables is not None else None
        path = derived_folder(digest) / f"probs-T{self.temperature:g}.pt" if digest is not None else None
        key = {"tables_sha1": digest, "queries": len(queries), "entities": num_entities,
               "temperature": float(self.temperature)} if digest is not None else {}
        if path is not None and (cached := _load_keyed(path, key)) is not None:
            return cached["probs"]
        if self.query_mode == "text":  # training queries by their rows (each text leaves its own fact out)
            probs = score_matrix(lambda rows: self.scores(queries[rows], rows), torch.arange(len(queries)), num_entities)
        else:
            probs = score_matrix(self.scores, queries, num_entities)
        if probs is not None:
            soften_(probs, self.temperature)
            if path is not None:
                atomic_save({"key": key, "probs": probs}, path)
        return probs

    @torch.no_grad()
    def scores(self, q: torch.Tensor, idx: torch.Tensor | None = None, columns: torch.Tensor | None = None) -> torch.Tensor:
        """[B, E] LLM teacher scores of queries ``q`` ([B, 4]), the interval rule included; ``idx``: their
        rows among the training queries (a teacher that reads queries as text needs them for those);
        ``columns``: over those entities only, [B, C]."""
        if self.query_mode == "text":
            query = self.train_query[idx] if idx is not None else self.query_table.lookup(q)
        else:
            query = self.scoring.table_query(self.entity, self.relation, self.time, q)
        return scaled_match(self.scoring, self.log_scale, query, self.entity if columns is None else self.entity[columns])

    def probs(self, q: torch.Tensor, temperature: float = 1.0, idx: torch.Tensor | None = None,
              rows: bool = False, columns: torch.Tensor | None = None) -> torch.Tensor | Rows:
        """P_LLM of queries ``q``; ``idx``: their rows among the training queries given at construction
        (``rows``: left unread there, as distkg.training.softmax.Rows, when they are cached); ``columns``: the
        softmax over those entities only (a sampled loss's candidates)."""
        if columns is None and idx is not None and self.all_probs is not None and temperature == self.temperature:
            return Rows(self.all_probs, idx) if rows else self.all_probs[idx]
        return torch.softmax(self.scores(q, idx, columns) / temperature, dim=1)


class QueryTable:
    """E(p_q) of a teacher that reads queries as text, for the validation and test queries it was exported
    with, looked up by row: sorted int64 codes and a binary search."""

    def __init__(self, keys: torch.Tensor, vectors: torch.Tensor, ds: TKGDataset) -> None:
        self.sizes = (2 * ds.num_relations, ds.num_times, ds.num_times)
        codes = self.encode(keys)
        order = torch.argsort(codes)
        self.codes, self.vectors = codes[order], vectors[order]

    def encode(self, q: torch.Tensor) -> torch.Tensor:
        r2, nt, _ = self.sizes
        q = q.long()
        return ((q[:, 0] * r2 + q[:, 1]) * nt + q[:, 2]) * nt + q[:, 3]

    def lookup(self, q: torch.Tensor) -> torch.Tensor:
        codes = self.encode(q.cpu())
        at = torch.searchsorted(self.codes, codes).clamp_max(len(self.codes) - 1)
        missing = self.codes[at] != codes
        if missing.any():
            row = q[missing.nonzero()[0, 0]].tolist()
            raise DistkgError(f"query {row} (entity, relation', t0, t1) is not one of the validation or test queries "
                              "this LLM teacher's tables were exported with (training queries are read by their rows); "
                              "a teacher that reads queries as text needs the LLM for any other query "
                              "(distkg.llm.train.load_teacher)")
        return self.vectors[at]
