"""distkg predict on real YAGO11k: names as the data writes them or plainly, times through the run's own
buckets, head queries through reciprocal relations, the train filter, clear errors; the LLM teacher's
tables on point (ICEWS-style) data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distkg.cli.main import main
from distkg.errors import QueryError
from distkg.serving.predict import Query, load_predictor, parse_query, read_queries


@pytest.fixture(scope="module")
def pred(yago_run):
    return load_predictor(yago_run)


def bucket_of_year(ds, year: int) -> int:
    starts = [lo for lo, _ in ds.buckets]
    return max(i for i, lo in enumerate(starts) if lo <= year)


def test_names_resolve_as_written_or_plainly(pred):
    written = pred.predict([parse_query("<Barack_Obama_Sr.>|<isMarriedTo>|?|1960")], k=5)
    plain = pred.predict([parse_query("barack obama sr.|is married to|?|1960")], k=5)
    assert [a["entity"] for a in written[0]["answers"]] == [a["entity"] for a in plain[0]["answers"]]
    assert pred.ids(parse_query("Barack Obama Sr.|isMarriedTo|?|1960"))[:2] == [
        pred.ds.entity_names.index("<Barack_Obama_Sr.>"), pred.ds.relation_names.index("<isMarriedTo>")]


def test_top_k_are_the_models_best_scores(pred):
    q = parse_query("?|isMarriedTo|Barack Obama Sr.|1950..1970")
    ids = pred.ids(q)
    assert ids[1] == pred.ds.relation_names.index("<isMarriedTo>") + pred.ds.num_relations  # reciprocal
    expected = torch.topk(pred.score(torch.tensor([ids]))[0], 10)
    got = pred.predict([q], k=10)[0]
    assert got["asked"] == "subject"
    assert [a["entity"] for a in got["answers"]] == [pred.ds.entity_names[i] for i in expected.indices.tolist()]
    assert np.allclose([a["score"] for a in got["answers"]], expected.values.numpy())


def test_times_map_through_the_runs_buckets(pred):
    ds = pred.ds
    b = bucket_of_year(ds, 2005)
    for written in ("2005", "2005-03-01", "2005-##-##", "2005..2005", "2005/####-##-##"):
        assert pred.times(written) == (b, b), written
    assert pred.times("1990..2010") == (bucket_of_year(ds, 1990), bucket_of_year(ds, 2010))
    assert pred.times("unknown") == (ds.unknown_time, ds.unknown_time) == pred.times("####-##-##")
    with pytest.raises(QueryError, match=r"year 2500 is outside the data.*cover -?\d+ \.\. \d+; closest buckets: "):
        pred.times("2500")
    with pytest.raises(QueryError, match="outside the data"):
        pred.times(f"{ds.buckets[0][0] - 1}")
    with pytest.raises(QueryError, match="ends .* before it starts"):
        pred.times("2010..1990")
    with pytest.raises(QueryError, match="not a year or a date"):
        pred.times("May 2005")


def test_unknown_names_offer_the_closest(pred):
    with pytest.raises(QueryError, match=r"unknown entity 'Barak Obama Sr'; closest: '<Barack_Obama_Sr.>'"):
        pred.ids(parse_query("Barak Obama Sr|isMarriedTo|?|2005"))
    with pytest.raises(QueryError, match=r"unknown relation 'isMariedTo'; closest: '<isMarriedTo>'"):
        pred.ids(parse_query("Barack Obama Sr.|isMariedTo|?|2005"))
    for bad in ("a|b|c|d", "?|r|?|2005", "a|r|?", "a|?|?|2005"):
        with pytest.raises(QueryError, match="query"):
            parse_query(bad)


def test_filter_known_leaves_out_train_answers(pred):
    ds = pred.ds
    s, r, o, t0, t1, _ = ds.splits["train"][0]
    ids = np.array([[s, r, t0, t1]], dtype=np.int64)
    everything = set(pred.top(ids, ds.num_entities)[1][0].tolist())
    scores, ents = pred.top(ids, ds.num_entities, "known")
    filtered = set(ents[0][scores[0] > float("-inf")].tolist())
    train = ds.splits["train"]
    true = {int(x) for x in train[(train[:, 0] == s) & (train[:, 1] == r) & (train[:, 3] == t0) & (train[:, 4] == t1), 2]}
    assert o in true and true <= everything
    assert not filtered & true and len(filtered) == ds.num_entities - len(true)


def test_cli_query_file_json_and_errors(yago_run, data_root, tmp_path, capsys):
    tsv = tmp_path / "q.tsv"
    tsv.write_text("Barack Obama Sr.\tisMarriedTo\t?\t1960\n\n?\twasBornIn\tHonolulu\t1961\n")
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text(json.dumps({"query": "Barack Obama Sr.|isMarriedTo|?|1960"}) + "\n"
                     + json.dumps({"subject": "?", "relation": "wasBornIn", "object": "Honolulu", "time": "1961"}) + "\n")
    outs = []
    for f in (tsv, jsonl):
        assert main(["predict", "--run", str(yago_run), "--queries", str(f), "--top", "3", "--json",
                     "--data-root", str(data_root)]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0] == outs[1] and len(outs[0]) == 2 and all(len(r["answers"]) == 3 for r in outs[0])
    assert main(["predict", "--run", str(yago_run), "--query", "Barack Obama Sr.|isMarriedTo|?|1960", "--top", "2"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Barack Obama Sr.|isMarriedTo|?|1960") and "  1. " in text and "  3. " not in text
    assert main(["predict", "--run", str(yago_run), "--query", "Barak Obama|isMarriedTo|?|1960"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distkg: error: unknown entity 'Barak Obama'; closest:") and "Traceback" not in err
    tsv.write_text("Barack Obama Sr.\tisMarriedTo\t?\n")
    assert main(["predict", "--run", str(yago_run), "--queries", str(tsv)]) == 2
    assert f"{tsv}:1: expected 4 tab-separated fields" in capsys.readouterr().err
    with pytest.raises(QueryError, match=r"q.jsonl:1: not JSON"):
        jsonl.write_text("{oops\n")
        read_queries(jsonl)


def test_llm_teacher_tables_answer_on_point_data(tiny_runs):
    pred = load_predictor(tiny_runs.llm)
    assert pred.kind == "llm"
    res = pred.predict([Query("Entity 3", "Relation 1", None, "2014-02-03")], k=4)[0]
    assert len(res["answers"]) == 4 and res["answers"][0]["score"] >= res["answers"][-1]["score"]
    assert pred.times("2014-02-03") == (pred.ds.time_labels.index("2014-02-03"),) * 2
    with pytest.raises(QueryError, match=r"time 2015-01-01 is outside the data: .* closest: "):
        pred.times("2015-01-01")
    with pytest.raises(QueryError, match="not a day written YYYY-MM-DD"):
        pred.times("2014")


def test_distilled_student_answers(tiny_runs, tmp_path):
    from distkg.distill.runner import distill

    out = tmp_path / "bkd"
    distill(tiny_runs.student("bkd", "distill.stages=[{name: bkd, epochs: 1, losses: {kd: {temperature: 7.0}, ce: {}}}]"), out)
    pred = load_predictor(out)
    assert pred.source.dim == 4
    res = pred.predict([parse_query("?|Relation 2|Entity 5|2014-02-10")], k=3)[0]
    ids = pred.ids(parse_query("?|Relation 2|Entity 5|2014-02-10"))
    want = torch.topk(pred.score(torch.tensor([ids]))[0], 3).indices.tolist()
    assert [a["entity"] for a in res["answers"]] == [pred.ds.entity_names[i] for i in want]
