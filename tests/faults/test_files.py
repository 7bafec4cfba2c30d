"""(b) Damaged files: each file a command reads, made empty, truncated, garbage or missing in a copy
of a finished run; the command falls back to an older good copy (rc 0, the same results) or stops
with one line naming the file (rc 2). Never a traceback."""

from __future__ import annotations

import csv

import pytest

from tests.faults.conftest import COMMON, KG, PIPELINE, check, cli, metrics, same_results, student_args

pytestmark = pytest.mark.faults
DAMAGES = ("empty", "truncated", "garbage", "missing")


def damage(path, how: str) -> None:
    if how == "missing":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(bytes(range(256)) * 3)


def newest(run):
    return sorted((run / "checkpoints").glob("epoch_*.pt"))[-1]


KG_FILES = {"best.pt": lambda r: r / "checkpoints" / "best.pt", "newest checkpoint": newest,
            "metrics.json": lambda r: r / "metrics.json", "config.yaml": lambda r: r / "config.yaml",
            "log.jsonl": lambda r: r / "log.jsonl", "run.json": lambda r: r / "run.json"}


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("name", list(KG_FILES))
def test_train_rerun_over_a_damaged_file(finished, tmp_path, capsys, record, name, how):
    """`distkg train` run again on a finished run: the same results, or one line."""
    run = finished.copy("kg", tmp_path)
    damage(KG_FILES[name](run), how)
    rc = cli("train", "--out", run, "--data-root", finished.data, *COMMON, *KG)
    outcome = check(rc, capsys.readouterr().err)
    if rc == 0:
        same_results(metrics(run), metrics(finished.kg))
        outcome += ", same metrics"
    record("train (rerun)", f"{how} {name}", outcome)


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_readers_of_a_damaged_best_checkpoint(finished, tmp_path, capsys, record, command, how):
    run = finished.copy("kg", tmp_path)
    damage(run / "checkpoints" / "best.pt", how)
    args = {"evaluate": ["evaluate", "--run", run], "export": ["export", "--run", run, "--out", tmp_path / "export"],
            "predict": ["predict", "--run", run, "--query", "Entity 1|Relation 2|?|2014-02-03"]}[command]
    rc = cli(*args, "--data-root", finished.data)
    outcome = check(rc, capsys.readouterr().err)
    if rc == 0 and command == "evaluate":
        rescored = metrics(run / "rescore")
        same_results(rescored, {k: v for k, v in metrics(run).items() if k in rescored})
        outcome += ", same metrics"
    record(command, f"{how} best.pt", outcome)


@pytest.mark.parametrize("how", ["empty", "garbage", "missing"])
@pytest.mark.parametrize("name", ["config.yaml", "run.json", "metrics.json"])
def test_predict_on_a_damaged_run_description(finished, tmp_path, capsys, record, name, how):
    run = finished.copy("kg", tmp_path)
    damage(run / name, how)
    rc = cli("predict", "--run", run, "--query", "Entity 1|Relation 2|?|2014-02-03", "--data-root", finished.data)
    record("predict", f"{how} {name}", check(rc, capsys.readouterr().err))


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("name", ["best.pt", "config.yaml", "run.json"])
def test_distill_from_a_damaged_teacher(finished, tmp_path, capsys, record, name, how):
    teacher = finished.copy("kg", tmp_path)
    damage(teacher / ("checkpoints/best.pt" if name == "best.pt" else name), how)
    before = sorted(p.name for p in teacher.rglob("*"))
    rc = cli("distill", "--out", tmp_path / "student", *student_args(teacher, finished.data))
    outcome = check(rc, capsys.readouterr().err)
    assert sorted(p.name for p in teacher.rglob("*")) == before or name == "best.pt"  # a teacher is only read
    if rc == 0:
        same_results(metrics(tmp_path / "student"), {**metrics(finished.student),
                                                     "teacher": metrics(tmp_path / "student").get("teacher")})
        outcome += ", same metrics"
    record("distill", f"{how} teacher {name}", outcome)


@pytest.mark.parametrize("how", ["empty", "garbage"])
@pytest.mark.parametrize("name", ["students/plain/metrics.json", "walls.json", "teacher/claim"])
def test_pipeline_rerun_over_a_damaged_file(finished, tmp_path, capsys, record, monkeypatch, name, how):
    out = finished.copy("pipeline", tmp_path)
    monkeypatch.chdir(tmp_path)
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    (out / name).touch()
    damage(out / name, how)
    rc = cli("run", *PIPELINE, "--out", "pipeline", "--data-root", finished.data, *COMMON)
    outcome = check(rc, capsys.readouterr().err)
    if rc == 0:
        same_results(metrics(out)["parts"], metrics(finished.pipeline)["parts"])
        outcome += ", same metrics"
    record("run (rerun)", f"{how} {name}", outcome)


@pytest.mark.parametrize("how", ["empty", "garbage"])
@pytest.mark.parametrize("name", ["cell metrics.json", "grid.json"])
def test_grid_report_over_a_damaged_file(finished, tmp_path, capsys, record, monkeypatch, name, how):
    out = finished.copy("grid", tmp_path)
    monkeypatch.chdir(tmp_path)
    target = out / "grid.json" if name == "grid.json" else next((out / "students").glob("*/bkd-seed0")) / "metrics.json"
    damage(target, how)
    rc = cli("reproduce", "--config", finished.grid_config, "--out", "grid", "--data-root", finished.data,
             "--jobs", "1", "--report-only")
    outcome = check(rc, capsys.readouterr().err)
    if rc == 0:
        rows = list(csv.DictReader((out / "results.csv").open()))
        outcome += f", {len(rows)} of 2 cells reported"
    record("reproduce --report-only", f"{how} {name}", outcome)


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_train_on_a_damaged_data_file(finished, tmp_path, capsys, record, how):
    data = finished.copy("data", tmp_path)
    damage(data / "icews14" / "train.txt", how)
    rc = cli("train", "--out", tmp_path / "run", "--data-root", data, *COMMON, *KG)
    outcome = check(rc, capsys.readouterr().err)
    record("train", f"{how} train.txt", outcome)


@pytest.mark.parametrize("fault", ["missing config.yaml", "garbage run.json", "port in use"])
def test_serve_refuses_before_starting_ray(finished, tmp_path, record, fault):
    """`distkg serve` checks the run and the port before Ray starts: one line, rc 2, in seconds."""
    import socket
    import time

    from tests.faults.conftest import run_distkg

    run = finished.copy("kg", tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        if fault == "port in use":
            args = ["serve", "--run", run, "--port", port, "--data-root", finished.data]
        else:
            damage(run / fault.split()[1], fault.split()[0])
            args = ["serve", "--run", run, "--port", port + 1 if port < 65535 else port - 1, "--data-root", finished.data]
        started = time.perf_counter()
        done = run_distkg(args, timeout=120)
        seconds = time.perf_counter() - started
    outcome = check(done.returncode, done.stderr)
    assert done.returncode == 2 and "ray" not in done.stderr.lower(), done.stderr[-2000:]
    record("serve", fault, f"{outcome} ({seconds:.1f} s, Ray not started)")
