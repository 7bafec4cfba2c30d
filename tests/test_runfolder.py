"""One run folder, one configuration (distkg.runfolder), and checkpoints verified on load, on a small
synthetic graph: a run of another config into an existing folder stops with rc 2 before anything is
written; safe keys continue; --restart starts over; a damaged checkpoint falls back to an intact one."""

from __future__ import annotations

import json

import pytest
import torch

from distkg.experiments import pipeline
from distkg.cli.main import main
from distkg.config import load_config
from distkg.distill import runner
from distkg.errors import ConfigError, DistkgError
from distkg.training import trainer
from distkg.training.checkpoint import CheckpointError, Checkpoints
from tests.helpers import tiny_dataset

DS = tiny_dataset("interval", n_ent=40, n_facts=400)
BASE = ["model.name=tadistmult", "model.args.dim=6", "train.batch_size=64", "train.epochs=2", "train.patience=10",
        "train.progress=false", "eval.progress=false"]


def cfg(*sets: str, files=None):
    return load_config(files, BASE + list(sets))


def snapshot(folder):
    """Every file under ``folder`` with its bytes: 'nothing was written' is checked against this."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli_set(*sets: str) -> list[str]:
    return [a for s in BASE + list(sets) for a in ("--set", s)]


def test_train_into_a_folder_of_another_config_stops_before_writing(tmp_path, capsys):
    out = tmp_path / "run"
    first = trainer.train(cfg(), out, dataset=DS)
    before = snapshot(out)
    for change in ("model.args.dim=4", "train.lr=0.05", "train.epochs=1", "seed=1"):
        with pytest.raises(ConfigError, match=r"holds a run of a different configuration \(" + change.split("=")[0]):
            trainer.train(cfg(change), out, dataset=DS)
        # the CLI stops before reading any data (no data root exists here) with rc 2 and the key
        assert main(["train", "--out", str(out), *cli_set(change)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("distkg: error: ") and change.split("=")[0] in err and "--restart" in err
        assert "Traceback" not in err and err.count("\n") == 1
    assert snapshot(out) == before
    # safe keys: a larger epoch budget and the progress flags continue the run
    more = trainer.train(cfg("train.epochs=3", "train.progress=true"), out, dataset=DS)
    assert more["epochs_run"] == 3 and first["epochs_run"] == 2
    # --restart discards the run and starts over in the folder
    restarted = trainer.train(cfg("model.args.dim=4"), out, resume=False, dataset=DS)
    assert restarted["dim"] == 4 and restarted["epochs_run"] == 2
    assert [json.loads(r)["epoch"] for r in (out / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_distilling_one_method_into_another_methods_folder_stops(tmp_path, capsys, monkeypatch):
    teacher = tmp_path / "teacher"
    trainer.train(cfg("model.args.dim=16"), teacher, dataset=DS)
    out = tmp_path / "bkd"
    bkd = cfg(f"distill.teacher_run={teacher}", "model.args.dim=4", files=["configs/distill/bkd.yaml"])
    bkd.distill.stages[0].epochs = 1
    runner.distill(bkd, out, dataset=DS)
    before = snapshot(out)
    ours = cfg(f"distill.teacher_run={teacher}", f"distill.llm_run={tmp_path / 'no-llm'}", "model.args.dim=4",
               files=["configs/distill/ours.yaml"])
    with pytest.raises(ConfigError, match=r"distill\.method: 'bkd' -> 'ours'"):
        runner.distill(ours, out, dataset=DS)
    assert main(["distill", "--config", "configs/distill/ours.yaml", "--out", str(out),
                 *cli_set(f"distill.teacher_run={teacher}", f"distill.llm_run={tmp_path / 'no-llm'}",
                          "model.args.dim=4")]) == 2
    assert "distill.method: 'bkd' -> 'ours'" in capsys.readouterr().err
    assert snapshot(out) == before
    # the same method with a larger stage budget continues; a relative spelling of the teacher's path is the same path
    monkeypatch.chdir(tmp_path)
    bkd.distill.stages[0].epochs = 2
    bkd.distill.teacher_run = "teacher"
    assert runner.distill(bkd, out, dataset=DS)["epochs_run"] == 2


def test_distkg_run_checks_the_folder_and_every_part(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "load_dataset", lambda data: DS)
    sets = ["model.args.dim=8", "train.epochs=1", "train.progress=false", "eval.progress=false", "pipeline.llm=false",
            "pipeline.students={plain: {stages: [{name: train, epochs: 1}]}}", "pipeline.student_dim=4"]
    out = tmp_path / "run"
    summary = pipeline.run(load_config("configs/quickstart.yaml", sets), out)
    report = (out / "report.md").read_text()
    walls = json.loads((out / "walls.json").read_text())
    assert set(walls) == {"teacher", "students/plain"} and all(w > 0 for w in walls.values())
    before = snapshot(out)
    # each part is checked on its own slice: the student's dim is its model.args.dim
    for change, named in (("model.args.dim=6", r"teacher .*model\.args\.dim: 8 -> 6"),
                          ("pipeline.student_dim=2", r"students/plain .*model\.args\.dim: 4 -> 2"),
                          ("train.lr=0.2", r"train\.lr")):
        with pytest.raises(ConfigError, match=named):
            pipeline.run(load_config("configs/quickstart.yaml", sets + [change]), out)
    assert snapshot(out) == before
    # a part whose folder holds another config (changed by hand) is not reused either
    part = out / "students" / "plain" / "config.yaml"
    part.write_text(part.read_text().replace("seed: 0", "seed: 5"))
    with pytest.raises(ConfigError, match=r"students/plain holds a run of a different configuration \(seed: 5 -> 0\)"):
        pipeline.run(load_config("configs/quickstart.yaml", sets), out)
    part.write_text(part.read_text().replace("seed: 5", "seed: 0"))
    # a re-run reuses every part and keeps their wall times in the report
    monkeypatch.setattr(pipeline, "train", lambda *a, **k: pytest.fail("a finished part was trained again"))
    again = pipeline.run(load_config("configs/quickstart.yaml", sets), out)
    assert again["parts"] == summary["parts"]
    rerun = (out / "report.md").read_text()
    for folder, wall in walls.items():
        assert f"| {wall} |" in rerun
    assert rerun.split("Wall time of all parts")[1].split(";")[0] == report.split("Wall time of all parts")[1].split(";")[0]


def test_a_damaged_newest_checkpoint_falls_back_and_the_log_keeps_one_line_per_epoch(tmp_path, caplog):
    straight = trainer.train(cfg("train.epochs=3"), tmp_path / "a", dataset=DS)
    out = tmp_path / "b"
    trainer.train(cfg("train.epochs=2", "train.keep_checkpoints=2"), out, dataset=DS)
    newest = out / "checkpoints" / "epoch_0002.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated, as by a full disk
    resumed = trainer.train(cfg("train.epochs=3", "train.keep_checkpoints=2"), out, dataset=DS)
    assert "epoch_0002.pt cannot be read" in caplog.text and "trying the checkpoint before it" in caplog.text
    assert [json.loads(r)["epoch"] for r in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    for key in ("mrr", "best_epoch", "epochs_run"):
        assert resumed[key] == straight[key], key
    # none intact: a clear error, no traceback from torch
    for p in Checkpoints(out / "checkpoints").epochs():
        p.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"no intact checkpoint in .*--restart"):
        trainer.train(cfg("train.epochs=4", "train.keep_checkpoints=2"), out, dataset=DS)


def test_a_checkpoint_of_another_config_is_not_resumed(tmp_path):
    """config.yaml says one thing, the checkpoint another (copied in from another run): refused."""
    trainer.train(cfg("seed=1"), tmp_path / "other", dataset=DS)
    out = tmp_path / "run"
    trainer.train(cfg(), out, dataset=DS)
    for p in Checkpoints(out / "checkpoints").epochs():
        p.unlink()
    copied = Checkpoints(tmp_path / "other" / "checkpoints").latest()
    (out / "checkpoints" / copied.name).write_bytes(copied.read_bytes())
    with pytest.raises(CheckpointError, match=r"epoch_0002\.pt was written by a run of another configuration"):
        trainer.train(cfg("train.epochs=3"), out, dataset=DS)


def test_a_damaged_best_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "load_dataset", lambda data: DS)
    out = tmp_path / "run"
    trained = trainer.train(cfg("train.epochs=2", "train.keep_checkpoints=5"), out, dataset=DS)
    best = out / "checkpoints" / "best.pt"
    good = best.read_bytes()
    best.write_bytes(good[:100])
    _, _, model = trainer.load_trained(out)  # the best epoch's checkpoint holds the same weights
    assert best.read_bytes() != good[:100]
    expected = torch.load(out / "checkpoints" / f"epoch_{trained['best_epoch']:04d}.pt", weights_only=True)["model"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in expected.items())
    for p in Checkpoints(out / "checkpoints").epochs():
        p.unlink()
    best.write_bytes(good[:100])
    with pytest.raises(CheckpointError, match=r"best\.pt cannot be read .*truncated or corrupt"):
        trainer.load_trained(out)
    best.write_bytes(good)
    with pytest.raises(CheckpointError, match=r"best\.pt does not fit this model"):  # evaluate --run --set model.args.dim=4
        trainer.load_trained(out, cfg("train.epochs=2", "model.args.dim=4"))
    assert issubclass(CheckpointError, DistkgError)  # the CLI prints it as one line, rc 2


def test_a_kg_run_owns_its_slice_of_the_config(tmp_path):
    # a KG run's folder saves, compares and digests data, model, train, eval and seed only: the LLM's
    # or a pipeline's keys are not its configuration (they made a trained teacher "a different
    # configuration" when a student was added to a pipeline)
    import yaml

    from distkg.runfolder import config_digest

    out = tmp_path / "run"
    first = trainer.train(cfg(), out, dataset=DS)
    assert set(yaml.safe_load((out / "config.yaml").read_text())) == {"data", "model", "eval", "train", "seed"}
    other_parts = ["llm.head_epochs=7", "pipeline.students={}", "distill.method=bkd", "runtime.workers=3"]
    more = trainer.train(cfg("train.epochs=3", *other_parts), out, dataset=DS)  # continues
    assert first["epochs_run"] == 2 and more["epochs_run"] == 3
    assert config_digest(cfg(*other_parts), "kg") == config_digest(cfg(), "kg")
    assert config_digest(cfg(*other_parts), "student") != config_digest(cfg(), "student")
    with pytest.raises(ConfigError, match=r"different configuration \(train.lr: "):
        trainer.train(cfg("train.epochs=4", "train.lr=0.5"), out, dataset=DS)  # its own keys still count
    # a checkpoint whose digest is not this slice's (one from before the slices): rc 2 naming --restart
    latest = Checkpoints(out / "checkpoints").latest()
    state = torch.load(latest, weights_only=False)
    state["state"]["config_digest"] = "0123456789abcdef"
    torch.save(state, latest)
    with pytest.raises(CheckpointError, match=r"another configuration .*--restart"):
        trainer.train(cfg("train.epochs=5"), out, dataset=DS)


def test_metrics_json_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """metrics.json marks a run finished (resume, claims): a writer killed before the rename leaves
    the run unfinished, never a half-written file that reads as finished."""
    from distkg import runfolder

    real_replace = runfolder.os.replace
    runfolder.write_metrics(tmp_path, {"mrr": 0.5})
    assert runfolder.read_metrics(tmp_path) == {"mrr": 0.5}

    def killed(src, dst):  # stands in for the process dying between writing and renaming
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(runfolder.os, "replace", killed)
    run = tmp_path / "b"
    run.mkdir()
    with pytest.raises(KeyboardInterrupt):
        runfolder.write_metrics(run, {"mrr": 0.7})
    assert runfolder.read_metrics(run) is None
    assert [p.name for p in run.iterdir()] == ["metrics.json.%d.tmp" % runfolder.os.getpid()]  # only its own temporary
    monkeypatch.setattr(runfolder.os, "replace", real_replace)
    runfolder.write_metrics(run, {"mrr": 0.7})
    assert runfolder.read_metrics(run) == {"mrr": 0.7}


def test_restart_removes_the_caches_students_derived_from_the_run(tmp_path, monkeypatch):
    # a teacher's soft targets live under the cache root keyed by its best weights' digest; its
    # --restart removes them with the weights (they were left behind, 1.4 GB on Wikidata12k)
    from distkg.cachedir import derived_folder, file_sha1
    from distkg.runfolder import clear

    monkeypatch.setenv("DISTKG_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "teacher"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(b"weights")
    (run / "notes.txt").write_text("the user's")
    derived = derived_folder(file_sha1(run / "checkpoints" / "best.pt"))
    derived.mkdir(parents=True)
    (derived / "soft-targets-T4.pt").write_bytes(b"x")
    other = derived_folder("0" * 40)  # another teacher's caches stay
    other.mkdir(parents=True)
    clear(run)
    assert not derived.exists() and other.is_dir()
    assert not (run / "checkpoints").exists() and (run / "notes.txt").is_file()


def test_empty_checkpoints_fall_back_or_stop_in_one_line(tmp_path, monkeypatch):
    # 0-byte files, as a full disk or a crash during a copy leaves: torch.load raises an EOFError with
    # no message, and building the error's one line raised an IndexError (a traceback) instead
    monkeypatch.setattr(trainer, "load_dataset", lambda data: DS)
    straight = trainer.train(cfg("train.epochs=3"), tmp_path / "a", dataset=DS)
    out = tmp_path / "b"
    trainer.train(cfg("train.epochs=2", "train.keep_checkpoints=2"), out, dataset=DS)
    (out / "checkpoints" / "epoch_0002.pt").write_bytes(b"")
    resumed = trainer.train(cfg("train.epochs=3", "train.keep_checkpoints=2"), out, dataset=DS)
    assert resumed["mrr"] == straight["mrr"]
    best = out / "checkpoints" / "best.pt"
    best.write_bytes(b"")
    trainer.load_trained(out)  # falls back to the best epoch's own checkpoint
    for p in Checkpoints(out / "checkpoints").epochs():
        p.write_bytes(b"")
    best.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"(best|epoch_0003)\.pt cannot be read \(EOFError\); it is truncated or corrupt"):
        trainer.load_trained(out)
    assert main(["evaluate", "--run", str(out)]) == 2


def test_each_command_checks_a_folder_once(tmp_path, monkeypatch):
    """distkg.runfolder.prepare_folders is the one check: train and distill check their folder once,
    a pipeline each part's folder once (a part it runs only writes its config)."""
    from distkg import runfolder

    checked = []
    real = runfolder._check_folder
    monkeypatch.setattr(runfolder, "_check_folder", lambda cfg, out, kind: (checked.append((out.name, kind)),
                                                                          real(cfg, out, kind))[1])
    teacher = tmp_path / "teacher"
    trainer.train(cfg("model.args.dim=8"), teacher, dataset=DS)
    assert checked == [("teacher", "kg")]
    bkd = cfg(f"distill.teacher_run={teacher}", "model.args.dim=4", files=["configs/distill/bkd.yaml"])
    bkd.distill.stages[0].epochs = 1
    checked.clear()
    runner.distill(bkd, tmp_path / "bkd", dataset=DS)
    assert checked == [("bkd", "student")]
    monkeypatch.setattr(pipeline, "load_dataset", lambda data: DS)
    sets = ["model.args.dim=8", "train.epochs=1", "train.progress=false", "eval.progress=false", "pipeline.llm=false",
            "pipeline.students={plain: {stages: [{name: train, epochs: 1}]}}", "pipeline.student_dim=4"]
    checked.clear()
    pipeline.run(load_config("configs/quickstart.yaml", sets), tmp_path / "run")
    assert checked == [("teacher", "kg"), ("plain", "student")]
    assert runfolder.saved_config(tmp_path / "run" / "students" / "plain").model.args["dim"] == 4


def test_a_run_resolved_on_ray_has_the_digest_of_the_command(tmp_path):
    """A Ray worker runs its config with the devices resolved (runtime.resources.on_resources); its
    checkpoints' digest is the command's, so the same run resumes without Ray (issue 33), while the
    folder check still compares the devices the command gave."""
    from distkg.runfolder import config_digest
    from distkg.runtime.resources import on_resources

    given = cfg()
    assert given.train.device == given.llm.device == "auto"
    for kind in ("kg", "student", "llm"):
        assert config_digest(on_resources(given, {"CPU": 1}), kind) == config_digest(given, kind)
        assert config_digest(on_resources(given, {"GPU": 1}), kind) == config_digest(given, kind)
        assert config_digest(cfg("seed=3"), kind) != config_digest(given, kind)  # other keys still count
    out = tmp_path / "run"
    trainer.train(cfg(), out, dataset=DS)
    with pytest.raises(ConfigError, match=r"train.device: 'auto' -> 'cpu'"):
        trainer.train(cfg("train.device=cpu"), out, dataset=DS)
