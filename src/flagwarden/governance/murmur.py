"""The compiled engine of :mod:`flagwarden.governance.columns`: murmur3_x86_32 (seed 0) in numba.

The kernels bucket keys as :func:`flagwarden.governance.bucketing.bucket` does
(``murmur3_x86_32(utf8(f"{salt}:{key}"), 0) % 100000``), continuing from the hash state after
the ``"{salt}:"`` prefix (:func:`prefix_state`): over Arrow's offsets and data buffers, or over
int64 values written out in decimal as ``str(int)`` does, with no Python object per key. They
give the Python engine's answers (:func:`flagwarden.governance.masks.inside`), bit for bit.

numba is the optional ``[fast]`` extra. It and numpy are imported only when the kernels are
first needed (:func:`load_kernels`: compiled once per process, or loaded from numba's on-disk
cache). :func:`kernels_for` chooses the engine for a batch; ``FLAGWARDEN_NO_NUMBA=1`` turns the
compiled one off.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Literal

Engine = Literal["auto", "numba", "python"]

NO_NUMBA_ENV = "FLAGWARDEN_NO_NUMBA"
"""Set to 1 to keep the compiled engine off (the Python engine gives the same answers)."""

_LOAD_FROM = 50_000  # "auto" loads numba (~0.5 s once per process) for batches this big
_COMPILED_FROM = 1_000  # ... and, once loaded, uses it from this size up
_MASK32 = 0xFFFFFFFF


def prefix_state(prefix: bytes) -> tuple[int, int, int, int]:
    """murmur3_x86_32's state after the prefix's whole 4-byte blocks, the prefix's leftover
    bytes (packed little-endian) and their count, and the prefix length: every key's hash
    continues from there."""
    h1 = 0
    whole = len(prefix) // 4 * 4
    for at in range(0, whole, 4):
        h1 = _mix_block(h1, int.from_bytes(prefix[at : at + 4], "little"))
    return h1, int.from_bytes(prefix[whole:], "little"), len(prefix) - whole, len(prefix)


def _mix_block(h1: int, k1: int) -> int:
    k1 = (k1 * 0xCC9E2D51) & _MASK32
    k1 = ((k1 << 15) | (k1 >> 17)) & _MASK32
    k1 = (k1 * 0x1B873593) & _MASK32
    h1 ^= k1
    h1 = ((h1 << 13) | (h1 >> 19)) & _MASK32
    return (h1 * 5 + 0xE6546B64) & _MASK32


def _k_rest(h1, carry, nfill, total, data, start, end):
    """murmur3_x86_32 finished over ``data[start:end]``, continuing from a prefix's state
    (:func:`prefix_state`); ``total`` is the prefix's length plus the key's. For numba: int64
    arithmetic masked to 32 bits (the products wrap; their low 32 bits are exact), unsigned
    indices (no negative-index wraparound: twice as fast)."""
    m = 0xFFFFFFFF
    one = _np.uint64(1)
    i = _np.uint64(start)
    end = _np.uint64(end)
    k1 = carry
    fill = nfill
    if fill > 0:  # the prefix's leftover bytes and the key's first ones make one block
        while fill < 4 and i < end:
            k1 |= int(data[i]) << (8 * fill)
            fill += 1
            i += one
        if fill == 4:
            k1 = (k1 * 0xCC9E2D51) & m
            k1 = ((k1 << 15) | (k1 >> 17)) & m
            k1 = (k1 * 0x1B873593) & m
            h1 ^= k1
            h1 = ((h1 << 13) | (h1 >> 19)) & m
            h1 = (h1 * 5 + 0xE6546B64) & m
            k1 = 0
            fill = 0
    if fill == 0:
        while i + _np.uint64(4) <= end:
            k1 = (
                int(data[i])
                | (int(data[i + one]) << 8)
                | (int(data[i + _np.uint64(2)]) << 16)
                | (int(data[i + _np.uint64(3)]) << 24)
            )
            k1 = (k1 * 0xCC9E2D51) & m
            k1 = ((k1 << 15) | (k1 >> 17)) & m
            k1 = (k1 * 0x1B873593) & m
            h1 ^= k1
            h1 = ((h1 << 13) | (h1 >> 19)) & m
            h1 = (h1 * 5 + 0xE6546B64) & m
            i += _np.uint64(4)
        k1 = 0
        while i < end:
            k1 |= int(data[i]) << (8 * fill)
            fill += 1
            i += one
    if fill > 0:
        k1 = (k1 * 0xCC9E2D51) & m
        k1 = ((k1 << 15) | (k1 >> 17)) & m
        k1 = (k1 * 0x1B873593) & m
        h1 ^= k1
    h1 ^= total & m
    h1 ^= h1 >> 16
    h1 = (h1 * 0x85EBCA6B) & m
    h1 ^= h1 >> 13
    h1 = (h1 * 0xC2B2AE35) & m
    h1 ^= h1 >> 16
    return h1


# Globals the kernels read, bound when numba is loaded (numba resolves them at compile time).
_np: Any = None  # numpy
_jit_rest: Any = None  # the compiled _k_rest


def _k_strings(offsets, data, bits, bits_at, h0, carry, nfill, plen, lim, out):
    """Arrow strings (offsets + UTF-8 data, validity bits) -> inside mask; (treated, missing).
    A null or an empty string is missing."""
    treated = 0
    missing = 0
    checked = bits.shape[0] > 0
    for j in range(out.shape[0]):
        if checked:
            b = bits_at + j
            if (bits[b >> 3] >> (b & 7)) & 1 == 0:
                out[j] = False
                missing += 1
                continue
        start = int(offsets[j])
        end = int(offsets[j + 1])
        if start == end:
            out[j] = False
            missing += 1
            continue
        if _jit_rest(h0, carry, nfill, plen + end - start, data, start, end) % 100000 < lim:
            out[j] = True
            treated += 1
        else:
            out[j] = False
    return treated, missing


def _k_ints(values, bits, bits_at, h0, carry, nfill, plen, lim, out, text):
    """int64 values (validity bits) -> inside mask, each key written out as ``str(int)``
    does (decimal, a leading "-"; right-aligned in the ``text`` scratch, 24 bytes); (treated,
    missing). Unsigned arithmetic, two digits per division: no sign fixups, half the steps."""
    treated = 0
    missing = 0
    checked = bits.shape[0] > 0
    one = _np.uint64(1)
    ten = _np.uint64(10)
    hundred = _np.uint64(100)
    zero_char = _np.uint64(48)
    size = text.shape[0]
    for j in range(out.shape[0]):
        if checked:
            b = bits_at + j
            if (bits[b >> 3] >> (b & 7)) & 1 == 0:
                out[j] = False
                missing += 1
                continue
        v = values[j]
        u = _np.uint64(-(v + 1)) + one if v < 0 else _np.uint64(v)  # |v|, int64's min too
        at = size
        while u >= hundred:
            q = u // hundred
            r = u - q * hundred
            at -= 2
            text[at] = zero_char + r // ten
            text[at + 1] = zero_char + r % ten
            u = q
        if u >= ten:
            at -= 2
            text[at] = zero_char + u // ten
            text[at + 1] = zero_char + u % ten
        else:
            at -= 1
            text[at] = zero_char + u
        if v < 0:
            at -= 1
            text[at] = 45  # "-"
        if _jit_rest(h0, carry, nfill, plen + size - at, text, at, size) % 100000 < lim:
            out[j] = True
            treated += 1
        else:
            out[j] = False
    return treated, missing


class _Kernels:
    """The compiled kernels (numba dispatchers: strings with int32 or int64 offsets, ints)."""

    def __init__(self, strings: Any, ints: Any, seconds: float) -> None:
        self.strings = strings
        self.ints = ints
        self.seconds = seconds  # import + compile (or load from numba's cache)


_kernels: _Kernels | None = None
_kernels_failed = False
_kernels_lock = threading.Lock()
_lock_pid = os.getpid()


def load_kernels() -> _Kernels | None:
    """Import numba and compile the kernels (cached on disk by numba: later processes load
    them); None when numba is not installed."""
    global _kernels_lock, _lock_pid
    if _kernels is not None or _kernels_failed:
        return _kernels
    if _lock_pid != os.getpid():  # forked while another thread compiled: its lock stays held
        _kernels_lock, _lock_pid = threading.Lock(), os.getpid()
    with _kernels_lock:
        if _kernels is None and not _kernels_failed:
            _compile_kernels()
    return _kernels


def _compile_kernels() -> None:
    """Compile (or load from numba's cache) every kernel signature up front: one cost, once."""
    global _kernels, _kernels_failed, _jit_rest, _np
    started = time.perf_counter()
    try:
        import numba
        import numpy
        from numba import types
    except ImportError:
        _kernels_failed = True
        return
    _np = numpy
    _jit_rest = numba.njit(cache=True, nogil=True)(_k_rest)

    def ro(dtype: Any) -> Any:
        return types.Array(dtype, 1, "C", readonly=True)

    out = types.Array(types.boolean, 1, "C")
    scratch = types.Array(types.uint8, 1, "C")
    i64 = types.int64
    count = types.UniTuple(i64, 2)
    state = (i64, i64, i64, i64, i64)  # h0, carry, nfill, plen, lim
    strings = numba.njit(
        [
            count(ro(offset), ro(types.uint8), ro(types.uint8), i64, *state, out)
            for offset in (types.int32, types.int64)
        ],
        cache=True,
        nogil=True,
    )(_k_strings)
    ints = numba.njit(
        [count(ro(i64), ro(types.uint8), i64, *state, out, scratch)],
        cache=True,
        nogil=True,
    )(_k_ints)
    _kernels = _Kernels(strings, ints, time.perf_counter() - started)


def kernels_for(engine: Engine, n: int) -> _Kernels | None:
    """The kernels to use for ``n`` keys, or None for the Python engine."""
    if engine == "python":
        return None
    if engine not in ("auto", "numba"):
        raise ValueError(f"engine must be 'auto', 'numba' or 'python', not {engine!r}")
    if os.environ.get(NO_NUMBA_ENV, "").strip() not in ("", "0"):
        if engine == "numba":
            raise RuntimeError(f"the numba engine is turned off ({NO_NUMBA_ENV} is set)")
        return None
    if engine == "auto" and n < (_COMPILED_FROM if _kernels is not None else _LOAD_FROM):
        return None  # small: Python is as fast as converting, and loading numba costs ~0.5 s
    kernels = load_kernels()
    if kernels is None and engine == "numba":
        raise RuntimeError("the numba engine needs numba: pip install 'flagwarden[fast]'")
    return kernels
