"""One run folder, one configuration: a run refuses a folder that holds a run of another config.

Why: resuming or reusing a folder written under different settings silently mixes two runs (a
different ``train.lr`` resumed from the old checkpoints, one method's checkpoint continued by
another, a 200-d run reported with a 400-d model's parameters), or crashes half-way after the
old config was overwritten. So before anything is written, the folder's saved ``config.yaml`` is
compared key by key with the new config; any difference outside ``SAFE_KEYS`` stops the command
(rc 2) naming the keys, and ``--restart`` (or a new folder) is the way out.

Each kind of run owns a slice of the run config (SLICES): a KG run (`distkg train`) its data, model,
train, eval and seed; an LLM run its data, llm, eval, seed, device and runtime; a student (`distkg
distill`) the KG fields plus distill and runtime; a pipeline or grid folder the whole. A folder saves,
compares and digests its own slice only, so adding a student to a pipeline, or changing the LLM's
head epochs, leaves the trained KG teacher's folder the same configuration it was.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Callable

from distkg.cachedir import derived_folders
from distkg.config import RunConfig, build, read_yaml, save_config, to_dict
from distkg.errors import ConfigError, first_line

log = logging.getLogger("distkg")

# Keys that may differ from the saved config when a run continues, and how: "larger" accepts an
# equal or larger number (a longer epoch budget continues the run; a smaller one would label
# epochs already run with a budget that excludes them), "any" accepts any value (display, memory
# chunking and where things are found: they do not change what is computed).
SAFE_KEYS: dict[str, str] = {
    "train.epochs": "larger",
    "distill.stages.*.epochs": "larger",
    "pipeline.students.*.stages.*.epochs": "larger",
    "llm.steps": "larger",
    "llm.max_minutes": "larger",
    "train.progress": "any",
    "train.log_with": "any",
    "eval.progress": "any",
    "llm.progress": "any",
    "llm.curve_test": "any",
    "eval.memory_budget": "any",
    "data.root": "any",
    "runtime.address": "any",
    "runtime.num_cpus": "any",
    "runtime.prefetch": "any",
    "runtime.timeout_s": "any",
    "runtime.storage_path": "any",
}
# After a run diverged (OUT/diverged.json, written by the trainer's NaN guard), its message asks for a
# lower learning rate or more regularisation and a resume from the last good checkpoint: these keys.
AFTER_DIVERGENCE = ("train.lr", "model.args.reg", "model.args.time_reg")
# The LLM teacher's rates, lowerable after its fine-tuning diverged too; left out of the digest of the
# LLM loop's checkpoints only (distkg.llm.train): the KG trainer's checkpoints have carried them.
LLM_RATES = ("llm.lr", "llm.head_lr", "llm.step_head_lr")
DIVERGED = "diverged.json"
PATH_KEYS = ("distill.teacher_run", "distill.llm_run")  # compared as resolved paths
# Devices: a Ray worker or actor runs its config with them resolved to where Ray placed it
# (distkg.runtime.resources.on_resources), so a checkpoint's digest leaves them out; the folder
# check compares them as the command gave them (config.yaml)
DEVICE_KEYS = ("train.device", "llm.device")
# What each kind of run reads of a run config: sections, or section.key (module docstring). None: all.
SLICES: dict[str, tuple[str, ...] | None] = {
    "kg": ("data", "model", "eval", "train", "seed"),
    "student": ("data", "model", "eval", "train", "distill", "runtime", "seed"),
    "llm": ("data", "eval", "llm", "runtime", "seed", "train.device", "train.mixed_precision", "train.log_with"),
    "pipeline": None,
}


def config_slice(cfg: RunConfig, kind: str) -> dict:
    """The part of ``cfg`` a run of ``kind`` reads (SLICES), as the nested mapping config.yaml holds."""
    full = to_dict(cfg)
    if SLICES[kind] is None:
        return full
    out: dict = {}
    for name in full:  # the run config's own order
        for entry in SLICES[kind]:
            section, _, key = entry.partition(".")
            if section == name:
                if key:
                    out.setdefault(section, {})[key] = full[section][key]
                else:
                    out[section] = full[section]
    return out


def save_slice(cfg: RunConfig, kind: str, path: Path) -> None:
    """PATH (a run's config.yaml): the slice of ``cfg`` its kind reads; a loader fills the rest with defaults."""
    save_config(config_slice(cfg, kind), path)

# What distkg writes into a run folder; ``--restart`` removes exactly these.
RUN_FILE = "run.json"  # the run's kind, written when the folder is made (``write_kind``), read by ``run_kind``
RUN_ENTRIES = ("config.yaml", RUN_FILE, "checkpoints", "log.jsonl", "metrics.json", "curves.png", "report.md",
               "comparison.png", "data_stats.json", "walls.json", DIVERGED, "teacher", "llm", "students", "runtime", "ray", "rescore",
               "ensemble.json", "weights.png", "outputs", "tracking")
# The kinds a folder records, each with the command that makes it: SLICES' run kinds, and ensemble, grid,
# baseline (a training-free model `distkg run` or `distkg evaluate --config` evaluated). MODEL_KINDS hold a
# KG model's weights.
KIND_MADE_BY = {"kg": "distkg train", "student": "distkg distill", "llm": "distkg llm train",
                "pipeline": "distkg run", "ensemble": "distkg ensemble", "grid": "distkg reproduce",
                "baseline": "distkg run"}
KINDS = tuple(KIND_MADE_BY)
MODEL_KINDS = ("kg", "student")


def write_kind(out: Path, kind: str) -> None:
    """OUT/run.json: what kind of run the folder holds, so that no reader has to guess it from its files."""
    assert kind in KINDS, kind
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_FILE).write_text(json.dumps({"kind": kind}) + "\n")


def run_kind(run: Path) -> str:
    """The kind OUT/run.json records (KINDS), or "unknown" for a folder without one (not a run, or one
    written by a distkg from before the kind was recorded: docs/CHANGELOG.md)."""
    try:
        kind = json.loads((run / RUN_FILE).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return "unknown"
    return kind if kind in KINDS else "unknown"


def open_finished(run: Path, what: str, kinds: tuple[str, ...]) -> tuple[str, dict]:
    """The kind and metrics of the finished run in RUN, one of ``kinds``; else one clear error naming
    ``what`` (the key or option that named RUN), the folder and what it holds. Every reader of a
    finished run opens it here."""
    expected = " or ".join(f"`{KIND_MADE_BY[k]}`" for k in dict.fromkeys(kinds))
    metrics = read_metrics(run)
    if metrics is None:
        raise ConfigError(f"{what}={str(run)!r}: no finished run there (expected metrics.json from {expected})")
    kind = run_kind(run)
    if kind == "unknown":
        raise ConfigError(f"{what}={str(run)!r}: {run / RUN_FILE} is missing or unreadable: not a distkg run, or one "
                          "written before distkg recorded a run's kind (docs/CHANGELOG.md); run it again with --restart")
    if kind not in kinds:
        raise ConfigError(f"{what}={str(run)!r} holds a {kind} run (`{KIND_MADE_BY[kind]}`); expected a run of {expected}")
    return kind, metrics


def run_config(run: Path, overrides: list[str] | None = None) -> RunConfig:
    """The config RUN was made with (its config.yaml, then ``overrides``). Every reader of a finished
    run's config reads it here: a missing, empty or cut-short file is one clear error, never a run
    rebuilt from defaults (an empty file is an empty mapping to YAML, and every key would default)."""
    from distkg.config import load_config

    path = run / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} not found: {run} holds no finished distkg run (or its config was removed)")
    if lacking := lacks(read_yaml(path), run_kind(run)):
        raise ConfigError(f"{path} is damaged: {lacking} (empty or cut short, as a full disk or an interrupted copy "
                          "leaves it); make the run again with --restart")
    return load_config(path, overrides)


def missing_keys(values: dict, kind: str) -> list[str]:
    """The sections and section keys of a ``kind`` run's config.yaml (SLICES) that VALUES lacks. A key
    that may change under a run whatever its value (SAFE_KEYS' "any": progress bars, chunk sizes,
    trackers) may also be absent, taking its default: a folder written before it existed is whole."""
    lost = []
    for section, keys in config_slice(RunConfig(), kind).items():
        if section not in values:
            lost.append(section)
        elif isinstance(keys, dict):
            got = values[section] if isinstance(values[section], dict) else {}
            lost += [f"{section}.{key}" for key in keys
                     if key not in got and SAFE_KEYS.get(f"{section}.{key}") != "any"]
    return lost


def lacks(values: dict, kind: str | None) -> str | None:
    """"it lacks KEYS" when VALUES, a ``kind`` run's config.yaml, misses keys its kind writes; else None
    (also for kinds without a slice)."""
    lost = missing_keys(values, kind) if kind in SLICES else []
    return f"it lacks {', '.join(lost[:5])}{' ...' if len(lost) > 5 else ''}" if lost else None


def one_run(run: Path) -> Path:
    """RUN, when it is one run; a folder of several (a `distkg run` pipeline, a `distkg reproduce` grid)
    is refused naming its parts and their kinds, so that a command taking ``--run`` never reports
    "no checkpoint" for a folder whose parts would answer."""
    kind = run_kind(run)
    grid = kind == "grid"
    if kind not in ("pipeline", "grid"):
        return run
    parts = sorted(p.parent for p in run.rglob("metrics.json") if p.parent != run)
    listing = "; ".join(f"{p} ({run_kind(p)})" for p in parts[:12])
    more = f"; and {len(parts) - 12} more" if len(parts) > 12 else ""
    what = "a `distkg reproduce` grid" if grid else "a `distkg run` pipeline"
    raise ConfigError(f"{run} is {what}, a folder of several runs; name one of its finished parts with --run: "
                      f"{listing or '(none finished yet)'}{more}")


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """``write`` into a temporary name, flushed to disk, then rename: readers never see a half-written
    file, and a crash of the machine right after the rename does not leave an empty one. The
    temporary name is the process's own, so two processes writing one file (a grid's workers) never
    write into the same temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        tmp.unlink(missing_ok=True)  # the file at PATH, if any, is the last whole one
        if isinstance(e, OSError) and not e.filename:  # a failed flush names no file: name PATH
            raise OSError(e.errno, e.strerror, str(path)) from e
        if not isinstance(e, OSError) and isinstance(e, Exception) and disk_full(path.parent):
            # torch.save reports a full disk as "unexpected pos ..." (a RuntimeError without errno)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
        raise
    os.replace(tmp, path)


def disk_full(folder: Path, margin: int = 1 << 20) -> bool:
    """Whether the filesystem of FOLDER has less than ``margin`` bytes left for this user."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize < margin


def write_metrics(run: Path, metrics: dict) -> None:
    """RUN/metrics.json, the "finished" mark that resume and claims read, written atomically: a run
    killed while writing it is unfinished, never finished with half a file."""
    atomic_write(run / "metrics.json", lambda f: f.write(json.dumps(metrics, indent=2).encode()))


def read_json(path: Path) -> Any:
    """The JSON in PATH; a damaged file (empty, cut short, not text) is one ConfigError naming it."""
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path} is damaged ({type(e).__name__}: {first_line(e)}): empty, cut short or not "
                          "JSON, as a full disk or an interrupted copy leaves it") from None


def read_metrics(run: Path) -> dict | None:
    """A run's metrics.json, or None while the run has not finished (how resumable jobs skip done parts).
    A damaged one (metrics.json is written atomically, so only by hand or by a copy) counts as not
    finished, with a warning: the run resumes from its checkpoints and writes it again."""
    path = run / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = read_json(path)
    except ConfigError as e:
        log.warning("%s; the run counts as unfinished", e)
        return None
    return metrics if isinstance(metrics, dict) else None


class RunFolderError(ConfigError):
    """The folder holds a run of a different configuration."""


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings and lists as {dotted.key: leaf}; list items by index (stages.0.epochs)."""
    if isinstance(values, dict) and values:
        items = values.items()
    elif isinstance(values, list) and values and any(isinstance(v, (dict, list)) for v in values):
        items = enumerate(values)
    else:
        return {prefix: values}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _safe(key: str, old: Any, new: Any, diverged: bool = False) -> bool:
    if diverged and any(fnmatch.fnmatchcase(key, pattern) for pattern in (*AFTER_DIVERGENCE, *LLM_RATES)):
        return True
    for pattern, rule in SAFE_KEYS.items():
        if fnmatch.fnmatchcase(key, pattern):
            if rule == "any":
                return True
            return isinstance(old, (int, float)) and isinstance(new, (int, float)) and new >= old
    return False


def _same(key: str, old: Any, new: Any) -> bool:
    if key in PATH_KEYS and old and new:
        return Path(old).resolve() == Path(new).resolve()
    return old == new


def differences(saved: RunConfig, new: RunConfig, kind: str, diverged: bool = False) -> list[str]:
    """``key: old -> new`` for every key of the ``kind`` slice that differs and is not safe to change
    (SAFE_KEYS, and AFTER_DIVERGENCE when the saved run diverged)."""
    old_flat, new_flat = flatten(config_slice(saved, kind)), flatten(config_slice(new, kind))
    missing = object()
    out = []
    for key in sorted(old_flat.keys() | new_flat.keys()):
        old, new_value = old_flat.get(key, missing), new_flat.get(key, missing)
        if _same(key, old, new_value) or _safe(key, old, new_value, diverged):
            continue
        show = lambda v: "(absent)" if v is missing else repr(v)  # noqa: E731
        out.append(f"{key}: {show(old)} -> {show(new_value)}")
    return out


def raised_budgets(out: Path, cfg: RunConfig, budgets: tuple[str, ...]) -> list[str]:
    """``key: old -> new`` for every key matching ``budgets`` (patterns of a run's epoch or step budgets,
    "larger" keys of SAFE_KEYS) that ``cfg`` raises over the config saved in OUT: a finished run asked
    for more is not finished for ``cfg``."""
    saved = saved_config(out)
    if saved is None:
        return []
    old_flat, new_flat = flatten(to_dict(saved)), flatten(to_dict(cfg))
    return [f"{k}: {old_flat[k]!r} -> {v!r}" for k, v in sorted(new_flat.items())
            if any(fnmatch.fnmatchcase(k, p) for p in budgets) and k in old_flat
            and isinstance(v, (int, float)) and isinstance(old_flat[k], (int, float)) and v > old_flat[k]]


def config_digest(cfg: RunConfig, kind: str, exclude: tuple[str, ...] = ()) -> str:
    """A digest of every key of the ``kind`` slice that may not change under a run (all but SAFE_KEYS,
    AFTER_DIVERGENCE and ``exclude``), stored in each checkpoint so that a resume verifies the
    checkpoint belongs to this config. The teachers' folders (PATH_KEYS) are left out: where a run
    lives is not what it computes, so a folder moved elsewhere (or a copy) still resumes; which
    teacher a student reads is checked by the folder check, against its config.yaml. So are the
    devices (DEVICE_KEYS), which Ray workers resolve: a run started on Ray resumes without it."""
    import hashlib

    kept = {k: v for k, v in flatten(config_slice(cfg, kind)).items()
            if not any(fnmatch.fnmatchcase(k, p) for p in (*SAFE_KEYS, *AFTER_DIVERGENCE, *PATH_KEYS, *DEVICE_KEYS,
                                                            *exclude))}
    return hashlib.sha1(repr(sorted(kept.items())).encode()).hexdigest()[:16]


def saved_config(out: Path) -> RunConfig | None:
    """The config a run folder was written with, or None for a new folder."""
    path = out / "config.yaml"
    if not path.is_file():
        return None
    try:
        values = read_yaml(path)
        if lacking := lacks(values, run_kind(out)):
            raise ConfigError(f"{lacking}: empty or cut short")
        return build(RunConfig, values, str(path))
    except ConfigError as e:
        raise RunFolderError(f"{out} holds a run whose config.yaml cannot be read ({e}); pass --restart to start "
                             "over in it, or choose another --out") from None


def _check_folder(cfg: RunConfig, out: Path, kind: str) -> None:
    """Stop (RunFolderError, rc 2) when OUT holds a run whose ``kind`` slice differs from ``cfg``'s."""
    saved = saved_config(out)
    if saved is None:
        return
    diverged = (out / DIVERGED).is_file()
    diffs = differences(saved, cfg, kind, diverged)
    if diffs:
        raise RunFolderError(
            f"{out} holds a run of a different configuration ({'; '.join(diffs)}); nothing was written. Pass "
            f"--restart to discard that run and start over in {out}, or choose another --out. Keys that may "
            f"change when a run continues: {', '.join(SAFE_KEYS)}")


def clear(out: Path) -> None:
    """Remove what distkg wrote into OUT (RUN_ENTRIES), keeping anything else the user put there, and
    the caches students derived from it (distkg.cachedir.derived_folders)."""
    removed = []
    for folder in derived_folders(out):
        shutil.rmtree(folder)
        removed.append(str(folder))
    for name in RUN_ENTRIES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    if removed:
        log.info("--restart: removed %s from %s", ", ".join(removed), out)


def prepare_folders(runs: list[tuple[RunConfig, Path, str]], restart: bool = False, check: bool = True,
                    write: bool = True) -> None:
    """Make each OUT of ``runs`` ((cfg, OUT, kind)) the folder of a ``kind`` run of ``cfg``: check them
    all before any is written (or clear them with ``restart``), then save each one's slice as config.yaml.

    The one place a folder is checked, once per command and before any data is read: by distkg train,
    distill and llm train at their start, by the Ray drivers before Ray starts, by a pipeline for all
    its parts at once (``write`` False: a part's config is written when it runs, so a finished part
    keeps the config it finished with). What is started after the check is told ``checked=True`` and
    calls this with ``check`` False, to write only. ``write`` False also on ranks other than 0.
    """
    for cfg, out, kind in runs:
        if restart and write:
            clear(out)
        elif check and not restart:
            _check_folder(cfg, out, kind)
    if write:
        for cfg, out, kind in runs:
            write_kind(out, kind)
            save_slice(cfg, kind, out / "config.yaml")
            (out / DIVERGED).unlink(missing_ok=True)  # the changed rates are now this run's config


def prepare_folder(cfg: RunConfig, out: Path, kind: str, restart: bool = False, check: bool = True,
                   write: bool = True) -> None:
    """prepare_folders for one run."""
    prepare_folders([(cfg, out, kind)], restart, check, write)


def mark_diverged(out: Path, message: str) -> None:
    """Record that the run in OUT diverged, so a resume may change the keys of AFTER_DIVERGENCE and LLM_RATES."""
    (out / DIVERGED).write_text(json.dumps({"message": message}, indent=2))

