"""Synthetic temporal KGs of any size (``distkg data synth``): graphs past ICEWS18's size to measure
cost and memory on (cluster/SCALING.md, "Graphs of any size", compares their shape with ICEWS18's).

A graph is drawn from a seed in the ICEWS18 layout (integer ids, ``t`` in hours, steps of 24), so
every command reads it unchanged; ``synth.json`` beside the files records the parameters and tells
distkg.data which reader to use. Two traits of ICEWS are reproduced because costs and metrics
depend on them:
- heavy-tailed entity degrees: subjects and objects are drawn with weight (rank + 1) ** -``alpha``
  over a random order of the entities (relations likewise, with exponent 1), so a few entities take
  part in many facts and most in few;
- recurring facts: a share ``recurrence`` of the facts repeats an earlier (s, r, o) at a later
  time, as ICEWS's events recur.
The facts are sorted by time and split 80/10/10 by time, ICEWS18's forecasting split.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from distkg.errors import DataError

SPLIT_SHARES = (0.8, 0.1, 0.1)


def power_law(n: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Weights (rank + 1) ** -alpha over a random order of n items, summing to 1."""
    w = (np.arange(n) + 1.0) ** -alpha
    w = w[rng.permutation(n)]
    return w / w.sum()


def draw(entities: int, relations: int, times: int, facts: int, seed: int, alpha: float = 1.0,
         recurrence: float = 0.4) -> np.ndarray:
    """[facts, 4] (s, r, o, t) drawn as the module docstring says, sorted by t."""
    rng = np.random.default_rng(seed)
    ent, rel = power_law(entities, alpha, rng), power_law(relations, 1.0, rng)
    fresh = facts - int(round(facts * recurrence))
    rows = np.empty((facts, 4), dtype=np.int64)
    rows[:fresh, 0] = rng.choice(entities, fresh, p=ent)
    rows[:fresh, 1] = rng.choice(relations, fresh, p=rel)
    rows[:fresh, 2] = rng.choice(entities, fresh, p=ent)
    rows[:fresh, 3] = rng.integers(0, times, fresh)
    if facts > fresh:  # a recurring fact: an earlier fresh fact again, at a time not before it
        src = rng.integers(0, fresh, facts - fresh)
        rows[fresh:, :3] = rows[src, :3]
        rows[fresh:, 3] = rows[src, 3] + (rng.random(facts - fresh) * (times - rows[src, 3])).astype(np.int64)
    same = rows[:, 0] == rows[:, 2]  # no self-loops: move the object on by one
    rows[same, 2] = (rows[same, 2] + 1) % entities
    return rows[np.argsort(rows[:, 3], kind="stable")]


def _write_rows(path: Path, rows: np.ndarray) -> None:
    with open(path, "w") as f:
        for start in range(0, len(rows), 1 << 20):
            part = rows[start: start + (1 << 20)]
            f.write("".join(f"{s}\t{r}\t{o}\t{t * 24}\n" for s, r, o, t in part.tolist()))


def write_synth(root: Path, name: str, entities: int, relations: int, times: int, facts: int, seed: int,
                alpha: float = 1.0, recurrence: float = 0.4, force: bool = False) -> Path:
    """ROOT/NAME, written to a temporary folder and renamed into place (nothing half-written)."""
    from distkg.data.sources import DATASETS

    if name.lower() in DATASETS or name != name.lower():
        raise DataError(f"synthetic dataset name {name!r}: use a lower-case name that is not a benchmark's "
                        f"({', '.join(sorted(DATASETS))})")
    for what, value, least in (("--entities", entities, 2), ("--relations", relations, 1), ("--times", times, 1),
                               ("--facts", facts, 10)):
        if value < least:
            raise DataError(f"{what}={value}: at least {least}")
    if not 0 <= recurrence < 1:
        raise DataError(f"recurrence={recurrence}: in [0, 1)")
    folder = root / name
    if folder.exists() and not force:
        raise DataError(f"{folder} exists: choose another name, or --force to replace it")
    rows = draw(entities, relations, times, facts, seed, alpha, recurrence)
    tmp = root / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "entity2id.txt").write_text("".join(f"entity {i}\t{i}\n" for i in range(entities)))
    (tmp / "relation2id.txt").write_text("".join(f"relation {i}\t{i}\n" for i in range(relations)))
    cuts = np.cumsum([int(len(rows) * share) for share in SPLIT_SHARES[:2]])
    for split, part in zip(("train", "valid", "test"), np.split(rows, cuts)):
        _write_rows(tmp / f"{split}.txt", part)
    params = {"entities": entities, "relations": relations, "times": times, "facts": facts, "seed": seed,
              "alpha": alpha, "recurrence": recurrence}
    (tmp / "synth.json").write_text(json.dumps({"reader": "icews18", "params": params}, indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def synth_reader(folder: Path) -> str | None:
    """The reader a synthetic dataset's folder names (synth.json), or None for any other folder."""
    marker = folder / "synth.json"
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text())["reader"]
    except (ValueError, KeyError) as e:
        raise DataError(f"{marker}: not a synthetic dataset's record ({e})") from None


def shape_stats(train: np.ndarray, test: np.ndarray, num_entities: int) -> dict:
    """What the generator imitates, comparable across graphs: mentions per entity (share of all
    mentions held by the top 1% of entities, share of entities with at most 3), and recurrence
    (share of test facts whose (s, r, o) is in train)."""
    mentions = np.bincount(np.concatenate([train[:, 0], train[:, 2]]), minlength=num_entities)
    top = np.sort(mentions)[::-1][: max(1, num_entities // 100)].sum() / max(mentions.sum(), 1)
    seen = {tuple(x) for x in train[:, :3].tolist()}
    recurring = sum(tuple(x) in seen for x in test[:, :3].tolist()) / max(len(test), 1)
    return {"entities": num_entities, "train": len(train), "test": len(test),
            "top1pct_mention_share": round(float(top), 4), "share_at_most_3_mentions": round(float((mentions <= 3).mean()), 4),
            "test_triples_seen_in_train": round(recurring, 4)}
