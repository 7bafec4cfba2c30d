"""Filtered ranking, chunked over queries and candidates (in the spirit of tkbc's get_ranking).

How a rank is counted, and why: for each query we count candidates scoring above the answer
(#greater) and tying with it (#equal) over ALL candidates in one vectorised pass, then gather the
scores at the filtered (row, col) pairs only and subtract their contribution. We never write
-inf into the scores to filter: an answer scored -inf would then tie with every filtered
candidate. The answer itself always ties with itself, so #equal is corrected by one.

    optimistic  = 1 + #greater
    pessimistic = 1 + #greater + #equal
    realistic   = 1 + #greater + #equal / 2   (mean of the two; the protocol's default)

Memory: a block of scores is at most [query_chunk, cand_chunk]; query_chunk defaults to what
fits the memory budget (``eval.memory_budget``, SCORE_BUDGET_BYTES on a CPU), and where one row
does not fit it the candidates are chunked too. With candidate chunks the answer's score is first read from the same
score_candidates blocks (pass 1), so the comparison in pass 2 is against a bit-identical value.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from distkg.data import TKGDataset
from distkg.evaluation.filters import FILTER_MODES, FilterIndex
from distkg.evaluation.metrics import TIES, Ties, ranking_metrics
from distkg.evaluation.options import SCORE_BUDGET_BYTES, EvalOptions
from distkg.evaluation.queries import QuerySet, build_queries
from distkg.evaluation.scorer import Scorer



@dataclass(frozen=True)
class Ranks:
    """Per-query counts; ranks under every tie policy derive from them (exactly, in float64)."""

    greater: np.ndarray  # int64 [Q], candidates strictly above the answer, filtered ones excluded
    equal: np.ndarray  # int64 [Q], candidates tying with the answer, the answer itself excluded

    @property
    def optimistic(self) -> np.ndarray:
        return 1.0 + self.greater

    @property
    def pessimistic(self) -> np.ndarray:
        return 1.0 + self.greater + self.equal

    @property
    def realistic(self) -> np.ndarray:
        return 1.0 + self.greater + self.equal / 2.0

    def get(self, ties: Ties) -> np.ndarray:
        if ties not in TIES:
            raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
        return getattr(self, ties)


FACT_SAMPLE_SEED = 0


def fact_sample(n: int, k: int) -> np.ndarray:
    """Rows of the ``k`` facts (in split order) that ``eval.max_facts`` = k scores out of a split of ``n``:
    one seeded draw, so every run and every command on a dataset scores the same facts."""
    return np.sort(np.random.default_rng(FACT_SAMPLE_SEED).choice(n, size=k, replace=False))


def default_query_chunk(width: int, budget_bytes: int = SCORE_BUDGET_BYTES) -> int:
    """Rows of a [rows, width] float32 score block that fit the budget (at least 1)."""
    return max(1, budget_bytes // (4 * max(1, width)))


def block_width(num_entities: int, budget: int) -> int:
    """Candidates per score block: all of them while one float32 row fits ``budget`` bytes, else the
    most that do (a graph whose single row outgrows the budget is scored in candidate chunks)."""
    return num_entities if 4 * num_entities <= budget else max(1, budget // 4)


def _check_block(scores: torch.Tensor, rows: int, start: int, stop: int, q0: int) -> None:
    """Shape and NaN check. NaN compares false both ways and would silently win a rank, so it
    must fail loudly; a row sum is one cheap pass and is NaN whenever a NaN is present."""
    if scores.shape != (rows, stop - start):
        raise ValueError(
            f"score_candidates(queries[{rows}], {start}, {stop}) returned shape {tuple(scores.shape)}, "
            f"expected ({rows}, {stop - start})"
        )
    suspect = torch.isnan(scores.sum(dim=1))
    if bool(suspect.any()):
        # A row can sum to NaN from +inf and -inf without holding a NaN: confirm per element.
        idx = suspect.nonzero().flatten()
        bad = idx[torch.isnan(scores[idx]).any(dim=1)]
        if bad.numel():
            i = int(bad[0])
            col = int(torch.isnan(scores[i]).nonzero()[0]) + start
            raise ValueError(
                f"NaN score for query {q0 + i} (candidate entity {col}); "
                f"{bad.numel()} query row(s) of this block have NaN"
            )


def _count(
    scores: torch.Tensor, target: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """#greater and #equal per row over all columns, minus the filtered (rows, cols) ones."""
    n = scores.shape[0]
    rows, cols = rows.to(scores.device), cols.to(scores.device)
    # int32 accumulation: summing bools into int64 is ~3x slower on CPU and these two passes
    # are the whole cost of ranking beyond the matmul. Exact up to 2**31 candidates.
    greater = (scores > target).sum(dim=1, dtype=torch.int32).long()
    equal = (scores == target).sum(dim=1, dtype=torch.int32).long()
    if rows.numel():
        filtered = scores[rows, cols]
        t = target[rows, 0]
        greater -= torch.bincount(rows[filtered > t], minlength=n)
        equal -= torch.bincount(rows[filtered == t], minlength=n)
    return greater, equal


def _count_two_pass(
    scorer: Scorer,
    queries: torch.Tensor,
    answers: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    spans: list[tuple[int, int]],
    q0: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate-chunked counting: pass 1 reads each answer's score from the very block that
    pass 2 compares against, so ties are exact even if a scorer's blocks differ in rounding."""
    b = queries.shape[0]
    target = None
    for start, stop in spans:
        inside = ((answers >= start) & (answers < stop)).nonzero().flatten()
        if inside.numel() == 0:
            continue
        scores = scorer.score_candidates(queries, start, stop)
        _check_block(scores, b, start, stop, q0)
        if target is None:
            target = torch.empty(b, 1, dtype=scores.dtype, device=scores.device)
        inside = inside.to(scores.device)
        target[inside, 0] = scores[inside, answers.to(scores.device)[inside] - start]
    assert target is not None  # every answer is in some span
    greater = torch.zeros(b, dtype=torch.int64, device=target.device)
    equal = torch.zeros(b, dtype=torch.int64, device=target.device)
    for start, stop in spans:
        scores = scorer.score_candidates(queries, start, stop)
        _check_block(scores, b, start, stop, q0)
        sel = (cols >= start) & (cols < stop)
        g, e = _count(scores, target, rows[sel], cols[sel] - start)
        greater += g
        equal += e
    return greater, equal


@torch.inference_mode()
def rank(
    scorer: Scorer,
    qs: QuerySet,
    index: FilterIndex | None = None,
    query_chunk: int | None = None,
    cand_chunk: int | None = None,
    progress: bool = True,
    desc: str = "ranking",
    device: torch.device | str = "cpu",
    budget: int = SCORE_BUDGET_BYTES,
) -> Ranks:
    """Per-query counts (hence ranks under every tie policy) for all queries of ``qs``.

    ``index=None`` ranks raw. ``query_chunk`` rows are scored at a time (default: what fits
    ``budget`` bytes); ``cand_chunk`` candidates at a time (None: all at once, or what fits the
    budget when one row does not, block_width). Each chunk
    of queries, answers and filter pairs is moved to ``device`` (the scorer's, distkg.device) here,
    the one place evaluation moves tensors; the counting follows the scores' device.
    Raises ValueError on NaN scores, naming the query's index in ``qs``."""
    n_ent = int(scorer.num_entities)
    width = block_width(n_ent, budget) if cand_chunk is None else max(1, min(cand_chunk, n_ent))
    chunked = width < n_ent
    qchunk = query_chunk or default_query_chunk(width, budget)
    if len(qs) and (qs.answers.min() < 0 or qs.answers.max() >= n_ent):
        raise ValueError(f"answers must be entity ids in [0, {n_ent})")
    spans = [(s, min(s + width, n_ent)) for s in range(0, n_ent, width)]
    greater = np.zeros(len(qs), dtype=np.int64)
    equal = np.zeros(len(qs), dtype=np.int64)
    bar = tqdm(total=len(qs), desc=desc, unit="q", file=sys.stderr, disable=not progress, mininterval=1.0)
    try:
        for q0 in range(0, len(qs), qchunk):
            q1 = min(q0 + qchunk, len(qs))
            queries = torch.from_numpy(qs.queries[q0:q1]).to(device)
            answers = torch.from_numpy(qs.answers[q0:q1]).to(device)
            if index is None:
                rows = cols = torch.empty(0, dtype=torch.int64, device=device)
            else:
                r, c = index.pairs(qs, q0, q1)
                rows, cols = torch.from_numpy(r).to(device), torch.from_numpy(c).to(device)
            if not chunked:
                scores = scorer.score_candidates(queries, 0, n_ent)
                _check_block(scores, q1 - q0, 0, n_ent, q0)
                g, e = _count(scores, scores.gather(1, answers[:, None].to(scores.device)), rows, cols)
            else:
                g, e = _count_two_pass(scorer, queries, answers, rows, cols, spans, q0)
            greater[q0:q1] = g.cpu().numpy()
            equal[q0:q1] = e.cpu().numpy() - 1  # the answer ties with itself
            bar.update(q1 - q0)
    finally:
        bar.close()
    return Ranks(greater=greater, equal=equal)


def evaluate(scorer: Scorer, dataset: TKGDataset, split: str = "test", options: EvalOptions = EvalOptions(),
             index: FilterIndex | None = None) -> dict:
    """Metrics of one split under the named protocol (both directions); see docs/PROTOCOL.md.

    ``options``: the protocol, chunking, progress and device, one object built from the config
    (distkg.evaluation.options.eval_options); ``index`` lets a trainer build the FilterIndex once and reuse it."""
    filter, ties, device = options.filter, options.ties, options.device
    if filter not in FILTER_MODES:
        raise ValueError(f"filter must be one of {FILTER_MODES}, got {filter!r}")
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    if int(scorer.num_entities) != dataset.num_entities:
        raise ValueError(
            f"scorer has {scorer.num_entities} entities, dataset {dataset.name} has {dataset.num_entities}"
        )
    facts = dataset.splits[split]
    sampled = options.max_facts is not None and len(facts) > options.max_facts
    if sampled:
        facts = facts[fact_sample(len(facts), options.max_facts)]
    qs = build_queries(facts, dataset.num_relations)
    if filter == "none":
        index = None
    elif index is None:
        index = FilterIndex.from_dataset(dataset, filter)
    elif index.mode != filter:
        raise ValueError(f"index was built for filter {index.mode!r}, asked for {filter!r}")
    ranks = rank(scorer, qs, index, options.query_chunk, options.cand_chunk, options.progress,
                 desc=f"{dataset.name}/{split}", device=device, budget=options.memory_budget)
    chosen = ranks.get(ties)
    protocol: dict = {
        "dataset": dataset.name,
        "split": split,
        "filter": filter,
        "ties": ties,
        "directions": "both",
        "head_queries": "reciprocal relations (r + R)",
    }
    if dataset.time_kind == "interval":
        protocol["min_bucket_size"] = dataset.min_bucket_size
    if sampled:
        protocol["facts"] = f"{options.max_facts} of {len(dataset.splits[split])}, drawn with seed {FACT_SAMPLE_SEED}"
    n = qs.num_tail
    return {
        **ranking_metrics(chosen),
        "queries": len(qs),
        "protocol": protocol,
        "by_direction": {"tail": ranking_metrics(chosen[:n]), "head": ranking_metrics(chosen[n:])},
        "by_ties": {t: ranking_metrics(ranks.get(t)) for t in TIES},
    }
