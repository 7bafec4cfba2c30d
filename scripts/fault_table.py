"""Run the fault-injection lane and write its "what survives what" table (docs/FAULTS.md).

    .venv/bin/python scripts/fault_table.py                # runs `pytest -m faults`, writes docs/FAULTS.md
    .venv/bin/python scripts/fault_table.py --out FILE.md  # elsewhere

Each case of the lane (tests/faults, and the Ray cases marked `faults` in tests/runtime) appends one
row (command, fault, outcome) to the JSONL file named by DISTKG_FAULT_TABLE (the `record` fixture in
tests/conftest.py); this script runs the lane with that set, and writes the table only if every case
passed: a table made from a red lane would say that faults survive which did not."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMAND = "python scripts/fault_table.py"
TMP = re.compile(r"/\S*?/pytest-\d+/[^/\s']+/")  # pytest's tmp_path of a case, up to the run in it


def run_lane(rows_file: Path, pytest_args: list[str]) -> tuple[int, float, str]:
    env = {**os.environ, "DISTKG_FAULT_TABLE": str(rows_file), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.perf_counter()
    last = ""
    with subprocess.Popen([sys.executable, "-m", "pytest", "-m", "faults", "-q", "-p", "no:cacheprovider",
                           "--timeout", "600", *pytest_args], cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT) as lane:
        for line in lane.stdout:  # pytest's own progress, passed through
            print(line, end="", flush=True)
            last = line.strip() or last
    return lane.returncode, time.perf_counter() - started, last


def cell(text: str) -> str:
    """A table cell: a case's own temporary folder left out of paths (they name the run's files alone)."""
    return TMP.sub("", str(text)).replace("|", "\\|").replace("\n", " ")


def render(rows: list[dict], seconds: float, summary: str) -> str:
    rows = sorted(rows, key=lambda r: (r["command"], r["fault"]))
    per_command = Counter(r["command"] for r in rows)
    passed = re.search(r"\d+ passed", summary)
    lines = [
        "# What survives what: the fault-injection lane",
        "",
        f"Made by `{COMMAND}` (it runs `pytest -m faults` and writes this file only when every case passed):",
        f"{len(rows)} cases, {passed.group(0) if passed else summary}, in {seconds / 60:.1f} min on a 2-core CPU machine.",
        "",
        "Each case damages a copy of a finished run on a tiny graph (tests/faults/conftest.py), or kills a",
        "process while it writes, or fills the output folder's disk, then runs the command a user would",
        "run. Every case ends with rc 0 or with rc 2 and exactly one `distkg: error:` line, never a",
        "traceback; where a rerun completes, its metrics equal an uninterrupted run's (one thread,",
        "keys with wall times excepted). `kill -9 at FILE:N` means: as the N-th replacement of a file",
        "named FILE is about to land (`:torn` — half of it written first; tests/faults/inject.py).",
        "Full-disk cases need user namespaces (`unshare -rm`) and are skipped where there are none.",
        "",
        "| command | cases |",
        "|---|---|",
        *(f"| {cell(c)} | {n} |" for c, n in sorted(per_command.items())),
        "",
        "| command | fault | what happens |",
        "|---|---|---|",
        *(f"| {cell(r['command'])} | {cell(r['fault'])} | {cell(r['outcome'])} |" for r in rows),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "FAULTS.md")
    parser.add_argument("pytest_args", nargs="*", help="passed on to pytest (after --)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        rc, seconds, summary = run_lane(rows_file, args.pytest_args)
        rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
    print(f"fault lane: {summary} ({seconds:.0f} s, {len(rows)} rows)")
    if rc != 0:
        print(f"not writing {args.out}: the lane did not pass (pytest rc {rc})", file=sys.stderr)
        return 1
    args.out.write_text(render(rows, seconds, summary))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
