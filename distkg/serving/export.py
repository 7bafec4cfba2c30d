"""`distkg export --run RUN --format onnx`: a self-contained ONNX model file plus the id maps it needs.

The graph is the model's own forward pass as torch.export traces it (``torch.onnx.export(...,
dynamo=True)``), so there is one implementation of every model: the PyTorch one, and no ONNX written by
hand. Two places help the tracer: TTransE's distance is an operator of its own (``distkg::neg_l2``,
distkg.models.ttranse), which the exported program decomposes into its PyTorch reference formula
(``neg_l2_reference``) before translation, and TA-DistMult computes each query's relation-time vector
with one LSTM pass per query while exporting (torch.compiler.is_exporting), where training shares the
LSTM work through ``torch.unique``, whose output shapes depend on the data.

The model reads ``queries``, int64 [B, 4] rows (entity, relation', t0, t1) as distkg.models.base
defines them (head queries use relation r + R), and writes ``scores``, float32 [B, entities],
equal to the PyTorch model's scores (tests/serving/test_export.py checks max |difference| <=
1e-5 and identical top-10 lists on YAGO11k). ``maps.json`` beside it holds the id maps: entity,
relation and time names by id, the reciprocal-relation offset and the time vocabulary, so a
consumer that writes names can build the ids without distkg.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from distkg.data import TKGDataset
from distkg.errors import DistkgError
from distkg.runfolder import atomic_write

class TablesScores(torch.nn.Module):
    """An LLM teacher's exported tables (distkg.distill.teachers.LLMTables) as a module: their scoring form."""

    def __init__(self, tables) -> None:
        super().__init__()
        if tables.query_mode == "text":
            raise DistkgError("export: an LLM teacher that reads queries as text (llm.query: text) needs the LLM for "
                              "every query; it has no ONNX graph (predict and serve answer with it)")
        self.scoring = tables.scoring
        for name in ("entity", "relation", "time", "log_scale"):
            self.register_buffer(name, getattr(tables, name).float())

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        from distkg.llm.teacher import scaled_match

        query = self.scoring.table_query(self.entity, self.relation, self.time, queries)
        return scaled_match(self.scoring, self.log_scale, query, self.entity)


class Scores(torch.nn.Module):
    """A KG model's scores over all entities, float32: what the file computes."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        return self.model(queries).float()


def scores_module(source) -> torch.nn.Module:
    """The module to export for a predictor's source: a KG model or an LLM teacher's tables."""
    from distkg.distill.teachers import LLMTables

    if isinstance(source, LLMTables):
        return TablesScores(source).eval()
    if isinstance(source, torch.nn.Module) and any(True for _ in source.parameters()):
        return Scores(source).eval()
    raise DistkgError(f"export: no ONNX graph for a {type(source).__name__} model (it has no weights: a training-free "
                      "model; tadistmult, ttranse, tntcomplex and LLM teacher runs export)")


@contextmanager
def _quiet_exporter():
    """The exporter's own chatter (skipped torchvision ops, per-step info) kept out of the user's log."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def to_onnx(module: torch.nn.Module, example: torch.Tensor, doc: str):
    """The ModelProto of ``module`` (queries -> scores): torch.export with the batch dynamic, distkg's
    operators decomposed into their PyTorch formulas, then torch.onnx.export(dynamo=True)."""
    import warnings

    from distkg.models.ttranse import neg_l2_reference

    with _quiet_exporter(), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        # only distkg's own operator here; the exporter decomposes the rest as ONNX needs (an LSTM stays one LSTM)
        program = program.run_decompositions({torch.ops.distkg.neg_l2.default: neg_l2_reference})
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=["queries"],
                                         output_names=["scores"], verbose=False)
    onnx_program.model_proto.doc_string = doc
    onnx_program.model_proto.producer_name = "distkg"
    return onnx_program.model_proto


def id_maps(ds: TKGDataset, max_year: int) -> dict:
    """What a consumer of the model file needs to turn names and times into its input ids."""
    return {"dataset": ds.name, "num_relations": ds.num_relations, "head_query_relation": "relation id + num_relations",
            "input": "queries int64 [B, 4]: (entity, relation', t0, t1)", "output": "scores float32 [B, entities]",
            "entities": ds.entity_names, "relations": ds.relation_names, "time_kind": ds.time_kind,
            "times": ds.time_labels, "buckets": [list(b) for b in ds.buckets], "unknown_time": ds.unknown_time,
            "max_year": max_year}


def export_onnx(run: str | Path, out: str | Path | None = None, overrides: list[str] | None = None) -> Path:
    """Write OUT/model.onnx and OUT/maps.json for a finished run (OUT defaults to RUN/export); returns OUT."""
    from distkg.extras import require

    require("export", "distkg export --format onnx")
    import onnx

    from distkg.serving.predict import load_predictor

    run = Path(run)
    pred = load_predictor(run, overrides)
    source = pred.source  # a TKGModel, or an LLM teacher's LLMTables
    module = scores_module(source)
    example = torch.tensor([[0, 0, 0, 0], [pred.ds.num_entities - 1, 2 * pred.ds.num_relations - 1,
                                           pred.ds.num_times - 1, pred.ds.num_times - 1]])
    m = to_onnx(module, example, f"distkg scores of {run.name} ({type(source).__name__}) on {pred.ds.name}; "
                "queries int64 [B, 4] -> scores [B, E]")
    onnx.checker.check_model(m, full_check=True)
    folder = Path(out) if out else run / "export"
    folder.mkdir(parents=True, exist_ok=True)
    # each file whole or not at all (a full disk leaves the previous export, or none)
    atomic_write(folder / "maps.json", lambda f: f.write(json.dumps(id_maps(pred.ds, pred.times.max_year)).encode()))
    atomic_write(folder / "model.onnx", lambda f: f.write(m.SerializeToString()))
    return folder


def onnx_scorer(path: str | Path, threads: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A score function over an exported model.onnx with onnxruntime (``threads``: intra-op threads)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def score(queries: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(["scores"], {"queries": np.asarray(queries, dtype=np.int64)})[0])

    return score
