"""The harness of scripts/bench_*.py: their command line, the JSON envelope, progress lines, timing.

Lives beside the benchmarks, not in the package: only they use it. ``python scripts/bench_X.py``
puts this folder on sys.path, so the benchmarks import it as ``benchlib``.

A benchmark is a dict of named parts (``Part``: its options, its run, its options at smoke sizes);
``main`` makes the command line ``bench_X.py PART [options] --out FILE`` for one part and
``bench_X.py --smoke --out FILE`` for every part at tiny sizes (what CI runs, tests/test_benchmarks.py),
and writes the JSON with the command as run, the commit, the UTC time and the machine."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from distkg.allocator import apply_heap_settings
from distkg.data import resolve_data_root

apply_heap_settings()  # a benchmark times what the distkg command runs, under its heap settings (distkg.allocator)
REPO = Path(__file__).resolve().parents[1]


class Part(NamedTuple):
    """One measurement of a benchmark: ``options(parser)`` adds its arguments, ``run(args)`` returns
    its JSON, ``smoke`` are its arguments at tiny sizes (a few seconds, nothing downloaded)."""

    run: Callable[[argparse.Namespace], dict]
    options: Callable[[argparse.ArgumentParser], None] = lambda ap: None
    smoke: tuple[str, ...] = ()
    help: str = ""


def bench_data_root(explicit: str | None) -> str:
    """The data root the CLI uses: --data-root, else $DISTKG_DATA, else the per-user cache."""
    return str(resolve_data_root(explicit))


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "torch_version": torch.__version__, "torch_threads": torch.get_num_threads()}


def envelope() -> dict:
    """What a reader needs to trust a number: the command as run, the commit, when, on what."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"command": " ".join(["python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]), "commit": commit,
            "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine()}


def write_result(result: dict, out: str | Path) -> None:
    """The result under the envelope's keys (the result's own keys win), to ``out`` ("-": stdout only)."""
    text = json.dumps({**envelope(), **result}, indent=2) + "\n"
    if str(out) != "-":
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    print(text, end="")


def main(doc: str, parts: dict[str, Part], argv: list[str] | None = None) -> dict:
    """``PART [options] --out FILE`` runs one part; ``--smoke --out FILE [--parts a,b]`` runs every part
    (or those named) at its smoke sizes into one JSON: {"smoke": true, "parts": {name: result}}."""
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=doc)
    sub = ap.add_subparsers(dest="part", metavar="PART")
    parsers = {}
    for name, part in parts.items():
        parsers[name] = sp = sub.add_parser(name, help=part.help)
        sp.add_argument("--out", required=True, help="JSON file to write (- : stdout only)")
        part.options(sp)
    if "--smoke" in argv:
        sm = argparse.ArgumentParser(prog=ap.prog + " --smoke", description="every part at tiny sizes (CI)")
        sm.add_argument("--smoke", action="store_true")
        sm.add_argument("--out", required=True)
        sm.add_argument("--parts", default=",".join(parts))
        args = sm.parse_args(argv)
        result = {}
        for name in args.parts.split(","):
            t = time.perf_counter()
            result[name] = parts[name].run(parsers[name].parse_args([*parts[name].smoke, "--out", "-"]))
            print(f"smoke {name}: {time.perf_counter() - t:.1f} s", flush=True)
        result = {"smoke": True, "parts": result}
    else:
        args = ap.parse_args(argv)
        if args.part is None:
            ap.error("name a part (" + ", ".join(parts) + ") or --smoke")
        result = parts[args.part].run(args)
    write_result(result, args.out)
    return result


class Progress:
    """Prints ``what done/total, rate, ETA`` at most every ``every`` seconds (and at the end), so a long
    run says how far it is."""

    def __init__(self, total: int, what: str, every: float = 10.0) -> None:
        self.total, self.what, self.every, self.done = total, what, every, 0
        self.start = self.last = time.perf_counter()

    def __call__(self, note: str = "") -> None:
        self.done += 1
        now = time.perf_counter()
        if now - self.last >= self.every or self.done == self.total:
            self.last, rate = now, self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate
            print(f"[{self.what}] {self.done}/{self.total}  {rate:.2f}/s  ETA {eta:.0f} s  {note}", flush=True)


def timed(fn: Callable[[], object], steps: int) -> tuple[float, float]:
    """Median wall and process-CPU seconds of ``steps`` calls after one untimed (warm-up)."""
    fn()
    wall, cpu = [], []
    for _ in range(steps):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def interleaved(keys: list, measure: Callable[[object], tuple], rounds: int, what: str = "rounds") -> dict:
    """{key: [measure(key) per round]}, the keys taking turns round by round so a shared machine's
    load falls on all of them alike (a form timed minutes after another carries the drift)."""
    got: dict = {k: [] for k in keys}
    progress = Progress(rounds * len(keys), what)
    for _ in range(rounds):
        for k in keys:
            got[k].append(measure(k))
            progress(str(k))
    return got


@contextmanager
def kernels(mode: str):
    """distkg.kernels on or off (DISTKG_KERNELS, read at call time) inside the block, restored after."""
    before = os.environ.get("DISTKG_KERNELS")
    os.environ["DISTKG_KERNELS"] = "1" if mode == "on" else "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DISTKG_KERNELS", None)
        else:
            os.environ["DISTKG_KERNELS"] = before


def step_seconds(loss_fn, opt, idx, q, a, gen) -> float:
    """CPU seconds of one training step as `distkg distill` runs it (distkg.distill.runner.step_loss's
    loss, backward, optimiser step): process time, as the machines are shared."""
    t = time.process_time()
    loss, _ = loss_fn(idx, q[idx], a[idx], gen)
    loss.backward()
    opt.step()
    opt.zero_grad()
    return time.process_time() - t
