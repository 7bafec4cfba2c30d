"""Tiny copies of the four benchmarks in their own file formats (the readers of distkg/data read them
as they read the real folders), so the README's commands run in seconds: 40 entities, 6 relations,
about 400 facts each. Names the README's examples use are in the YAGO11k copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

YAGO_ENTITIES = ["Barack_Obama_Sr.", "Honolulu", "Ann_Dunham", "Kenya", "Harvard_University", "Nairobi"]
YAGO_RELATIONS = ["wasBornIn", "isMarriedTo", "diedIn", "worksAt", "graduatedFrom", "isAffiliatedTo"]
N_ENT, N_REL, N_FACTS = 40, 6, 400


def _facts(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    s, r, o = rng.integers(0, N_ENT, N_FACTS), rng.integers(0, N_REL, N_FACTS), rng.integers(0, N_ENT, N_FACTS)
    s[:N_ENT], o[N_ENT:2 * N_ENT] = np.arange(N_ENT), np.arange(N_ENT)  # every entity in train
    s[2 * N_ENT], r[2 * N_ENT], o[2 * N_ENT] = 0, 1, 2  # Barack Obama Sr. isMarriedTo Ann Dunham
    s[2 * N_ENT + 1], r[2 * N_ENT + 1], o[2 * N_ENT + 1] = 2, 0, 1  # Ann Dunham wasBornIn Honolulu
    return s, r, o


def _splits(folder: Path, lines: list[str], eol: str = "\n") -> None:
    cut = [int(0.8 * len(lines)), int(0.9 * len(lines))]
    for name, part in zip(("train", "valid", "test"), (lines[: cut[0]], lines[cut[0]: cut[1]], lines[cut[1]:])):
        (folder / f"{name}.txt").write_text(eol.join(part) + eol)


def _intervals(seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed + 1)
    start = rng.integers(1940, 2010, N_FACTS)
    return [(f"{a}-##-##", f"{a + int(d)}-##-##" if d >= 0 else "####-##-##")
            for a, d in zip(start, rng.integers(-1, 12, N_FACTS))]


def write_tiny_benchmarks(root: Path) -> Path:
    """ROOT/{yago11k, wikidata12k, icews14, icews18} in the formats of the real folders."""
    names = YAGO_ENTITIES + [f"Entity_{i}" for i in range(len(YAGO_ENTITIES), N_ENT)]
    yago = root / "yago11k"
    yago.mkdir(parents=True, exist_ok=True)
    (yago / "entity2id.txt").write_text("".join(f"<{n}>\t{i}\t####-##-##\t####-##-##\n" for i, n in enumerate(names)))
    (yago / "relation2id.txt").write_text("".join(f"<{n}>\t{i}\n" for i, n in enumerate(YAGO_RELATIONS)))
    s, r, o = _facts(0)
    _splits(yago, [f"{a}\t{b}\t{c}\t{t0}\t{t1}" for a, b, c, (t0, t1) in zip(s, r, o, _intervals(0))])

    wiki = root / "wikidata12k"
    wiki.mkdir(parents=True, exist_ok=True)
    (wiki / "entity2id.txt").write_text("".join(f"Q{100 + i}\t{i}\n" for i in range(N_ENT)))
    (wiki / "relation2id.txt").write_text("".join(f"P{10 + i}\t{i}\n" for i in range(N_REL)))
    s, r, o = _facts(1)
    _splits(wiki, [f"{a}\t{b}\t{c}\t{t0}\t{t1}" for a, b, c, (t0, t1) in zip(s, r, o, _intervals(1))])

    icews14 = root / "icews14"
    icews14.mkdir(parents=True, exist_ok=True)
    s, r, o = _facts(2)
    days = np.random.default_rng(3).integers(1, 365, N_FACTS)
    dates = np.datetime64("2014-01-01") + days.astype("timedelta64[D]")
    _splits(icews14, [f"Actor {a}\tEvent type {b}\tActor {c}\t{d}" for a, b, c, d in zip(s, r, o, dates)])

    icews18 = root / "icews18"
    icews18.mkdir(parents=True, exist_ok=True)
    (icews18 / "entity2id.txt").write_text("".join(f"Actor {i}\t{i}\r\n" for i in range(N_ENT)))
    (icews18 / "relation2id.txt").write_text("".join(f"Event type {i}\t{i}\r\n" for i in range(N_REL)))
    s, r, o = _facts(4)
    hours = np.sort(np.random.default_rng(5).integers(0, 30, N_FACTS)) * 24  # forecasting: the splits follow time
    _splits(icews18, [f"{a}\t{b}\t{c}\t{t}" for a, b, c, t in zip(s, r, o, hours)])
    return root
