"""``distkg distill``: train the student described by ``model`` with the stages of ``distill``.

A method is configuration (configs/distill/*.yaml): a list of stages, each a weighted sum of
registered losses. The runner looks at which batch fields those losses read (losses.INPUTS) and
provides only those: the KG teacher's scores, representations or entity vectors (from
``distill.teacher_run``), P_LLM (from ``distill.llm_run``: an LLM teacher, or any second teacher,
distkg.distill.second), and a FitNet regressor when a stage
uses ``fitnet``. The student's regulariser (N3, smoothness) is always added, as in plain training,
so the plain student (``ce`` only) trained here equals ``distkg train``.

With ``pools`` (distkg.runtime: the LLM teacher, and the KG teacher's scores when
``runtime.kg_teacher`` is ``pool``, served by Ray scoring actors) those scores come from the pool
instead, the epoch's batches sent ahead of the steps.

RKD reads the entity vectors of up to ``distill.rkd_entities`` distinct entities of the batch
(queried entities and answers), drawn with the epoch's generator.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import torch

from distkg.config import RunConfig
from distkg.data import TKGDataset, load_dataset
from distkg.device import process_group
from distkg.training.softmax import Rows
from distkg.distill.losses import INPUTS, LOSSES, DistillBatch, TopKTargets, combine
from distkg.distill.second import open_second
from distkg.distill.teachers import KGTeacher, LLMTables
from distkg.errors import ConfigError
from distkg.runfolder import prepare_folder
from distkg.training.objective import at_least_float32, corrected, float32_losses, sampled_candidates
from distkg.training.trainer import Stage, build_model, fit, sampling_log_q, training_queries

log = logging.getLogger("distkg")

KG_FIELDS = {"teacher_scores", "teacher_repr", "teacher_emb"}
POOL_FIELD = {"kg": "teacher_scores", "llm": "llm_probs"}  # what each scoring pool serves


def stage_fields(losses: dict[str, dict]) -> set[str]:
    """The batch fields a stage's losses read (losses.INPUTS)."""
    return set().union(*(INPUTS[name] for name in losses))


def check_method(cfg: RunConfig) -> set[str]:
    """Loss names and arguments of every stage, checked before any data is read; the fields needed."""
    distill_cfg = cfg.distill
    if not distill_cfg.stages:
        raise ConfigError("distill.stages: at least one stage is needed")
    needs: set[str] = set()
    for i, stage in enumerate(distill_cfg.stages):
        if not stage.losses:
            raise ConfigError(f"distill.stages[{i}].losses: empty; name at least one loss ({', '.join(LOSSES.names())})")
        for name, args in stage.losses.items():
            LOSSES.check(name, {k: v for k, v in args.items() if k != "weight"}, f"distill.stages[{i}].losses.{name}",
                         runtime=("batch",))
            needs |= set(INPUTS[name])
    if needs & KG_FIELDS and not distill_cfg.teacher_run:
        raise ConfigError("distill.teacher_run: the configured losses need a trained KG teacher; set it to a "
                          "`distkg train` folder")
    if "llm_probs" in needs and not distill_cfg.llm_run:
        raise ConfigError("distill.llm_run: the configured losses need P_LLM; set it to a `distkg llm train` folder "
                          "(or any second teacher: a `distkg train` or `distkg ensemble` folder)")
    if cfg.train.loss == "sampled_softmax" and cfg.runtime.kg_teacher == "pool" and cfg.runtime.soft_targets == "topk":
        raise ConfigError("runtime.soft_targets: topk has no teacher score for a sampled candidate outside the top k; "
                          "with train.loss sampled_softmax use lowrank (or full)")
    for i, stage in enumerate(distill_cfg.stages):
        if "llm_kd" in stage.losses:
            default = inspect.signature(LOSSES.get("llm_kd")).parameters["temperature"].default
            T = float(stage.losses["llm_kd"].get("temperature", default))
            if T != distill_cfg.llm_temperature:
                raise ConfigError(f"distill.stages[{i}].losses.llm_kd.temperature={T:g} reads P_LLM at that temperature, "
                                  f"but distill.llm_temperature={distill_cfg.llm_temperature:g}: set them equal")
    return needs


def kd_temperature(cfg: RunConfig) -> float | None:
    """The one temperature of a method whose only reader of teacher scores is kd, so the teacher's
    soft targets can be computed once (KGTeacher.temper); None otherwise."""
    readers = [(name, args) for s in cfg.distill.stages for name, args in s.losses.items()
               if "teacher_scores" in INPUTS[name]]
    default = inspect.signature(LOSSES.get("kd")).parameters["temperature"].default
    temperatures = {float(args.get("temperature", default)) for name, args in readers if name == "kd"}
    return temperatures.pop() if len(temperatures) == 1 and all(name == "kd" for name, _ in readers) else None


def distill(cfg: RunConfig, out: Path, resume: bool = True, dataset: TKGDataset | None = None,
            remote: dict | None = None, checked: bool = False, written: bool = False) -> dict:
    """``remote``: {"llm": ..., "kg": ...} clients that serve those teachers' scores by training-query
    index (distkg.runtime.pool.soft_targets builds them from Ray scoring pools; optional). They are
    handed in, so distillation never imports the runtime that runs it. ``checked``: the caller has
    checked OUT (distkg.runfolder.prepare_folders), it is only written here; else it is checked here,
    before a teacher is read. ``written``: the caller wrote it too (a Ray driver: its workers' devices,
    resolved to where Ray placed them, are not the run's config)."""
    distill_cfg = cfg.distill
    needs = check_method(cfg)
    prepare_folder(cfg, out, "student", restart=not resume, write=process_group()[0] == 0 and not written,
                   check=not checked)
    ds = dataset if dataset is not None else load_dataset(cfg.data)
    queries, _ = training_queries(ds.splits["train"], ds.num_relations)
    remote = remote or {}
    local_kg = needs & KG_FIELDS - ({"teacher_scores"} if "kg" in remote else set())
    kg = KGTeacher(distill_cfg.teacher_run, ds, queries) if local_kg else None
    llm = (open_second(distill_cfg.llm_run, ds, queries, distill_cfg.llm_temperature)
           if "llm_probs" in needs and "llm" not in remote else None)
    if kg is not None and "kg" not in remote and (t := kd_temperature(cfg)) is not None and cfg.train.loss == "1vsall":
        kg.temper(t)  # whole rows at T, read by kd; a sampled loss's softmax is over its candidates instead

    def make_plan(fields: set[str]):
        def plan(epoch: int, batches: list[torch.Tensor]) -> None:
            """Send the epoch's queries to the pools this stage reads, after reporting the epoch before."""
            if epoch > 0:
                report_targets(remote, out, epoch)
            for name, targets in remote.items():
                if POOL_FIELD[name] in fields:
                    targets.plan(batches)

        return plan

    student = build_model(cfg, ds)
    log_q = sampling_log_q(cfg, ds)
    aux = torch.nn.ModuleDict()
    if "regressor" in needs:
        d_s = student.query_repr(queries[:1]).shape[1]
        aux["regressor"] = torch.nn.Linear(d_s, kg.query.shape[1])

    def make_loss(spec: dict[str, dict], where: str):
        return step_loss(student, spec, where, distill_cfg, kg=kg, llm=llm, remote=remote, aux=aux, train_cfg=cfg.train,
                         log_q=log_q)

    stages = [Stage(s.name, s.epochs, make_loss(s.losses, f"distill.stages[{i}].losses"),
                    on_epoch=make_plan(stage_fields(s.losses)) if remote else None) for i, s in enumerate(distill_cfg.stages)]
    log.info("epoch budget: the stages' epochs (%s); train.epochs (%d) is not used by distillation",
             ", ".join(f"{s.name} {s.epochs}" for s in distill_cfg.stages), cfg.train.epochs)
    extra = {"method": distill_cfg.method, "teacher_run": distill_cfg.teacher_run, "llm_run": distill_cfg.llm_run,
             "stages": [{"name": s.name, "epochs": s.epochs, "losses": s.losses} for s in distill_cfg.stages]}
    metrics = fit(cfg, out, ds, student, stages, aux=aux, resume=resume, extra=extra, kind="student")
    if remote:
        report_targets(remote, out, metrics["epochs_run"])
    return metrics


def step_loss(student, spec: dict[str, dict], where: str, distill_cfg, kg: KGTeacher | None = None,
              llm: LLMTables | None = None, remote: dict | None = None, aux: torch.nn.ModuleDict | None = None,
              train_cfg=None, log_q: torch.Tensor | None = None):
    """The loss of one step of a stage with losses ``spec``: the batch fields those losses read,
    from the teachers given (``remote``: pools serving "kg" / "llm" scores), combined as weighted.
    With ``train_cfg.loss`` sampled_softmax every term reads the batch's sampled candidates (its
    answers and ``train.negatives`` drawn entities) instead of all entities: the student's and the
    teachers' scores, P_LLM as a softmax over them, the answers as their columns; ``log_q``
    (trainer.sampling_log_q) is then subtracted from every candidate's scores (P_LLM: divided by
    its chance, renormalised), the same correction plain training makes."""
    needs = stage_fields(spec)  # this stage's losses only: stage 1 of Ours reads no P_LLM
    remote = remote or {}
    negatives = train_cfg.negatives if train_cfg is not None and train_cfg.loss == "sampled_softmax" else 0

    def loss(idx: torch.Tensor, q: torch.Tensor, a: torch.Tensor, gen: torch.Generator):
        qr = student.query_repr(q)
        columns = None  # every entity, or the sampled candidates (negatives): every [B, E] term is then [B, C]
        if negatives:
            columns, a = sampled_candidates(a, student.num_entities, negatives, gen)
        shift = log_q[columns] if log_q is not None else None  # the sampled softmax's logQ correction: on every term's scores
        batch = DistillBatch(student_scores=corrected(student_scores(student, qr, columns), shift), answers=a)
        on_cpu = q.device.type == "cpu"  # the cached rows are then read in place (distkg.training.softmax.Rows)
        cpu_columns = columns.cpu() if columns is not None else None
        if "teacher_scores" in needs and kg is not None and kg.tempered is not None and columns is None:
            batch.teacher_targets = kg.targets(idx, q.device, rows=on_cpu)
        elif "teacher_scores" in needs:
            got = remote["kg"].get(idx, cpu_columns) if "kg" in remote else kg.scores(idx, cpu_columns)
            if isinstance(got, TopKTargets):
                batch.teacher_topk = got.to(q.device)
            else:
                batch.teacher_scores = corrected(got.to(q.device), shift)
        if "llm_probs" in needs:
            probs = (torch.softmax(remote["llm"].get(idx, cpu_columns) / distill_cfg.llm_temperature, dim=1) if "llm" in remote
                     else llm.probs(q.cpu(), distill_cfg.llm_temperature, idx, rows=on_cpu, columns=cpu_columns))
            if shift is not None:  # p / pi renormalised: the softmax of (log p - log pi)
                probs = torch.softmax(probs.to(q.device).log() - shift, dim=1)
            batch.llm_probs = probs if isinstance(probs, Rows) else probs.to(q.device)
        if "regressor" in needs:
            batch.student_repr, batch.teacher_repr, batch.regressor = qr, kg.query[idx].to(q.device), aux["regressor"]
        if "student_emb" in needs:
            ids = torch.unique(torch.cat([q[:, 0], a]).cpu())
            ids = ids[torch.randperm(len(ids), generator=gen)[: distill_cfg.rkd_entities]]
            batch.student_emb, batch.teacher_emb = student.entity_embeddings(ids.to(q.device)), kg.entities(ids).to(q.device)
        total, parts = combine(spec, batch, where)
        return total + student.regularizer(q, a), parts

    return loss


def student_scores(student, qr: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
    """[B, E] scores of a batch's query representations against every entity (``columns``: against
    those, by lookup, so a sparse step touches only their rows), in float32 under any
    autocast: the distillation losses read them in float32 (distkg.distill.losses.combine), and a bf16
    score matrix would round their gradient on its way back (a 25-d student's scoring is a thin
    matmul, bound by the [B, E] it writes, which a bf16 copy then widened only adds to)."""
    table = student.candidate_table() if columns is None else student.entity_embeddings(columns)
    with float32_losses(qr.device):
        return student.match(at_least_float32(qr), at_least_float32(table))


def report_targets(remote: dict, out: Path, epoch: int) -> None:
    """One line per pool for training epoch ``epoch`` in OUT/runtime/targets-RANK.jsonl: cache hit
    rate, mean wait of a step for its targets, pool busy time."""
    import json
    import os

    rank = int(os.environ.get("RANK", 0))
    folder = out / "runtime"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"targets-{rank}.jsonl", "a") as f:
        for name, targets in remote.items():
            row = {"pool": name, "epoch": epoch, **targets.report()}
            f.write(json.dumps(row) + "\n")
            log.info("%s pool, epoch %d: cache hits %.0f%%, a step waited %.1f ms for its targets", name, epoch,
                     100 * row["cache_hit_rate"], 1000 * row["wait_mean_s"])
