"""Are two run folders the same results? For checking that a refactor changed no behaviour: run the
same command on two commits into two folders, then

    python scripts/compare_runs.py OUT_BEFORE OUT_AFTER

Compares every metrics.json under both folders (every key but wall times and run paths), a grid's
table.md byte for byte and its results.json (times and paths aside), and the metrics table of a
report.md. Prints one line per file; exit status 1 when anything differs or a part is missing.
``--ignore KEY`` (repeatable) leaves a key out everywhere: one a change adds on purpose (say which).
Same results need the same thread count (OMP_NUM_THREADS=1: README, "Bit-exact reruns").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# Keys that differ between two runs of one computation: wall times and where the runs lie.
VARYING = {"train_seconds", "finetune_seconds", "eval_seconds", "seconds", "train_seconds_mean", "run",
           "teacher_run", "llm_run",
           # the LLM's curve points' clocks, and whether its frozen features came from the cache
           "minutes", "process_cpu_minutes", "training_cpu_minutes", "feature_cache_hit"}


def without_varying(value: Any, ignore: frozenset[str] = frozenset()) -> Any:
    if isinstance(value, dict):
        return {k: without_varying(v, ignore) for k, v in value.items() if k not in VARYING | ignore}
    if isinstance(value, list):
        return [without_varying(v, ignore) for v in value]
    return value


def metrics_table(report: str) -> str:
    """The '## Metrics' section of a report.md (the sections after it hold wall times)."""
    start = report.index("## Metrics")
    end = report.find("\n## ", start + 1)
    return report[start:] if end < 0 else report[start:end]


def compare(a: Path, b: Path, ignore: frozenset[str] = frozenset()) -> list[tuple[str, bool]]:
    """(what, same) for every file compared; ``ignore``: keys left out besides VARYING."""
    results = []
    names = sorted({p.relative_to(a) for p in a.rglob("metrics.json")} | {p.relative_to(b) for p in b.rglob("metrics.json")})
    for name in names:
        if not ((a / name).is_file() and (b / name).is_file()):
            results.append((f"{name} (in one folder only)", False))
            continue
        same = (without_varying(json.loads((a / name).read_text()), ignore)
                == without_varying(json.loads((b / name).read_text()), ignore))
        results.append((f"{name} (every key but times and paths)", same))
    readers = {"table.md": ("bytes", Path.read_bytes),
               "results.json": ("every key but times and paths", lambda p: without_varying(json.loads(p.read_text()), ignore)),
               "report.md": ("the metrics table", lambda p: metrics_table(p.read_text()))}
    for name, (what, read) in readers.items():
        present = [(a / name).is_file(), (b / name).is_file()]
        if any(present):
            same = all(present) and read(a / name) == read(b / name)
            results.append((f"{name} ({what if all(present) else 'in one folder only'})", same))
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--ignore", action="append", default=[], metavar="KEY", help="a key a change adds on purpose")
    args = ap.parse_args()
    results = compare(args.before, args.after, frozenset(args.ignore))
    for what, same in results:
        print(f"{'same     ' if same else 'DIFFERENT'} {what}")
    return 0 if results and all(same for _, same in results) else 1


if __name__ == "__main__":
    sys.exit(main())
