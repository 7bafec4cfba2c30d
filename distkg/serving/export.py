"""`distkg export --run RUN --format onnx`: a self-contained ONNX model file plus the id maps it needs.

Why a hand-built graph and not torch.onnx.export: the TorchScript exporter is deprecated in the
pinned torch and the dynamo one needs onnxscript (one more library) and cannot trace the
``torch.unique`` de-duplication TA-DistMult uses to share LSTM work. Each model's scoring is a
few table lookups, one LSTM (TA-DistMult) and one matmul, written here with the ONNX operators
that say exactly that, from the run's own weights.

The model reads ``queries``, int64 [B, 4] rows (entity, relation', t0, t1) as distkg.models.base
defines them (head queries use relation r + R), and writes ``scores``, float32 [B, entities],
equal to the PyTorch model's scores (tests/serving/test_export.py checks max |difference| <=
1e-5 and identical top-10 lists on YAGO11k). ``maps.json`` beside it holds the id maps: entity,
relation and time names by id, the reciprocal-relation offset and the time vocabulary, so a
consumer that writes names can build the ids without distkg.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from distkg.data import TKGDataset
from distkg.errors import DistkgError
from distkg.runfolder import atomic_write

OPSET = 17
IR_VERSION = 8  # the ONNX IR that opset 17 came with: readable by every onnxruntime since 1.11


class GraphBuilder:
    """Nodes and weights of one ONNX graph; each method adds a node and returns its output's name."""

    def __init__(self) -> None:
        from onnx import helper

        self.helper = helper
        self.nodes: list = []
        self.inits: list = []
        self.n = 0

    def _name(self, hint: str) -> str:
        self.n += 1
        return f"{hint}_{self.n}"

    def weight(self, name: str, value: torch.Tensor | np.ndarray) -> str:
        from onnx import numpy_helper

        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        self.inits.append(numpy_helper.from_array(np.array(arr, order="C"), name))  # (ascontiguousarray makes 0-d 1-d)
        return name

    def op(self, op: str, *inputs: str, out: str | None = None, **attrs) -> str:
        out = out or self._name(op.lower())
        self.nodes.append(self.helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def ops(self, op: str, inputs: list[str], n_out: int, **attrs) -> list[str]:
        outs = [self._name(op.lower()) for _ in range(n_out)]
        self.nodes.append(self.helper.make_node(op, inputs, outs, **attrs))
        return outs

    def column(self, queries: str, i: int) -> str:
        """queries[:, i] as [B]."""
        return self.op("Gather", queries, self.weight(self._name("col"), np.array(i, dtype=np.int64)), axis=1)

    def lookup(self, table: str, ids: str) -> str:
        return self.op("Gather", table, ids, axis=0)

    def mean(self, a: str, b: str) -> str:
        return self.op("Mul", self.op("Add", a, b), self.weight(self._name("half"), np.array(0.5, dtype=np.float32)))

    def cmul(self, a: str, b: str, dim: int) -> str:
        """Complex product in the [real | imaginary] layout (distkg.models.tntcomplex.cmul)."""
        split = self.weight(self._name("halves"), np.array([dim // 2, dim // 2], dtype=np.int64))
        ar, ai = self.ops("Split", [a, split], 2, axis=1)
        br, bi = self.ops("Split", [b, split], 2, axis=1)
        real = self.op("Sub", self.op("Mul", ar, br), self.op("Mul", ai, bi))
        imag = self.op("Add", self.op("Mul", ar, bi), self.op("Mul", ai, br))
        return self.op("Concat", real, imag, axis=1)

    def dot_scores(self, q: str, table: str, out: str) -> str:
        """[B, D] x [E, D] -> [B, E] = q @ table.T."""
        return self.op("Gemm", q, table, out=out, transB=1)

    def neg_l2_scores(self, q: str, table: str, table_sq: str, out: str) -> str:
        """-sqrt(max(|q|^2 - 2 q.c + |c|^2, 1e-9)), as distkg.models.ttranse.neg_l2 computes it."""
        q_sq = self.op("ReduceSum", self.op("Mul", q, q), self.weight(self._name("axis"), np.array([1], dtype=np.int64)),
                       keepdims=1)
        qc = self.op("Gemm", q, table, transB=1, alpha=-2.0)
        sq = self.op("Add", self.op("Add", q_sq, qc), table_sq)
        floor = self.weight(self._name("floor"), np.array(1e-9, dtype=np.float32))
        return self.op("Neg", self.op("Sqrt", self.op("Max", sq, floor)), out=out)

    def model(self, doc: str):
        h = self.helper
        from onnx import TensorProto

        graph = h.make_graph(
            self.nodes, "distkg_scores",
            [h.make_tensor_value_info("queries", TensorProto.INT64, ["batch", 4])],
            [h.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "entities"])], self.inits)
        m = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], producer_name="distkg", doc_string=doc)
        m.ir_version = IR_VERSION
        return m


def _lstm_weights(lstm: torch.nn.LSTM) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torch's (i, f, g, o) gate blocks reordered to ONNX's (i, o, f, c), with the batch-of-directions axis."""
    if lstm.num_layers != 1 or lstm.bidirectional:
        raise DistkgError("export: only a one-layer, one-direction LSTM is supported")

    def order(t: torch.Tensor) -> torch.Tensor:
        i, f, g, o = t.chunk(4, 0)
        return torch.cat([i, o, f, g], 0)

    w, r = order(lstm.weight_ih_l0)[None], order(lstm.weight_hh_l0)[None]
    b = torch.cat([order(lstm.bias_ih_l0), order(lstm.bias_hh_l0)])[None]
    return w, r, b


def _tadistmult(g: GraphBuilder, model) -> None:
    ent = g.weight("entity", model.ent.weight)
    tokens = g.weight("tokens", model.tokens.weight)
    w, r, b = (g.weight(n, t) for n, t in zip(("lstm_W", "lstm_R", "lstm_B"), _lstm_weights(model.lstm)))
    rel = g.op("Unsqueeze", g.column("queries", 1), g.weight("axis1", np.array([1], dtype=np.int64)))

    def relation_time(table: torch.Tensor, name: str, t: str) -> str:
        """LSTM over (date tokens of t, relation token): the last hidden state, [B, D]."""
        seq = g.op("Concat", g.lookup(g.weight(name, table), t), rel, axis=1)  # [B, L + 1]
        x = g.op("Transpose", g.lookup(tokens, seq), perm=[1, 0, 2])  # [L + 1, B, D]
        _, h_last = g.ops("LSTM", [x, w, r, b], 2, hidden_size=model.dim)
        return g.op("Squeeze", h_last, g.weight(g._name("axis0"), np.array([0], dtype=np.int64)))

    rt = relation_time(model.start_tokens, "start_tokens", g.column("queries", 2))
    if not model.point_time:  # the interval rule: mean of the two ends' r_t
        rt = g.mean(rt, relation_time(model.end_tokens, "end_tokens", g.column("queries", 3)))
    g.dot_scores(g.op("Mul", g.lookup(ent, g.column("queries", 0)), rt), ent, "scores")


def _time_mean(g: GraphBuilder, time: str) -> str:
    return g.mean(g.lookup(time, g.column("queries", 2)), g.lookup(time, g.column("queries", 3)))


def _ttranse(g: GraphBuilder, model) -> None:
    ent = g.weight("entity", model.ent.weight)
    tau = _time_mean(g, g.weight("time", model.time.weight))
    q = g.op("Add", g.op("Add", g.lookup(ent, g.column("queries", 0)),
                         g.lookup(g.weight("relation", model.rel.weight), g.column("queries", 1))), tau)
    g.neg_l2_scores(q, ent, g.weight("entity_sq", model.ent.weight.pow(2).sum(1)), "scores")


def _tntcomplex(g: GraphBuilder, model) -> None:
    ent = g.weight("entity", model.ent.weight)
    rel_id = g.column("queries", 1)
    tau = _time_mean(g, g.weight("time", model.time.weight))
    full = g.op("Add", g.cmul(g.lookup(g.weight("relation", model.rel.weight), rel_id), tau, model.dim),
                g.lookup(g.weight("relation_nt", model.rel_nt.weight), rel_id))
    g.dot_scores(g.cmul(g.lookup(ent, g.column("queries", 0)), full, model.dim), ent, "scores")


def _llm_tables(g: GraphBuilder, tables) -> None:
    """The LLM teacher's exported tables (distkg.distill.teachers.LLMTables) in their scoring form."""
    if tables.query_mode == "text":
        raise DistkgError("export: an LLM teacher that reads queries as text (llm.query: text) needs the LLM for "
                          "every query; it has no ONNX graph (predict and serve answer with it)")
    ent = g.weight("entity", tables.entity)
    e = g.lookup(ent, g.column("queries", 0))
    r = g.lookup(g.weight("relation", tables.relation), g.column("queries", 1))
    t = _time_mean(g, g.weight("time", tables.time))
    combine = "Mul" if tables.form == "tadistmult" else "Add"
    q = g.op(combine, g.op(combine, e, r), t)
    raw = (g.dot_scores(q, ent, "raw") if tables.form == "tadistmult"
           else g.neg_l2_scores(q, ent, g.weight("entity_sq", tables.entity.pow(2).sum(1)), "raw"))
    g.op("Mul", raw, g.weight("scale", tables.log_scale.exp().reshape(())), out="scores")


def _builder(model) -> Callable[[GraphBuilder, object], None]:
    from distkg.distill.teachers import LLMTables
    from distkg.models.tadistmult import TADistMult
    from distkg.models.tntcomplex import TNTComplEx
    from distkg.models.ttranse import TTransE

    for cls, build in ((TADistMult, _tadistmult), (TTransE, _ttranse), (TNTComplEx, _tntcomplex), (LLMTables, _llm_tables)):
        if type(model) is cls:
            return build
    raise DistkgError(f"export: no ONNX graph for a {type(model).__name__} model (tadistmult, ttranse, tntcomplex "
                      "and LLM teacher runs export)")


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
    g = GraphBuilder()
    _builder(source)(g, source)
    m = g.model(f"distkg scores of {run.name} ({type(source).__name__}) on {pred.ds.name}; queries int64 [B, 4] -> scores [B, E]")
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
