"""Readers for the four benchmark layouts (see each dataset's SOURCE.md), all producing TKGDataset.

Bad-line rule (``data.on_bad_line``): a line that cannot be read as a fact or map entry (wrong
number of tab-separated fields, a non-integer id, an id or name missing from the maps, a time that
is not a date) is an error naming the file and line (``error``, the default), or is skipped and
counted under the reason (``skip``), with the first few file:line places reported. Blank lines are
ignored. Dates that parse but are odd (unknown, partial, malformed years in interval data) are not
bad lines: they follow the date rules of distkg.data.dates and are counted there.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from distkg.data.dataset import SPLITS, TKGDataset
from distkg.data.dates import bucket_of, build_buckets, parse_interval
from distkg.data.options import DataConfig
from distkg.errors import DataError


class LineReader:
    """Reads tab-separated files line by line and applies the bad-line rule of the module docstring."""

    MAX_EXAMPLES = 5

    def __init__(self, on_bad_line: str) -> None:
        self.on_bad_line = on_bad_line
        self.counts: Counter = Counter()
        self.examples: list[str] = []

    def rows(self, path: Path, ncols: int, parse: Callable[[list[str]], Any]) -> Iterator[Any]:
        """Yield ``parse(fields)`` for each good line; ``parse`` raises ValueError('reason') for bad ones."""
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as e:
                    self._bad(path, lineno, repr(raw[:120]), f"not UTF-8 ({e.reason})")
                    continue
                if not line.strip():
                    continue
                fields = line.split("\t")
                try:
                    if len(fields) != ncols:
                        raise ValueError(f"expected {ncols} tab-separated fields, got {len(fields)}")
                    yield parse(fields)
                except ValueError as e:
                    self._bad(path, lineno, line, str(e))

    def _bad(self, path: Path, lineno: int, line: str, reason: str) -> None:
        where = f"{path}:{lineno}"
        if self.on_bad_line == "error":
            raise DataError(
                f"{where}: {reason}: {line[:200]!r} "
                "(set data.on_bad_line=skip to skip such lines; they are then counted and reported)"
            )
        self.counts[reason.split(":")[0]] += 1
        if len(self.examples) < self.MAX_EXAMPLES:
            self.examples.append(f"{where}: {reason}")


def _int_in(text: str, n: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an integer") from None
    if not 0 <= value < n:
        raise ValueError(f"unknown {what} {value}: not in the id map (0..{n - 1})")
    return value


def read_id_map(path: Path, ncols: int, lines: LineReader) -> list[str]:
    """Names by id from ``name \\t id [\\t ...]``; ids must be exactly 0..n-1, each once."""
    by_id: dict[int, str] = {}

    def parse(fields: list[str]) -> tuple[int, str]:
        try:
            idx = int(fields[1])
        except ValueError:
            raise ValueError(f"id {fields[1]!r} is not an integer") from None
        if idx in by_id:
            raise ValueError(f"duplicate id {idx} (already {by_id[idx]!r})")
        return idx, fields[0]

    for idx, name in lines.rows(path, ncols, parse):
        by_id[idx] = name
    missing = sorted(set(range(len(by_id))) - set(by_id))
    if missing:
        raise DataError(f"{path}: ids are not 0..{len(by_id) - 1}; missing e.g. {missing[:5]}")
    return [by_id[i] for i in range(len(by_id))]


# ----------------------------------------------------------------- readable text for the LLM teacher
def yago_entity_text(name: str) -> str:
    """``<Getafe_CF>`` -> ``Getafe CF``."""
    return name.strip("<>").replace("_", " ")


def camel_relation_text(name: str) -> str:
    """``<wasBornIn>`` -> ``was born in``."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name.strip("<>")).lower()


# ----------------------------------------------------------------------------- interval datasets
def _read_interval_splits(
    root: Path, cfg: DataConfig, n_ent: int, n_rel: int, lines: LineReader
) -> tuple[dict[str, np.ndarray], list[str], list[tuple[int, int]], Counter]:
    """Facts of YAGO11k / Wikidata12k with bucketed years (distkg.data.dates)."""
    rules: Counter = Counter()
    raw: dict[str, list[tuple]] = {}
    for split in SPLITS:

        def parse(f: list[str]) -> tuple:
            s, r, o = _int_in(f[0], n_ent, "entity"), _int_in(f[1], n_rel, "relation"), _int_in(f[2], n_ent, "entity")
            return s, r, o, f[3], f[4]

        raw[split] = list(lines.rows(root / f"{split}.txt", 5, parse))
    years = {split: [parse_interval(a, b, cfg.max_year, rules) for *_, a, b in raw[split]] for split in SPLITS}
    train_years = [y for *_, written in years["train"] for y in written]
    buckets = build_buckets(train_years, cfg.min_bucket_size)
    unknown = len(buckets)
    keys: dict[str, int] = {}
    splits = {}
    for split in SPLITS:
        rows = np.zeros((len(raw[split]), 6), dtype=np.int64)
        for i, ((s, r, o, a, b), (ya, yb, _)) in enumerate(zip(raw[split], years[split])):
            k = keys.setdefault(f"{a}\t{b}", len(keys))
            rows[i, :3] = (s, r, o)
            rows[i, 5] = k
            if ya is None:
                rows[i, 3:5] = unknown
            else:
                rows[i, 3:5] = bucket_of(np.array([ya, yb]), buckets)
        splits[split] = rows
    return splits, list(keys), buckets, rules


def _interval_dataset(
    name: str, root: Path, cfg: DataConfig, lines: LineReader, entities: list[str], relations: list[str],
    entity_text: list[str], relation_text: list[str],
) -> TKGDataset:
    splits, keys, buckets, rules = _read_interval_splits(root, cfg, len(entities), len(relations), lines)
    return TKGDataset(
        name=name, time_kind="interval", splits=splits,
        entity_names=entities, relation_names=relations, entity_text=entity_text, relation_text=relation_text,
        time_labels=[f"{lo}..{hi}" for lo, hi in buckets] + ["unknown"], time_keys=keys,
        date_rules=dict(rules), bad_lines=dict(lines.counts), bad_line_examples=lines.examples, buckets=buckets,
        min_bucket_size=cfg.min_bucket_size, unknown_time=len(buckets),
    )


def read_yago11k(root: Path, cfg: DataConfig) -> TKGDataset:
    lines = LineReader(cfg.on_bad_line)
    entities = read_id_map(root / "entity2id.txt", 4, lines)
    relations = read_id_map(root / "relation2id.txt", 2, lines)
    return _interval_dataset(
        "yago11k", root, cfg, lines, entities, relations,
        [yago_entity_text(e) for e in entities], [camel_relation_text(r) for r in relations],
    )


def read_wikidata12k(root: Path, cfg: DataConfig) -> TKGDataset:
    """Entity text: the MIT-licensed FB15k label file, plus (only with data.noncommercial_labels) the
    CC BY-NC YAGO alignment labels; entities without a label keep their Q-id."""
    lines = LineReader(cfg.on_bad_line)
    entities = read_id_map(root / "entity2id.txt", 2, lines)
    relations = read_id_map(root / "relation2id.txt", 2, lines)
    rel_labels: dict[str, str] = {}
    if (root / "relation2id_with_labels.txt").is_file():
        rel_labels = dict(lines.rows(root / "relation2id_with_labels.txt", 3, lambda f: (f[0], f[2])))
    labels: dict[str, str] = {}
    label_files = [("entity_labels_partial_fb15k.tsv", 4)]
    if cfg.noncommercial_labels:
        label_files.append(("entity_labels_partial_yagowiki.tsv", 3))
    for fname, ncols in label_files:
        if (root / fname).is_file():
            for qid, label in lines.rows(root / fname, ncols, lambda f: (f[0], yago_entity_text(f[1]))):
                labels.setdefault(qid, label)
    return _interval_dataset(
        "wikidata12k", root, cfg, lines, entities, relations,
        [labels.get(e, e) for e in entities], [rel_labels.get(r, r) for r in relations],
    )


# -------------------------------------------------------------------------------- point datasets
def _point_dataset(
    name: str, splits_rows: dict[str, list[tuple[int, int, int, int]]], first_day: dt.date,
    entities: list[str], relations: list[str], lines: LineReader,
) -> TKGDataset:
    """Daily data: time ids are day offsets from ``first_day``, one id per day up to the last seen."""
    last = max(row[3] for rows in splits_rows.values() for row in rows)
    days = [first_day + dt.timedelta(days=i) for i in range(last + 1)]
    labels = [d.isoformat() for d in days]
    splits = {}
    for split, rows in splits_rows.items():
        arr = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
        splits[split] = np.concatenate([arr, arr[:, 3:4], arr[:, 3:4]], axis=1)
    return TKGDataset(
        name=name, time_kind="point", splits=splits, entity_names=entities, relation_names=relations,
        entity_text=list(entities), relation_text=list(relations), time_labels=labels, time_keys=labels,
        bad_lines=dict(lines.counts), bad_line_examples=lines.examples, time_ymd=[(d.year, d.month, d.day) for d in days],
    )


def read_icews14(root: Path, cfg: DataConfig) -> TKGDataset:
    """Names and ISO dates (the original text files); ids follow ids/*2id.txt when present
    (TEILP's numbering), else the order of first appearance in train, valid, test."""
    lines = LineReader(cfg.on_bad_line)
    fixed_maps = (root / "ids" / "entity2id.txt").is_file()
    entities = read_id_map(root / "ids" / "entity2id.txt", 2, lines) if fixed_maps else []
    relations = read_id_map(root / "ids" / "relation2id.txt", 2, lines) if fixed_maps else []
    ent_id = {e: i for i, e in enumerate(entities)}
    rel_id = {r: i for i, r in enumerate(relations)}
    first_day = dt.date(2014, 1, 1)

    def lookup(table: dict[str, int], names: list[str], key: str, what: str) -> int:
        if key not in table:
            if fixed_maps:
                raise ValueError(f"unknown {what} {key!r}: not in ids/{what}2id.txt")
            table[key] = len(names)
            names.append(key)
        return table[key]

    def parse(f: list[str]) -> tuple[int, int, int, int]:
        try:
            day = (dt.date.fromisoformat(f[3]) - first_day).days
        except ValueError:
            raise ValueError(f"time {f[3]!r} is not a YYYY-MM-DD date") from None
        if day < 0:
            raise ValueError(f"time {f[3]} is before {first_day}")
        return (lookup(ent_id, entities, f[0], "entity"), lookup(rel_id, relations, f[1], "relation"),
                lookup(ent_id, entities, f[2], "entity"), day)

    rows = {split: list(lines.rows(root / f"{split}.txt", 4, parse)) for split in SPLITS}
    return _point_dataset("icews14", rows, first_day, entities, relations, lines)


def read_icews18(root: Path, cfg: DataConfig) -> TKGDataset:
    """RE-GCN layout: integer ids, t = hours since 2018-01-01 in steps of 24, CRLF maps (also the
    layout of `distkg data synth`'s graphs, named by their folder)."""
    lines = LineReader(cfg.on_bad_line)
    entities = read_id_map(root / "entity2id.txt", 2, lines)
    relations = read_id_map(root / "relation2id.txt", 2, lines)
    n_ent, n_rel = len(entities), len(relations)

    def parse(f: list[str]) -> tuple[int, int, int, int]:
        hours = int(f[3]) if f[3].isdigit() else -1
        if hours < 0 or hours % 24:
            raise ValueError(f"time {f[3]!r} is not a non-negative multiple of 24 hours")
        return _int_in(f[0], n_ent, "entity"), _int_in(f[1], n_rel, "relation"), _int_in(f[2], n_ent, "entity"), hours // 24

    rows = {split: list(lines.rows(root / f"{split}.txt", 4, parse)) for split in SPLITS}
    return _point_dataset(root.name, rows, dt.date(2018, 1, 1), entities, relations, lines)  # a synthetic graph's too


READERS: dict[str, Callable[[Path, DataConfig], TKGDataset]] = {
    "yago11k": read_yago11k,
    "wikidata12k": read_wikidata12k,
    "icews14": read_icews14,
    "icews18": read_icews18,
}
