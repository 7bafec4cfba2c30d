"""A core install (no extras: distkg.extras) stops with one line naming the extra a command needs, and still
trains: the packages are hidden here as a core install lacks them."""

from __future__ import annotations

import pytest

from distkg import extras
from distkg.cli.main import main
from distkg.errors import DistkgError
from distkg.training.curves import plot_curves


@pytest.fixture()
def core_only(monkeypatch):
    """Stands in for an environment without the extras' packages (find_spec answering None for them)."""
    missing = set(extras.EXTRAS.values())
    real = extras.installed
    monkeypatch.setattr(extras, "installed", lambda module: module not in missing and real(module))


@pytest.mark.parametrize("argv, extra", [
    (["export", "--run", "nowhere", "--format", "onnx"], "export"),
    (["serve", "--run", "nowhere"], "serve"),
    (["run", "configs/quickstart.yaml", "--out", "nowhere"], "plots"),
])
def test_a_command_that_needs_an_extra_names_it(core_only, argv, extra, capsys, monkeypatch):
    import distkg.serving.export
    import distkg.serving.predict

    monkeypatch.setattr(distkg.serving.predict, "load_predictor", lambda *a, **k: None)
    assert main(argv) == 2
    assert f"pip install 'distkg[{extra}]'" in capsys.readouterr().err


def test_ray_and_the_llm_name_theirs(core_only):
    from distkg.llm.loading import load_lm
    from distkg.runtime.cluster import connect

    with pytest.raises(DistkgError, match=r"distkg\[ray\]"):
        connect()
    with pytest.raises(DistkgError, match=r"distkg\[llm\]"):
        load_lm("smollm2-135m")


def test_curves_are_skipped_without_matplotlib(core_only, tmp_path, caplog):
    caplog.set_level("INFO", logger="distkg")
    plot_curves([{"epoch": 1, "loss": 1.0, "valid_mrr": 0.1}], tmp_path / "curves.png", "t")
    assert not (tmp_path / "curves.png").exists() and "matplotlib is not installed" in caplog.text
