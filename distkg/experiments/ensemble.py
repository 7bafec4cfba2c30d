"""``distkg ensemble --runs A B --out E``: two finished runs as one predictive distribution, the weight
chosen on validation.

P(o | q) = w P_a(o | q) + (1 - w) P_b(o | q), each P the run's own softmax over all entities at its own
calibrated temperature, softmax(s / T_i): a KG model's scores, or an LLM teacher's P_LLM. Members are
trained with different scales (a TTransE distance, a DistMult product, an LLM's learned logit scale),
so a raw mixture is decided by whichever is sharper; T_i is the value of ``TEMPERATURES`` with the
lowest validation negative log-likelihood of the answers (temperature scaling). Then w is the value of
``WEIGHTS`` with the best validation MRR (ties: the one nearest 0.5); test is scored once, at that w,
and for each member alone (w = 1, 0; a temperature does not change a member's own ranking).

Why: complementarity, measured. A second teacher that adds nothing to the first cannot help the
student; if the mixture of the 400-d KG teacher and the LLM teacher beats the KG teacher alone on
test, the LLM knows something the KG teacher does not. The folder is also a second teacher for
distillation (``distill.llm_run=E``, distkg.distill.second): the strength sweep feeds it to L2/L3.

E holds ensemble.json (members, weight, validation MRR at every weight), metrics.json (test metrics
at w, and the members'; its ``kind`` is "ensemble") and weights.png (validation MRR against w).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch

from distkg.data import TKGDataset, load_dataset
from distkg.distill.second import ENSEMBLE_FILE
from distkg.errors import ConfigError, DistkgError
from distkg.evaluation import FilterIndex, build_queries, eval_options, evaluate
from distkg.runfolder import MODEL_KINDS, open_finished, read_json, read_metrics, run_config, write_kind, write_metrics

log = logging.getLogger("distkg")

WEIGHTS = [round(0.05 * i, 2) for i in range(21)]  # w of the first member
TEMPERATURES = [round(2 ** (k / 4), 4) for k in range(-12, 17)]  # 1/8 .. 16, each member's calibration


class Member:
    """A finished run's log P(o | q) over all entities for [B, 4] queries, computed in this process."""

    def __init__(self, run: Path, ds: TKGDataset) -> None:
        self.kind, metrics = open_finished(run, "distkg ensemble --runs", (*MODEL_KINDS, "llm"))
        self.run = run
        if self.kind in MODEL_KINDS:  # on the CPU: the mixture and the ranking run there
            from distkg.training.checkpoint import Checkpoints
            from distkg.training.trainer import build_model

            model = build_model(run_config(run), ds)
            Checkpoints(run / "checkpoints").load_best(model, metrics.get("best_epoch"))
            self._scores = model.eval()
        else:
            from distkg.distill.teachers import LLMTables

            self._scores = LLMTables(run, ds).scores

        self.temperature = 1.0

    @torch.no_grad()
    def log_probs(self, queries: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self._scores(queries).float().cpu() / self.temperature, dim=1)

    @torch.no_grad()
    def calibrate(self, queries: torch.Tensor, answers: torch.Tensor) -> list[dict]:
        """Set ``temperature`` to the value of TEMPERATURES with the lowest mean negative log-likelihood
        of ``answers`` (validation); returns that curve."""
        scores = torch.cat([self._scores(q).float().cpu() for q in queries.split(1024)])
        curve = [{"temperature": t, "nll": float(-torch.log_softmax(scores / t, 1).gather(1, answers[:, None]).mean())}
                 for t in TEMPERATURES]
        self.temperature = min(curve, key=lambda p: p["nll"])["temperature"]
        return curve


class Mixture:
    """The evaluation Scorer of w P_a + (1 - w) P_b; each distinct query's member rows are computed
    once and kept, so trying every weight costs one scoring of each member."""

    def __init__(self, a: Member, b: Member, num_entities: int) -> None:
        self.a, self.b, self.num_entities = a, b, num_entities
        self.weight = 0.5
        self._rows: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _members(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys = [tuple(q) for q in queries.tolist()]
        todo = [i for i, k in enumerate(keys) if k not in self._rows]
        if todo:
            new = queries[todo].cpu()
            for i, ra, rb in zip(todo, self.a.log_probs(new), self.b.log_probs(new)):
                self._rows[keys[i]] = (ra, rb)
        rows = [self._rows[k] for k in keys]
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])

    def score_candidates(self, queries: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        la, lb = self._members(queries)
        w = self.weight
        mixed = torch.logaddexp(la + math.log(w) if w > 0 else torch.full_like(la, -math.inf),
                                lb + math.log(1 - w) if w < 1 else torch.full_like(lb, -math.inf))
        return mixed[:, start:stop]

    def forget(self) -> None:
        self._rows.clear()


def _same_data(runs: list[Path], overrides: list[str]):
    """The members' shared run config (the first's) after checking they were trained on the same data."""
    cfgs = []
    for run in runs:
        if read_metrics(run) is None:
            raise DistkgError(f"distkg ensemble: {run} is not a finished run (no metrics.json)")
        cfgs.append(run_config(run, overrides))
    if cfgs[0].data != cfgs[1].data:
        raise ConfigError(f"distkg ensemble: {runs[0]} and {runs[1]} were trained on different data "
                          f"({cfgs[0].data} vs {cfgs[1].data})")
    return cfgs[0]


def ensemble(runs: list[str | Path], out: Path, data_root: str | None = None, dataset: TKGDataset | None = None) -> dict:
    """Choose w on validation, score test (module docstring); E/metrics.json. A finished E of the same
    members is read, not run again; one of other members is refused. ``dataset``: the members' data
    already in memory (else read from the data root)."""
    runs = [Path(r).resolve() for r in runs]
    if len(runs) != 2:
        raise ConfigError(f"distkg ensemble: --runs takes two runs, got {len(runs)}")
    spec_path = out / ENSEMBLE_FILE
    if spec_path.is_file():
        held = read_json(spec_path).get("members")
        if held != [str(r) for r in runs]:
            raise ConfigError(f"{out} holds an ensemble of {held}; choose another --out (or delete it) for {runs}")
        if (done := read_metrics(out)) is not None:
            log.info("%s: this ensemble is finished (test MRR %.4f at w=%s); reading it", out, done["mrr"], done["weight"])
            return done
    cfg = _same_data(runs, [f"data.root={data_root}"] if data_root else [])
    ds = dataset if dataset is not None else load_dataset(cfg.data)
    a, b = (Member(r, ds) for r in runs)
    valid = build_queries(ds.splits["valid"], ds.num_relations)
    for m in (a, b):
        m.calibrate(torch.from_numpy(valid.queries), torch.from_numpy(valid.answers))
        log.info("%s: calibrated temperature %g (validation NLL)", m.run.name, m.temperature)
    mixture = Mixture(a, b, ds.num_entities)
    options = eval_options(cfg, torch.device("cpu")).replace(progress=False)
    index = FilterIndex.from_dataset(ds, options.filter) if options.filter != "none" else None
    t = time.perf_counter()
    curve = []
    for w in WEIGHTS:
        mixture.weight = w
        curve.append({"weight": w, "valid_mrr": evaluate(mixture, ds, "valid", options=options, index=index)["mrr"]})
        log.info("ensemble w=%.2f: validation MRR %.4f", w, curve[-1]["valid_mrr"])
    best = max(curve, key=lambda p: (p["valid_mrr"], -abs(p["weight"] - 0.5)))
    mixture.forget()
    test = {}
    for w in sorted({best["weight"], 1.0, 0.0}):
        mixture.weight = w
        test[w] = evaluate(mixture, ds, "test", options=options, index=index)
    write_kind(out, "ensemble")
    spec = {"members": [str(r) for r in runs], "kinds": [a.kind, b.kind], "temperatures": [a.temperature, b.temperature],
            "weight": best["weight"], "dataset": ds.name, "valid_curve": curve}
    spec_path.write_text(json.dumps(spec, indent=2))
    _plot(curve, best["weight"], out / "weights.png", runs)
    chosen = test[best["weight"]]
    metrics = {**chosen, "kind": "ensemble", "split": "test", "dataset": ds.name, "weight": best["weight"],
               "temperatures": spec["temperatures"],
               "valid_mrr": best["valid_mrr"], "members": spec["members"],
               "member_test": [{k: test[w][k] for k in ("mrr", "mr", "hits@1", "hits@3", "hits@10")} for w in (1.0, 0.0)],
               "gain_over_first": round(chosen["mrr"] - test[1.0]["mrr"], 6),
               "eval_seconds": round(time.perf_counter() - t, 1)}
    write_metrics(out, metrics)
    log.info("ensemble of %s (w=%.2f) and %s: test MRR %.4f; alone %.4f and %.4f -> %s", runs[0].name, best["weight"],
             runs[1].name, chosen["mrr"], test[1.0]["mrr"], test[0.0]["mrr"], out / "metrics.json")
    return metrics


def _plot(curve: list[dict], chosen: float, path: Path, runs: list[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([p["weight"] for p in curve], [p["valid_mrr"] for p in curve], marker="o", ms=3)
    ax.axvline(chosen, color="grey", ls="--", lw=1)
    ax.set_xlabel(f"w: weight of {runs[0].name} (1 - w: {runs[1].name})")
    ax.set_ylabel("validation MRR")
    ax.set_title("ensemble weight, chosen on validation", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
