"""`distkg predict`: a trained run answers queries written with names.

A query is ``subject|relation|object|time`` with ``?`` for the one entity asked for:
``Barack Obama|isMarriedTo|?|2005`` asks for the object, ``?|isMarriedTo|Michelle Obama|2005`` for the
subject (answered through the reciprocal relation, as in training and evaluation). Names and times
are resolved by distkg.serving.resolve. Files of queries: TSV (the four fields tab-separated, one
query a line) or JSONL (``{"query": "s|r|o|t"}`` or ``{"subject":, "relation":, "object":, "time":}``).

Which runs: a `distkg train` or `distkg distill` run (students and KG teachers: the best weights),
a `distkg llm train` run (the LLM teacher through its exported embedding tables,
RUN/teacher/tables.pt, so the LLM itself never runs here), and a model folder written by `distkg
export --format hf` (distkg.serving.pretrained: no dataset on disk needed).

``--filter known`` leaves out answers already true in train for the same known entity, relation
and time ids (the query's time buckets / day): what the graph already says is not a prediction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distkg.data import TKGDataset, load_dataset
from distkg.errors import QueryError
from distkg.evaluation.filters import FilterIndex
from distkg.evaluation.queries import QuerySet
from distkg.serving.resolve import NameIndex, TimeMapper

FILTERS = ("none", "known")
ScoreFn = Callable[[torch.Tensor], torch.Tensor]  # [B, 4] query ids -> [B, E] scores


@dataclass(frozen=True)
class Query:
    """One query as written: exactly one of subject / object is None (the entity asked for)."""

    subject: str | None
    relation: str
    object: str | None
    time: str

    @property
    def text(self) -> str:
        return "|".join([self.subject or "?", self.relation, self.object or "?", self.time])


def make_query(subject: str, relation: str, obj: str, time: str, where: str = "query") -> Query:
    """A Query from its four written fields (``?`` marks the entity asked for)."""
    fields = [str(f).strip() for f in (subject, relation, obj, time)]
    asked = [f == "?" for f in fields]
    if asked[1] or asked[3] or asked[0] == asked[2]:
        raise QueryError(f"{where}: {'|'.join(fields)!r}: write '?' as exactly one of the subject or the object "
                         "(s|r|?|t or ?|r|o|t)")
    if not all(fields):
        raise QueryError(f"{where}: {'|'.join(fields)!r}: every field must be written (s|r|o|t, '?' for the one asked)")
    s, r, o, t = fields
    return Query(None if asked[0] else s, r, None if asked[2] else o, t)


def parse_query(text: str, where: str = "query") -> Query:
    """``s|r|?|t`` or ``?|r|o|t`` -> Query; a QueryError naming ``where`` otherwise."""
    fields = text.split("|")
    if len(fields) != 4:
        raise QueryError(f"{where}: {text!r} has {len(fields)} '|'-separated fields; write subject|relation|object|time "
                         "with '?' for the entity asked for, e.g. 'Barack Obama|isMarriedTo|?|2005'")
    return make_query(*fields, where=where)


def query_from_json(obj: object, where: str) -> Query:
    """A Query from decoded JSON: ``{"query": "s|r|o|t"}`` or ``{"subject", "relation", "object", "time"}``."""
    if isinstance(obj, dict) and isinstance(obj.get("query"), str):
        return parse_query(obj["query"], where)
    keys = ("subject", "relation", "object", "time")
    if not isinstance(obj, dict) or any(k not in obj for k in keys):
        raise QueryError(f"{where}: expected {{\"query\": \"s|r|o|t\"}} or an object with keys {', '.join(keys)}")
    return make_query(*(obj[k] for k in keys), where=where)


def _json_line(line: str, where: str) -> Query:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise QueryError(f"{where}: not JSON ({e.msg})") from None
    return query_from_json(obj, where)


def read_queries(path: Path) -> list[Query]:
    """Queries from a TSV (.tsv / .txt) or JSONL (.jsonl / .json) file, one a line; blank lines skipped."""
    if not path.is_file():
        raise QueryError(f"{path}: file not found")
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        if jsonl:
            out.append(_json_line(line, where))
        else:
            fields = line.split("\t")
            if len(fields) != 4:
                raise QueryError(f"{where}: expected 4 tab-separated fields (subject, relation, object, time), got {len(fields)}")
            out.append(make_query(*fields, where=where))
    return out


class Predictor:
    """A run's scores for named queries: resolution, optional train filter, top-k with names."""

    def __init__(self, ds: TKGDataset, score: ScoreFn, max_year: int, kind: str, source: object = None,
                 spec: tuple[str, dict] | None = None) -> None:
        self.ds = ds
        self.spec = spec  # a KG model's registered name and arguments: what save_pretrained records
        self.score = score
        self.source = source if source is not None else score  # the model or tables behind ``score`` (export reads it)
        self.kind = kind  # "kg" or "llm", reported with the answers
        self.entities = NameIndex("entity", ds.entity_names, ds.entity_text)
        self.relations = NameIndex("relation", ds.relation_names, ds.relation_text)
        self.times = TimeMapper(ds, max_year)
        self._known: FilterIndex | None = None

    def ids(self, q: Query) -> list[int]:
        """(known entity, relation', t0, t1) of a query; head queries use relation r + R."""
        r = self.relations(q.relation)
        t0, t1 = self.times(q.time)
        if q.object is None:
            return [self.entities(q.subject), r, t0, t1]
        return [self.entities(q.object), r + self.ds.num_relations, t0, t1]

    def known(self) -> FilterIndex:
        """Train facts keyed on (entity, relation', t0, t1): the ``known`` filter (built on first use)."""
        if self._known is None:
            if not len(self.ds.splits["train"]):
                raise QueryError("filter 'known' needs the training facts, which a model folder does not hold "
                                 "(distkg.serving.pretrained); predict with --run on the run folder, or filter none")
            train = self.ds.splits["train"].copy()
            train[:, 5] = train[:, 3] * self.ds.num_times + train[:, 4]  # key on the time ids, not as written
            self._known = FilterIndex(train, self.ds.num_relations, "time")
        return self._known

    @torch.no_grad()
    def top(self, ids: np.ndarray, k: int, filter: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
        """[B, k] scores and entity ids of the best answers of resolved queries ``ids`` [B, 4]."""
        if filter not in FILTERS:
            raise QueryError(f"filter {filter!r}: choose one of {', '.join(FILTERS)}")
        if k < 1:
            raise QueryError(f"top must be >= 1, got {k}")
        scores = self.score(torch.as_tensor(ids, dtype=torch.long)).float()
        if filter == "known":
            keys = ids[:, 2] * self.ds.num_times + ids[:, 3]
            qs = QuerySet(ids, np.full(len(ids), -1, dtype=np.int64), keys, len(ids))
            rows, cols = self.known().pairs(qs)
            scores[torch.as_tensor(rows), torch.as_tensor(cols)] = float("-inf")
        return torch.topk(scores, min(k, scores.shape[1]), dim=1)

    def answers(self, q: Query, scores: torch.Tensor, ents: torch.Tensor) -> dict:
        """One query's result as plain data (the JSON the CLI prints and the server returns)."""
        rows = [{"rank": i + 1, "entity": self.ds.entity_names[e], "text": self.ds.entity_text[e], "score": s}
                for i, (s, e) in enumerate(zip(scores.tolist(), ents.tolist())) if s != float("-inf")]
        return {"query": q.text, "asked": "object" if q.object is None else "subject", "answers": rows}

    def predict(self, queries: Iterable[Query | str], k: int = 10, filter: str = "none") -> list[dict]:
        """Top-``k`` answers of each query (a Query, or its text ``s|r|?|t``)."""
        qs = [parse_query(q) if isinstance(q, str) else q for q in queries]
        if not qs:
            return []
        scores, ents = self.top(np.array([self.ids(q) for q in qs], dtype=np.int64), k, filter)
        return [self.answers(q, s, e) for q, s, e in zip(qs, scores, ents)]

    def save_pretrained(self, folder: str | Path, source: dict | None = None) -> Path:
        """The model as a folder loadable without its dataset (distkg.serving.pretrained); KG models only."""
        from distkg.serving.pretrained import save_pretrained

        if self.spec is None:
            raise QueryError(f"save_pretrained: a {self.kind} predictor has no model folder form (KG teachers and "
                             "students have; an LLM teacher exports as ONNX)")
        return save_pretrained(self.source, *self.spec, self.ds, self.times.max_year, Path(folder), source)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Predictor:
        """A Predictor over a model folder (distkg.serving.pretrained): no dataset read."""
        from distkg.serving.pretrained import load_pretrained

        config, ds, model = load_pretrained(folder)
        return cls(ds, model, config["max_year"], "kg", model, (config["model"], config["args"]))


def load_predictor(run: str | Path, overrides: list[str] | None = None) -> Predictor:
    """The Predictor of a finished run folder or a model folder (module docstring says which)."""
    from distkg.runfolder import MODEL_KINDS, open_finished, run_config
    from distkg.serving.pretrained import is_pretrained

    run = Path(run)
    if is_pretrained(run):
        if overrides:
            raise QueryError(f"{run} is a model folder: it has no run config for --set to change")
        return Predictor.from_pretrained(run)
    kind, _ = open_finished(run, "--run", (*MODEL_KINDS, "llm", "baseline"))
    cfg = run_config(run, overrides)
    if kind == "llm":
        ds = load_dataset(cfg.data)
        if cfg.llm.query == "text":  # any query's text goes through the LLM (tables hold the splits' queries only)
            from distkg.llm.train import load_teacher

            teacher = load_teacher(run / "teacher", cfg, ds)
            return Predictor(ds, lambda q: teacher.score_candidates(q, 0, ds.num_entities).cpu(), cfg.data.max_year,
                             "llm", teacher)
        from distkg.distill.teachers import LLMTables

        tables = LLMTables(run, ds)
        return Predictor(ds, tables.scores, cfg.data.max_year, "llm", tables)
    from distkg.models import MODELS

    if kind == "baseline":
        ds = load_dataset(cfg.data)  # a training-free model (the frequency baseline): nothing to load
        model = MODELS.create(cfg.model.name, cfg.model.args, "model.args", dataset=ds)
        return Predictor(ds, lambda q: model.score_candidates(q, 0, ds.num_entities), cfg.data.max_year, "kg", model)
    from distkg.training.trainer import load_trained

    cfg, ds, model = load_trained(run, cfg, device=torch.device("cpu"))  # answering is a CPU job (the student's point)
    model.requires_grad_(False)
    return Predictor(ds, model, cfg.data.max_year, "kg", model, (cfg.model.name, dict(cfg.model.args)))


def format_text(results: list[dict]) -> str:
    """What `distkg predict` prints without --json: each query, then its ranked answers."""
    lines = []
    for res in results:
        lines.append(f"{res['query']}   ({res['asked']} asked)")
        lines += [f"  {a['rank']:>3}. {a['score']:>10.4f}  {a['entity']}" for a in res["answers"]]
    return "\n".join(lines)
