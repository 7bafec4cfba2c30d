"""The Python API (distkg.api): the README's example runs as written, and the API keeps the CLI's checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from distkg import api
from distkg.errors import ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "README.md holds one python example (## From Python)"
    return blocks[0]


def test_the_readme_example_runs_as_written(data_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISTKG_DATA", str(data_root))
    names: dict = {}
    exec(compile(readme_example(), "README.md (## From Python)", "exec"), names)
    out = capsys.readouterr().out
    assert re.search(r"teacher test MRR 0\.\d{4}, student 0\.\d{4}", out)
    assert len(re.findall(r"^[123] <", out, flags=re.M)) == 3  # three ranked answers
    shared = api.load(tmp_path / "runs/api/shared")
    student = api.load(tmp_path / "runs/api/student")
    query = ["Barack Obama Sr.|isMarriedTo|?|1960"]
    assert shared.predict(query, k=5) == student.predict(query, k=5)
    again = api.train("runs/api/teacher", dataset="yago11k", model="tadistmult", dim=32,
                      train={"epochs": 2, "progress": False}, eval={"progress": False})
    assert again.metrics["mrr"] == names["teacher"].metrics["mrr"]  # a finished folder: resumed at its end


def test_sections_are_checked_as_a_config_file_is(tmp_path):
    with pytest.raises(ConfigError, match=r"^train: unknown key 'epoch' \(did you mean 'train\.epochs'\?\)"):
        api.train(tmp_path / "t", dataset="yago11k", train={"epoch": 3})
    with pytest.raises(ConfigError, match=r"teacher=.*no finished run there"):
        api.distill(tmp_path / "s", tmp_path / "no-teacher")
