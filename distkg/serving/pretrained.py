"""A trained KG model (a student, a KG teacher) as a folder anyone can load without its dataset, the way
the field shares models: ``config.json`` (what the model is), ``model.safetensors`` (its weights, no
pickle) and ``vocab.json`` (entity, relation and time names, texts and the time rules).

Why a vocabulary and not the dataset: predicting needs the names (to read a query), the time rules
(to map a written time to the run's time ids: distkg.serving.resolve) and the model's shapes, all of
which the vocabulary holds; the facts stay with their owner. What needs the facts is refused: the
``known`` filter (training facts) and evaluation.

    distkg export --format hf --run RUN --out FOLDER      # writes the folder
    distkg predict --model FOLDER --query 's|r|?|t'        # answers, no data root needed
    Predictor.from_pretrained(FOLDER)                       # the same from Python (distkg.api.load)

The folder can be pushed to a model hub as it is (``huggingface_hub.upload_folder``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from distkg.data import TKGDataset
from distkg.data.dataset import SPLITS
from distkg.errors import ConfigError
from distkg.runfolder import atomic_write

FORMAT = "distkg-tkg"  # config.json's model_type
VERSION = 1  # of this folder's layout; a reader refuses a newer one
FILES = ("config.json", "model.safetensors", "vocab.json")


def vocabulary(ds: TKGDataset) -> dict:
    """What of a dataset a model and its queries need, as JSON (module docstring)."""
    return {"dataset": ds.name, "time_kind": ds.time_kind, "entities": ds.entity_names, "entity_text": ds.entity_text,
            "relations": ds.relation_names, "relation_text": ds.relation_text, "times": ds.time_labels,
            "time_keys": ds.time_keys, "buckets": [list(b) for b in ds.buckets],
            "time_ymd": [list(d) for d in ds.time_ymd], "unknown_time": ds.unknown_time}


def vocabulary_dataset(vocab: dict) -> TKGDataset:
    """A TKGDataset of the vocabulary alone: no facts in any split."""
    empty = np.zeros((0, 6), dtype=np.int64)
    return TKGDataset(name=vocab["dataset"], time_kind=vocab["time_kind"], splits={s: empty for s in SPLITS},
                      entity_names=vocab["entities"], relation_names=vocab["relations"],
                      entity_text=vocab["entity_text"], relation_text=vocab["relation_text"],
                      time_labels=vocab["times"], time_keys=vocab["time_keys"],
                      buckets=[tuple(b) for b in vocab["buckets"]], time_ymd=[tuple(d) for d in vocab["time_ymd"]],
                      unknown_time=vocab["unknown_time"])


def save_pretrained(model: torch.nn.Module, name: str, args: dict, ds: TKGDataset, max_year: int, folder: Path,
                    source: dict | None = None) -> Path:
    """FOLDER/config.json, model.safetensors and vocab.json for ``model`` (registered as ``name`` with
    constructor ``args``), each written whole or not at all."""
    from importlib.metadata import PackageNotFoundError, version

    from safetensors.torch import save

    try:
        __version__ = version("distkg")
    except PackageNotFoundError:  # a source tree not installed
        __version__ = "unknown"
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = {"model_type": FORMAT, "format_version": VERSION, "distkg_version": __version__, "model": name,
              "args": args, "dim": int(model.dim), "num_entities": ds.num_entities, "num_relations": ds.num_relations,
              "num_times": ds.num_times, "max_year": max_year, "input": "queries int64 [B, 4]: (entity, relation', t0, t1)",
              "head_query_relation": "relation id + num_relations", "output": "scores float32 [B, entities]",
              "source": source or {}}
    atomic_write(folder / "vocab.json", lambda f: f.write(json.dumps(vocabulary(ds)).encode()))
    atomic_write(folder / "model.safetensors", lambda f: f.write(save(weights, metadata={"format": "pt"})))
    atomic_write(folder / "config.json", lambda f: f.write((json.dumps(config, indent=2) + "\n").encode()))
    return folder


def is_pretrained(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: {path.parent} is not a model folder written by "
                          "`distkg export --format hf` (it holds config.json, model.safetensors, vocab.json)") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} cannot be read ({e}); the folder is damaged, export it again") from None


def load_pretrained(folder: str | Path) -> tuple[dict, TKGDataset, torch.nn.Module]:
    """(config, vocabulary dataset, model in eval mode on the CPU) of a folder save_pretrained wrote."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from distkg.models import MODELS
    from distkg.training.checkpoint import load_weights

    folder = Path(folder)
    config = _read_json(folder / "config.json")
    if config.get("model_type") != FORMAT:
        raise ConfigError(f"{folder / 'config.json'}: model_type {config.get('model_type')!r} is not {FORMAT!r}; "
                          "not a distkg model folder")
    if config.get("format_version", 0) > VERSION:
        raise ConfigError(f"{folder / 'config.json'}: format_version {config['format_version']} is newer than this "
                          f"distkg reads ({VERSION}); upgrade distkg")
    ds = vocabulary_dataset(_read_json(folder / "vocab.json"))
    torch.manual_seed(0)  # the weights are overwritten; a fixed seed keeps construction deterministic
    model = MODELS.create(config["model"], config["args"], f"{folder / 'config.json'}: args", dataset=ds)
    try:
        weights = load_file(folder / "model.safetensors")
    except (OSError, SafetensorError) as e:
        raise ConfigError(f"{folder / 'model.safetensors'} cannot be read ({e}); export it again") from None
    load_weights(model, weights, folder / "model.safetensors")
    return config, ds, model.eval().requires_grad_(False)


def export_hf(run: str | Path, out: str | Path | None = None, overrides: list[str] | None = None) -> Path:
    """A finished KG or student run as a model folder (OUT defaults to RUN/export-hf)."""
    from distkg.runfolder import MODEL_KINDS, open_finished, run_config
    from distkg.training.trainer import load_trained

    run = Path(run)
    kind, metrics = open_finished(run, "--run", MODEL_KINDS)
    cfg, ds, model = load_trained(run, run_config(run, overrides), device=torch.device("cpu"))
    source = {"run": str(run.resolve()), "kind": kind, "best_epoch": metrics.get("best_epoch"),
              "test_mrr": metrics.get("mrr"), "protocol": metrics.get("protocol")}
    return save_pretrained(model, cfg.model.name, dict(cfg.model.args), ds, cfg.data.max_year,
                           Path(out) if out else run / "export-hf", source)
