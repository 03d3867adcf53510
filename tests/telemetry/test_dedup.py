"""The set-associative exposure deduplicator: dedups repeats, never hides a new exposure, keeps
its memory, expires on time across stamp wrap-around, and keeps re-logs rare at 1M units."""

from __future__ import annotations

import random
import sys
import threading

import mmh3
import pytest

from flagwarden.telemetry import dedup
from flagwarden.telemetry.dedup import TICKS, WAYS, ExposureDeduper

FLAG = "checkout-redesign"


class FakeClock:
    """Stands in for ``time.monotonic`` in the module under test (the clock, nothing else)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(dedup, "_monotonic", fake)
    return fake


def test_dedups_a_repeat_and_never_hides_a_new_triple():
    deduper = ExposureDeduper(window_seconds=3600, slots=4096)
    before = deduper.memory_bytes
    assert deduper.first_in_window(FLAG, "k1", "treatment") is True
    assert deduper.first_in_window(FLAG, "k1", "treatment") is False  # same key, same variant
    assert deduper.first_in_window(FLAG, "k1", "control") is True  # the variant changed
    assert deduper.first_in_window(FLAG, "k1", "control") is False
    assert deduper.first_in_window("other", "k1", "treatment") is True  # another flag
    assert deduper.first_in_window(FLAG, "k2", "treatment") is True  # another key
    # 100k distinct triples in a table of 6,544 entries: every one is new, every one logged.
    logged = sum(deduper.first_in_window(FLAG, f"key-{i}", "control") for i in range(100_000))
    assert logged == 100_000
    assert deduper.memory_bytes == before  # same memory after 100k keys


def test_memory_is_the_slots_budget_rounded_down_to_whole_sets():
    for slots in (1024, 4096, 1 << 20):
        deduper = ExposureDeduper(3600, slots)
        assert deduper.slots == slots
        set_bytes = WAYS * 5
        assert slots * 8 - set_bytes < deduper.memory_bytes <= slots * 8
        assert deduper.memory_bytes == deduper.sets * set_bytes
    default = ExposureDeduper(3600)
    assert default.slots == 1 << 20
    assert default.memory_bytes == 8_388_560  # 8 MB, as the direct-mapped table's default
    assert default.entries == 1_677_712
    tiny = ExposureDeduper(3600, slots=1)  # smaller than one set: one set all the same
    assert tiny.sets == 1
    assert tiny.first_in_window(FLAG, "k", "v") is True
    assert tiny.first_in_window(FLAG, "k", "v") is False


def test_a_zero_window_never_dedups(clock: FakeClock):
    for window in (0, 0.0, -5):
        deduper = ExposureDeduper(window_seconds=window, slots=4096)
        for _ in range(3):
            assert deduper.first_in_window(FLAG, "k", "v") is True
            clock.now += 0.001
        assert all(deduper.first_in_window(FLAG, f"k{i % 50}", "v") for i in range(1000))


def test_an_infinite_window_dedups_for_good(clock: FakeClock):
    deduper = ExposureDeduper(window_seconds=float("inf"), slots=4096)
    assert deduper.first_in_window(FLAG, "k", "v") is True
    clock.now += 1e9
    assert deduper.first_in_window(FLAG, "k", "v") is False
    assert deduper.first_in_window(FLAG, "k2", "v") is True
    with pytest.raises(ValueError):
        ExposureDeduper(window_seconds=float("nan"))


def test_expires_after_the_window_never_later(clock: FakeClock):
    window = 10.0
    tick = window / TICKS
    deduper = ExposureDeduper(window_seconds=window, slots=4096)
    clock.now += 3.3
    logged_at = clock.now
    assert deduper.first_in_window(FLAG, "k", "v") is True
    clock.now = logged_at + window - tick - 1e-6  # the stamp is at most one tick coarse
    assert deduper.first_in_window(FLAG, "k", "v") is False
    clock.now = logged_at + window  # a full window later: logged again, never later
    assert deduper.first_in_window(FLAG, "k", "v") is True
    assert deduper.first_in_window(FLAG, "k", "v") is False  # and remembered from now
    clock.now += window / 2
    assert deduper.first_in_window(FLAG, "k", "v") is False
    clock.now += window / 2 + 1e-3
    assert deduper.first_in_window(FLAG, "k", "v") is True


def test_expiry_is_exact_to_one_tick_from_any_phase(clock: FakeClock):
    """At 200 log times spread over ticks, the entry is fresh a tick before the window ends
    and expired at the window's end: no drift from the float tick arithmetic."""
    window = 7.0
    tick = window / TICKS
    deduper = ExposureDeduper(window_seconds=window, slots=4096)
    rng = random.Random(7)
    for i in range(200):
        clock.now += rng.uniform(0, 3 * window)
        logged_at = clock.now
        assert deduper.first_in_window(FLAG, f"k{i}", "v") is True
        clock.now = logged_at + window - tick - 1e-9
        assert deduper.first_in_window(FLAG, f"k{i}", "v") is False
        clock.now = logged_at + window
        assert deduper.first_in_window(FLAG, f"k{i}", "v") is True


def test_stamp_wraparound_keeps_fresh_entries_and_expiry(clock: FakeClock):
    """A byte holds 256 ticks: crossing it shifts the stamps. An entry logged just before the
    shift stays deduped for the rest of its window and expires on time; an entry already
    expired before the shift does not come back fresh, in any of the next ~50 wraps."""
    window = 1.0
    tick = window / TICKS
    deduper = ExposureDeduper(window_seconds=window, slots=4096)
    start = clock.now
    assert deduper.first_in_window(FLAG, "old", "v") is True  # expires at start + 1
    clock.now = start + 126.5 * tick  # stamp 255: the last tick a byte holds
    fresh_at = clock.now
    assert deduper.first_in_window(FLAG, "fresh", "v") is True
    generation = deduper._generation
    clock.now = fresh_at + 0.5  # 64 ticks past the byte: this store shifts the stamps
    assert deduper.first_in_window(FLAG, "trigger", "v") is True
    assert deduper._generation == generation + 2  # the shift did run (a seqlock: +2)
    assert deduper.first_in_window(FLAG, "fresh", "v") is False  # still fresh after it
    assert deduper.first_in_window(FLAG, "trigger", "v") is False
    clock.now = fresh_at + window - tick - 1e-9
    assert deduper.first_in_window(FLAG, "fresh", "v") is False
    clock.now = fresh_at + window
    assert deduper.first_in_window(FLAG, "fresh", "v") is True  # expires on time
    # "old" was logged long ago: whatever the shifts did to its stamp, it is logged again...
    for i in range(50):
        clock.now += 3 * window + i * tick  # ...at every step through 50 more wraps
        assert deduper.first_in_window(FLAG, "old", "v") is True
        assert deduper.first_in_window(FLAG, "old", "v") is False
        assert deduper.first_in_window(FLAG, f"new-{i}", "v") is True


def test_a_long_pause_expires_everything(clock: FakeClock):
    deduper = ExposureDeduper(window_seconds=60, slots=4096)
    units = [f"u{i}" for i in range(500)]
    assert all(deduper.first_in_window(FLAG, u, "v") for u in units)
    assert not any(deduper.first_in_window(FLAG, u, "v") for u in units)
    clock.now += 1e7  # days suspended: far past the byte of ticks, and of 2**32 of them
    assert all(deduper.first_in_window(FLAG, u, "v") for u in units)
    assert not any(deduper.first_in_window(FLAG, u, "v") for u in units)


def test_matches_an_exact_dedup_over_many_wraps(clock: FakeClock):
    """200 units, random lookups over 300 windows (about 300 stamp shifts), against an exact
    dictionary of log times: the table never dedups an exposure the exact answer logs (never
    hides), and dedups every one it does not log unless it is within a tick of expiring (no
    eviction pressure at this size)."""
    window = 2.0
    tick = window / TICKS
    deduper = ExposureDeduper(window_seconds=window, slots=4096)
    rng = random.Random(11)
    units = [f"unit-{i}" for i in range(200)]
    last_logged: dict[str, float] = {}
    early = 0
    for _ in range(30_000):
        clock.now += rng.expovariate(1 / (window / 100))
        unit = rng.choice(units)
        logged = deduper.first_in_window(FLAG, unit, "v")
        age = clock.now - last_logged.get(unit, -1e18)
        if age >= window:
            assert logged, f"hidden: {unit} last logged {age:.3f}s ago"
        elif age < window - tick:
            assert not logged, f"re-logged: {unit} logged {age:.3f}s ago"
        else:
            early += logged
        if logged:
            last_logged[unit] = clock.now
    assert deduper._generation >= 2 * 250  # it did cross the byte, about once per window
    assert early <= 30_000 * 2 / 100  # within a tick of the end: rare


def test_a_zero_fingerprint_and_matches_off_the_grid(monkeypatch: pytest.MonkeyPatch):
    """Chosen hashes: fingerprint 0 (the bytes of an empty way) is remembered like any other;
    and bytes matching across two neighbouring fingerprints are not a match."""
    digests = {
        "zero": bytes(4) + bytes(12),
        "a": bytes([1, 2, 3, 4]) + bytes(12),
        "b": bytes([5, 6, 7, 8]) + bytes(12),
        "straddle": bytes([3, 4, 5, 6]) + bytes(12),  # a's tail and b's head
    }
    monkeypatch.setattr(dedup, "_hash_bytes", lambda data: digests[data.split(b"\x00")[1].decode()])
    deduper = ExposureDeduper(window_seconds=3600, slots=10)  # one set: all in the same 64 bytes
    assert deduper.sets == 1
    assert deduper.first_in_window(FLAG, "zero", "v") is True
    assert deduper.first_in_window(FLAG, "zero", "v") is False
    deduper = ExposureDeduper(window_seconds=3600, slots=10)
    assert deduper.first_in_window(FLAG, "a", "v") is True  # way 0
    assert deduper.first_in_window(FLAG, "b", "v") is True  # way 1
    assert deduper._fingerprints[:8] == bytes(range(1, 9))
    assert deduper.first_in_window(FLAG, "straddle", "v") is True  # new, though 3 4 5 6 is there
    assert deduper.first_in_window(FLAG, "straddle", "v") is False
    assert deduper.first_in_window(FLAG, "zero", "v") is True
    assert deduper.first_in_window(FLAG, "a", "v") is False
    assert deduper.first_in_window(FLAG, "b", "v") is False


def test_a_full_set_keeps_its_older_entries_and_reuses_expired_ones(clock: FakeClock):
    """One set of 16 ways, 40 units: the first 15 stay for the whole window (the newest way
    takes the overflow); after the window, new units take the expired ways."""
    deduper = ExposureDeduper(window_seconds=100, slots=10)
    assert deduper.entries == WAYS
    first = [f"first-{i}" for i in range(40)]
    for i, unit in enumerate(first):
        assert deduper.first_in_window(FLAG, unit, "v") is True
        clock.now += 0.5 if i < 15 else 0.01
    for _ in range(3):  # the same 40 again, three passes: the first 15 never re-logged
        relogged = [u for u in first if deduper.first_in_window(FLAG, u, "v")]
        assert not set(relogged) & set(first[:15])
        assert len(relogged) == 25
    clock.now += 100
    second = [f"second-{i}" for i in range(16)]
    assert all(deduper.first_in_window(FLAG, u, "v") for u in second)
    assert not any(deduper.first_in_window(FLAG, u, "v") for u in second)  # all 16 kept


def test_threads_never_see_an_entry_fresh_past_its_window(clock: FakeClock):
    """Four threads look up their own units while the clock runs through ~600 windows (each
    reading moves it on by one stamp tick; a unit comes back about every 1.5 windows) and the
    interpreter switches threads every microsecond, so stamp shifts race with lookups: a
    "False" answer always comes within a window of that unit's last "True" answer, and a unit
    never logged is never deduped."""
    window = 0.05
    step = window / TICKS

    def running_clock() -> float:
        clock.now += step
        return clock.now

    deduper = ExposureDeduper(window_seconds=window, slots=4096)
    dedup._monotonic = running_clock  # (the fixture restores the module's clock)
    failures: list[str] = []

    def worker(n: int) -> None:
        rng = random.Random(n)
        units = [f"t{n}-u{i}" for i in range(50)]
        last_true: dict[str, float] = {}
        for _ in range(20_000):
            unit = rng.choice(units)
            before = clock.now
            try:
                logged = deduper.first_in_window(FLAG, unit, "v")
            except Exception as exc:  # a thread's exception would only be a warning
                failures.append(repr(exc))
                return
            after = clock.now
            if logged:
                last_true[unit] = after
            elif unit not in last_true or before - last_true[unit] >= window:
                failures.append(f"{unit}: deduped {before - last_true.get(unit, 0):.4f}s on")

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    finally:
        sys.setswitchinterval(old_interval)
    assert deduper._generation >= 2 * 400  # stamp shifts did happen under the threads
    assert failures == []


def test_a_stamp_shift_between_a_lookup_and_its_store_only_re_logs(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
):
    """Another thread shifts the stamps after this lookup computed its stamp and before it
    stored it (forced here from the one call in between): the stamp, in the old frame, would
    keep the entry fresh for two windows; it is stored as expired instead."""
    window = 1.0
    tick = window / TICKS
    deduper = ExposureDeduper(window_seconds=window, slots=4096)
    table = dedup._expired_table
    shifted: list[int] = []

    def shift_meanwhile(newest_expired: int) -> bytes:
        if not shifted:
            clock.now += 0.5  # another thread, half a window later, passes the byte...
            shifted.append(deduper._generation)
            deduper._rebase()  # ...and shifts the stamps
        return table(newest_expired)

    start = clock.now
    clock.now = start + 126.5 * tick  # stamp 255: the last tick a byte holds
    logged_at = clock.now
    monkeypatch.setattr(dedup, "_expired_table", shift_meanwhile)
    assert deduper.first_in_window(FLAG, "u", "v") is True
    assert shifted and deduper._generation == shifted[0] + 2  # the shift did run in between
    clock.now = logged_at + window  # the window is over: logged again, not deduped
    assert deduper.first_in_window(FLAG, "u", "v") is True
    assert deduper.first_in_window(FLAG, "u", "v") is False  # and this time remembered


@pytest.mark.parametrize("ticks_later", [128.5, 300])  # its stamp: 0 in the new frame, or < 0
def test_a_clock_reading_older_than_a_stamp_shift_is_stored_expired(
    clock: FakeClock, ticks_later: float
):
    """This lookup read the clock, then (descheduled) another thread shifted the stamps
    ``ticks_later`` ticks later: its reading, in the new frame, is at or before the byte's 0.
    It is logged, stored as expired (logged again next time), and nothing breaks."""
    window = 1.0
    tick = window / TICKS
    deduper = ExposureDeduper(window_seconds=window, slots=4096)
    start = clock.now
    clock.now = start + 126.5 * tick
    read = clock.now

    def stale_reading() -> float:
        clock.now = read + ticks_later * tick
        dedup._monotonic = clock  # the other thread's shift reads the real time
        deduper._rebase()
        return read

    dedup._monotonic = stale_reading  # (the fixture restores the module's clock)
    assert deduper.first_in_window(FLAG, "u", "v") is True
    assert deduper._generation == 2
    assert deduper.first_in_window(FLAG, "u", "v") is True  # stored as expired
    assert deduper.first_in_window(FLAG, "u", "v") is False


@pytest.mark.slow
def test_re_logs_at_most_5_percent_at_1m_units_per_window():
    """The headline, at the default 8 MB: 1M distinct units logged once, then the same 1M
    again (in order, then shuffled): at most 5% logged a second time (the direct-mapped table
    it replaces re-logged 50-62%)."""
    deduper = ExposureDeduper(window_seconds=3600)
    first = deduper.first_in_window
    units = [f"user-{i}" for i in range(1_000_000)]
    assert sum(first(FLAG, u, "on") for u in units) == 1_000_000  # every one new: all logged
    again = sum(first(FLAG, u, "on") for u in units)
    assert again <= 50_000, f"{again / 10_000:.2f}% re-logged"
    random.Random(3).shuffle(units)
    again_shuffled = sum(first(FLAG, u, "on") for u in units)
    assert again_shuffled <= 50_000, f"{again_shuffled / 10_000:.2f}% re-logged"
    assert deduper.memory_bytes == 8_388_560


def test_hash_is_the_documented_one():
    """Bytes 0-3 of MurmurHash3 x64-128 are the fingerprint: a stored entry is findable."""
    deduper = ExposureDeduper(window_seconds=3600, slots=4096)
    assert deduper.first_in_window(FLAG, "k", "v") is True
    digest = mmh3.hash_bytes(f"{FLAG}\x00k\x00v".encode())
    set_index = int.from_bytes(digest[8:], "little") % deduper.sets
    ways = deduper._fingerprints[set_index * 4 * WAYS : (set_index + 1) * 4 * WAYS]
    assert digest[:4] in [bytes(ways[i : i + 4]) for i in range(0, len(ways), 4)]
