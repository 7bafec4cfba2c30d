"""distkg from Python, without YAML files: train a KG teacher, distil a student, load it, ask it by name.

    from distkg import api

    teacher = api.train("runs/api/teacher", dataset="yago11k", model="tadistmult", dim=64, train={"epochs": 5})
    student = api.distill("runs/api/student", teacher, dim=8, stages=[
        {"name": "bkd", "epochs": 5, "losses": {"kd": {"weight": 1.0, "temperature": 7.0}, "ce": {"weight": 1.0}}}])
    model = api.load(student)                      # a run folder, or a folder from save_pretrained / export --format hf
    model.predict(["Barack Obama Sr.|isMarriedTo|?|1960"], k=5)
    model.save_pretrained("runs/api/shared")       # config.json + model.safetensors + vocab.json

Each call is the CLI command of the same name (`distkg train`, `distkg distill`) with the same run folder,
checks and resume: the keyword sections (``train={...}``, ``eval={...}``, ``runtime={...}``...) are the
sections of a config file, checked by the same strict config (a misspelt key is rejected by name), and a
second call on a finished folder of the same configuration returns its metrics without training again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distkg.config import RunConfig, build_overridden, merge, to_dict
from distkg.serving.predict import Predictor, load_predictor


@dataclass(frozen=True)
class Run:
    """A finished run folder and its metrics (metrics.json); usable wherever a path is."""

    path: Path
    metrics: dict

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def mrr(self) -> float | None:
        return self.metrics.get("mrr")


def config(**sections: Any) -> RunConfig:
    """A run config from keyword sections (``data={...}, model={...}, train={...}``), checked as a file is."""
    return build_overridden(RunConfig, sections, "", [])  # errors name keys as a config file's: train.epochs


def train(out: str | os.PathLike, dataset: str, model: str = "tadistmult", dim: int = 400, *, data_root: str | None = None,
          restart: bool = False, **sections: Any) -> Run:
    """`distkg train`: a KG model (``model`` at ``dim``, plus ``model_args``) on ``dataset`` into OUT."""
    from distkg.experiments.claims import claimed
    from distkg.training.trainer import train as run_training

    model_args = {"dim": dim, **sections.pop("model_args", {})}
    cfg = config(**merge({"data": {"dataset": dataset, "root": data_root}, "model": {"name": model, "args": model_args}},
                         sections))
    out = Path(out)
    with claimed(out):
        return Run(out, run_training(cfg, out, resume=not restart))


def distill(out: str | os.PathLike, teacher: str | os.PathLike, dim: int = 25, stages: list[dict] | None = None, *,
            llm: str | os.PathLike | None = None, restart: bool = False, **sections: Any) -> Run:
    """`distkg distill`: a ``dim``-d student of the teacher run's backbone, on its dataset, trained by
    ``stages`` (each {name, epochs, losses: {loss name: {weight, ...}}}, as in configs/distill/*.yaml)."""
    from distkg.distill.runner import check_method
    from distkg.distill.runner import distill as run_distillation
    from distkg.experiments.claims import claimed
    from distkg.runfolder import MODEL_KINDS, open_finished, run_config

    open_finished(Path(teacher), "teacher", MODEL_KINDS)
    taught = run_config(Path(teacher))
    model_args = {"dim": dim, **sections.pop("model_args", {})}
    distill_section = {"teacher_run": os.fspath(teacher), "llm_run": os.fspath(llm) if llm is not None else None,
                       **({"stages": stages} if stages is not None else {})}
    cfg = config(**merge({"data": to_dict(taught)["data"],  # the teacher's data, read by the same rules
                          "model": {"name": taught.model.name, "args": model_args}, "distill": distill_section}, sections))
    check_method(cfg)
    out = Path(out)
    with claimed(out):
        if cfg.runtime.backend == "ray":
            from distkg.runtime.students import distill_on_ray

            return Run(out, distill_on_ray(cfg, out, restart=restart))
        return Run(out, run_distillation(cfg, out, resume=not restart))


def load(folder: str | os.PathLike) -> Predictor:
    """A model that answers named queries: a finished run folder (train, distill, llm train) or a
    model folder (save_pretrained, `distkg export --format hf`, no dataset needed)."""
    return load_predictor(Path(folder))
