"""The readers against the counts in each SOURCE.md, the date rules, and the bad-line rule."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from distkg.data import KEY, SPLITS, T0, T1, DataConfig, load_dataset
from distkg.data.dates import bucket_of, build_buckets, parse_endpoint
from distkg.errors import DataError

# (entities, relations, train, valid, test, time ids or None for buckets) from SOURCE.md
SOURCE_COUNTS = {
    "yago11k": (10623, 10, 16408, 2050, 2051, None),
    "wikidata12k": (12554, 24, 32497, 4062, 4062, None),
    "icews14": (7128, 230, 72826, 8941, 8963, 365),
    "icews18": (23033, 256, 373018, 45995, 49545, 304),
}


@pytest.mark.parametrize("name", sorted(SOURCE_COUNTS))
def test_counts_match_source(load, name):
    ds = load(name)
    ents, rels, *split_sizes, times = SOURCE_COUNTS[name]
    st = ds.stats()
    assert (st["entities"], st["relations"]) == (ents, rels)
    assert [st[s] for s in SPLITS] == split_sizes
    if times is not None:
        assert st["timestamps"] == times
    for split in SPLITS:
        f = ds.splits[split]
        assert f[:, [0, 2]].max() < ents and f[:, 1].max() < rels and f.min() >= 0
        assert f[:, [T0, T1]].max() < ds.num_times
        assert f[:, KEY].max() < len(ds.time_keys)


def test_all_entities_and_relations_used(load):
    for name in SOURCE_COUNTS:
        ds = load(name)
        facts = ds.all_facts()
        assert len(np.unique(facts[:, [0, 2]])) == ds.num_entities
        assert len(np.unique(facts[:, 1])) == ds.num_relations


def test_yago_date_rules_counted(load):
    ds = load("yago11k")
    rules = ds.date_rules
    assert rules["malformed"] == 2  # 307-13047-09 and 1963-64-65 (SOURCE.md)
    assert rules["unknown"] == 8997  # no line has two #### endpoints, so lines == endpoints
    assert rules["out_of_range"] == 5  # 2029, 2037, 2043, 2600, 2844
    assert rules["partial_year"] == 13  # 16 partial endpoints on 13 lines
    assert ds.unknown_time == len(ds.buckets) and ds.time_labels[-1] == "unknown"
    unknown_rows = sum(int((ds.splits[s][:, T0] == ds.unknown_time).sum()) for s in SPLITS)
    assert unknown_rows == rules["no_known_year"]
    assert ds.buckets[0][0] == -431  # the earliest written year (SOURCE.md)
    assert all(a[1] < b[0] for a, b in zip(ds.buckets, ds.buckets[1:]))  # sorted, disjoint


def test_wikidata_matches_source(load):
    ds = load("wikidata12k")
    assert ds.date_rules["unknown"] == 6140 and "malformed" not in ds.date_rules
    assert ds.relation_text[ds.relation_names.index("P166")] == "receive award"


def test_text_for_the_llm(load):
    yago = load("yago11k")
    i = yago.entity_names.index("<Athletic_Park_(Vancouver)>")
    assert yago.entity_text[i] == "Athletic Park (Vancouver)"
    assert yago.relation_text[yago.relation_names.index("<wasBornIn>")] == "was born in"
    icews18 = load("icews18")
    assert icews18.entity_names[0] == "Kim Jong-Un"  # CRLF stripped
    assert not any("\r" in n for n in icews18.entity_names + icews18.relation_names)
    wiki = load("wikidata12k")
    labelled = sum(t != n for t, n in zip(wiki.entity_text, wiki.entity_names))
    assert labelled == 1656  # the MIT FB15k label file only, by default
    assert wiki.entity_text[wiki.entity_names.index("Q16")] == "Canada"


def test_noncommercial_labels_opt_in(data_root):
    wiki = load_dataset(DataConfig(dataset="wikidata12k", noncommercial_labels=True), data_root)
    assert sum(t != n for t, n in zip(wiki.entity_text, wiki.entity_names)) == 4131


def test_point_times(load):
    ds = load("icews14")
    assert ds.time_labels[0] == "2014-01-01" and ds.time_labels[-1] == "2014-12-31"
    first = ds.splits["train"][0]
    assert ds.entity_names[first[0]] == "South Korea" and ds.time_labels[first[T0]] == "2014-05-13"
    assert (ds.splits["test"][:, T0] == ds.splits["test"][:, KEY]).all()
    ds18 = load("icews18")
    assert ds18.time_labels[-1] == "2018-10-31" and ds18.time_ymd[1] == (2018, 1, 2)


def test_bucket_size_is_a_setting(data_root):
    small = load_dataset(DataConfig(dataset="yago11k", min_bucket_size=100), data_root)
    assert len(small.buckets) > 61 and small.min_bucket_size == 100


@pytest.mark.parametrize(
    "text,year,rule",
    [
        ("1952-##-##", 1952, None), ("####-##-##", None, "unknown"), ("19##-##-##", None, "partial_year"),
        ("307-13047-09", None, "malformed"), ("1963-64-65", None, "malformed"), ("2844-##-##", None, "out_of_range"),
        ("-431-##-##", -431, "negative_year"), ("97-##-##", 97, "short_year"), ("1945-11-07", 1945, None),
        ("garbage", None, "malformed"),
    ],
)
def test_endpoint_rules(text, year, rule):
    e = parse_endpoint(text, max_year=2020)
    assert (e.year, e.rule) == (year, rule)


def test_buckets_by_hand():
    years = [1900] * 2 + [1901] * 1 + [1950] * 3 + [2000] * 1
    assert build_buckets(years, 3) == [(1900, 1901), (1950, 2000)]  # remainder joins the last bucket
    assert build_buckets(years, 1) == [(1900, 1900), (1901, 1901), (1950, 1950), (2000, 2000)]
    b = build_buckets(years, 3)
    assert bucket_of(np.array([1800, 1900, 1949, 1950, 2100]), b).tolist() == [0, 0, 0, 1, 1]


# ------------------------------------------------------------------------------------ bad input
@pytest.fixture()
def yago_copy(data_root, tmp_path) -> Path:
    dst = tmp_path / "yago11k"
    shutil.copytree(data_root / "yago11k", dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def _append(path: Path, line: str) -> int:
    text = path.read_text()
    path.write_text(text + line)
    return text.count("\n") + 1


def test_bad_line_is_an_error_naming_file_and_line(yago_copy):
    lineno = _append(yago_copy / "train.txt", "1\t2\t3\t1990-##-##\n")
    with pytest.raises(DataError, match=rf"train\.txt:{lineno}: expected 5 tab-separated fields, got 4"):
        load_dataset("yago11k", yago_copy.parent)


def test_unknown_entity_id_names_the_line(yago_copy):
    lineno = _append(yago_copy / "valid.txt", "99999\t2\t3\t1990-##-##\t####-##-##\n")
    with pytest.raises(DataError, match=rf"valid\.txt:{lineno}: unknown entity 99999"):
        load_dataset("yago11k", yago_copy.parent)


def test_bad_lines_skipped_are_counted_and_reported(yago_copy):
    _append(yago_copy / "train.txt", "1\t2\t3\t1990-##-##\nx\t2\t3\t1990-##-##\t####-##-##\n")
    ds = load_dataset(DataConfig(dataset="yago11k", on_bad_line="skip"), yago_copy.parent)
    assert len(ds.splits["train"]) == 16408
    assert sum(ds.bad_lines.values()) == 2 and len(ds.bad_line_examples) == 2
    assert "train.txt:16409" in ds.bad_line_examples[0]
    assert "skipped bad lines" in ds.describe()


def test_missing_file_named(yago_copy):
    (yago_copy / "test.txt").unlink()
    with pytest.raises(DataError, match=r"test\.txt: file not found"):
        load_dataset("yago11k", yago_copy.parent)


def test_unknown_dataset_and_missing_folder(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'yago'.*yago11k"):
        load_dataset("yago", tmp_path)
    with pytest.raises(DataError, match="distkg data download icews14"):
        load_dataset("icews14", tmp_path)


def test_icews14_unknown_name(data_root, tmp_path):
    dst = tmp_path / "icews14"
    shutil.copytree(data_root / "icews14", dst)
    (dst / "test.txt").chmod(0o644)
    _append(dst / "test.txt", "Nobody Known\tMake statement\tChina\t2014-03-06\n")
    with pytest.raises(DataError, match="unknown entity 'Nobody Known'"):
        load_dataset("icews14", tmp_path)


def test_data_root_resolution(monkeypatch, tmp_path):
    from distkg.data import resolve_data_root

    monkeypatch.setenv("DISTKG_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "x") == tmp_path / "x"
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv("DISTKG_DATA")
    monkeypatch.delenv("DISTKG_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_data_root(None) == tmp_path / "cache" / "distkg" / "data"


def test_the_default_data_root_moves_with_distkg_cache(monkeypatch, tmp_path):
    # one cache rule (distkg.cachedir.cache_root): $DISTKG_CACHE moves the default data root with the other caches
    from distkg.data import resolve_data_root

    monkeypatch.delenv("DISTKG_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("DISTKG_CACHE", str(tmp_path / "cache"))
    assert resolve_data_root(None) == tmp_path / "cache" / "data"
    with pytest.raises(DataError, match=r"cache/data/yago11k not found; .*--data-root / \$DISTKG_DATA"):
        load_dataset("yago11k")
