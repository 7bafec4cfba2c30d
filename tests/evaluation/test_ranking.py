"""Ranking checked against a brute-force reference written the obvious slow way.

Scores are quantised to a few values so ties are everywhere; graphs are small and dense in
keys so filtering really removes candidates; the interval-like case gives KEY values that
differ from T0 so the time-aware filter must key on KEY, not on the scored time."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from distkg.data import TKGDataset
from distkg.evaluation import (
    FILTER_MODES,
    TIES,
    DotProductScorer,
    EvalOptions,
    FilterIndex,
    build_queries,
    evaluate,
    rank,
    ranking_metrics,
)

N_ENT, N_REL, N_TIME = 30, 4, 6
QUIET = EvalOptions(progress=False)


def make_dataset(facts: dict[str, np.ndarray], n_ent: int = N_ENT, n_rel: int = N_REL,
                 n_time: int = N_TIME, n_keys: int = N_TIME, kind: str = "point") -> TKGDataset:
    return TKGDataset(
        name="toy",
        time_kind=kind,  # type: ignore[arg-type]
        splits={k: np.asarray(v, dtype=np.int64).reshape(-1, 6) for k, v in facts.items()},
        entity_names=[f"e{i}" for i in range(n_ent)],
        relation_names=[f"r{i}" for i in range(n_rel)],
        entity_text=[f"e{i}" for i in range(n_ent)],
        relation_text=[f"r{i}" for i in range(n_rel)],
        time_labels=[f"t{i}" for i in range(n_time)],
        time_keys=[f"k{i}" for i in range(n_keys)],
        min_bucket_size=7 if kind == "interval" else None,
    )


def random_dataset(seed: int, interval: bool) -> TKGDataset:
    """~100 facts; skewed entities so (s, r, key) keys collide; shared facts across splits."""
    rng = np.random.default_rng(seed)
    n = 100
    p = 1.0 / np.arange(1, N_ENT + 1)
    p /= p.sum()
    s, o = rng.choice(N_ENT, n, p=p), rng.choice(N_ENT, n, p=p)
    r = rng.integers(0, N_REL, n)
    t0 = rng.integers(0, N_TIME, n)
    if interval:
        t1 = np.minimum(t0 + rng.integers(0, 3, n), N_TIME - 1)
        key = rng.integers(0, 10, n)  # "as written": several keys per (t0, t1), unrelated to t0
    else:
        t1 = key = t0
    facts = np.stack([s, r, o, t0, t1, key], axis=1)
    train, valid, test = facts[:60], facts[60:75], facts[75:]
    # Same facts listed in two splits, and same-key other answers for some test facts.
    train = np.concatenate([train, test[:5]])
    valid = np.concatenate([valid, test[5:7]])
    other = test[7:12].copy()
    other[:, 2] = (other[:, 2] + 1) % N_ENT
    train = np.concatenate([train, other])
    return make_dataset({"train": train, "valid": valid, "test": test},
                        n_keys=10 if interval else N_TIME, kind="interval" if interval else "point")


class TableScorer:
    """Scores looked up in a table indexed by the full query row: ties by construction."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table  # [N, 2R, T, T, N]
        self.num_entities = table.shape[-1]
        self.calls: list[tuple[int, int, int]] = []

    def score_candidates(self, q: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        self.calls.append((q.shape[0], start, stop))
        return self.table[q[:, 0], q[:, 1], q[:, 2], q[:, 3], start:stop]


def tie_table(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4, (N_ENT, 2 * N_REL, N_TIME, N_TIME, N_ENT), generator=g).float()


def brute_force(table: torch.Tensor, ds: TKGDataset, split: str, mode: str) -> tuple[list[int], list[int]]:
    """(optimistic, pessimistic) ranks, one Python loop per query and candidate."""
    true: dict[tuple, set[int]] = {}
    for f in ds.all_facts().tolist():
        s, r, o, t0, t1, k = f
        for ent, rel, ans in ((s, r, o), (o, r + ds.num_relations, s)):
            key = (ent, rel, k) if mode == "time" else (ent, rel)
            true.setdefault(key, set()).add(ans)
    facts = ds.splits[split].tolist()
    queries = [(s, r, t0, t1, k, o) for s, r, o, t0, t1, k in facts]
    queries += [(o, r + ds.num_relations, t0, t1, k, s) for s, r, o, t0, t1, k in facts]
    opt, pes = [], []
    for ent, rel, t0, t1, k, ans in queries:
        scores = table[ent, rel, t0, t1].tolist()
        drop = set() if mode == "none" else true[(ent, rel, k) if mode == "time" else (ent, rel)]
        greater = equal = 0
        for c in range(ds.num_entities):
            if c == ans or c in drop:
                continue
            greater += scores[c] > scores[ans]
            equal += scores[c] == scores[ans]
        opt.append(1 + greater)
        pes.append(1 + greater + equal)
    return opt, pes


@pytest.mark.parametrize("interval", [False, True])
@pytest.mark.parametrize("mode", FILTER_MODES)
def test_ranks_match_brute_force(interval: bool, mode: str) -> None:
    ds = random_dataset(seed=3 if interval else 1, interval=interval)
    table = tie_table(seed=5)
    opt, pes = brute_force(table, ds, "test", mode)
    opt, pes = np.array(opt, float), np.array(pes, float)
    assert (pes > opt).mean() > 0.5  # ties really happen
    qs = build_queries(ds.splits["test"], ds.num_relations)
    index = None if mode == "none" else FilterIndex.from_dataset(ds, mode)  # type: ignore[arg-type]
    for qchunk, cchunk in [(None, None), (7, None), (7, 5), (1000, 29), (3, 1)]:
        ranks = rank(TableScorer(table), qs, index, query_chunk=qchunk, cand_chunk=cchunk, progress=False)
        np.testing.assert_array_equal(ranks.optimistic, opt, err_msg=f"{qchunk=} {cchunk=}")
        np.testing.assert_array_equal(ranks.pessimistic, pes, err_msg=f"{qchunk=} {cchunk=}")
        np.testing.assert_array_equal(ranks.realistic, (opt + pes) / 2)
    for ties in TIES:
        ref = {"optimistic": opt, "pessimistic": pes, "realistic": (opt + pes) / 2}[ties]
        out = evaluate(TableScorer(table), ds, "test", EvalOptions(filter=mode, ties=ties,  # type: ignore[arg-type]
                       query_chunk=7, cand_chunk=5, progress=False))
        expected = ranking_metrics(ref)
        for key in ("mrr", "mr", "hits@1", "hits@3", "hits@10"):
            assert out[key] == pytest.approx(expected[key])
        n = len(ds.splits["test"])
        assert out["queries"] == 2 * n
        assert out["by_direction"]["tail"]["mr"] == pytest.approx(ref[:n].mean())
        assert out["by_direction"]["head"]["mr"] == pytest.approx(ref[n:].mean())
        assert out["protocol"]["filter"] == mode and out["protocol"]["ties"] == ties
        assert out["protocol"]["directions"] == "both"
        assert out["protocol"].get("min_bucket_size") == (7 if interval else None)


def test_filter_modes_differ_on_these_graphs() -> None:
    """Guards the test above: if the graphs had no key collisions, every mode would agree."""
    ds = random_dataset(seed=3, interval=True)
    table = tie_table(seed=5)
    mrs = {m: np.mean(brute_force(table, ds, "test", m)[0]) for m in FILTER_MODES}
    assert mrs["static"] < mrs["time"] < mrs["none"]


def test_chunking_is_exact_with_float_scores() -> None:
    torch.manual_seed(0)
    ds = random_dataset(seed=2, interval=False)
    scorer = DotProductScorer.distmult(torch.randn(N_ENT, 8), torch.randn(2 * N_REL, 8))
    qs = build_queries(ds.splits["test"], N_REL)
    index = FilterIndex.from_dataset(ds, "time")
    a = rank(scorer, qs, index, progress=False)
    b = rank(scorer, qs, index, query_chunk=4, cand_chunk=7, progress=False)
    np.testing.assert_array_equal(a.realistic, b.realistic)
    assert a.realistic.max() > 1


def test_memory_budget_bounds_every_block_and_keeps_ranks_exact() -> None:
    """eval.memory_budget: blocks of whole rows while a row fits, candidate chunks once one does not
    (a graph too wide for the budget), the same ranks either way; auto is 32 MB on a CPU."""
    from distkg.device import memory_bytes
    from distkg.evaluation.options import budget_bytes
    from distkg.evaluation.ranking import block_width

    assert block_width(N_ENT, 4 * N_ENT) == N_ENT and block_width(N_ENT, 4 * 7) == 7 and block_width(N_ENT, 3) == 1
    assert budget_bytes("auto", "cpu") == min(32 << 20, memory_bytes("cpu") // 16) and budget_bytes(1000, "cpu") == 1000
    torch.manual_seed(0)
    ds = random_dataset(seed=2, interval=False)
    scorer = DotProductScorer.distmult(torch.randn(N_ENT, 8), torch.randn(2 * N_REL, 8))
    index = FilterIndex.from_dataset(ds, "time")
    blocks = []
    real = scorer.score_candidates

    def spy(q, start, stop):
        blocks.append((len(q), stop - start))
        return real(q, start, stop)

    scorer.score_candidates = spy
    whole = evaluate(scorer, ds, "test", QUIET, index=index)
    assert max(w for _, w in blocks) == N_ENT
    blocks.clear()
    tight = evaluate(scorer, ds, "test", QUIET.replace(memory_budget=4 * 7), index=index)
    assert max(r * w for r, w in blocks) <= 7 and tight["mrr"] == whole["mrr"] and tight["mr"] == whole["mr"]


def test_max_facts_scores_a_seeded_sample_and_says_so() -> None:
    """eval.max_facts: the metrics of a seeded sample of the split's facts, filtered against the whole
    graph as before, the same sample every call, named in the protocol; no sample when it is larger."""
    import dataclasses

    from distkg.evaluation.ranking import fact_sample

    torch.manual_seed(0)
    ds = random_dataset(seed=2, interval=False)
    scorer = DotProductScorer.distmult(torch.randn(N_ENT, 8), torch.randn(2 * N_REL, 8))
    index = FilterIndex.from_dataset(ds, "time")
    n = len(ds.splits["test"])
    got = evaluate(scorer, ds, "test", QUIET.replace(max_facts=7), index=index)
    rows = fact_sample(n, 7)
    assert len(set(rows.tolist())) == 7 and np.array_equal(rows, fact_sample(n, 7))
    part = dataclasses.replace(ds, splits={**ds.splits, "test": ds.splits["test"][rows]})
    want = evaluate(scorer, part, "test", QUIET, index=index)
    assert got["queries"] == 14 and got["mrr"] == want["mrr"] and got["mr"] == want["mr"]
    assert got["protocol"]["facts"] == f"7 of {n}, drawn with seed 0"
    whole = evaluate(scorer, ds, "test", QUIET.replace(max_facts=n), index=index)
    assert "facts" not in whole["protocol"] and whole["queries"] == 2 * n


# --- leakage -------------------------------------------------------------------------------


def leakage_dataset() -> TKGDataset:
    # test fact (0, r0, 1, key 0); also in train and valid (must never filter itself);
    # (0, r0, 2, key 0) is another true answer of the same key: always filtered;
    # (0, r0, 3, key 1) is true at another time: filtered only by the static filter.
    fact = [0, 0, 1, 0, 0, 0]
    return make_dataset(
        {"train": [fact, [0, 0, 2, 0, 0, 0]], "valid": [fact, [0, 0, 3, 1, 1, 1]], "test": [fact]},
        n_ent=5, n_rel=1, n_time=2, n_keys=2,
    )


class ByIdScorer:
    """score(candidate) = its id, or a constant: every candidate ties."""

    def __init__(self, n: int, constant: bool = False) -> None:
        self.num_entities, self.constant = n, constant

    def score_candidates(self, q: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        row = torch.zeros(stop - start) if self.constant else torch.arange(start, stop, dtype=torch.float32)
        return row.expand(q.shape[0], -1).clone()


@pytest.mark.parametrize("cand_chunk", [None, 2])
def test_answer_never_filtered_others_always(cand_chunk: int | None) -> None:
    ds = leakage_dataset()
    qs = build_queries(ds.splits["test"], ds.num_relations)
    # Tail query (0, r0, ?, k0) answer 1; candidates 2, 3, 4 score above it.
    expected_tail = {"none": 4, "time": 3, "static": 2}
    # Head query (?, r0, 1, k0) via r0 + R, answer 0; only fact (0, r0, 1) has that key.
    for mode, tail_rank in expected_tail.items():
        index = None if mode == "none" else FilterIndex.from_dataset(ds, mode)  # type: ignore[arg-type]
        r = rank(ByIdScorer(5), qs, index, cand_chunk=cand_chunk, progress=False)
        assert r.optimistic.tolist() == [tail_rank, 5], mode
        # All tie: pessimistic counts the unfiltered others; the answer still counts as present.
        r = rank(ByIdScorer(5, constant=True), qs, index, cand_chunk=cand_chunk, progress=False)
        assert r.optimistic.tolist() == [1, 1]
        assert r.pessimistic.tolist() == [tail_rank + 1, 5], mode
    rows, cols = FilterIndex.from_dataset(ds, "time").pairs(qs)
    assert list(zip(rows.tolist(), cols.tolist())) == [(0, 2)]
    rows, cols = FilterIndex.from_dataset(ds, "static").pairs(qs)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 2), (0, 3)]


def test_time_filter_uses_key_not_scored_time() -> None:
    # Same T0/T1 but different written KEY: not the same query key under "time".
    ds = make_dataset({"train": [[0, 0, 2, 0, 0, 1]], "valid": np.zeros((0, 6)), "test": [[0, 0, 1, 0, 0, 0]]},
                      n_ent=4, n_rel=1, n_time=1, n_keys=2, kind="interval")
    qs = build_queries(ds.splits["test"], 1)
    assert rank(ByIdScorer(4), qs, FilterIndex.from_dataset(ds, "time"), progress=False).optimistic[0] == 3
    assert rank(ByIdScorer(4), qs, FilterIndex.from_dataset(ds, "static"), progress=False).optimistic[0] == 2


def test_queries_layout() -> None:
    qs = build_queries(np.array([[5, 1, 7, 2, 3, 9]], dtype=np.int64), num_relations=4)
    assert qs.queries.tolist() == [[5, 1, 2, 3], [7, 5, 2, 3]]
    assert qs.answers.tolist() == [7, 5] and qs.keys.tolist() == [9, 9] and qs.num_tail == 1


# --- errors and metrics --------------------------------------------------------------------


class NaNScorer(ByIdScorer):
    def score_candidates(self, q: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        out = super().score_candidates(q, start, stop)
        if start <= 3 < stop:
            out[:, 3 - start] = torch.where(q[:, 0] == 9, float("nan"), 0.0)
        return out


@pytest.mark.parametrize("qchunk,cchunk", [(None, None), (2, None), (2, 3)])
def test_nan_scores_raise_naming_the_query(qchunk: int | None, cchunk: int | None) -> None:
    facts = np.array([[i, 0, (i + 1) % 10, 0, 0, 0] for i in range(6)] + [[9, 0, 1, 0, 0, 0]], dtype=np.int64)
    ds = make_dataset({"train": facts[:0], "valid": facts[:0], "test": facts}, n_ent=10, n_rel=1, n_time=1, n_keys=1)
    with pytest.raises(ValueError, match=r"NaN score for query 6 \(candidate entity 3\)"):
        evaluate(NaNScorer(10), ds, options=EvalOptions(query_chunk=qchunk, cand_chunk=cchunk, progress=False))


def test_inf_target_does_not_tie_with_filtered_candidates() -> None:
    """Why filtering subtracts counts instead of writing -inf: a -inf answer would tie."""

    class InfScorer(ByIdScorer):
        def score_candidates(self, q: torch.Tensor, start: int, stop: int) -> torch.Tensor:
            out = super().score_candidates(q, start, stop)
            for c in (1, 2):  # the tail answer and its filtered same-key rival
                if start <= c < stop:
                    out[:, c - start] = -float("inf")
            return out

    ds = leakage_dataset()
    qs = build_queries(ds.splits["test"], 1)
    for cand_chunk in (None, 2):
        r = rank(InfScorer(5), qs, FilterIndex.from_dataset(ds, "time"), cand_chunk=cand_chunk, progress=False)
        assert r.optimistic[0] == 4 and r.pessimistic[0] == 4  # 0, 3, 4 above; 2 filtered
        r = rank(InfScorer(5), qs, None, cand_chunk=cand_chunk, progress=False)
        assert r.optimistic[0] == 4 and r.pessimistic[0] == 5  # raw: 2 ties


def test_bad_shape_raises() -> None:
    class Wrong(ByIdScorer):
        def score_candidates(self, q: torch.Tensor, start: int, stop: int) -> torch.Tensor:
            return torch.zeros(q.shape[0], stop - start + 1)

    ds = leakage_dataset()
    with pytest.raises(ValueError, match="returned shape"):
        evaluate(Wrong(5), ds, options=QUIET)


def test_metrics_hand_computed() -> None:
    m = ranking_metrics(np.array([1, 2, 4, 10, 11, 1.5]))
    assert m["mrr"] == pytest.approx((1 + 0.5 + 0.25 + 0.1 + 1 / 11 + 1 / 1.5) / 6)
    assert m["mr"] == pytest.approx(29.5 / 6)
    assert m["hits@1"] == pytest.approx(1 / 6)
    assert m["hits@3"] == pytest.approx(3 / 6)
    assert m["hits@10"] == pytest.approx(5 / 6)
    assert set(m) == {"mrr", "mr", "hits@1", "hits@3", "hits@10"}
    with pytest.raises(ValueError):
        ranking_metrics(np.array([0.0, 1.0]))


def test_default_query_chunk_bounds_memory() -> None:
    from distkg.evaluation import SCORE_BUDGET_BYTES, default_query_chunk

    rows = default_query_chunk(23_033)
    assert rows * 23_033 * 4 <= SCORE_BUDGET_BYTES and rows > 100
    table = tie_table(seed=0)
    scorer = TableScorer(table)
    ds = random_dataset(seed=1, interval=False)
    evaluate(scorer, ds, options=EvalOptions(query_chunk=8, cand_chunk=11, progress=False))
    assert max(b for b, _, _ in scorer.calls) <= 8
    assert max(stop - start for _, start, stop in scorer.calls) <= 11


def test_progress_goes_to_stderr_and_can_be_disabled(capsys: pytest.CaptureFixture[str]) -> None:
    ds = leakage_dataset()
    evaluate(ByIdScorer(5), ds, options=QUIET)
    assert capsys.readouterr().err == ""
    evaluate(ByIdScorer(5), ds, options=EvalOptions(progress=True))
    captured = capsys.readouterr()
    assert "toy/test" in captured.err and "2/2" in captured.err and captured.out == ""
