"""The main job's whole pipeline (teacher, LLM teacher, three students, report) on a small synthetic graph
and a tiny randomly initialised Llama; load_dataset is replaced by the synthetic graph (it stands in
for reading YAGO11k from disk). A second run reads every finished part instead of training it again."""

from __future__ import annotations

import json

import pytest

from distkg.experiments import pipeline
from distkg.config import load_config
from tests.helpers import tiny_dataset
from tests.llm.conftest import make_tiny_llama

DS = tiny_dataset("interval", n_ent=30, n_facts=300)


def test_pipeline_trains_every_part_reports_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "load_dataset", lambda data: DS)
    llm = make_tiny_llama(tmp_path / "tiny-llama")
    cfg = load_config("configs/quickstart.yaml", [
        "model.args.dim=8", "train.epochs=2", "train.progress=false", "eval.progress=false", "pipeline.student_dim=4",
        f"llm.model={llm}", "llm.quantization=none", "llm.layers=null", "llm.dim=8", "llm.steps=2",
        "llm.head_epochs=1", "llm.head_queries_per_step=64", "llm.queries_per_step=4", "llm.negatives=8", "llm.valid_queries=0",
        "llm.progress=false", "pipeline.students.plain.stages.0.epochs=1", "pipeline.students.bkd.stages.0.epochs=1",
        "pipeline.students.ours.stages.0.epochs=1", "pipeline.students.ours.stages.1.epochs=1"])
    out = tmp_path / "run"
    summary = pipeline.run(cfg, out)
    names = list(summary["parts"])
    assert names[0].startswith("teacher") and names[1].startswith("LLM teacher")
    assert [n.split(": ")[1] for n in names[2:]] == ["plain", "bkd", "ours"]
    assert all(0 < p["mrr"] <= 1 for p in summary["parts"].values())
    assert (out / "students" / "ours" / "metrics.json").is_file() and (out / "llm" / "teacher" / "tables.pt").is_file()
    report = (out / "report.md").read_text()
    assert "student 4-d: ours" in report and "comparison.png" in report and "Size and cost" in report
    assert (out / "comparison.png").stat().st_size > 0 and (out / "curves.png").stat().st_size > 0

    def no_training(*a, **k):
        raise AssertionError("a finished part was trained again")

    monkeypatch.setattr(pipeline, "train", no_training)
    again = pipeline.run(cfg, out)
    assert json.dumps(again["parts"], sort_keys=True) == json.dumps(summary["parts"], sort_keys=True)

    # a finished student's budget raised: it continues from its checkpoints (as `distkg train` does), the
    # teachers are read, and every config.yaml says what its metrics are of (it was skipped before,
    # and the top-level config.yaml then said 2 epochs over a 1-epoch student)
    from distkg.config import read_yaml

    more = load_config(out / "config.yaml", ["pipeline.students.plain.stages.0.epochs=2"])
    third = pipeline.run(more, out)
    plain = json.loads((out / "students" / "plain" / "metrics.json").read_text())
    assert plain["epochs_run"] == 2
    assert read_yaml(out / "students" / "plain" / "config.yaml")["distill"]["stages"][0]["epochs"] == 2
    assert read_yaml(out / "config.yaml")["pipeline"]["students"]["plain"]["stages"][0]["epochs"] == 2
    unchanged = [n for n in summary["parts"] if not n.endswith(": plain")]
    assert all(third["parts"][n] == summary["parts"][n] for n in unchanged)

    # one more student: the teachers' folders are read untouched (byte for byte) and only it trains (the
    # teacher's folder was "a different configuration" before: every part saved the whole config)
    def files(folder):
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    teachers = {name: files(out / name) for name in ("teacher", "llm", "students/plain")}
    wider = load_config(out / "config.yaml", ["pipeline.students.fitnet={stages: [{name: fitnet, epochs: 1, "
                                              "losses: {ce: {}, fitnet: {weight: 0.5}}}]}"])
    fourth = pipeline.run(wider, out)
    assert [n.split(": ")[1] for n in list(fourth["parts"])[2:]] == ["plain", "bkd", "ours", "fitnet"]
    assert all(files(out / name) == before for name, before in teachers.items())
    assert (out / "students" / "fitnet" / "metrics.json").is_file()

    # a command taking --run, given the pipeline's folder, names the parts that would answer (it said
    # "best.pt not found: the run has no evaluated epoch yet")
    from distkg.cli.main import main

    capsys.readouterr()
    for command in (["predict", "--query", "a|b|?|2000"], ["evaluate"], ["export", "--out", str(tmp_path / "x")]):
        assert main([command[0], "--run", str(out), *command[1:]]) == 2
        err = capsys.readouterr().err
        assert "is a `distkg run` pipeline" in err and f"{out / 'students' / 'bkd'} (student)" in err, err
        assert f"{out / 'llm'} (llm)" in err and len(err.strip().splitlines()) == 1


def test_pipeline_rejects_a_bad_student_method_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "load_dataset", lambda data: DS)
    cfg = load_config("configs/quickstart.yaml", ["pipeline.students.bkd.stages.0.losses.kd.temp=3"])
    monkeypatch.setattr(pipeline, "train", lambda *a, **k: pytest.fail("trained before checking the methods"))
    with pytest.raises(Exception, match=r"has no argument 'temp'"):
        pipeline.run(cfg, tmp_path)


def test_a_pipeline_part_another_process_holds_is_waited_for(tmp_path, monkeypatch):
    # distkg run runs its parts through the part runner distkg reproduce uses (distkg.experiments.parts):
    # a teacher another live process is training is waited for, not trained a second time beside it
    import os
    import socket

    from distkg.experiments import claims

    monkeypatch.setattr(pipeline, "load_dataset", lambda data: DS)
    sets = ["model.args.dim=8", "train.epochs=1", "train.progress=false", "eval.progress=false", "pipeline.llm=false",
            "pipeline.students={plain: {stages: [{name: train, epochs: 1}]}}", "pipeline.student_dim=4"]
    out = tmp_path / "run"
    (out / "teacher").mkdir(parents=True)
    (out / "teacher" / "claim").write_text(f"{socket.gethostname()} {os.getppid()}")  # a live process holds it
    waits = []
    monkeypatch.setattr(claims.time, "sleep", lambda s: waits.append(s) or (out / "teacher" / "claim").unlink())
    summary = pipeline.run(load_config("configs/quickstart.yaml", sets), out)
    assert waits == [30] and len(summary["parts"]) == 2 and not list(out.glob("**/claim"))
