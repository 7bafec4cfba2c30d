"""Dates of interval datasets (YAGO11k, Wikidata12k): parsing rules and HyTE-style year buckets.

The files write dates as ``YYYY-MM-DD`` with ``#`` for unknown digits. Only the year is used. The
rules below are applied to every endpoint, and the number of lines each rule touched is reported
(``distkg data stats``); nothing is dropped.

Endpoint rules (first match wins):
  ``unknown``       ``####-##-##``: the endpoint is unknown (an open start or end).
  ``malformed``     not ``[-]Y+-MM-DD`` with digits or ``#``, or month > 12, or day > 31
                    (e.g. ``307-13047-09``, ``1963-64-65``): treated as unknown.
  ``partial_year``  the year has both digits and ``#`` (``19##``): treated as unknown, since any
                    single year we picked for it would be invented.
  ``out_of_range``  year > ``max_year`` (e.g. 2600, 2844 in YAGO11k, errors in the source):
                    treated as unknown.
  ``negative_year`` / ``short_year``: kept as written (BCE years, years before 1000); counted
                    because they are unusual, not changed.

Fact rules, after the endpoint rules:
  ``end_from_start`` only the start is known: the end takes the start's year (the fact is taken
                     to hold at its one known date; 45% of YAGO11k train facts are like this).
  ``start_from_end`` only the end is known: the start takes the end's year.
  ``no_known_year``  neither is known: both ends get the vocabulary's ``unknown`` time id.

Buckets (HyTE-style, docs/PROTOCOL.md): walk the training split's known years in sorted order and close
a bucket once it holds at least ``min_bucket_size`` endpoints; a remainder smaller than that joins
the last bucket. Bucket i covers the years from its first year up to the next bucket's first year
minus one; years before the first bucket map to it and years after the last map to the last.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

_DATE = re.compile(r"^(-?[0-9#]+)-([0-9#]{2})-([0-9#]{2})$")

# What each rule does, as shown next to its line count.
RULES = {
    "unknown": "an endpoint written ####-##-##: unknown",
    "malformed": "an endpoint that is not a date (bad month/day): treated as unknown",
    "partial_year": "an endpoint with a partial year like 19##: treated as unknown",
    "out_of_range": "an endpoint year above data.max_year: treated as unknown",
    "negative_year": "a BCE year: kept",
    "short_year": "a year of fewer than 4 digits: kept",
    "end_from_start": "only the start known: the end takes its year",
    "start_from_end": "only the end known: the start takes its year",
    "no_known_year": "no known year: both ends get the 'unknown' time id",
}


@dataclass(frozen=True)
class Endpoint:
    year: int | None
    rule: str | None  # the endpoint rule that fired, if any


def parse_endpoint(text: str, max_year: int) -> Endpoint:
    """Year of one written date under the module's endpoint rules."""
    m = _DATE.match(text)
    if m is None:
        return Endpoint(None, "malformed")
    year_s, month_s, day_s = m.groups()
    for part, limit in ((month_s, 12), (day_s, 31)):
        if "#" not in part and not (1 <= int(part) <= limit):
            return Endpoint(None, "malformed")
    digits = year_s.lstrip("-")
    if set(digits) == {"#"}:
        return Endpoint(None, "unknown")
    if "#" in digits:
        return Endpoint(None, "partial_year")
    year = int(year_s)
    if year > max_year:
        return Endpoint(None, "out_of_range")
    if year < 0:
        return Endpoint(year, "negative_year")
    if len(digits) < 4:
        return Endpoint(year, "short_year")
    return Endpoint(year, None)


def parse_interval(start: str, end: str, max_year: int, counts: Counter) -> tuple[int | None, int | None, list[int]]:
    """Years of a fact's two endpoints after all rules, and the known years as written (which the
    buckets are counted on); ``counts`` gets one per line per rule that fired."""
    a, b = parse_endpoint(start, max_year), parse_endpoint(end, max_year)
    for rule in {a.rule, b.rule} - {None}:
        counts[rule] += 1
    ya, yb = a.year, b.year
    if ya is not None and yb is None:
        counts["end_from_start"] += 1
        yb = ya
    elif ya is None and yb is not None:
        counts["start_from_end"] += 1
        ya = yb
    elif ya is None and yb is None:
        counts["no_known_year"] += 1
    return ya, yb, [e.year for e in (a, b) if e.year is not None]


def build_buckets(years: list[int], min_bucket_size: int) -> list[tuple[int, int]]:
    """HyTE-style buckets over known training years (module docstring); returns [first, last] years."""
    if min_bucket_size < 1:
        raise ValueError(f"min_bucket_size must be >= 1, got {min_bucket_size}")
    if not years:
        raise ValueError("no known years in the training split: cannot build time buckets")
    per_year = sorted(Counter(years).items())
    buckets: list[tuple[int, int]] = []
    lo, held = None, 0
    for year, n in per_year:
        lo = year if lo is None else lo
        held += n
        if held >= min_bucket_size:
            buckets.append((lo, year))
            lo, held = None, 0
    if lo is not None:  # remainder smaller than min_bucket_size
        if buckets:
            buckets[-1] = (buckets[-1][0], per_year[-1][0])
        else:
            buckets.append((lo, per_year[-1][0]))
    return buckets


def bucket_of(years: np.ndarray, buckets: list[tuple[int, int]]) -> np.ndarray:
    """Bucket index of each year (see the module docstring for years outside the buckets)."""
    starts = np.array([lo for lo, _ in buckets], dtype=np.int64)
    return np.clip(np.searchsorted(starts, years, side="right") - 1, 0, len(buckets) - 1)
