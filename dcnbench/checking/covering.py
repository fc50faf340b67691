"""Covering arrays: every pair (or, with strength 3, every triple) of an operator's option values in
at least one case, under the operator's constraints, built deterministically.

An operator declares its options (`Options`: each option's values, the combinations it forbids,
and how a row of values becomes a case); `cases(spec, seed, strength)` turns that declaration into
verification cases. Nothing here names an operator.

Why a home-made generator: the pairwise package on PyPI (allpairspy 2.5.1, 2023) drops valid pairs
when its filter rejects a row (its issue #2, open; the fix, pull request #10, unmerged since 2021),
and constraints are the point here (groups divide channels, DCNv4 takes 8 or 9 points, ...). This
one is small and checked: tests/test_covering.py enumerates every valid row of each operator's
table and asserts that each valid pair is covered.

Construction (greedy, one row at a time, AETG-style without the random candidates, so the same
declaration always gives the same rows):
  1. The uncovered set holds every t-tuple of values (t options, one value each) that some valid
     row contains; a tuple no valid row contains is dropped (a depth-first completion decides).
  2. A new row starts from the first uncovered tuple (in the order options and values are
     declared) and fixes the remaining options in declared order, each to the value that covers
     the most still-uncovered tuples with the values already fixed, among the values that leave
     the row completable to a valid one (ties: the value declared first).
  3. The tuples the row covers leave the set; repeat until it is empty.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations, product


@dataclass(frozen=True)
class Option:
    name: str
    values: tuple


@dataclass(frozen=True)
class Constraint:
    """A combination rule: `allows(**values of names)` is False for a forbidden combination. It is
    checked as soon as every option it names has a value."""

    names: tuple[str, ...]
    allows: Callable[..., bool]
    why: str  # for the README and the test: what the rule excludes and why


@dataclass(frozen=True)
class Options:
    """What an operator declares for its covering-array cases."""

    options: tuple[Option, ...]
    # (name, row: {option: value}, seed) -> the case; must always give a valid call (sizes follow the row).
    build: Callable
    seed: int  # the first row's seed; row i gets seed + 10·i
    constraints: tuple[Constraint, ...] = ()
    prefix: str = "pairs"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)


Row = dict


def _allowed(row: Row, constraints: Sequence[Constraint]) -> bool:
    return all(c.allows(**{n: row[n] for n in c.names}) for c in constraints if all(n in row for n in c.names))


def complete(row: Row, options: Sequence[Option], constraints: Sequence[Constraint]) -> Row | None:
    """A valid full row extending `row` (options fixed in declared order, values tried in declared
    order, depth first), or None when none exists."""
    if not _allowed(row, constraints):
        return None
    free = [o for o in options if o.name not in row]
    if not free:
        return dict(row)
    first = free[0]
    for v in first.values:
        found = complete(row | {first.name: v}, options, constraints)
        if found is not None:
            return found
    return None


def _tuples(row: Row, subsets: Sequence[tuple[str, ...]]) -> set:
    return {tuple((n, row[n]) for n in s) for s in subsets if all(n in row for n in s)}


def covering_array(options: Sequence[Option], constraints: Sequence[Constraint] = (), strength: int = 2) -> list[Row]:
    """Rows (option name -> value) covering every valid `strength`-tuple of values at least once."""
    names = [o.name for o in options]
    values = {o.name: o.values for o in options}
    t = min(strength, len(options))
    subsets = list(combinations(names, t))
    uncovered = [tuple(zip(s, vs)) for s in subsets for vs in product(*(values[n] for n in s))]
    uncovered = [tp for tp in uncovered if complete(dict(tp), options, constraints) is not None]
    left = set(uncovered)
    rows = []
    while left:
        start = next(tp for tp in uncovered if tp in left)
        row = dict(start)
        for o in options:
            if o.name in row:
                continue
            best, best_gain = None, -1
            for v in o.values:
                trial = row | {o.name: v}
                gain = len(_tuples(trial, [s for s in subsets if o.name in s]) & left)
                if gain > best_gain and complete(trial, options, constraints) is not None:
                    best, best_gain = v, gain
            row[o.name] = best
        left -= _tuples(row, subsets)
        rows.append(row)
    return rows


def uncovered(rows: Sequence[Row], options: Sequence[Option], constraints: Sequence[Constraint] = (),
              strength: int = 2) -> set:
    """The valid `strength`-tuples no row covers (the check of `covering_array`, independent of its
    search: for tests). A tuple is valid when some assignment of the options the constraints name,
    enumerated in full, agrees with it and passes every constraint (the other options are free)."""
    names = [o.name for o in options]
    values = {o.name: o.values for o in options}
    ruled = sorted({n for c in constraints for n in c.names}, key=names.index)
    allowed = [dict(zip(ruled, vs)) for vs in product(*(values[n] for n in ruled))]
    allowed = [a for a in allowed if _allowed(a, constraints)]
    valid = set()
    for s in combinations(names, min(strength, len(names))):
        for vs in product(*(values[n] for n in s)):
            tp = dict(zip(s, vs))
            if any(all(a[n] == tp[n] for n in s if n in a) for a in allowed):
                valid.add(tuple(tp.items()))
    covered = set().union(*(_tuples(r, [s for s in combinations(names, min(strength, len(names)))]) for r in rows)) \
        if rows else set()
    return valid - covered


@dataclass(frozen=True)
class Generated:
    cases: list
    rows: list[Row]
    seconds: float
    strength: int
    op: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def line(self) -> str:
        """One line for the console: how many cases and how long it took to build them."""
        return (f"{self.op}: {len(self.cases)} covering-array cases (strength {self.strength}, "
                f"{len(self.rows[0]) if self.rows else 0} options) built in {self.seconds:.2f} s")


def generate(declared: Options, seed: int = 0, strength: int = 2, op: str = "") -> Generated:
    """The declaration's covering array as cases, named `<prefix>-<t>-<i>` (the dtype follows in the id)."""
    start = time.perf_counter()
    rows = covering_array(declared.options, declared.constraints, strength)
    cases = [declared.build(f"{declared.prefix}{strength}-{i:02d}", row, seed + declared.seed + 10 * i)
             for i, row in enumerate(rows)]
    return Generated(cases, rows, time.perf_counter() - start, strength, op)


def level_strength(thorough: bool) -> int:
    """The default suite covers pairs; `--thorough` covers triples."""
    return 3 if thorough else 2
