"""Every report distkg writes, in one place: what a person reads after an experiment.

- ``write_report``: OUT/report.md of ``distkg run`` (data, protocol, the metrics table, and for a
  pipeline its size-and-cost section and plots, ``pipeline_sections``);
- ``write_grid_report``: the report of a ``distkg reproduce`` grid (results.csv, results.json,
  table.md with the paper's numbers from a CSV beside ours, costs.md, comparison.png, curves.png,
  sizes.png);
- the pieces both use: the metrics table's cells, a row of plots (``figure_row``), bar panels.
"""

from __future__ import annotations

import csv
import json
import re
import statistics
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from distkg.data import TKGDataset
from distkg.errors import DistkgError
from distkg.runfolder import read_metrics
from distkg.training.curves import valid_curve

if TYPE_CHECKING:
    from distkg.experiments.gridconfig import GridConfig
    from distkg.experiments.parts import Part

METRIC_KEYS = ("mrr", "mr", "hits@1", "hits@3", "hits@10")


def protocol_line(protocol: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in protocol.items())


def metrics_table(rows: dict[str, dict]) -> str:
    """Markdown table, one row per name -> metrics dict."""
    head = "| | " + " | ".join(k.upper() if k in ("mrr", "mr") else k.replace("hits@", "H@") for k in METRIC_KEYS) + " | queries |"
    lines = [head, "|---" * (len(METRIC_KEYS) + 2) + "|"]
    for name, m in rows.items():
        cells = [f"{m['mr']:.1f}" if k == "mr" else f"{m[k]:.4f}" for k in METRIC_KEYS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {m['queries']} |")
    return "\n".join(lines)


@contextmanager
def figure_row(n: int, width: float, height: float, path: Path) -> Iterator[list]:
    """A row of n axes (each width x height inches), saved to path as a PNG on exit. An axis with
    labelled artists and no legend of its own gets one; an empty axis (cells not run yet) gets none,
    where a plain ax.legend() would warn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    try:
        yield list(axes[0])
        for ax in axes[0]:
            if ax.get_legend() is None and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


ROLE_STYLE = {"teacher": {"color": "tab:gray", "hatch": "//"}, "LLM teacher": {"color": "tab:orange", "hatch": ".."},
              "student": {"color": "tab:blue", "hatch": ""}}  # role -> bar style; teachers hatched (readable in grey print)


def role_of(label: str) -> str:
    """The ROLE_STYLE key of a role label: "400-d teacher" -> teacher, "LLM teacher" -> LLM teacher."""
    return "LLM teacher" if "LLM" in label else "teacher" if "teacher" in label else "student"


def tick_label(name: str, width: int = 16) -> str:
    """A bar's name wrapped at ``width`` characters, a path shortened to its last part, so long names
    (an LLM teacher's model folder) stay readable."""
    name = re.sub(r"\S*/([^/\s]+)/?", r"\1", name)
    return "\n".join(textwrap.wrap(name, width, break_long_words=False, break_on_hyphens=False)) or name


def bar_panels(panels: list[tuple], path: Path, ylabel: str) -> Path:
    """One bar chart per panel (title, bar names, means, stds[, roles]; ``draw_bars``), side by side, as a
    PNG, the figure growing with the number of bars and the lines of their wrapped names."""
    panels = [(*p[:4], p[4] if len(p) > 4 else ["students"] * len(p[1])) for p in panels]
    lines = max(tick_label(n).count("\n") + 1 for p in panels for n in p[1])
    width = max(3.4, 0.7 * max(len(p[1]) for p in panels) + 1.6)
    with figure_row(len(panels), width, 3.0 + 0.2 * lines, path) as axes:
        for ax, (title, names, means, stds, roles) in zip(axes, panels):
            draw_bars(ax, names, means, stds, roles)
            ax.set_title(title, fontsize=9)
            ax.set_ylabel(ylabel)
    return path


def draw_bars(ax, names: list[str], means: list[float], stds: list[float], roles: list[str]) -> None:
    """Bars with their values, a role label per bar ("400-d teacher", "LLM teacher", "25-d students"):
    bars of a role share a colour (teachers hatched) and one legend entry, so a reader tells the teachers
    from the students; names wrapped and slanted so that none overlaps its neighbour."""
    for role in dict.fromkeys(roles):  # one bar group, and one legend entry, per role in order
        at = [i for i, r in enumerate(roles) if r == role]
        err = [stds[i] for i in at]
        ax.bar(at, [means[i] for i in at], yerr=err if any(err) else None, capsize=3, label=role, edgecolor="black",
               linewidth=0.5, **ROLE_STYLE[role_of(role)])
    for i, (m, sd) in enumerate(zip(means, stds)):
        ax.text(i, m + sd, f"{m:.3g}", ha="center", va="bottom", fontsize=7)  # above the error bar
    ax.set_xticks(range(len(names)), [tick_label(n) for n in names], rotation=30, ha="right", rotation_mode="anchor",
                  fontsize=8)
    top, legend = max((m + sd for m, sd in zip(means, stds)), default=0), len(set(roles)) > 1
    ax.set_ylim(0, (1.2 + 0.15 * len(set(roles)) * legend) * top if top > 0 else 1)  # headroom for the legend
    if legend:
        ax.legend(fontsize=7, loc="upper right")


def write_report(out: Path, ds: TKGDataset, title: str, results: dict[str, dict], command: str,
                 sections: list[str] | None = None) -> Path:
    first = next(iter(results.values()))
    parts = [
        f"# {title}",
        f"Command: `{command}`",
        "## Data\n\n```\n" + ds.describe() + "\n```",
        "## Protocol\n\n" + protocol_line(first["protocol"]),
        "## Metrics\n\n" + metrics_table(results),
        *(sections or []),
    ]
    if (out / "curves.png").is_file():
        parts.append("## Training curves\n\n![training curves](curves.png)")
    text = "\n\n".join(parts)
    path = out / "report.md"
    path.write_text(text + "\n")
    return path


# ------------------------------------------------------------------------------ distkg run (pipeline)
def pipeline_sections(rows: dict[str, dict], parts: list[Part], walls: dict[str, float | None], total: float,
                      out: Path) -> list[str]:
    """The sections a pipeline's report.md adds to the metrics table (its size and cost, the
    comparison plot), with comparison.png and curves.png written into OUT."""
    _pipeline_plots(rows, parts, out)
    return [_cost_section(rows, walls, total), "## Comparison\n\n![test MRR of each part](comparison.png)"]


def _cost_section(rows: dict[str, dict], walls: dict[str, float | None], total: float) -> str:
    """Parameters, training seconds and the wall time of each part when it ran (kept when reused)."""
    lines = ["## Size and cost", "",
             "| part | parameters | seconds (training / fine-tuning) | wall seconds (part, when it ran) |",
             "|---|---|---|---|"]
    for name, m in rows.items():
        seconds = m.get("train_seconds", m.get("finetune_seconds"))
        wall = walls.get(name)
        lines.append(f"| {name} | {m.get('parameters', '–')} | {seconds} | {'–' if wall is None else wall} |")
    known = [w for w in walls.values() if w is not None]
    lines.append(f"\nWall time of all parts: {sum(known):.0f} s; of this invocation: {total:.0f} s "
                 "(a part finished by an earlier invocation is read, not run again).")
    return "\n".join(lines)


def part_role(name: str) -> str:
    """A pipeline part's role for the plots' legend, from its name (distkg.experiments.pipeline): "teacher:
    tadistmult 400-d" -> "400-d teacher", "LLM teacher: ..." -> "LLM teacher", "student 25-d: bkd" -> "25-d students"."""
    head, _, rest = name.partition(": ")
    dim = re.search(r"(\d+)-d", head if head.startswith("student") else rest)
    if head.startswith("LLM"):
        return "LLM teacher"
    if head.startswith("student"):
        return f"{dim.group(1)}-d students" if dim else "students"
    return f"{dim.group(1)}-d teacher" if dim else "teacher"


def _pipeline_plots(rows: dict[str, dict], parts: list[Part], out: Path) -> None:
    names = list(rows)
    bar_panels([("test MRR (filtered, realistic ties)", [n.split(": ", 1)[-1] for n in names],
                 [rows[n]["mrr"] for n in names], [0.0] * len(names), [part_role(n) for n in names])],
               out / "comparison.png", "MRR")
    with figure_row(1, 6, 3.5, out / "curves.png") as (ax,):
        for part in parts:
            epochs, mrr = valid_curve(part.folder) if part.name.startswith("student") else ([], [])
            if epochs:
                ax.plot(epochs, mrr, "o-", markersize=3, label=part.name.split(": ", 1)[-1])
        ax.set_xlabel("epoch")
        ax.set_ylabel("valid MRR")
        ax.legend(fontsize=8)


# ------------------------------------------------------------------------------ distkg reproduce (grid)
def published_mrr(path: str | None) -> dict[tuple[str, str, str], float]:
    """(backbone, dataset, method) -> MRR in % from a CSV of published results ('#' lines are notes)."""
    if path is None:
        return {}
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
        return {(r["backbone"], r["dataset"], r["method"]): float(r["mrr"]) for r in rows}
    except (OSError, KeyError, ValueError) as e:
        raise DistkgError(f"{path}: cannot read the published table (published): {e}") from None


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(values: list[float], scale: float, digits: int) -> str:
    m, s = _mean_std([v * scale for v in values])
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def write_grid_report(rows: list[dict], grid: GridConfig, out: Path, methods: list[str] | None = None) -> None:
    """``methods``: the cells' method labels in grid order (METHOD+SECOND in a strength sweep;
    distkg.experiments.gridconfig.method_labels), else the grid's methods."""
    if not rows:
        return
    methods = list(grid.methods) if methods is None else methods
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["backbone"], r["dataset"], r["dim"], r["method"]), []).append(r)
    summary = [{"backbone": b, "dataset": d, "dim": dim, "method": m, "seeds": len(rs),
                **{f"{k}_mean": _mean_std([r[k] for r in rs])[0] for k in METRIC_KEYS},
                **{f"{k}_std": _mean_std([r[k] for r in rs])[1] for k in METRIC_KEYS},
                "train_seconds_mean": _mean_std([r["train_seconds"] for r in rs])[0]}
               for (b, d, dim, m), rs in groups.items()]
    (out / "results.json").write_text(json.dumps({"runs": rows, "summary": summary}, indent=2))
    (out / "table.md").write_text(_table(groups, grid, methods))
    (out / "costs.md").write_text(_costs(groups, grid, out))
    _plot_comparison(groups, grid, methods, out / "comparison.png")
    _plot_curves(groups, grid, methods, out / "curves.png")
    if len(grid.dims) > 1:
        _plot_sizes(groups, grid, methods, out / "sizes.png")


def _table(groups: dict[tuple, list[dict]], grid: GridConfig, methods: list[str]) -> str:
    """The paper's layout: a row per (backbone, dim, method), a column block per dataset."""
    published = published_mrr(grid.published)
    lines = ["MRR and Hits in %, mean ± std over seeds (n); test split, time-aware filter, realistic ties. "
             "Paper: the paper's value under its own protocol (compare the order of methods, not values).", ""]
    head = ["backbone", "dim", "method", "n"]
    for d in grid.datasets:
        head += [f"{d} MRR", "MR", "H@1", "H@3", "H@10", "paper MRR"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in grid.backbones:
        for dim in grid.dims:
            for m in methods:
                cells = [b, str(dim), m]
                n = 0
                for d in grid.datasets:
                    rs = groups.get((b, d, dim, m), [])
                    n = max(n, len(rs))
                    if not rs:
                        cells += ["–"] * 6
                        continue
                    cells += [_cell([r["mrr"] for r in rs], 100, 2), _cell([r["mr"] for r in rs], 1, 0)]
                    cells += [_cell([r[k] for r in rs], 100, 2) for k in ("hits@1", "hits@3", "hits@10")]
                    paper = published.get((b, d, m))
                    cells.append(f"{paper:.2f}" if paper is not None and dim == 25 else "–")
                cells.insert(3, str(n))
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _costs(groups: dict[tuple, list[dict]], grid: GridConfig, out: Path) -> str:
    """Wall time of each part; the LLM's share of what the LLM-guided method costs end to end."""
    lines = ["Wall time in seconds on this machine (teacher and LLM runs once per grid; students: mean per seed).", "",
             "| part | dataset | seconds |", "|---|---|---|"]
    llm_seconds: dict[str, float] = {}
    teacher_seconds: dict[tuple, float] = {}
    for d in grid.datasets:
        for b in grid.backbones:
            m = read_metrics(Path(grid.teacher_run.format(out=out, backbone=b, dataset=d)))
            if m:
                teacher_seconds[(b, d)] = m.get("train_seconds", 0.0)
                lines.append(f"| {b} 400-d teacher training | {d} | {teacher_seconds[(b, d)]:.0f} |")
        m = read_metrics(Path(grid.llm_run.format(out=out, dataset=d)))
        if m:
            llm_seconds[d] = m.get("finetune_seconds", 0.0) + m.get("eval_seconds", 0.0)
            lines.append(f"| LLM teacher fine-tuning + evaluation ({m.get('steps')} steps) | {d} | {llm_seconds[d]:.0f} |")
    for (b, d, dim, m), rs in groups.items():
        lines.append(f"| {b} {dim}-d student, {m} | {d} | {_mean_std([r['train_seconds'] for r in rs])[0]:.0f} |")
    lines += ["", "| backbone | dataset | Ours end to end (s) | LLM share |", "|---|---|---|---|"]
    for (b, d, dim, m), rs in groups.items():
        if m != "ours" or d not in llm_seconds:
            continue
        total = teacher_seconds.get((b, d), 0.0) + llm_seconds[d] + _mean_std([r["train_seconds"] for r in rs])[0]
        lines.append(f"| {b} {dim}-d | {d} | {total:.0f} | {100 * llm_seconds[d] / total:.0f}% |")
    return "\n".join(lines) + "\n"


def _teacher_bars(grid: GridConfig, out: Path, b: str, d: str) -> list[tuple[str, float, str]]:
    """(name, test MRR in %, role) of the cell's 400-d KG teacher and LLM teacher, those finished."""
    bars = []
    for run, role in ((grid.teacher_run.format(out=out, backbone=b, dataset=d), "400-d teacher"),
                      (grid.llm_run.format(out=out, dataset=d), "LLM teacher")):
        m = read_metrics(Path(run))
        if m and "mrr" in m:
            bars.append((role, 100 * m["mrr"], role))
    return bars


def _plot_comparison(groups: dict[tuple, list[dict]], grid: GridConfig, methods: list[str], path: Path) -> None:
    panels = []
    for b in grid.backbones:
        for d in grid.datasets:
            teachers = _teacher_bars(grid, path.parent, b, d)
            for dim in grid.dims:
                ms = [m for m in methods if (b, d, dim, m) in groups]
                stats = [_mean_std([100 * r["mrr"] for r in groups[(b, d, dim, m)]]) for m in ms]
                if ms:
                    panels.append((f"{b} {dim}-d, {d}", [t[0] for t in teachers] + ms,
                                   [t[1] for t in teachers] + [x[0] for x in stats],
                                   [0.0] * len(teachers) + [x[1] for x in stats],
                                   [t[2] for t in teachers] + [f"{dim}-d students"] * len(ms)))
    if panels:
        bar_panels(panels, path, "test MRR (%), mean ± std")


def _plot_curves(groups: dict[tuple, list[dict]], grid: GridConfig, methods: list[str], path: Path) -> None:
    panels = [(b, d, dim) for b in grid.backbones for d in grid.datasets for dim in grid.dims]
    with figure_row(len(panels), 3.6, 3.2, path) as axes:
        for ax, (b, d, dim) in zip(axes, panels):
            for m in methods:
                rs = sorted(groups.get((b, d, dim, m), []), key=lambda r: r["seed"])
                epochs, mrr = valid_curve(Path(rs[0]["run"])) if rs else ([], [])
                if epochs:
                    ax.plot(epochs, mrr, label=m)
            ax.set_title(f"{b} {dim}-d, {d} (seed {min(grid.seeds)})", fontsize=9)
            ax.set_xlabel("epoch")
            ax.set_ylabel("valid MRR")


def _plot_sizes(groups: dict[tuple, list[dict]], grid: GridConfig, methods: list[str], path: Path) -> None:
    """The size sweep's answer at a glance: test MRR against student dimension, a line per method."""
    panels = [(b, d) for b in grid.backbones for d in grid.datasets]
    with figure_row(len(panels), 4.2, 3.4, path) as axes:
        for ax, (b, d) in zip(axes, panels):
            for m in methods:
                dims = [dim for dim in sorted(grid.dims) if (b, d, dim, m) in groups]
                stats = [_mean_std([100 * r["mrr"] for r in groups[(b, d, dim, m)]]) for dim in dims]
                if dims:
                    ax.errorbar(dims, [x[0] for x in stats], yerr=[x[1] for x in stats], marker="o", capsize=3, label=m)
            ax.set_xscale("log")
            ax.set_xticks(sorted(grid.dims), [str(x) for x in sorted(grid.dims)])
            ax.set_title(f"{b}, {d}", fontsize=9)
            ax.set_xlabel("student dimension")
            ax.set_ylabel("test MRR (%), mean ± std")


# ------------------------------------------------------------------------------ the strength sweep
def write_sweep_report(rows: list[dict], strengths: dict[tuple[str, str, str], float], out: Path,
                       baseline: str = "bkd") -> None:
    """sweep.md and sweep.png of a grid with ``seconds``: for each cell that read a second teacher, its
    test MRR minus the ``baseline`` cell of the same backbone, dataset, dim and seed, against the
    second teacher's own test MRR (``strengths``: (backbone, dataset, second name) -> MRR)."""
    base = {(r["backbone"], r["dataset"], r["dim"], r["seed"]): r["mrr"] for r in rows if r["method"] == baseline}
    gains: dict[tuple, dict[int, float]] = {}
    for r in rows:
        key = (r["backbone"], r["dataset"], r["dim"], r["seed"])
        if r.get("second") and key in base:
            method = r["method"].rsplit("+", 1)[0]
            gains.setdefault((r["backbone"], r["dataset"], r["dim"], method, r["second"]), {})[r["seed"]] = r["mrr"] - base[key]
    if not gains:
        return
    lines = [f"Student test MRR minus the {baseline} cell of the same seed, in MRR points (x 100): each seed, then the "
             "mean. 'second' is the second teacher the LLM terms read (distill.llm_run), with its own test MRR.", "",
             "| backbone | dataset | dim | second | its test MRR | method | per seed | mean |", "|---|---|---|---|---|---|---|---|"]
    for (b, d, dim, m, second), by_seed in sorted(gains.items(), key=lambda kv: (kv[0][:3], strengths.get((kv[0][0], kv[0][1], kv[0][4]), 0), kv[0][3])):
        seeds = [100 * by_seed[s] for s in sorted(by_seed)]
        strength = strengths.get((b, d, second))
        lines.append(f"| {b} | {d} | {dim} | {second} | {'–' if strength is None else f'{strength:.4f}'} | {m} | "
                     f"{', '.join(f'{g:+.2f}' for g in seeds)} | {statistics.fmean(seeds):+.2f} |")
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    panels = sorted({k[:3] for k in gains})
    with figure_row(len(panels), 4.2, 3.4, out / "sweep.png") as axes:
        for ax, (b, d, dim) in zip(axes, panels):
            for m in sorted({k[3] for k in gains if k[:3] == (b, d, dim)}):
                pts = sorted((strengths[(b, d, k[4])], [100 * g for g in v.values()]) for k, v in gains.items()
                             if k[:4] == (b, d, dim, m) and (b, d, k[4]) in strengths)
                if pts:
                    ax.errorbar([x for x, _ in pts], [_mean_std(g)[0] for _, g in pts], yerr=[_mean_std(g)[1] for _, g in pts],
                                marker="o", capsize=3, label=f"{m} - {baseline}")
            students = [v for (bb, dd, ddim, _), v in base.items() if (bb, dd, ddim) == (b, d, dim)]
            if students:
                ax.axvline(statistics.fmean(students), color="grey", ls=":", lw=1, label=f"{baseline} student")
            ax.axhline(0, color="black", lw=0.6)
            ax.set_title(f"{b} {dim}-d, {d}", fontsize=9)
            ax.set_xlabel("second teacher's test MRR")
            ax.set_ylabel("student gain (MRR points), mean ± std")
