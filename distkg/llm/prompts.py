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
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from distkg.data import TKGDataset
from distkg.data.dataset import O, R, S

ENTITY_TEXTS = ("name", "facts")


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


def facts_texts(ds: TKGDataset, limit: int) -> list[str]:
    """Every entity's name followed by up to ``limit`` of its training facts (``llm.entity_text: facts``)."""
    train = ds.splits["train"]
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
