"""Typed run configs from YAML, with unknown keys rejected by name and ``--set key=value`` overrides.

Why strict: a misspelled key that is silently ignored runs the default instead of what the user
asked for, and the result is then reported under the wrong name. Every section is a dataclass;
building one from a mapping checks each key and the type of each value and names the offending
dotted key (and the file) on error, with a close match suggested.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from distkg.checks import RUN_CHECKS
from distkg.data.options import DataConfig
from distkg.errors import ConfigError

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """YAML with only true/false as booleans (YAML 1.2), so ``mixed_precision: no`` and
    ``--set train.mixed_precision=no`` mean the string "no"; YAML 1.1 read yes/no/on/off as booleans."""


_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
                                   for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def parse_yaml(text: str) -> Any:
    """Parse config text (a file or one ``--set`` value) the way every config is read."""
    return yaml.load(text, Loader=_Loader)


# The protocol's vocabulary, one home (docs/PROTOCOL.md): distkg.evaluation reads these.
FilterMode = Literal["time", "static", "none"]
Ties = Literal["realistic", "optimistic", "pessimistic"]


@dataclass
class EvalConfig:
    """The evaluation protocol (docs/PROTOCOL.md); the defaults are distkg's default protocol."""

    # what every command that evaluates scores at its end (distkg.evaluation.splits); metrics.json's top
    # level is test when listed, else the last (its "split" says which)
    splits: list[str] = field(default_factory=lambda: ["valid", "test"])
    filter: FilterMode = "time"  # time: filter answers true at the query's written time; static: at any time; none
    ties: Ties = "realistic"  # a tie's rank: the mean of optimistic and pessimistic (realistic), or either one
    # at most this many facts of each split are scored (both directions): a seeded draw, the same for
    # every run on the dataset and written into the metrics' protocol; None: every fact. For graphs
    # whose splits take hours to rank (a million-entity graph's 1M test facts)
    max_facts: int | None = None
    # bytes one block of [queries x entities] scores may take (evaluation, a scoring actor's top k):
    # auto is 32 MB on a CPU (a block the counting passes find in cache; larger ones measured no
    # faster) and 1/16 of the GPU's memory on CUDA, each at most 1/16 of the device's memory. A block
    # is whole rows while one row fits; past that (1/4 of the budget's entities) candidates are chunked too
    memory_budget: int | Literal["auto"] = "auto"
    progress: bool = True


@dataclass
class ModelConfig:
    """Which model (by registry name) and its constructor arguments, checked against its signature."""

    name: str = "tadistmult"  # a registered model: ttranse, tadistmult (one of the paper's two backbones), tntcomplex, or the training-free frequency baseline
    args: dict[str, Any] = field(default_factory=dict)  # its constructor's arguments (dim, reg, ...), checked by name


@dataclass
class TrainConfig:
    """How a KG model is trained (distkg.training.trainer)."""

    epochs: int = 50
    batch_size: int = 1000  # training queries per forward/backward pass (grad_accum passes per optimizer step)
    lr: float = 0.1  # Adagrad's (every KG model and student trains with Adagrad: sparse rows, distkg.training.optim)
    # 1vsall: cross-entropy over every entity; sampled_softmax: over the batch's answers and `negatives`
    # entities drawn for the batch (a step's cost does not grow with the entities)
    loss: Literal["1vsall", "sampled_softmax"] = "1vsall"
    negatives: int = 64  # entities drawn per batch (sampled_softmax)
    grad_accum: int = 1  # micro-batches of train.batch_size per optimizer step (weighted by size; an epoch ends a step)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    patience: int = 3  # evaluations without a better validation MRR before stopping
    keep_checkpoints: int = 2
    progress: bool = True
    # watch the run in TensorBoard (OUT/tracking), MLflow or W&B: each round's loss and validation MRR,
    # from every loop (KG, students, LLM fine-tuning), through Accelerate's trackers (distkg/training/tracking.py)
    log_with: Literal["none", "tensorboard", "mlflow", "wandb"] = "none"


@dataclass
class LLMConfig:
    """The LLM teacher (distkg.llm): base model, 4-bit, LoRA, projection, and its fine-tuning."""

    model: str = "smollm2-135m"  # or any Hugging Face causal LM name / local folder
    quantization: Literal["nf4", "none"] = "nf4"
    layers: int | None = None  # keep only the first N transformer layers (cheaper on CPU); None: all
    device: Literal["auto", "cpu", "cuda"] = "auto"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    dim: int = 400  # the KG space the projection maps into
    form: Literal["tadistmult", "ttranse"] = "tadistmult"  # the backbone scoring form
    # how the LLM reads a query (distkg/llm/teacher.py, docs/METHOD.md): composed from the texts of its entity,
    # relation and time, or as ONE text: the question and up to `query_facts` of the query entity's training
    # facts, nearest in time first (never a fact answering the query itself), cut at `query_tokens`
    query: Literal["composed", "text"] = "composed"
    query_facts: int = 6
    query_tokens: int = 48
    max_tokens: int = 32
    # what an entity's text is (distkg/llm/prompts.py): its name, or its name and up to `entity_facts`
    # of its TRAINING facts as text (never validation or test facts)
    entity_text: Literal["name", "facts"] = "name"
    entity_facts: int = 8
    # head warm-up on held-out texts (distkg/llm/prompts.py): the training triples in `text_folds` folds,
    # queries of fold f scored on entity texts written without fold f's facts (1: every query on the
    # teacher's own texts); validation, test and P_LLM use the teacher's own texts from all training facts.
    # auto: 2 when under 5% of the validation triples (s, r, o) are training triples (an answer named in
    # its entity's own text is then a shortcut evaluation never rewards), else 1
    text_folds: int | Literal["auto"] = 1
    # the frozen LM's features of every text, kept on disk (distkg/llm/features.py) under a key of the
    # model, layers, quantization, device, max_tokens, adapter weights and texts, so a head warm-up
    # with the same key skips the encoding
    feature_cache: bool = False
    texts_per_forward: int | Literal["auto"] = "auto"  # texts per LLM forward call; auto: sized for the resolved device (distkg.device)
    # fine-tuning (distkg llm train)
    # sampled: cross-entropy against the batch's answers + `negatives` drawn entities (distkg/llm/train.py);
    # infonce: against every entity through a refreshed cache, false negatives masked (contrastive.py)
    objective: Literal["sampled", "infonce"] = "sampled"
    refresh_every: int = 50  # infonce: steps between full re-encodings of the entity cache (+ a validation point)
    # infonce: the step's texts in one padded forward call, or one call per token length (no padding; on a
    # CPU the padding costs more than the calls, docs/RESULTS.md); auto: one on CUDA, lengths elsewhere
    step_calls: Literal["auto", "one", "lengths"] = "auto"
    step_head_lr: float | None = None  # infonce: the head's lr in the LoRA steps (None: head_lr); a warm head needs less
    steps: int = 200
    max_minutes: float | None = None  # stop earlier when this much time has passed
    queries_per_step: int = 16  # training queries per QLoRA step
    negatives: int = 128  # sampled entities per step, shared by the batch (plus the batch's answers)
    lr: float = 2e-4  # LoRA adapters
    head_lr: float = 1e-2  # projection head and logit scale
    head_epochs: int = 0  # before LoRA: epochs of head-only 1-vs-all training on the frozen LM's features
    head_queries_per_step: int = 1000  # training queries per step of the head warm-up (head_epochs)
    checkpoint_every: int = 50  # LoRA steps per round of the training loop (checkpoint + validation); a head epoch is a round too
    patience: int = 5  # validations (rounds) without a better validation MRR before a phase stops (head warm-up, LoRA)
    valid_queries: int = 1000  # validation subsample (deterministic); 0 = the whole split
    # also score the whole test split at every curve point (metrics.json curve: the evidence of a curve of
    # test MRR against CPU minutes; never read to choose anything; excluded from the time budget)
    curve_test: bool = False
    progress: bool = True


@dataclass
class StageConfig:
    """One distillation stage: an epoch budget and a weighted sum of registered losses (distkg.distill.losses).

    ``losses`` maps a loss name to its weight and parameters, e.g. ``{kd: {weight: 1, temperature: 7}}``.
    Stages run in order; each starts from the best weights so far with a fresh patience counter.
    """

    name: str = "train"
    epochs: int = 20
    losses: dict[str, dict[str, Any]] = field(default_factory=lambda: {"ce": {}})


@dataclass
class DistillConfig:
    """Distilling into the student described by ``model`` (distkg distill)."""

    teacher_run: str | None = None  # a `distkg train` folder (the 400-d KG teacher)
    llm_run: str | None = None  # a `distkg llm train` folder (the LLM teacher)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    llm_temperature: float = 1.0  # P_LLM = softmax(LLM scores / this)
    rkd_entities: int = 64  # entities per batch for the RKD losses (angle-wise is cubic in this)
    method: str = "custom"  # a label for tables and reports


@dataclass
class PipelineConfig:
    """What ``distkg run`` does after training the model of ``model``/``train`` (the teacher).

    With ``students`` empty it only trains and evaluates that model. Otherwise it also fine-tunes
    the LLM teacher (section ``llm``) when ``llm`` is true, and trains one ``student_dim``-d student
    of the same backbone per entry: method name -> its distillation stages (``teacher_run`` and
    ``llm_run`` are filled in with this run's teachers).
    """

    llm: bool = False
    student_dim: int = 25
    students: dict[str, DistillConfig] = field(default_factory=dict)


@dataclass
class RuntimeConfig:
    """Where a distillation run executes (distkg.runtime; cluster/SCALING.md).

    ``local``: one process, the teachers' outputs read in-process (the default, and what tests and
    the quickstart use). ``ray``: the LLM teacher runs as a pool of Ray scoring actors under
    DeepSpeed inference, each holding 1/N of the entity table, and the student trains in Ray
    Train workers (data parallel) that send the queries of their next batches to the pool ahead of time.
    """

    backend: Literal["local", "ray"] = "local"
    address: str | None = None  # None: start a local Ray on 127.0.0.1; "auto" / "HOST:PORT": join a cluster
    num_cpus: int | None = None  # a local Ray's CPUs (None: all)
    teacher_actors: int = 2  # LLM scoring actors; each encodes and scores 1/N of the entities
    teacher_resources: dict[str, float] = field(default_factory=lambda: {"CPU": 1.0})  # per actor, e.g. {GPU: 1}
    kg_teacher: Literal["local", "pool"] = "local"  # the 400-d KG teacher next to each student, or in actors
    tp_size: int = 1  # an unquantized LLM teacher's shard as tp_size actors (teacher_resources each), its layers sharded by DeepSpeed AutoTP
    # DeepSpeed inference in the LLM actors: auto only where it does work (tp_size > 1, an unquantized LM);
    # on: always (the engine and its output check, e.g. on CPU); off: never
    deepspeed_inference: Literal["auto", "on", "off"] = "auto"
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    workers: int = 1  # Ray Train workers, data parallel (gradients averaged over gloo on CPU, NCCL on GPU)
    worker_resources: dict[str, float] = field(default_factory=lambda: {"CPU": 1.0})  # per worker, e.g. {GPU: 1}
    soft_targets: Literal["full", "topk", "lowrank"] = "full"  # what the pool returns per query
    # lowrank: numbers per query (a dot-product KG teacher's query on its table's top singular directions;
    # the LLM teacher's pool sends full rows then)
    rank: int = 254
    topk: int = 64  # entities kept per query when soft_targets is topk
    prefetch: int = 2  # batches of queries in flight ahead of the step
    cache: bool = True  # each distinct training query reaches the LLM once per teacher version
    max_failures: int = 1  # student worker-group restarts (each resumes from the last checkpoint)
    # where Ray Train keeps the checkpoints its workers report (a local folder, NFS, s3://, gs://): a restarted
    # worker resumes from there, so OUT may be node-local on a cluster; None: OUT/ray (distkg/runtime/raytrain.py)
    storage_path: str | None = None
    zero_stage: Literal[2, 3] = 2  # `distkg llm train` on Ray: DeepSpeed ZeRO stage over `workers` (3: parameters sharded too)
    timeout_s: float = 600.0  # longest wait for one batch of soft targets


@dataclass
class RunConfig:
    """A whole run. Later stages (training, LLM teacher, distillation, runtime) add sections here."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    seed: int = 0


# ------------------------------------------------------------------------------------ ranges
# (low, high, low exclusive): every number a run reads is checked when the config is built, so a
# zero batch size or a negative learning rate stops the command before any work, naming the key.
# None: no bound on that side. A missing entry means any value of the right type.
_AT_LEAST_1, _AT_LEAST_0, _POSITIVE = (1, None, False), (0, None, False), (0, None, True)
RANGES: dict[type, dict[str, tuple]] = {
    DataConfig: {"min_bucket_size": _AT_LEAST_1},
    EvalConfig: {"max_facts": _AT_LEAST_1, "memory_budget": _AT_LEAST_1},
    TrainConfig: {"epochs": _AT_LEAST_1, "batch_size": _AT_LEAST_1, "lr": _POSITIVE, "negatives": _AT_LEAST_1,
                  "grad_accum": _AT_LEAST_1,
                  "patience": _AT_LEAST_1, "keep_checkpoints": _AT_LEAST_1},
    LLMConfig: {"layers": _AT_LEAST_1, "lora_r": _AT_LEAST_1, "lora_alpha": _POSITIVE,
                "lora_dropout": (0, 0.999999, False), "dim": _AT_LEAST_1, "max_tokens": _AT_LEAST_1,
                "entity_facts": _AT_LEAST_1, "query_facts": _AT_LEAST_0, "query_tokens": _AT_LEAST_1, "text_folds": _AT_LEAST_1, "texts_per_forward": _AT_LEAST_1, "steps": _AT_LEAST_0, "max_minutes": _AT_LEAST_0,
                "queries_per_step": _AT_LEAST_1, "negatives": _AT_LEAST_1, "lr": _POSITIVE, "head_lr": _POSITIVE,
                "head_epochs": _AT_LEAST_0, "head_queries_per_step": _AT_LEAST_1,
                "checkpoint_every": _AT_LEAST_1, "patience": _AT_LEAST_1,
                "valid_queries": _AT_LEAST_0},
    StageConfig: {"epochs": _AT_LEAST_1, "lr": _POSITIVE},
    DistillConfig: {"llm_temperature": _POSITIVE, "rkd_entities": (2, None, False)},
    PipelineConfig: {"student_dim": _AT_LEAST_1},
    RuntimeConfig: {"num_cpus": _AT_LEAST_1, "teacher_actors": _AT_LEAST_1, "tp_size": _AT_LEAST_1,
                    "workers": _AT_LEAST_1, "topk": _AT_LEAST_1, "rank": _AT_LEAST_1, "prefetch": _AT_LEAST_0, "max_failures": _AT_LEAST_0,
                    "timeout_s": _POSITIVE},
    RunConfig: {"seed": _AT_LEAST_0},
}
SPLIT_NAMES = ("train", "valid", "test")

def _check_range(cls: type, key: str, value: Any, where: str) -> None:
    """Raise ConfigError naming ``where`` when ``value`` is outside RANGES[cls][key]."""
    bounds = RANGES.get(cls, {}).get(key)
    if bounds is None or not isinstance(value, (int, float)):  # None and words such as 'auto' have no range
        return
    low, high, open_low = bounds
    if (low is not None and (value <= low if open_low else value < low)) or (high is not None and value > high):
        rule = [f"> {low}" if open_low else f">= {low}"] if low is not None else []
        rule += [f"<= {high}"] if high is not None else []
        raise ConfigError(f"{where}: {value!r} is out of range (it must be {' and '.join(rule)})")


# ------------------------------------------------------------------------------------ building
def build(cls: type[T], values: Any, where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, checking every key and value (module docstring)."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(values).__name__} {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" (did you mean '{_join(where, close[0])}'?)" if close else ""
            raise ConfigError(f"{where or 'config'}: unknown key {key!r}{hint}; known keys: {', '.join(sorted(known))}")
        kwargs[key] = _check(hints[key], value, _join(where, key))
        _check_range(cls, key, kwargs[key], _join(where, key))
    if cls is EvalConfig and "splits" in kwargs:
        bad = [s for s in kwargs["splits"] if s not in SPLIT_NAMES]
        if bad or not kwargs["splits"]:
            raise ConfigError(f"{_join(where, 'splits')}: {kwargs['splits']!r}: name one or more of {', '.join(SPLIT_NAMES)}")
    return cls(**kwargs)


def _join(where: str, key: str) -> str:
    """A dotted key under ``where`` ("" is the top of the config)."""
    return f"{where}.{key}" if where else key


def _check(tp: Any, value: Any, where: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if is_dataclass(tp):
        return build(tp, value, where)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_check(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _check(args[1], v, f"{where}.{k}") if args else v for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {tp.__name__}, got the boolean {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings (value parsed as YAML) to a nested mapping, in order."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set data.dataset=icews14")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = values
        for part in parts[:-1]:
            node = _child(node, part, item)
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"--set {item!r}: {part!r} is a value, not a section")
        try:
            value = parse_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: cannot parse the value: {e}") from None
        if isinstance(node, list):
            node[_index(node, parts[-1], item)] = value
        else:
            node[parts[-1]] = value
    return values


def _index(node: list, part: str, item: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"--set {item!r}: {part!r} is not an index of a list of {len(node)} items")
    return int(part)


def _child(node: dict | list, part: str, item: str) -> Any:
    """One step down a ``--set`` path: a section key (created if missing) or a list index (stages.0)."""
    if isinstance(node, list):
        return node[_index(node, part, item)]
    return node.setdefault(part, {})


def merge(base: dict, top: dict) -> dict:
    """Deep-merge two config mappings; ``top`` wins, sections merge key by key."""
    out = dict(base)
    for key, value in top.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        values = parse_yaml(path.read_text()) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file (byte {e.start} is not UTF-8)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return values


def load_config(path: str | Path | list | None, overrides: list[str] | None = None, cls: type[T] = RunConfig) -> T:
    """Read YAML config(s) (or start from the defaults when ``path`` is None) and apply overrides.

    Several paths are merged in order, later files winning key by key: a student config plus a
    method config (configs/distill/*.yaml) make a distillation run.
    """
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    values: dict = {}
    for p in paths:
        values = merge(values, read_yaml(p))
    return build_overridden(cls, values, " + ".join(map(str, paths)) or "config", overrides or [])


def build_overridden(cls: type[T], values: dict, source: str, overrides: list[str]) -> T:
    """Build ``cls`` from the files' ``values`` with the ``--set`` items applied. An error names where
    it comes from as the user wrote it: the first of the files (``source``) and the states after each
    ``--set`` in turn that shows it -- the ``--set`` item, not the file's key, for a typo in a --set."""
    states = [values]
    for item in overrides:
        states.append(apply_overrides(copy.deepcopy(states[-1]), [item]))
    try:
        return _checked(cls, states[-1], "")
    except ConfigError as e:
        error = str(e)
    for i, state in enumerate(states):
        try:
            _checked(cls, state, "")
        except ConfigError as e:
            if str(e) != error:
                continue
            if i == 0:
                _checked(cls, state, source)  # raises, naming the file
            raise ConfigError(f"--set {overrides[i - 1]}: {error}") from None
    raise ConfigError(f"{source} with {' '.join('--set ' + o for o in overrides)}: {error}")


def _checked(cls: type[T], values: dict, where: str) -> T:
    """``build``, plus for a run config the checks the layers above registered (distkg.checks: the
    model's name, arguments and dims); with none registered it is refused, not left unchecked."""
    cfg = build(cls, values, where)
    if isinstance(cfg, RunConfig):
        if not RUN_CHECKS:
            raise RuntimeError("no check of the model is registered (distkg.checks.RUN_CHECKS is empty), so "
                               "this run config cannot be checked; distkg/__init__.py registers it")
        try:
            for check in RUN_CHECKS:
                check(cfg)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}" if where else str(e)) from None
    return cfg


def to_dict(cfg: Any) -> dict:
    """A config as plain data (for writing next to results)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """PATH as YAML: a config, or a config's plain data (a run folder's slice, distkg.runfolder.save_slice)."""
    Path(path).write_text(yaml.safe_dump(cfg if isinstance(cfg, dict) else to_dict(cfg), sort_keys=False))
