"""From what a user writes to the ids a model reads: entity and relation names, and times.

Names: a name matches as the data writes it (``<Barack_Obama>``, ``Q42``) or plainly, without the
brackets, with spaces for underscores, in any case (``barack obama``); the readable text the LLM
teacher reads (``is married to``, Wikidata labels) matches too. An unknown name is a QueryError
that offers the closest names (difflib), so a typo costs one more try, not a search of the maps.

Times are written as the dataset writes them and mapped through the run's own time vocabulary:
  point data (ICEWS)     a day ``YYYY-MM-DD`` of the data's calendar
  interval data (YAGO,   a year ``2005``, a date ``2005-03-01`` or ``2005-##-##``, or an interval
  Wikidata)              ``START..END`` / ``START/END`` of those; each end goes through the
                         endpoint rules of distkg.data.dates (an unknown end takes the other's
                         year, as in the data) and then the run's year buckets; ``unknown`` (or
                         ``####-##-##``) is the vocabulary's unknown time.
A time outside the data (a day the calendar does not have, a year outside the buckets) is a
QueryError naming the range the run covers and the closest times it has.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections import defaultdict
from typing import NoReturn

import numpy as np

from distkg.data import TKGDataset
from distkg.data.dates import bucket_of, parse_endpoint
from distkg.errors import QueryError

_YEAR = re.compile(r"^-?\d+$")


def normalise(name: str) -> str:
    """The plain form two spellings of one name share: no brackets, spaces for underscores, casefolded."""
    return " ".join(name.strip().strip("<>").replace("_", " ").split()).casefold()


class NameIndex:
    """Ids of one kind of name (entities or relations), by exact and by plain spelling."""

    def __init__(self, kind: str, names: list[str], texts: list[str]) -> None:
        self.kind = kind
        self.names = names
        self.exact = {n: i for i, n in enumerate(names)}
        plain: dict[str, set[int]] = defaultdict(set)
        for i, spellings in enumerate(zip(names, texts)):
            for s in spellings:
                plain[normalise(s)].add(i)
        self.plain = dict(plain)

    def __call__(self, written: str) -> int:
        """The id of ``written``; a QueryError with the closest names when there is none or several."""
        if written in self.exact:
            return self.exact[written]
        ids = self.plain.get(normalise(written), set())
        if len(ids) == 1:
            return next(iter(ids))
        if ids:
            raise QueryError(f"{self.kind} {written!r} is ambiguous: it may be "
                             + ", ".join(repr(self.names[i]) for i in sorted(ids)[:5]) + "; write it as the data does")
        close = difflib.get_close_matches(normalise(written), list(self.plain), n=10, cutoff=0.5)
        ids_close = list(dict.fromkeys(min(self.plain[c]) for c in close))[:5]  # a name and its text: once
        hint = ", ".join(repr(self.names[i]) for i in ids_close)
        raise QueryError(f"unknown {self.kind} {written!r}" + (f"; closest: {hint}" if hint else "; no close name in the data"))


class TimeMapper:
    """Written times -> (t0, t1) time ids of the run's vocabulary (module docstring)."""

    def __init__(self, ds: TKGDataset, max_year: int) -> None:
        self.ds = ds
        self.max_year = max_year
        self.day_id = {label: i for i, label in enumerate(ds.time_labels)} if ds.time_kind == "point" else {}

    def __call__(self, written: str) -> tuple[int, int]:
        text = written.strip()
        return self._day(text) if self.ds.time_kind == "point" else self._interval(text)

    def _day(self, text: str) -> tuple[int, int]:
        if text in self.day_id:
            return self.day_id[text], self.day_id[text]
        labels = self.ds.time_labels
        try:
            day = dt.date.fromisoformat(text)
        except ValueError:
            raise QueryError(f"time {text!r} is not a day written YYYY-MM-DD, as {self.ds.name} writes times "
                             f"({labels[0]} .. {labels[-1]})") from None
        first = dt.date.fromisoformat(labels[0])
        nearest = min(max((day - first).days, 0), len(labels) - 1)
        near = labels[max(nearest - 1, 0): nearest + 2]
        raise QueryError(f"time {text} is outside the data: {self.ds.name} has the days {labels[0]} .. {labels[-1]}; "
                         f"closest: {', '.join(near)}")

    def _interval(self, text: str) -> tuple[int, int]:
        parts = re.split(r"\.\.|/", text)
        if len(parts) > 2 or not all(p.strip() for p in parts):
            raise QueryError(f"time {text!r}: write a year (2005), a date (2005-03-01 or 2005-##-##), "
                             "an interval START..END of those, or 'unknown'")
        if len(parts) == 1 and text.casefold() == "unknown":
            return self.ds.unknown_time, self.ds.unknown_time
        years = [self._year(p.strip(), text) for p in parts]
        a, b = years[0], years[-1]
        a, b = (b if a is None else a), (a if b is None else b)  # one known end: the fact holds at it
        if a is None:
            return self.ds.unknown_time, self.ds.unknown_time
        if a > b:
            raise QueryError(f"time {text!r}: the interval ends ({b}) before it starts ({a})")
        return self._bucket(a, text), self._bucket(b, text)

    def _year(self, part: str, text: str) -> int | None:
        written = f"{part}-##-##" if _YEAR.match(part) else part
        end = parse_endpoint(written, self.max_year)
        if end.rule in ("malformed", "partial_year"):
            raise QueryError(f"time {text!r}: {part!r} is not a year or a date (write 2005, 2005-03-01 or 2005-##-##)")
        if end.rule == "out_of_range":  # the data reads such years as unknown (source errors)
            self._outside(int(part.split("-")[0]), text)  # only years above max_year get here
        return end.year  # None: written unknown

    def _bucket(self, year: int, text: str) -> int:
        """The data's own bucket rule (dates.bucket_of), except that a year beyond the buckets is an error."""
        buckets = self.ds.buckets
        if not buckets[0][0] <= year <= buckets[-1][1]:
            self._outside(year, text)
        return int(bucket_of(np.array([year]), buckets)[0])

    def _outside(self, year: int, text: str) -> NoReturn:
        buckets = self.ds.buckets
        near = sorted(range(len(buckets)), key=lambda i: min(abs(year - buckets[i][0]), abs(year - buckets[i][1])))[:3]
        raise QueryError(f"time {text!r}: year {year} is outside the data: the run's time buckets cover "
                         f"{buckets[0][0]} .. {buckets[-1][1]}; closest buckets: "
                         + ", ".join(self.ds.time_labels[i] for i in sorted(near)))
