"""The exposure deduplicator: the set-associative table against the direct-mapped one it
replaces, at the same memory (the default 8 MB).

Run from the repository root:  python -m bench.bench_dedup [--units 1000000] [--rounds 5]

1. Re-logs: N distinct (flag, key, variant) units looked up once (all new: every one must be
   logged), then the same N again within the window, in the same order (and, at --units, in
   a shuffled order): the share of the repeats logged a second time, at 250k, --units, 2M.
2. Steady state: --units distinct units per window on a simulated clock, four passes of a
   fresh random order each spread over half a window (so every unit comes back 0 to 1 window
   after its last look-up), checked against each table's own history: repeats logged again
   (split into evicted and expired early, within a stamp tick of the window's end) and
   exposures hidden (deduped though not logged within the window: must be 0).
3. Cost, ns per call (median of --rounds rounds, the two tables alternating, each round a
   fresh table): a new unit (the first pass over --units) and a found, fresh one (a pass
   over the units a settled table finds, so every call of it is a hit for both tables).
   Calls run in a plain Python loop, whose cost is included on both sides; the table shows
   it as the cost of the same loop calling an empty function with the same signature.

The baseline is a copy of the direct-mapped algorithm (``DirectMapped`` below, as it was in
``flagwarden.telemetry.exposure``), so this bench keeps running after the switch-over.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import mmh3

from flagwarden.telemetry import dedup
from flagwarden.telemetry.dedup import TICKS, ExposureDeduper, compiled

FLAG = "checkout-redesign"
VARIANT = "treatment"
WINDOW = 3600.0
SLOTS = 1 << 20  # the default budget: 8 MB

_hash64 = mmh3.hash64
_monotonic = time.monotonic  # the baseline's clock (swapped with the new table's in part 2)


class DirectMapped:
    """The baseline: flagwarden's direct-mapped exposure table before this change, verbatim
    but for the name (one 32-bit fingerprint and one 32-bit stamp per slot)."""

    def __init__(self, window_seconds: float, slots: int = 1 << 20) -> None:
        self.window = int(window_seconds)
        self.slots = slots
        self._fingerprints = array("I", bytes(4 * slots))
        self._stamps = array("I", bytes(4 * slots))
        self._epoch = _monotonic() - 1  # stamps are seconds since this, never 0

    @property
    def memory_bytes(self) -> int:
        return self._fingerprints.itemsize * self.slots + self._stamps.itemsize * self.slots

    def first_in_window(self, flag: str, key: str, variant: str) -> bool:
        h1, h2 = _hash64(f"{flag}\x00{key}\x00{variant}".encode(), signed=False)
        slot = h1 % self.slots
        fingerprint = (h2 & 0xFFFFFFFF) or 1
        now = int(_monotonic() - self._epoch)
        fingerprints = self._fingerprints
        if fingerprints[slot] == fingerprint and now - self._stamps[slot] < self.window:
            return False
        fingerprints[slot] = fingerprint
        self._stamps[slot] = now
        return True


class Table(Protocol):
    @property
    def memory_bytes(self) -> int: ...

    def first_in_window(self, flag: str, key: str, variant: str) -> bool: ...


class Empty:
    memory_bytes = 0

    def first_in_window(self, flag: str, key: str, variant: str) -> bool:
        return False


TABLES: dict[str, Callable[[float], Table]] = {
    "direct-mapped (before)": lambda window: DirectMapped(window, SLOTS),
    "16-way set-associative": lambda window: ExposureDeduper(window, SLOTS),
}
# The compiled table (flagwarden._dedup, when built): re-logs and cost; not the steady state,
# whose simulated clock only the Python tables read.
_COMPILED = compiled()
MEASURED: dict[str, Callable[[float], Table]] = {
    **TABLES,
    **(
        {"16-way set-associative, compiled": lambda window: _COMPILED(window, SLOTS)}
        if _COMPILED is not None
        else {}
    ),
}


def units(n: int) -> list[str]:
    return [f"user-{i:08d}" for i in range(n)]


def look_up(table: Table, keys: list[str]) -> tuple[int, int, float]:
    """(calls made, calls answered "log it", ns per call) for one pass over ``keys``."""
    first = table.first_in_window
    logged = calls = 0
    start = time.perf_counter_ns()
    for calls, key in enumerate(keys, 1):  # noqa: B007 (calls: counted by the loop itself)
        logged += first(FLAG, key, VARIANT)
    elapsed = time.perf_counter_ns() - start
    return calls, logged, elapsed / max(calls, 1)


def re_logged(make: Callable[[float], Table], keys: list[str], shuffled: bool) -> float:
    """Share of the second pass logged again (the first pass must log every unit)."""
    table = make(WINDOW)
    calls, logged, _ = look_up(table, keys)
    assert (calls, logged) == (len(keys), len(keys)), "a new unit was not logged"
    again = keys[:]
    if shuffled:
        random.Random(len(keys)).shuffle(again)
    calls, logged, _ = look_up(table, again)
    assert calls == len(again) == len(keys)  # units x 2 lookups in all
    return logged / calls


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def simulated_clock() -> Iterator[FakeClock]:
    global _monotonic
    clock = FakeClock()
    saved = _monotonic, dedup._monotonic
    _monotonic = dedup._monotonic = clock
    try:
        yield clock
    finally:
        _monotonic, dedup._monotonic = saved


def steady_state(
    make: Callable[[float], Table], keys: list[str], passes: int = 4
) -> dict[str, int]:
    """Lookups, repeats (logged by this table less than a window ago), those logged again
    (evicted; or expired within a stamp tick of the window's end), and hidden ones."""
    counts = dict.fromkeys(("lookups", "repeats", "evicted", "early", "hidden", "logged"), 0)
    last: dict[str, float] = {}
    early_from = WINDOW - WINDOW / TICKS
    with simulated_clock() as clock:
        table = make(WINDOW)
        first = table.first_in_window
        step = WINDOW / 2 / len(keys)
        for p in range(passes):
            order = keys[:]
            random.Random(p).shuffle(order)  # the same orders for both tables
            for key in order:
                clock.now += step
                logged = first(FLAG, key, VARIANT)
                counts["lookups"] += 1
                counts["logged"] += logged
                age = clock.now - last.get(key, -2 * WINDOW)
                if age < WINDOW:
                    counts["repeats"] += 1
                    if logged:
                        counts["early" if age >= early_from else "evicted"] += 1
                elif not logged:
                    counts["hidden"] += 1
                if logged:
                    last[key] = clock.now
    assert counts["lookups"] == passes * len(keys)
    # Every first look or expired one is logged unless hidden; repeats only when re-logged.
    assert counts["logged"] == (
        counts["lookups"]
        - counts["repeats"]
        - counts["hidden"]
        + counts["evicted"]
        + counts["early"]
    )
    return counts


def timings(keys: list[str], rounds: int) -> dict[str, tuple[float, float, int]]:
    """Median ns per call for new units and for found fresh ones; the found pass's size."""
    new: dict[str, list[float]] = {name: [] for name in MEASURED}
    found: dict[str, list[float]] = {name: [] for name in MEASURED}
    hits: dict[str, int] = {}
    for r in range(rounds):
        order = list(MEASURED.items()) if r % 2 == 0 else list(MEASURED.items())[::-1]
        for name, make in order:
            table = make(WINDOW)
            calls, logged, ns = look_up(table, keys)
            assert calls == logged == len(keys), "a new unit was not logged"
            new[name].append(ns)
            look_up(table, keys)  # settle: re-logged units take their slots back
            first = table.first_in_window
            resident = [k for k in keys if not first(FLAG, k, VARIANT)]
            calls, logged, ns = look_up(table, resident)
            assert calls == len(resident) and logged == 0, "a found pass logged"
            found[name].append(ns)
            hits[name] = len(resident)
    return {
        name: (statistics.median(new[name]), statistics.median(found[name]), hits[name])
        for name in MEASURED
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n = args.units
    sizes = sorted({250_000, n, 2_000_000})
    keys = {size: units(size) for size in sizes}

    memory = {name: make(WINDOW).memory_bytes for name, make in MEASURED.items()}
    relog: dict[str, dict[str, float]] = {name: {} for name in MEASURED}
    for name, make in MEASURED.items():
        for size in sizes:
            relog[name][f"{size:,}"] = re_logged(make, keys[size], shuffled=False)
        relog[name][f"{n:,} shuffled"] = re_logged(make, keys[n], shuffled=True)
    steady = {name: steady_state(make, keys[n]) for name, make in TABLES.items()}
    cost = timings(keys[n], args.rounds)
    loop_ns = statistics.median(look_up(Empty(), keys[n])[2] for _ in range(args.rounds))

    columns = list(relog[next(iter(TABLES))])
    print(f"Same memory budget ({SLOTS:,} slots); window {WINDOW:g}s.\n")
    print("Re-logged: share of repeats within the window logged a second time.\n")
    print("| table | memory (bytes) | " + " | ".join(f"{c} units" for c in columns) + " |")
    print("|---|---:|" + "---:|" * len(columns))
    for name in MEASURED:
        cells = " | ".join(f"{100 * relog[name][c]:.2f}%" for c in columns)
        print(f"| {name} | {memory[name]:,} | {cells} |")

    print(
        f"\nSteady state, {n:,} distinct units per window, 4 shuffled half-window passes "
        f"({4 * n:,} lookups):\n"
    )
    print("| table | repeats | re-logged (evicted) | re-logged (expired early) | hidden |")
    print("|---|---:|---:|---:|---:|")
    for name, c in steady.items():
        reps = c["repeats"]
        print(
            f"| {name} | {reps:,} | {100 * c['evicted'] / reps:.2f}% "
            f"| {100 * c['early'] / reps:.2f}% | {c['hidden']} |"
        )
        assert c["hidden"] == 0, f"{name} hid {c['hidden']} exposures"

    print(f"\nns per call, {n:,} units, median of {args.rounds} rounds (Python loop included):\n")
    print("| table | new unit | found, fresh | found pass size |")
    print("|---|---:|---:|---:|")
    print(f"| (the loop, calling an empty function) | {loop_ns:.0f} | {loop_ns:.0f} | |")
    base_new, base_found, _ = cost[next(iter(TABLES))]
    for name, (new_ns, found_ns, hits) in cost.items():
        print(
            f"| {name} | {new_ns:.0f} ({new_ns / base_new:.2f}x) "
            f"| {found_ns:.0f} ({found_ns / base_found:.2f}x) | {hits:,} |"
        )


if __name__ == "__main__":
    main()
