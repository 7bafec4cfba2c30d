"""The texts the LLM teacher encodes for entities (``llm.entity_text``), see docs/METHOD.md.

``name``: the entity's name alone (what the dataset reader gives: a YAGO title, an ICEWS name, a
Wikidata Q-id). ``facts``: the name followed by up to ``llm.entity_facts`` of the entity's own
TRAINING facts as text, "Al Gore: was born in Washington, D.C.; Tipper Gore is married to", an
outgoing fact as "<relation> <object>", an incoming one as "<subject> <relation>" (the order
carries the direction). Why: a name alone says little (Wikidata12k's names are bare Q-ids), while
the entity's known neighbours say what it is; this is still E(p) = sigmoid(W LLM(p) + b) with a
richer text p. Only ``splits["train"]`` is read: validation and test facts never reach a text.

Which facts come first: the (relation, direction, neighbour) pairs seen most often in training
(a fact repeated over time counts once per time), then those whose neighbour has the most training
facts (a shared, well-known neighbour ties entities together), then by id, so the text is
deterministic. Times are left out (the query carries its own time). The tokenizer's
``llm.max_tokens`` truncates the end of a long text.

Held-out texts (``llm.text_folds`` k > 1, for the head warm-up): the distinct training triples
(s, r, o) are dealt into k folds by a seeded permutation (all times of a triple in one fold), and
fold f's texts are written from the training facts OUTSIDE fold f. Why: a training query's answer
is otherwise named in its own entity's text (the query's fact is one of that entity's facts),
while no test fact is in the training split; queries of fold f scored on fold f's texts never see
their own fact, as test queries never do (docs/METHOD.md).

Whether to hold texts out depends on the dataset (``llm.text_folds: auto``): a test triple often
repeats a training triple at another time (Wikidata12k: 30% of them, ICEWS14: 55%, YAGO11k: none),
and then its answer IS named in its entity's text, a signal held-out texts would train the head to
ignore. ``auto`` reads the share of VALIDATION triples that are training triples
(``repeat_share``): under ``SHORTCUT_REPEATS`` (5%) two folds, else none.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from distkg.data import TKGDataset
from distkg.data.dataset import O, R, S, T0, T1

ENTITY_TEXTS = ("name", "facts")
SHORTCUT_REPEATS = 0.05  # llm.text_folds: auto holds texts out below this share of repeated validation triples


def fact_phrases(ds: TKGDataset, entity: int, train: np.ndarray, degree: np.ndarray, limit: int) -> list[str]:
    """Up to ``limit`` phrases of ``entity``'s training facts, most telling first (module docstring)."""
    pairs: Counter = Counter()
    for s, r, o in train[(train[:, S] == entity) | (train[:, O] == entity)][:, [S, R, O]].tolist():
        if s == entity:
            pairs[(r, 0, o)] += 1
        if o == entity and s != entity:
            pairs[(r, 1, s)] += 1
    ranked = sorted(pairs, key=lambda p: (-pairs[p], -degree[p[2]], p))[:limit]
    names, rels = ds.entity_text, ds.relation_text
    return [f"{rels[r]} {names[n]}" if incoming == 0 else f"{names[n]} {rels[r]}" for r, incoming, n in ranked]


def _triple_draw(train: np.ndarray, seed: int | list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(a seeded permutation over the distinct (s, r, o) triples, each training row's triple index):
    what a draw per triple needs, so every time of one triple is drawn alike."""
    triples, inverse = np.unique(train[:, [S, R, O]], axis=0, return_inverse=True)
    return np.random.default_rng(seed).permutation(len(triples)), inverse.reshape(-1)


def fact_folds(train: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (0 .. folds-1) of each training row: distinct (s, r, o) triples dealt round a seeded
    permutation, so every time of one triple is in the same fold and the folds differ by at most one triple."""
    perm, triple = _triple_draw(train, seed)
    return (perm % folds)[triple]


def facts_texts(ds: TKGDataset, limit: int, rows: np.ndarray | None = None) -> list[str]:
    """Every entity's name followed by up to ``limit`` of its training facts (``llm.entity_text: facts``);
    ``rows`` (a boolean mask over the training split) keeps only those facts, neighbours' degrees included."""
    train = ds.splits["train"] if rows is None else ds.splits["train"][rows]
    degree = np.bincount(np.concatenate([train[:, S], train[:, O]]), minlength=ds.num_entities)
    by_entity: dict[int, list[int]] = {}
    for row, (s, o) in enumerate(train[:, [S, O]].tolist()):
        by_entity.setdefault(s, []).append(row)
        if o != s:
            by_entity.setdefault(o, []).append(row)
    texts = []
    for e, name in enumerate(ds.entity_text):
        rows = by_entity.get(e)
        phrases = fact_phrases(ds, e, train[rows], degree, limit) if rows else []
        texts.append(f"{name}: {'; '.join(phrases)}" if phrases else name)
    return texts


def entity_texts(ds: TKGDataset, kind: str = "name", facts: int = 8) -> list[str]:
    """The entity texts of ``llm.entity_text`` (``kind``) with ``llm.entity_facts`` (``facts``)."""
    if kind == "name":
        return list(ds.entity_text)
    if kind == "facts":
        return facts_texts(ds, facts)
    raise ValueError(f"llm.entity_text must be one of {ENTITY_TEXTS}, got {kind!r}")


def held_out_texts(ds: TKGDataset, facts: int, folds: int, seed: int) -> tuple[np.ndarray, list[list[str]]]:
    """(fold of each training row, per fold f the facts texts written without fold f's facts): the
    texts of ``llm.text_folds`` (module docstring)."""
    fold = fact_folds(ds.splits["train"], folds, seed)
    return fold, [facts_texts(ds, facts, fold != f) for f in range(folds)]


def repeat_share(ds: TKGDataset, split: str = "valid") -> float:
    """The share of ``split``'s triples (s, r, o) that are also training triples (at any time): how
    often an answer of that split is named in its entity's own text (``llm.text_folds: auto``)."""
    rows = ds.splits[split]
    if not len(rows):
        raise ValueError(f"llm.text_folds=auto reads the {split} split's repeats, but it is empty")
    train = {tuple(t) for t in ds.splits["train"][:, [S, R, O]].tolist()}
    return sum(tuple(t) in train for t in rows[:, [S, R, O]].tolist()) / len(rows)


def time_phrase(ds: TKGDataset, t: int) -> str:
    """A time id as text: the date of point data, the years of an interval bucket ("1952-1954")."""
    if ds.time_kind == "point":
        return ds.time_labels[t]
    if ds.unknown_time is not None and t == ds.unknown_time:
        return "unknown time"
    lo, hi = ds.buckets[t]
    return str(lo) if lo == hi else f"{lo}-{hi}"


class QueryTexts:
    """The text of a query (entity, relation', t0, t1) read as a whole (``llm.query: text``, docs/METHOD.md):

        "Al Gore was born in ? (1946-1950). Known: 1970-1975: is married to Tipper Gore; ..."

    the question (a head query (o, r + R) reads "? <relation> <o>"), then up to ``facts`` of the query
    entity's TRAINING facts, nearest in time to the query first (ties: the query's relation first, then
    file order; facts with no known time last), each "<time>: <relation> <neighbour>" (outgoing) or
    "<time>: <neighbour> <relation>" (incoming).

    Never its own answer: the text of a training query leaves out the one training fact it was made
    from (``exclude``: its row in the training split), so a training query never sees its own fact, as
    a validation or test query never does (theirs is not in the training split). Everything else is
    kept on both sides alike: the other training facts of the same entity, relation and time (other
    answers of the same question, as a test query's text holds its training siblings too).
    """

    def __init__(self, ds: TKGDataset, facts: int = 6) -> None:
        self.ds, self.facts = ds, facts
        self.train = ds.splits["train"]
        rows: dict[int, list[int]] = {}
        for row, (s, o) in enumerate(self.train[:, [S, O]].tolist()):
            rows.setdefault(s, []).append(row)
            if o != s:
                rows.setdefault(o, []).append(row)
        self.rows = {e: np.asarray(r, dtype=np.int64) for e, r in rows.items()}
        unknown = ds.unknown_time
        t0, t1 = self.train[:, T0].astype(float), self.train[:, T1].astype(float)
        if unknown is not None:  # an unknown end leaves the start; an unknown start is no time at all
            t1 = np.where(self.train[:, T1] == unknown, t0, t1)
            t0 = np.where(self.train[:, T0] == unknown, np.nan, t0)
        self.mid = 0.5 * (t0 + t1)

    def __call__(self, query: tuple[int, int, int, int], exclude: int = -1) -> str:
        """The text of one query; ``exclude``: the training row it was made from (-1: none)."""
        return self._write(*(int(x) for x in query[:4]), int(exclude))

    def texts(self, queries: np.ndarray, exclude: np.ndarray | None = None) -> list[str]:
        """Texts of [B, 4] queries; ``exclude``: each one's training row (-1: none), or a 5th column of
        ``queries`` (the LLM teacher's query rows may carry it, distkg.llm.teacher)."""
        queries = np.asarray(queries)
        if exclude is None:
            exclude = queries[:, 4] if queries.shape[1] > 4 else np.full(len(queries), -1)
        return [self(q, x) for q, x in zip(queries[:, :4].tolist(), np.asarray(exclude).tolist())]

    def training(self) -> list[str]:
        """The text of every training query, in the order of ``build_queries`` (tail queries of the
        training facts, then their head queries), each leaving out its own fact."""
        from distkg.evaluation import build_queries

        qs = build_queries(self.train, self.ds.num_relations).queries
        n = len(self.train)
        return self.texts(qs, np.arange(len(qs)) % n)

    def _write(self, e: int, r2: int, t0: int, t1: int, exclude: int) -> str:
        ds, train, n_rel = self.ds, self.train, self.ds.num_relations
        inverse, r = r2 >= n_rel, r2 % n_rel
        names, rels = ds.entity_text, ds.relation_text
        when = time_phrase(ds, t0) if t0 == t1 else f"{time_phrase(ds, t0)} to {time_phrase(ds, t1)}"
        question = f"? {rels[r]} {names[e]} ({when})." if inverse else f"{names[e]} {rels[r]} ? ({when})."
        rows = self.rows.get(e)
        if rows is None or not self.facts:
            return question
        rows = rows[rows != exclude]
        if not len(rows):
            return question
        f = train[rows]
        unknown = ds.unknown_time
        q_t1 = t0 if unknown is not None and t1 == unknown else t1
        q_mid = np.nan if unknown is not None and t0 == unknown else 0.5 * (t0 + q_t1)
        dist = np.abs(self.mid[rows] - q_mid)
        dist = np.where(np.isnan(dist), np.inf, dist)
        order = np.lexsort((rows, f[:, R] != r, dist))[: self.facts]
        phrases = []
        for s_, r_, o_, a_ in f[order][:, [S, R, O, T0]].tolist():
            fact = f"{rels[r_]} {names[o_]}" if s_ == e else f"{names[s_]} {rels[r_]}"
            phrases.append(f"{time_phrase(ds, a_)}: {fact}")
        return f"{question} Known: {'; '.join(phrases)}"
