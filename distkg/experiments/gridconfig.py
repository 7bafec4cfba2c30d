"""What a grid config (configs/reproduce/*.yaml) says, read and checked: the datasets, backbones, methods,
sizes, seeds and second teachers of ``distkg reproduce`` (distkg.experiments.grid runs it,
distkg.experiments.report writes what it made), and the cell labels both use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from distkg.config import build_overridden, load_config, read_yaml
from distkg.distill.losses import INPUTS
from distkg.errors import ConfigError
from distkg.models import MODELS


@dataclass
class SecondConfig:
    """A second teacher the LLM terms read (``distill.llm_run``, distkg.distill.second), one entry of a
    grid's ``seconds``: every cell of a method that reads P_LLM runs once per entry (the strength sweep)."""

    name: str = "llm"
    kind: Literal["llm", "kg", "ensemble"] = "llm"
    config: str | None = None  # llm: the recipe template (None: the grid's llm_config)
    run: str | None = None  # llm: where it is trained (None: the grid's llm_run)
    set: list[str] = field(default_factory=list)  # llm: --set overrides of its recipe (after the grid's llm_set)
    backbone: str | None = None  # kg: "same", "other" (the grid's other backbone) or a backbone name
    members: list[str] = field(default_factory=list)  # ensemble: the names of two other entries


@dataclass
class GridConfig:
    """What ``distkg reproduce`` runs; ``{backbone}``, ``{dataset}``, ``{method}``, ``{out}`` are filled in."""

    datasets: list[str] = field(default_factory=lambda: ["yago11k", "wikidata12k"])
    backbones: list[str] = field(default_factory=lambda: ["ttranse", "tadistmult"])
    methods: list[str] = field(default_factory=lambda: ["plain", "bkd", "fitnet", "rkd", "ours"])
    dims: list[int] = field(default_factory=lambda: [25])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    teacher_config: str = "configs/train/{backbone}-{dataset}-400.yaml"
    student_config: str = "configs/train/{backbone}-{dataset}-25.yaml"
    llm_config: str = "configs/llm/smollm2-{dataset}.yaml"
    method_config: str = "configs/distill/{method}.yaml"
    teacher_run: str = "{out}/teachers/{backbone}-{dataset}"  # point at existing `distkg train` runs to reuse them
    llm_run: str = "{out}/llm/{dataset}"
    student_root: str = "{out}/students"
    teacher_set: list[str] = field(default_factory=list)  # --set overrides for every teacher run
    llm_set: list[str] = field(default_factory=list)
    student_set: list[str] = field(default_factory=list)
    data_root: str | None = None
    published: str | None = "configs/reproduce/paper-table.csv"  # numbers shown beside ours in table.md; None: none
    # the second teachers of the methods that read P_LLM (the strength sweep); empty: the grid's LLM
    # teacher (llm_config, llm_run) alone, in cells named METHOD-seedN; else METHOD+NAME-seedN
    seconds: list[SecondConfig] = field(default_factory=list)


def second_names(grid: GridConfig, method: str) -> list[str | None]:
    """The second teachers a method's cells run with: None for a method that reads no P_LLM."""
    if not needs_llm(grid, method):
        return [None]
    return [s.name for s in grid.seconds] if grid.seconds else [None]


def cell_method(method: str, second: str | None) -> str:
    """A cell's method label in folders and reports: METHOD, or METHOD+SECOND in a strength sweep."""
    return method if second is None else f"{method}+{second}"


def check_seconds(grid: GridConfig) -> None:
    """Names unique, members and backbones that exist, before anything runs."""
    names = [s.name for s in grid.seconds]
    if len(set(names)) != len(names):
        raise ConfigError(f"seconds: names must be unique, got {names}")
    for i, s in enumerate(grid.seconds):
        where = f"seconds[{i}] ({s.name})"
        if s.kind == "kg" and s.backbone not in ("same", "other", *MODELS.names()):
            raise ConfigError(f"{where}: kind kg needs backbone: same, other or a model name, got {s.backbone!r}")
        if s.kind == "kg" and s.backbone == "other" and len(grid.backbones) != 2:
            raise ConfigError(f"{where}: backbone 'other' needs exactly two backbones, the grid has {grid.backbones}")
        if s.kind == "ensemble" and (len(s.members) != 2 or not set(s.members) <= set(names) - {s.name}):
            raise ConfigError(f"{where}: an ensemble names two other entries of seconds, got {s.members}")


def method_labels(grid: GridConfig) -> list[str]:
    """Every cell's method label, in grid order (what the report's rows and columns are)."""
    return [cell_method(m, second) for m in grid.methods for second in second_names(grid, m)]


def load_grid(path: str, overrides: list[str], data_root: str | None = None) -> GridConfig:
    values = read_yaml(path)
    if data_root:
        values["data_root"] = data_root
    grid = build_overridden(GridConfig, values, path, overrides)
    check_seconds(grid)
    return grid


def needs_llm(grid: GridConfig, method: str) -> bool:
    cfg = load_config(grid.method_config.format(method=method))
    return any("llm_probs" in INPUTS.get(name, ()) for s in cfg.distill.stages for name in s.losses)
