"""Training a TKG embedding model in stages: plain training is one stage of 1-vs-all cross-entropy
with reciprocal relations; a distillation method (distkg.distill) is a list of stages with other losses.

Read ``fit`` top to bottom: build the optimiser; resume from the newest checkpoint in OUT if
there is one; run the stages as phases of distkg.training.loop (the loop the LLM teacher's
fine-tuning runs too), one round per epoch: shuffle with a generator seeded by (seed, epoch) -- so
a resumed run sees exactly the batches an uninterrupted one would -- and step through the batches
(``run_epoch``); the loop evaluates on the validation split, keeps the best, writes a checkpoint
and moves to the next stage when validation MRR stops rising or the stage's epochs are spent.
Then score the test split with the best weights and write OUT/metrics.json.

The device and mixed precision come from distkg.device (bf16 on GPU, fp32 on CPU); Accelerate
places the model there and runs the autocast (the losses then compute in float32: distkg.training.objective),
gradients of ``train.grad_accum`` micro-batches are summed weighted by their sizes (``micro_weights``), and the batch fetch is the
one place training moves tensors (evaluation moves its own chunks, distkg.evaluation.ranking). Under several processes (Ray Train workers, torchrun) every global batch is split
across them by rank and their gradients are averaged over the process group before each step,
so the updates are those of one process with the whole batch (each share's loss weighted by its
size, so also when the shares are unequal); all ranks evaluate (identical weights, so identical decisions) and only rank 0 writes
checkpoints, logs and metrics. A non-finite loss or weight stops training with a message naming
the last good checkpoint, which is never overwritten by a bad state.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from distkg.config import RunConfig
from distkg.data import TKGDataset, load_dataset
from distkg.device import Placement, placement, process_group
from distkg.errors import DistkgError
from distkg.evaluation import FilterIndex, build_queries, eval_options, evaluate, evaluate_splits
from distkg.models import MODELS, TKGModel
from distkg.runfolder import config_digest, prepare_folder, write_metrics
from distkg.training.checkpoint import Checkpoints
from distkg.training.curves import plot_curves
from distkg.training.loop import Loop, Phase, TrainingDiverged  # noqa: F401  (TrainingDiverged: re-exported)
from distkg.training.objective import candidate_log_q, corrected, cross_entropy, sampled_candidates
from distkg.training.tracking import tracker_for

log = logging.getLogger("distkg")


def training_queries(facts: np.ndarray, num_relations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both directions of each fact, as evaluation builds them: (s, r, t0, t1) -> o, (o, r + R, t0, t1) -> s."""
    qs = build_queries(facts, num_relations)
    return torch.from_numpy(qs.queries), torch.from_numpy(qs.answers)


def make_accelerator(cfg: RunConfig, where: Placement | None = None) -> Accelerator:
    """Accelerate on the resolved device and precision (distkg.device); an error if it disagrees."""
    where = where if where is not None else placement(cfg)
    # gradient accumulation is the trainer's own (run_epoch): Accelerate divides every micro-loss by the
    # count, which mis-weights an epoch's smaller last micro-batches
    accelerator = Accelerator(cpu=not where.on_cuda, mixed_precision=where.mixed_precision)
    if not same_device(accelerator.device, where.device):
        raise DistkgError(f"Accelerate chose {accelerator.device} but train.device resolved to {where.device} "
                          "(ACCELERATE_TORCH_DEVICE / LOCAL_RANK disagree with this process's GPU)")
    return accelerator


def same_device(a: torch.device | str, b: torch.device | str) -> bool:
    """Whether two device names are one device ("cuda" means the current CUDA device)."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    index = torch.cuda.current_device
    return (a.index if a.index is not None else index()) == (b.index if b.index is not None else index())


def make_optimizer(cfg: RunConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Adagrad, what every KG model and student of every result trains with (its sparse step: sparse_rows)."""
    from distkg.training.optim import Adagrad  # torch's, without importing torch._dynamo (3 s)

    return Adagrad(params, lr=cfg.train.lr)


def batch_loss(cfg: RunConfig, model: TKGModel, q: torch.Tensor, a: torch.Tensor, gen: torch.Generator,
               log_q: torch.Tensor | None = None) -> torch.Tensor:
    """The configured training loss for one batch, plus the model's regulariser. ``log_q``: with the
    sampled softmax, each entity's log chance to be a candidate (candidate_log_q), subtracted from the
    candidates' scores."""
    if cfg.train.loss == "1vsall":
        loss = cross_entropy(model(q), a)
    else:  # the batch's answers and k uniformly drawn entities, shared (sampled_softmax)
        candidates, column = sampled_candidates(a, model.num_entities, cfg.train.negatives, gen)
        scores = model.match(model.query_repr(q), model.entity_embeddings(candidates))
        scores = corrected(scores, log_q[candidates] if log_q is not None else None)
        loss = cross_entropy(scores, column)
    return loss + model.regularizer(q, a)


def sampling_log_q(cfg: RunConfig, ds: TKGDataset, device: torch.device | None = None) -> torch.Tensor | None:
    """The sampled softmax's correction (objective.candidate_log_q) for this run's training answers and
    batch share, on the training device; None for another loss. Always applied: on ICEWS18 it lifts test
    MRR from 0.209 to 0.223 at 4,096 negatives (cluster/SCALING.md)."""
    if cfg.train.loss != "sampled_softmax":
        return None
    _, answers = training_queries(ds.splits["train"], ds.num_relations)
    share = math.ceil(cfg.train.batch_size / process_group()[1])
    log_q = candidate_log_q(answers, ds.num_entities, share, cfg.train.negatives)
    return log_q.to(device if device is not None else placement(cfg).device)


def sparse_rows(cfg: RunConfig) -> bool:
    """Whether a step updates only the entity rows it read: the sampled losses read rows by lookup
    (their cost per step then does not grow with the entity count), and torch's Adagrad steps sparse
    gradients exactly as it does dense ones whose other rows are zero."""
    return cfg.train.loss != "1vsall"


def _after_step(epoch: int, step: int) -> None:
    """Hook called after every optimiser step (tests use it to simulate a crash mid-epoch)."""


def build_model(cfg: RunConfig, ds: TKGDataset) -> TKGModel:
    torch.manual_seed(cfg.seed)
    return MODELS.create(cfg.model.name, cfg.model.args, "model.args", dataset=ds)


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator], "tuple[torch.Tensor, dict[str, float]]"]


@dataclass
class Stage:
    """One phase of training. Plain training is one stage; a distillation method is a list of them.

    ``loss(idx, q, a, gen)`` gets the indices of the batch's training queries (so cached teacher
    outputs can be looked up), the queries, their answers and the epoch's generator, and returns
    the loss and its named parts (logged per epoch).
    """

    name: str
    epochs: int
    loss: LossFn
    on_epoch: Callable[[int, list[torch.Tensor]], None] | None = None  # (epoch index, its batches), told ahead


def train(cfg: RunConfig, out: Path, resume: bool = True, dataset: TKGDataset | None = None,
          checked: bool = False) -> dict:
    """Plain training: one stage of the configured loss (1-vs-all or negative sampling). ``checked``:
    the caller has checked OUT (distkg.runfolder.prepare_folders), it is only written here; else it is
    checked here, first."""
    prepare_folder(cfg, out, "kg", restart=not resume, write=process_group()[0] == 0, check=not checked)
    ds = dataset if dataset is not None else load_dataset(cfg.data)
    model = build_model(cfg, ds)

    log_q = sampling_log_q(cfg, ds)

    def loss(idx: torch.Tensor, q: torch.Tensor, a: torch.Tensor, gen: torch.Generator):
        return batch_loss(cfg, model, q, a, gen, log_q), {}

    return fit(cfg, out, ds, model, [Stage("train", cfg.train.epochs, loss)], resume=resume, kind="kg")


def fit(cfg: RunConfig, out: Path, ds: TKGDataset, model: TKGModel, stages: list[Stage],
        aux: torch.nn.Module | None = None, resume: bool = True, extra: dict | None = None, kind: str = "kg") -> dict:
    """Run ``stages`` in order on ``model`` (plus trainable ``aux`` modules, e.g. a FitNet regressor) in
    OUT, a run of ``kind`` ("kg", or "student" for a distillation: distkg.runfolder.SLICES) that the
    caller has prepared (distkg.runfolder.prepare_folders: train, distill).

    Each stage is a phase of distkg.training.loop (one round = one epoch): it trains until its epoch
    budget or until validation MRR has not risen for ``train.patience`` evaluations; the next stage
    starts from the best weights so far with a fresh patience counter. The test split is scored with
    the best weights of the whole run.
    """
    train_cfg = cfg.train
    log.info("%s", ds.describe())
    where = placement(cfg)
    accelerator = make_accelerator(cfg, where)
    device = where.device
    options = eval_options(cfg, device)
    aux = aux if aux is not None else torch.nn.ModuleDict()
    aux.to(device)
    if sparse_rows(cfg):
        model.sparse_entities()
    optimizer = make_optimizer(cfg, [*model.parameters(), *aux.parameters()])
    model, optimizer = accelerator.prepare(model, optimizer)
    # DDP under several processes (gradients are still averaged by hand: average_gradients); Accelerate's
    # unwrap_model would import deepspeed to check for its engine
    raw_model: TKGModel = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    trained = [p for p in [*raw_model.parameters(), *aux.parameters()] if p.requires_grad]
    valid_index = FilterIndex.from_dataset(ds, cfg.eval.filter) if cfg.eval.filter != "none" else None

    def validate() -> float:
        raw_model.eval()
        return evaluate(raw_model, ds, split="valid", options=options.replace(progress=False), index=valid_index)["mrr"]

    loop = Loop(out, Checkpoints(out / "checkpoints", keep=train_cfg.keep_checkpoints, write=main), raw_model, optimizer,
                validate, train_cfg.patience, config_digest(cfg, kind), aux=aux, main=main, barrier=accelerator.wait_for_everyone,
                tracking=tracker_for(cfg, out, kind))
    state = loop.resume(resume)
    queries, answers = training_queries(ds.splits["train"], ds.num_relations)
    n_batches = math.ceil(len(queries) / train_cfg.batch_size)
    n_params = sum(p.numel() for p in raw_model.parameters())
    total_epochs = sum(s.epochs for s in stages)
    log.info("%s dim=%d, %d parameters, %d training queries, %d batches/epoch, stages: %s", cfg.model.name,
             raw_model.dim, n_params, len(queries), n_batches, ", ".join(f"{s.name} ({s.epochs} ep)" for s in stages))

    def run_epoch(stage: Stage, state: dict) -> dict:
        """One epoch of ``stage``: batches from a generator seeded by (seed, epoch), split across ranks."""
        for group in optimizer.param_groups:  # the config's learning rate wins over a checkpoint's
            group["lr"] = train_cfg.lr
        epoch = state["epoch"]
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(queries), generator=gen)
        whole = perm.split(train_cfg.batch_size)
        batches = [b[rank::world] for b in whole]  # this rank's share of each batch
        weights = micro_weights([len(b) for b in whole], [len(b) for b in batches], train_cfg.grad_accum, world)
        if stage.on_epoch is not None:
            stage.on_epoch(epoch, batches)
        model.train()
        total, parts, t_epoch = 0.0, {}, time.perf_counter()
        bar = tqdm(batches, total=n_batches, desc=f"{stage.name} epoch {epoch + 1}/{total_epochs}",
                   disable=not (train_cfg.progress and main), leave=False, mininterval=2)
        for step, idx in enumerate(bar):
            q, a = queries[idx].to(device), answers[idx].to(device)
            with accelerator.autocast():
                loss, named = stage.loss(idx, q, a, gen)
            if not torch.isfinite(loss):
                raise loop.diverged("loss", loss.item(), f"epoch {epoch + 1}, step {step + 1}")
            accelerator.backward(loss if weights is None else loss * weights[step])
            if (step + 1) % train_cfg.grad_accum == 0 or step + 1 == len(batches):  # an epoch ends with a step
                if world > 1:
                    average_gradients(trained, world)
                optimizer.step()
                optimizer.zero_grad()
            total += loss.item()
            for k, v in named.items():
                parts[k] = parts.get(k, 0.0) + v
            bar.set_postfix(loss=f"{total / (step + 1):.4f}", refresh=False)  # a refresh here would print every step, with a stale count
            _after_step(epoch, step)
        bar.close()
        seconds = time.perf_counter() - t_epoch
        return {"loss": total / n_batches, "seconds": round(seconds, 2),
                "facts_per_second": round(len(queries) / 2 / seconds, 1),
                **{f"loss_{k}": v / n_batches for k, v in parts.items()}}

    state = loop.run([Phase(s.name, s.epochs, partial(run_epoch, s)) for s in stages], state)
    raw_model.eval()
    final = evaluate_splits(raw_model, ds, cfg.eval.splits, options)  # the best weights, on eval.splits
    metrics = {**final, "dataset": ds.name, "model": cfg.model.name, "dim": raw_model.dim,
               "parameters": n_params, "best_epoch": state["best_epoch"], "best_valid_mrr": state["best_mrr"],
               "epochs_run": state["epoch"], "train_seconds": round(state["seconds"], 1), "seed": cfg.seed,
               **(extra or {})}
    if main:
        write_metrics(out, metrics)
        plot_curves(state["history"], out / "curves.png", title=f"{cfg.model.name} {raw_model.dim}-d on {ds.name}")
    log.info("%s MRR %.4f H@1 %.4f H@10 %.4f (best epoch %d) -> %s", final["split"], final["mrr"], final["hits@1"],
             final["hits@10"], state["best_epoch"], out / "metrics.json")
    return metrics


def micro_weights(sizes: list[int], shares: list[int], accum: int, world: int) -> list[float] | None:
    """What each of this rank's micro-batch losses (batch means) is multiplied by so that the gradient
    of an optimiser step, summed over its ``accum`` micro-batches and averaged over ``world`` ranks,
    is that of the mean over all the step's queries: share * world / (queries in the step). ``sizes``:
    each micro-batch's queries over all ranks, ``shares``: this rank's. None: every weight is 1 (one
    rank, no accumulation)."""
    if accum == 1 and world == 1:
        return None
    weights = []
    for first in range(0, len(sizes), accum):
        total = sum(sizes[first: first + accum])
        weights += [share * world / total for share in shares[first: first + accum]]
    return weights


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """Mean of every gradient over the process group (gloo on CPU, NCCL on GPU).

    Why not torch DDP's wrapper: the losses call the model's parts (query_repr, match, entity
    vectors) rather than its forward, and DDP only synchronises gradients of a forward it ran.
    One flat all-reduce per step does the same work for the dense gradients. A sparse one (the entity
    table under a sampled loss, sparse_rows) is all-gathered instead: each rank's touched rows and
    their values, summed where ranks share rows, so a step sends the rows it touched, never the
    whole E x D table (which at 10M entities and 400-d would be 16 GB a step). Every rank must pass
    the same parameters in the same order; a parameter is sparse on all of them or on none.
    """
    import torch.distributed as dist

    sparse = [p for p in params if p.grad is not None and p.grad.is_sparse]
    dense = [p for p in params if not (p.grad is not None and p.grad.is_sparse)]
    if dense:
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in dense]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for p, g in zip(dense, grads):
            n = g.numel()
            p.grad = flat[offset: offset + n].view_as(p).clone()
            offset += n
    for p in sparse:
        p.grad = _mean_sparse(p.grad, world)


def _mean_sparse(grad: torch.Tensor, world: int) -> torch.Tensor:
    """The mean over the group of a sparse row gradient: all ranks' (row, values) gathered, padded
    to the longest rank's row count (all_gather wants equal sizes), summed by coalescing."""
    import torch.distributed as dist

    grad = grad.coalesce()
    rows, values = grad.indices()[0], grad.values()
    counts = [torch.zeros(1, dtype=torch.int64, device=rows.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([len(rows)], device=rows.device))
    longest = int(max(c.item() for c in counts))
    pad = longest - len(rows)
    rows = torch.cat([rows, rows.new_zeros(pad)])
    values = torch.cat([values, values.new_zeros((pad, *values.shape[1:]))])
    all_rows, all_values = [torch.empty_like(rows) for _ in range(world)], [torch.empty_like(values) for _ in range(world)]
    dist.all_gather(all_rows, rows)
    dist.all_gather(all_values, values)
    keep = [int(c.item()) for c in counts]
    rows = torch.cat([r[:k] for r, k in zip(all_rows, keep)])
    values = torch.cat([v[:k] for v, k in zip(all_values, keep)])
    return torch.sparse_coo_tensor(rows.unsqueeze(0), values / world, grad.shape).coalesce()


def load_trained(run_dir: Path, cfg: RunConfig | None = None,
                 device: torch.device | None = None) -> tuple[RunConfig, TKGDataset, TKGModel]:
    """A finished run's config (or ``cfg``, e.g. with overrides), dataset and best weights, on
    ``device`` (default: the config's resolved training device, distkg.device)."""
    from distkg.runfolder import MODEL_KINDS, open_finished, run_config

    _, metrics = open_finished(run_dir, "--run", MODEL_KINDS)
    cfg = cfg if cfg is not None else run_config(run_dir)
    ds = load_dataset(cfg.data)
    model = build_model(cfg, ds)
    Checkpoints(run_dir / "checkpoints").load_best(model, metrics.get("best_epoch"))
    return cfg, ds, model.to(device if device is not None else placement(cfg).device).eval()
