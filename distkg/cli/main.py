"""distkg: distil temporal KG reasoning into tiny students. Commands: data, train, evaluate, llm, distill,
ensemble, reproduce, run, predict, export, serve.

Errors a user can fix (a bad data line, a config typo, a missing file) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from pathlib import Path

from distkg.errors import DistkgError
from distkg.extras import require


def _add_config_args(p: argparse.ArgumentParser, positional: bool = False, out_required: bool = True) -> None:
    if positional:
        p.add_argument("config", help="YAML run config (configs/...)")
    else:
        p.add_argument("--config", action="append", help="YAML run config; defaults when omitted; repeat to "
                       "merge several, later ones winning (a student config + a method config)")
    p.add_argument("--out", required=out_required, help="folder for results (metrics.json, config.yaml, ...)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set data.dataset=icews14 (repeatable)")
    p.add_argument("--data-root", help="folder with one sub-folder per dataset (else $DISTKG_DATA, else the cache)")


def _load(args: argparse.Namespace):
    """The run config: every value and the model's arguments checked before any data is read."""
    from distkg.config import load_config

    overrides = list(args.set)
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    return load_config(args.config, overrides)


def cmd_data_stats(args: argparse.Namespace) -> int:
    from distkg.config import DataConfig, apply_overrides, build
    from distkg.data import load_dataset

    values = apply_overrides({"dataset": args.name, "root": args.data_root}, [s.removeprefix("data.") for s in args.set])
    ds = load_dataset(build(DataConfig, values, "data"))
    if args.shape:
        from distkg.data.synth import shape_stats

        print(json.dumps(shape_stats(ds.splits["train"], ds.splits["test"], ds.num_entities), indent=2))
        return 0
    print(json.dumps(ds.stats(), indent=2) if args.json else ds.describe())
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    import time

    from distkg.data import load_dataset, resolve_data_root
    from distkg.data.synth import shape_stats, write_synth

    t0 = time.perf_counter()
    folder = write_synth(resolve_data_root(args.data_root), args.name, args.entities, args.relations, args.times,
                         args.facts, args.seed, args.alpha, args.recurrence, args.force)
    ds = load_dataset(args.name, folder.parent)
    stats = shape_stats(ds.splits["train"], ds.splits["test"], ds.num_entities)
    print(json.dumps({"folder": str(folder), "seconds": round(time.perf_counter() - t0, 1), **stats}, indent=2))
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    from distkg.data.download import download_dataset

    path = download_dataset(args.name, root=args.data_root, mirror=args.mirror, force=args.force)
    print(f"{args.name}: ready at {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Re-score a trained run (--run DIR), or evaluate the configured training-free model (--config)."""
    from distkg.data import load_dataset
    from distkg.models import MODELS
    from distkg.experiments.pipeline import evaluate_model

    if args.run:
        from distkg.runfolder import run_config
        from distkg.training.trainer import load_trained

        cfg = run_config(Path(args.run), args.set)  # overrides apply before anything is built
        cfg, ds, model = load_trained(Path(args.run), cfg)
        out = Path(args.out) if args.out else Path(args.run) / "rescore"
    else:
        if not args.out:
            raise DistkgError("evaluate: --out is required with --config")
        cfg = _load(args)
        ds = load_dataset(cfg.data)
        model = MODELS.create(cfg.model.name, cfg.model.args, "model.args", dataset=ds)
        out = Path(args.out)
        from distkg.runfolder import save_slice, write_kind

        write_kind(out, "baseline")  # a run `distkg predict --run` can open
        save_slice(cfg, "pipeline", out / "config.yaml")
    out.mkdir(parents=True, exist_ok=True)
    evaluate_model(cfg, ds, model, out)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from distkg.experiments.claims import claimed
    from distkg.training.trainer import train

    cfg = _load(args)
    with claimed(Path(args.out)):
        train(cfg, Path(args.out), resume=not args.restart)  # OUT checked (or cleared) before data is read
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from distkg.distill.runner import check_method, distill
    from distkg.experiments.claims import claimed

    cfg = _load(args)
    check_method(cfg)  # loss names and arguments, before any data is read
    with claimed(Path(args.out)):
        if cfg.runtime.backend == "ray":  # teacher scoring pool + Ray Train students (distkg.runtime)
            from distkg.runtime.students import distill_on_ray

            distill_on_ray(cfg, Path(args.out), restart=args.restart)
        else:
            distill(cfg, Path(args.out), resume=not args.restart)
    return 0


def _jobs(value: str) -> str:
    if value != "auto" and not (value.isdigit() and int(value) >= 1):
        raise argparse.ArgumentTypeError(f"--jobs: expected a number >= 1 or 'auto', got {value!r}")
    return value


def cmd_reproduce(args: argparse.Namespace) -> int:
    require("plots", "distkg reproduce (its report's plots)")
    from distkg.experiments.grid import reproduce
    from distkg.experiments.gridconfig import load_grid
    from distkg.experiments.jobs import default_jobs, run_jobs

    grid = load_grid(args.config, args.set, data_root=args.data_root)
    jobs = default_jobs() if args.jobs == "auto" else int(args.jobs)
    status = 0
    if jobs > 1 and not args.report_only:
        status = run_jobs(jobs, args.config, args.out, args.set, args.data_root)
    reproduce(grid, Path(args.out), only_report=args.report_only or jobs > 1)
    return status


def cmd_run(args: argparse.Namespace) -> int:
    require("plots", "distkg run (its report's plots)")
    from distkg.experiments.pipeline import run

    run(_load(args), Path(args.out), command="distkg " + " ".join(sys.argv[1:]), restart=args.restart)
    return 0


def cmd_llm_train(args: argparse.Namespace) -> int:
    from distkg.experiments.claims import claimed
    from distkg.llm.train import train_teacher

    cfg = _load(args)
    with claimed(Path(args.out)):
        if cfg.runtime.backend == "ray":  # Ray Train workers under DeepSpeed ZeRO (distkg.runtime)
            from distkg.runtime.llm_train import train_teacher_on_ray

            train_teacher_on_ray(cfg, Path(args.out), restart=args.restart)
        else:
            train_teacher(cfg, Path(args.out), resume=not args.restart)
    return 0


def cmd_llm_evaluate(args: argparse.Namespace) -> int:
    """Load a fine-tuned teacher (adapter + head) in this process and score it; no retraining."""
    from distkg.data import load_dataset
    from distkg.llm.train import build_teacher, evaluate_teacher, load_teacher

    if args.run:
        from distkg.runfolder import run_config

        run = Path(args.run)
        cfg = run_config(run, args.set)
        ds = load_dataset(cfg.data)
        teacher, extra = load_teacher(run / "teacher", cfg, ds), {"loaded_from": str(run / "teacher")}
    else:  # zero-shot: the base LM with no adapters and an untrained projection
        cfg = _load(args)
        ds = load_dataset(cfg.data)
        teacher, extra = build_teacher(cfg, ds, lora=False).eval(), {"zero_shot": True, "steps": 0}
    out = Path(args.out) if args.out else Path(args.run) / "rescore"
    out.mkdir(parents=True, exist_ok=True)
    evaluate_teacher(teacher, cfg, ds, out, extra)
    return 0


def _run_overrides(args: argparse.Namespace) -> list[str]:
    return [*args.set, *([f"data.root={args.data_root}"] if args.data_root else [])]


def cmd_ensemble(args: argparse.Namespace) -> int:
    """Two finished runs mixed, the weight chosen on validation (distkg.experiments.ensemble)."""
    require("plots", "distkg ensemble (its weight plot)")
    from distkg.experiments.ensemble import ensemble

    ensemble(args.runs, Path(args.out), args.data_root)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Answer named queries with a trained run (distkg.serving.predict)."""
    from distkg.serving.predict import format_text, load_predictor, parse_query, read_queries

    if bool(args.query) == bool(args.queries):
        raise DistkgError("predict: give --query 's|r|?|t' (repeatable) or --queries FILE (TSV or JSONL)")
    queries = [parse_query(q, "--query") for q in args.query] if args.query else read_queries(Path(args.queries))
    results = load_predictor(model_folder(args), _run_overrides(args)).predict(queries, args.top, args.filter)
    print(json.dumps(results, indent=2) if args.json else format_text(results))
    return 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="a `distkg train` / `distkg distill` / `distkg llm train` folder")
    which.add_argument("--model", help="a model folder from `distkg export --format hf` (no dataset needed)")


def model_folder(args: argparse.Namespace) -> str:
    """--run, or --model when it is a model folder (one clear error when it is not)."""
    if args.run:
        return args.run
    from distkg.serving.pretrained import is_pretrained

    if not is_pretrained(Path(args.model)):
        raise DistkgError(f"--model {args.model}: not a model folder (config.json and model.safetensors, written by "
                          "`distkg export --format hf`); a run folder is given with --run")
    return args.model


def cmd_export(args: argparse.Namespace) -> int:
    """Write a run's model as a self-contained file plus its id maps (distkg.serving.export), or as a
    model folder (distkg.serving.pretrained)."""
    if args.format == "hf":
        from distkg.serving.pretrained import FILES, export_hf

        folder = export_hf(args.run, args.out, _run_overrides(args))
        print(f"{folder}: " + ", ".join(f"{name} ({(folder / name).stat().st_size} bytes)" for name in FILES))
        return 0
    from distkg.serving.export import export_onnx

    folder = export_onnx(args.run, args.out, _run_overrides(args))
    print(f"{folder / 'model.onnx'} ({(folder / 'model.onnx').stat().st_size} bytes) and {folder / 'maps.json'}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The predict queries over HTTP JSON on Ray Serve (distkg.serving.serve)."""
    from distkg.serving.serve import serve_forever

    serve_forever(model_folder(args), args.host, args.port, _run_overrides(args), args.max_batch, args.batch_wait_ms / 1000)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distkg", formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="inspect or download the TKG benchmarks")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    stats = dsub.add_parser("stats", help="entities, relations, times, facts per split, date-rule counts")
    stats.add_argument("name")
    stats.add_argument("--data-root")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.add_argument("--shape", action="store_true", help="degree tail and recurrence as JSON "
                                                           "(what `distkg data synth` imitates; cluster/SCALING.md)")
    stats.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="data option, e.g. --set min_bucket_size=100")
    stats.set_defaults(func=cmd_data_stats)
    dl = dsub.add_parser("download", help="fetch a dataset from its public source and verify sha256")
    dl.add_argument("name")
    dl.add_argument("--data-root")
    dl.add_argument("--mirror", help="base URL serving NAME/FILE (else $DISTKG_DATA_MIRROR, else the public sources)")
    dl.add_argument("--force", action="store_true", help="download again even if a verified copy exists")
    dl.set_defaults(func=cmd_data_download)
    sy = dsub.add_parser("synth", help="write a seeded synthetic temporal KG of any size (ICEWS18 layout, "
                                       "heavy-tailed degrees, recurring facts) into the data root")
    sy.add_argument("name", help="the dataset's name (data.dataset); not a benchmark's")
    sy.add_argument("--entities", type=int, required=True)
    sy.add_argument("--relations", type=int, default=256)
    sy.add_argument("--times", type=int, default=365, help="time steps (days)")
    sy.add_argument("--facts", type=int, required=True, help="facts in all three splits (80/10/10 by time)")
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--alpha", type=float, default=1.0, help="entity popularity exponent (weight (rank+1)^-alpha)")
    sy.add_argument("--recurrence", type=float, default=0.4, help="share of facts repeating an earlier (s, r, o)")
    sy.add_argument("--data-root")
    sy.add_argument("--force", action="store_true", help="replace a graph of that name")
    sy.set_defaults(func=cmd_data_synth)

    tr = sub.add_parser("train", help="train a KG model (checkpoints per epoch, resumes, metrics.json)")
    _add_config_args(tr)
    tr.add_argument("--restart", action="store_true", help="discard the run in --out (its config, checkpoints, log, metrics) and start over")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="re-score a trained run (--run DIR) or evaluate a configured model")
    _add_config_args(ev, out_required=False)
    ev.add_argument("--run", help="a folder written by `distkg train`; results go to RUN/rescore unless --out")
    ev.set_defaults(func=cmd_evaluate)

    llm = sub.add_parser("llm", help="the LLM teacher: training (head, QLoRA) and evaluation")
    lsub = llm.add_subparsers(dest="llm_command", required=True, metavar="ACTION")
    ft = lsub.add_parser("train", help="train the LLM teacher on the training facts: its projection head, then "
                                       "llm.steps QLoRA steps of adapters + head (0 in the shipped recipes)")
    _add_config_args(ft)
    ft.add_argument("--restart", action="store_true", help="discard the run in --out (its config, checkpoints, log, metrics) and start over")
    ft.set_defaults(func=cmd_llm_train)
    le = lsub.add_parser("evaluate", help="score a saved teacher (--run DIR) or the zero-shot one (--config)")
    _add_config_args(le, out_required=False)
    le.add_argument("--run", help="a folder written by `distkg llm train`")
    le.set_defaults(func=cmd_llm_evaluate)

    di = sub.add_parser("distill", help="train a student from a KG teacher run (and an LLM teacher run)")
    _add_config_args(di)
    di.add_argument("--restart", action="store_true", help="discard the run in --out (its config, checkpoints, log, metrics) and start over")
    di.set_defaults(func=cmd_distill)

    rp = sub.add_parser("reproduce", help="the paper's grid: teachers, LLM teachers, students x methods x seeds")
    rp.add_argument("--config", required=True, help="a grid config (configs/reproduce/*.yaml)")
    rp.add_argument("--out", required=True, help="folder for every run and the tables/plots (resumable)")
    rp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a grid field")
    rp.add_argument("--data-root", help="folder with one sub-folder per dataset")
    rp.add_argument("--report-only", action="store_true", help="only rebuild tables and plots from finished runs")
    rp.add_argument("--jobs", default="auto", type=_jobs,
                    help="worker processes of one thread each (auto: one per core on a machine of up to 8 cores, "
                         "else 1 process with every thread)")
    rp.set_defaults(func=cmd_reproduce)

    run = sub.add_parser("run", help="the main job: the whole pipeline described by a config")
    _add_config_args(run, positional=True)
    run.add_argument("--restart", action="store_true", help="discard every part in --out and start over")
    run.set_defaults(func=cmd_run)

    en = sub.add_parser("ensemble", help="mix two finished runs' predictive distributions, the weight chosen on "
                        "validation; a second teacher for distillation")
    en.add_argument("--runs", nargs=2, required=True, metavar="RUN", help="two `distkg train` / `distkg distill` / "
                    "`distkg llm train` folders trained on the same data")
    en.add_argument("--out", required=True, help="folder for ensemble.json, metrics.json and weights.png")
    en.add_argument("--data-root", help="folder with one sub-folder per dataset")
    en.set_defaults(func=cmd_ensemble)

    pr = sub.add_parser("predict", help="answer queries written with names (s|r|?|t) with a trained run")
    _add_model_args(pr)
    pr.add_argument("--query", action="append", default=[], help="'subject|relation|?|time' or '?|relation|object|time'")
    pr.add_argument("--queries", help="a TSV (s, r, o, t) or JSONL file of queries, one a line")
    pr.add_argument("--top", type=int, default=10, help="answers per query (default 10)")
    pr.add_argument("--filter", choices=["none", "known"], default="none",
                    help="known: leave out answers already true in train at the query's time")
    pr.add_argument("--json", action="store_true", help="print JSON")
    pr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field of the run's config")
    pr.add_argument("--data-root", help="folder with one sub-folder per dataset")
    pr.set_defaults(func=cmd_predict)

    ex = sub.add_parser("export", help="a trained run as a self-contained ONNX model file, or a model folder to share")
    ex.add_argument("--run", required=True, help="a `distkg train` / `distkg distill` / `distkg llm train` folder")
    ex.add_argument("--format", choices=["onnx", "hf"], default="onnx",
                    help="onnx: model.onnx + maps.json; hf: config.json + model.safetensors + vocab.json, a folder "
                         "`distkg predict --model` and `distkg serve --model` read without the dataset (KG runs)")
    ex.add_argument("--out", help="the folder written (default RUN/export, or RUN/export-hf for --format hf)")
    ex.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field of the run's config")
    ex.add_argument("--data-root", help="folder with one sub-folder per dataset")
    ex.set_defaults(func=cmd_export)

    sv = sub.add_parser("serve", help="answer queries over HTTP JSON (Ray Serve), batched across requests")
    _add_model_args(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-batch", type=int, default=64, help="most concurrent requests scored together")
    sv.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits to fill")
    sv.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field of the run's config")
    sv.add_argument("--data-root", help="folder with one sub-folder per dataset")
    sv.set_defaults(func=cmd_serve)

    rs = sub.add_parser("ray-stop", help="end the processes of one Ray started with `ray start --temp-dir DIR` "
                                         "(not `ray stop`, which ends every Ray on the machine)")
    rs.add_argument("--temp-dir", required=True, help="the --temp-dir its `ray start --head` was given")
    rs.add_argument("--port", type=int, default=6379, help="its GCS port (`ray start --port`, default 6379)")
    rs.set_defaults(func=cmd_ray_stop)
    return parser


def cmd_ray_stop(args: argparse.Namespace) -> int:
    from distkg.runtime.cluster import LoopbackCluster

    head = LoopbackCluster(nodes=[{}], port=args.port, temp_dir=Path(args.temp_dir).resolve())
    procs = head.processes()
    head.stop()
    print(f"stopped {len(procs)} process{'' if len(procs) == 1 else 'es'} of the Ray in {head.temp_dir}")
    return 0


def os_error_line(e: OSError) -> str | None:
    """One line for an OSError about a named file (a full disk, a folder not writable), or None: one
    without a file name is a fault of distkg and keeps its traceback."""
    if not e.filename:
        return None
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (f"no space left on the device writing {e.filename}: free space (or choose another --out) and run "
                "the same command again; what was written before is whole (checkpoints and metrics.json are "
                "written whole or not at all)")
    return f"{e.strerror or e}: {e.filename}"


def main(argv: list[str] | None = None) -> int:
    from distkg.allocator import apply_heap_settings

    apply_heap_settings()  # the command's own process, before any [batch, entities] tensor (distkg.allocator)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "run", None):  # every command taking --run: one run, not a folder of parts
            from distkg.runfolder import one_run

            one_run(Path(args.run))
        return args.func(args)
    except DistkgError as e:
        print(f"distkg: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if (message := os_error_line(e)) is None:
            raise
        print(f"distkg: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what was started (a local Ray, its workers) has been stopped
        print("distkg: interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
