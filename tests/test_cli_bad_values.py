"""Every command of the CLI walked with bad config values: each stops before reading any data or
writing anything, with rc 2 and one line naming the --set as the user wrote it (no traceback)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from distkg.cli.main import main

COMMANDS = {
    "train": ["train"],
    "distill": ["distill", "--config", "configs/train/tadistmult-yago11k-25.yaml", "--config", "configs/distill/ours.yaml",
                "--set", "distill.teacher_run=runs/none", "--set", "distill.llm_run=runs/none"],
    "llm train": ["llm", "train", "--config", "configs/llm/smollm2-yago11k.yaml"],
    "llm evaluate": ["llm", "evaluate", "--config", "configs/llm/smollm2-yago11k.yaml"],
    "evaluate": ["evaluate", "--config", "configs/frequency-baseline.yaml"],
    "run": ["run", "configs/quickstart.yaml"],
}
BAD = ["train.epochs=0", "train.epochs=-1", "train.batch_size=0", "train.lr=-1", "train.lr=fast", "train.epochz=3",
       "train.patience=0", "model.args.dim=0", "pipeline.student_dim=0", "llm.steps=-1", "llm.lora_dropout=1.5",
       "eval.splits=[]", "eval.splits=[tset]", "distill.llm_temperature=0", "runtime.workers=0", "seed=-1",
       "data.min_bucket_size=0", "train.patience=0"]
STAGES = {"distill": "distill.stages.0.epochs=0", "run": "pipeline.students.ours.stages.1.epochs=0"}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_values_stop_every_command_with_the_set_named(command, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DISTKG_DATA", str(tmp_path / "no-data-here"))
    for item in BAD + ([STAGES[command]] if command in STAGES else []):
        if command == "evaluate" and item.startswith("model.args"):
            continue  # the frequency baseline has no dim
        out = tmp_path / "out"
        rc = main([*COMMANDS[command], "--out", str(out), "--set", item])
        err = capsys.readouterr().err
        assert rc == 2, (command, item, err)
        key = err.split(": ")[3].replace("[", ".").replace("]", "")  # stages[0] in messages, stages.0 in --set
        assert err.startswith(f"distkg: error: --set {item}: ") and item.startswith(key), (command, err)
        assert err.count("\n") == 1 and not out.exists(), (command, item)


def test_a_bad_value_prints_no_traceback():
    done = subprocess.run([sys.executable, "-m", "distkg", "train", "--out", "unused", "--set", "train.batch_size=0"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("distkg: error: --set train.batch_size=0: train.batch_size: 0 is out of range "
                                   "(it must be >= 1)")


def test_a_tntcomplex_student_dim_is_checked_before_the_teacher_trains(tmp_path, capsys):
    assert main(["run", "configs/quickstart.yaml", "--out", str(tmp_path / "o"), "--set", "model.name=tntcomplex",
                 "--set", "model.args={dim: 8}", "--set", "pipeline.student_dim=5"]) == 2
    assert "pipeline.student_dim: tntcomplex needs a dim that is a multiple of 2, got 5" in capsys.readouterr().err


def test_reproduce_report_only_on_an_empty_folder_says_so(tmp_path, capsys):
    assert main(["reproduce", "--config", "configs/reproduce/paper.yaml", "--out", str(tmp_path), "--report-only"]) == 2
    assert "no finished cell of this grid to report" in capsys.readouterr().err
    assert main(["reproduce", "--config", "configs/reproduce/paper.yaml", "--out", str(tmp_path), "--set", "dimz=[3]"]) == 2
    assert capsys.readouterr().err.startswith("distkg: error: --set dimz=[3]: config: unknown key 'dimz'")
