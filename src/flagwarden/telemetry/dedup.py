"""Exposure deduplication in fixed memory: a set-associative table of 32-bit fingerprints.

:class:`ExposureDeduper` answers "has (flag, targeting key, variant) been logged within the
window?" for the exposure recorder, in a table whose size is fixed when it is built.
"""

from __future__ import annotations

import math
import os
import struct
import threading
import time

import mmh3

from flagwarden import speedups
from flagwarden.speedups import NO_SPEEDUPS_ENV
from flagwarden.telemetry.recorder import Deduper

__all__ = ["NO_SPEEDUPS_ENV", "ExposureDeduper", "compiled", "new_deduper"]


WAYS = 16  # fingerprints per set: 64 bytes, scanned by one bytearray.find
TICKS = 128  # stamp ticks per window: an entry expires up to window/128 early, never late
ENTRY_BYTES = 5  # a 4-byte fingerprint and a 1-byte stamp
_SET_BYTES = 4 * WAYS
_FIRST_TICK = TICKS + 1  # the tick right after a rebase: stamp 0 (an empty way) is expired
_MAX_STAMP = 0xFF

_hash_bytes = mmh3.hash_bytes  # the 128-bit x64 MurmurHash3, as 16 bytes
# Bytes 0-3 are the fingerprint, bytes 8-15 choose the set: independent halves of the hash.
_split = struct.Struct("<4s4xQ").unpack
_monotonic = time.monotonic  # the clock (module level, so a test can move it)


def _expired_table(newest_expired: int) -> bytes:
    """A ``bytes.translate`` table: 0 for the stamps up to ``newest_expired``, 1 after."""
    zeros = min(max(newest_expired + 1, 0), 256)
    return bytes(zeros) + b"\x01" * (256 - zeros)


class ExposureDeduper:
    """Has (flag, key, variant) been logged within ``window_seconds``? In fixed memory.

    **Memory.** ``slots`` is the memory budget expressed as the 8-byte slots of the earlier
    direct-mapped table (``telemetry.exposure_log.dedup_slots``; the default 1,048,576 is
    8 MB), so existing settings keep their memory: ``memory_bytes`` is ``slots * 8`` rounded
    down to whole sets of 80 bytes (8,388,560 bytes by default), and never grows with the
    number of keys. An entry is a 32-bit fingerprint and an 8-bit time stamp (5 bytes), so the
    default table holds 1,677,712 entries in 104,857 sets of 16 ways.

    **Lookup.** One MurmurHash3 (x64, 128-bit) of ``flag\\0key\\0variant``: bytes 8-15 choose
    the set, bytes 0-3 are the fingerprint, found with one ``bytearray.find`` over the set's 64
    bytes. A fresh match answers ``False`` (already logged) and writes nothing. Otherwise the
    answer is ``True`` and the entry is stored: in place when its fingerprint was there but
    expired, else over the set's first expired way (empty ways are), else, every way being
    fresh, over the set's last way, so the other 15 stay until they expire. Keeping the older
    entries, rather than replacing the oldest (FIFO, LRU), is what stops a full set from
    evicting each unit just before it comes back on a second pass over the same units: with
    more than 16 live units in a set, 15 are remembered for the whole window and the rest
    share one way.

    **Re-logs.** A repeat within the window is logged again only when its entry was evicted
    (or within a tick of its expiry, below). Measured by ``python -m bench.bench_dedup`` at the
    default size, against the direct-mapped table this replaces at the same memory: 1M
    distinct units, then the same 1M again, 0.54% logged again in order and 0.47% shuffled
    (direct-mapped: 61.5% and 49.9%); 250k units, 0% (21.1%); 2M, more units than entries,
    22.9% (85.2%). At 1M distinct units per window in steady state (shuffled passes over
    simulated hours): 0.44% of repeats evicted and re-logged, 0.40% re-logged within a tick
    of the window's end (direct-mapped: 55.9% evicted).

    **Never hide.** ``False`` is answered only when the set holds the same 32-bit fingerprint
    with a stamp less than the window old. A new (flag, key, variant) is therefore reported as
    already logged only when a live entry of its set has the same fingerprint: a probability
    of (live entries in its set) / 2**32 per new triple, at most 16 / 2**32 = 3.7e-9 (about
    2.2e-9 at 1M units, 9.5 live entries a set; the direct-mapped table's was at most
    1 / 2**32). Everything else that can go wrong (eviction, races between threads, the stamp
    shift below) only makes an exposure be logged again early. Lookups take no lock.

    **Time.** Stamps count ticks of ``window / 128`` and an entry is fresh while fewer than 128
    ticks have passed, so it expires between ``window - window/128`` and ``window`` after it
    was logged: possibly a little early, never late. A byte holds 256 ticks: when the tick
    would pass 255, every stamp is shifted down (one ``bytes.translate`` of the stamp array,
    under a lock; about a millisecond at the default size, about once per window), keeping
    fresh stamps exact and clamping expired ones to stamps that stay expired. A long pause
    (a suspended process) expires everything, as it should. A window of 0 (or less) never
    deduplicates: every call answers ``True``; an infinite one never expires.
    """

    def __init__(self, window_seconds: float, slots: int = 1 << 20) -> None:
        if math.isnan(window_seconds):
            raise ValueError("window_seconds must be a number")
        if slots < 1:
            raise ValueError(f"slots must be positive, got {slots}")
        self.window = float(window_seconds)
        self.slots = slots
        self.sets = max(1, slots * 8 // (ENTRY_BYTES * WAYS))
        self.entries = self.sets * WAYS
        self._fingerprints = bytearray(4 * self.entries)  # zero: empty (and always expired)
        self._fingerprint_view = memoryview(self._fingerprints)  # (cheaper slice writes)
        self._stamps = bytearray(self.entries)
        self._epoch = _monotonic()
        # x = (now - epoch) * inv counts ticks since the epoch; the stamp of x is
        # int(x) - offset, and an entry is fresh while x < stamp + limit (limit = TICKS +
        # offset): floor(x) - offset - stamp < TICKS, exactly, for integer stamp and limit.
        self._inv = TICKS / self.window if self.window > 0 else 0.0
        self._offset = -_FIRST_TICK
        self._limit: float = TICKS + self._offset if self.window > 0 else -math.inf
        # (tick, the _expired_table for it): the victim search's, made once per tick
        self._expired = (_FIRST_TICK, _expired_table(_FIRST_TICK - TICKS))
        self._generation = 0  # odd while a rebase runs; writers check it (a seqlock)
        self._rebase_lock = threading.Lock()
        self._pid = os.getpid()

    @property
    def memory_bytes(self) -> int:
        return len(self._fingerprints) + len(self._stamps)

    def first_in_window(self, flag: str, key: str, variant: str) -> bool:
        """``True`` (log it) unless this flag, key and variant was logged within the window."""
        fingerprint, h = _split(_hash_bytes(f"{flag}\x00{key}\x00{variant}".encode()))
        first = h % self.sets * WAYS
        # The order of these reads is what keeps other threads from making an entry look
        # fresher than it is (see _rebase): the limit, then the time, then the set's stamps,
        # then its fingerprints.
        limit = self._limit
        x = (_monotonic() - self._epoch) * self._inv
        stamps = self._stamps[first : first + WAYS]
        start = 4 * first
        end = start + _SET_BYTES
        at = self._fingerprints.find(fingerprint, start, end)
        while at & 3 and at > 0:  # a match off the 4-byte grid straddles two entries
            at = self._fingerprints.find(fingerprint, at + 1, end)
        if at >= 0:
            way = (at - start) >> 2
            if x < limit + stamps[way]:
                return False  # logged within the window
        generation = self._generation  # (before the offset: see _rebase)
        tick = int(x) - self._offset
        if at < 0:  # the first expired way of the set (empty ones are), else the last way
            expired = self._expired
            if expired[0] != tick:
                self._expired = expired = (tick, _expired_table(tick - TICKS))
            way = stamps.translate(expired[1]).find(0)
            if way < 0:
                way = WAYS - 1
            self._fingerprint_view[start + 4 * way : start + 4 * way + 4] = fingerprint
        # else: there but expired, logged again and stamped in place
        if tick > _MAX_STAMP:
            offset, generation = self._rebase()
            tick = int(x) - offset
        if tick < 0:  # x was read before another thread's rebase: call it expired
            tick = 0
        self._stamps[first + way] = tick
        if generation & 1 or generation != self._generation:
            self._stamps[first + way] = 0  # a rebase ran meanwhile: its frame is unknown
        return True

    def after_fork_in_child(self) -> None:
        """A fork in the middle of another thread's rebase leaves the generation odd for ever
        (every stamp would be written as expired): make it even. The stamps are then at worst
        older than they are (a shift done, the offset not yet moved): re-logs, never hiding."""
        self._rebase_lock = threading.Lock()
        self._pid = os.getpid()
        if self._generation & 1:
            self._generation += 1

    def _rebase(self) -> tuple[int, int]:
        """Shift every stamp down so that the current tick fits a byte again; return the
        offset and the generation a stamp computed with that offset is valid for.

        Other threads are not stopped, so the order of writes here and of reads in
        :meth:`first_in_window` is what makes a race err towards logging again: the stamps
        are shifted before the limit (a reader meanwhile sees entries older than they are,
        never newer), and a writer that read the generation while it was odd, or saw it
        change before its stamp landed, stores 0 (expired) instead of a stamp in a frame that
        may no longer hold. A stamp is the time read before the set's fingerprints were
        searched, so it is never later than the log of whichever entry holds its way.
        """
        if self._pid != os.getpid():  # forked while another thread may have held the lock
            self._rebase_lock = threading.Lock()
            self._pid = os.getpid()
        with self._rebase_lock:
            tick = int((_monotonic() - self._epoch) * self._inv) - self._offset
            if tick > _MAX_STAMP:  # not already done by another thread
                shift = tick - _FIRST_TICK
                # Fresh stamps (> tick - TICKS, so > shift + 1) keep their age exactly;
                # expired ones land on 0 or 1, still expired at tick TICKS + 1.
                table = bytes(max(stamp - shift, 0) for stamp in range(256))
                self._generation += 1
                stamps = self._stamps
                stamps[:] = stamps.translate(table)
                self._offset += shift
                self._limit += shift
                self._generation += 1
            return self._offset, self._generation


def compiled() -> type | None:
    """The compiled table (``flagwarden._dedup.Table``, built with the package when a C
    compiler is there), or None: not built, or turned off with ``FLAGWARDEN_NO_SPEEDUPS=1``."""
    module = speedups.load("_dedup")
    return None if module is None else module.Table


def new_deduper(window_seconds: float, slots: int = 1 << 20) -> Deduper:
    """The dedup table for the exposure recorder: the compiled one when it is there (one C
    call per evaluation, about a fifth of the Python table's cost), else :class:`ExposureDeduper`.
    Both keep the same table (sets, ways, stamps, replacement) and the same guarantees; they
    hash the triple differently (the compiled one with Python's own string hashes)."""
    table = compiled()
    if table is None:
        return ExposureDeduper(window_seconds, slots)
    return table(window_seconds, slots)
