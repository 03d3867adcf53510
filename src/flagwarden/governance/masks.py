"""Reading a column in pieces and computing its inside mask (bucket < limit), with either engine.

A column is read in order, in pieces of at most :data:`CHUNK` keys (:func:`column_pieces`,
:func:`list_pieces`). Columns Arrow already holds (pandas ``string[pyarrow]``, polars, pyarrow)
are read in place and numpy ints as they are; a chunk of Python str (a list, a pandas object
column) is bucketed from the str objects by the compiled ``flagwarden._murmur`` when it was
built; others are converted to Arrow a chunk at a time, so the memory over the input stays
small; what Arrow cannot hold as the same keys stays Python values. :func:`inside_mask` fills
one numpy bool mask over the pieces with the compiled kernels (:mod:`flagwarden.governance.
murmur`) or the Python engine (:func:`inside`: one fused loop calling mmh3); both give the same
answers, bit for bit.

A key is no unit when it is empty (``""``) or missing (``None``, ``pandas.NA``, a column's null,
pandas' NaN/NaT in a pandas column): it is outside the stage and counted as missing.

numpy and pyarrow are imported only when a call needs them (:func:`numpy` and :func:`pyarrow`
give None when they are not installed).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import mmh3

from flagwarden import speedups
from flagwarden.governance.bucketing import BUCKETS
from flagwarden.governance.murmur import prefix_state

CHUNK = 1 << 16
"""Keys converted at a time when a column is not already in Arrow form (bounds the memory)."""

_INT64_MAX = (1 << 63) - 1

# mmh3 >= 5 has a positional-only unsigned variant (faster than hash(..., signed=False)).
# Never hand mmh3 a str: mmh3 5.3 crashes on a str with a lone surrogate; encode() raises.
_uint32: Callable[[bytes], int] = getattr(
    mmh3, "mmh3_32_uintdigest", lambda data: mmh3.hash(data, 0, False)
)


_murmur = speedups.load("_murmur")
# (keys, h0, carry, fill, prefix length, limit, out) -> (treated, missing), or None
_strings: Callable[..., tuple[int, int] | None] | None = (
    None if _murmur is None else _murmur.strings
)


def numpy() -> Any:
    try:
        import numpy
    except ImportError:  # polars or pyarrow without numpy: the list path still works
        return None
    return numpy


def pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:
        return None
    return pyarrow


def pandas_na_type() -> Any:
    """The type of ``pandas.NA`` if pandas is loaded (no pandas loaded: no such keys exist)."""
    pandas = sys.modules.get("pandas")
    na = getattr(pandas, "NA", None)
    return type(na) if na is not None else None


# ---------------------------------------------------------------------------------------------
# The Python engine


def inside(values: list[Any], prefix: str, lim: int) -> tuple[list[bool], int]:
    """Whether each key is inside the stage, and how many are missing (the Python engine)."""
    u32 = _uint32
    n = BUCKETS
    try:  # all str, the usual case: no str() call (`k != ""` lets a None or a 0 raise below)
        inside = [(u32((prefix + k).encode()) % n < lim) if k != "" else False for k in values]
    except TypeError:  # None, numbers...: to str first, a missing key as ""
        na_type = pandas_na_type()
        values = [
            k if k.__class__ is str else ("" if k is None or k.__class__ is na_type else str(k))
            for k in values
        ]
        inside = [(u32((prefix + k).encode()) % n < lim) if k else False for k in values]
    return inside, values.count("")


# ---------------------------------------------------------------------------------------------
# Columns: pieces (in order) and the mask over them


# A piece of a column: ("arrow", pyarrow.Array) read by the kernels; ("ints", int64 ndarray);
# ("values", list of Python values, ndarray of pandas' isna or None); ("strs", a list or an
# object ndarray that may hold only str and None, a function giving the piece to read it as
# otherwise).
Piece = tuple[str, Any, Any]


def inside_mask(
    pieces: Iterator[Piece], n: int, prefix: str, lim: int, kernels: Any
) -> tuple[Any, int, int]:
    """The inside mask (numpy bool) of all the pieces, with (treated, missing) counts."""
    np = numpy()
    mask = np.empty(n, dtype=bool)
    context = _Context(prefix, lim, kernels, np)
    at = treated = missing = 0
    for piece in pieces:
        t, m, length = context.piece(piece, mask, at)
        at += length
        treated += t
        missing += m
    assert at == n, (at, n)
    return mask, treated, missing


def column_pieces(keys: Any, kind: str) -> Iterator[Piece]:
    if kind == "pandas":
        return _pandas_pieces(keys)
    if kind == "polars":
        return _polars_pieces(keys)
    return _arrow_pieces(keys)


def _arrow_pieces(column: Any) -> Iterator[Piece]:
    """A pyarrow Array or ChunkedArray, in zero-copy slices of at most CHUNK keys."""
    chunks = column.chunks if hasattr(column, "chunks") else [column]
    for chunk in chunks:
        for at in range(0, len(chunk), CHUNK):
            yield ("arrow", chunk.slice(at, CHUNK), None)


_POLARS_ARROW = {
    "String",
    "Utf8",
    "Categorical",
    "Enum",
    *(f"{sign}Int{bits}" for sign in ("", "U") for bits in (8, 16, 32, 64)),
}


def _polars_pieces(series: Any) -> Iterator[Piece]:
    """Strings, integers and categoricals through Arrow; anything else as Python values."""
    arrow = type(series.dtype).__name__ in _POLARS_ARROW and pyarrow() is not None
    for at in range(0, len(series), CHUNK):
        part = series.slice(at, CHUNK)
        if arrow:
            yield ("arrow", part.to_arrow(), None)
        else:
            yield ("values", part.to_list(), None)


def _pandas_pieces(series: Any) -> Iterator[Piece]:
    """numpy ints as they are, Arrow-backed columns in place, object columns converted to
    Arrow a chunk at a time, anything else as Python values (with pandas' own missing mask)."""
    np = numpy()
    pa = pyarrow()
    dtype = series.dtype
    n = len(series)
    if isinstance(dtype, np.dtype) and dtype.kind in "iu":
        values = series.to_numpy()
        for at in range(0, n, CHUNK):
            yield ("ints", values[at : at + CHUNK], None)
        return
    if isinstance(dtype, np.dtype) and dtype.kind == "O" and pa is not None:
        values = series.to_numpy()

        def read(at: int, part: Any) -> Piece:
            arrow = _object_to_arrow(pa, part)
            if arrow is not None:
                return ("arrow", arrow, None)
            return ("values", part.tolist(), series.iloc[at : at + CHUNK].isna().to_numpy())

        for at in range(0, n, CHUNK):
            part = values[at : at + CHUNK]
            yield ("strs", part, lambda at=at, part=part: read(at, part))
        return
    if not isinstance(dtype, np.dtype) and pa is not None:
        array = series.array
        for at in range(0, n, CHUNK):
            try:
                arrow = pa.array(array[at : at + CHUNK])
            except (pa.ArrowException, TypeError, ValueError):
                arrow = None
            chunks = [] if arrow is None else getattr(arrow, "chunks", [arrow])
            if arrow is not None and all(_arrow_readable(pa, c.type) for c in chunks):
                for chunk in chunks:
                    yield ("arrow", chunk, None)
            else:
                part = series.iloc[at : at + CHUNK]
                yield ("values", part.tolist(), part.isna().to_numpy())
        return
    for at in range(0, n, CHUNK):
        part = series.iloc[at : at + CHUNK]
        yield ("values", part.tolist(), part.isna().to_numpy())


def list_pieces(values: list[Any]) -> Iterator[Piece]:
    """A list through Arrow a chunk at a time when it holds only str or only ints (with None);
    other chunks (mixed types, floats, big ints) as Python values."""
    pa = pyarrow()

    def read(part: list[Any]) -> Piece:
        arrow = _list_to_arrow(pa, part)
        return ("arrow", arrow, None) if arrow is not None else ("values", part, None)

    for at in range(0, len(values), CHUNK):
        part = values[at : at + CHUNK]
        yield ("strs", part, lambda part=part: read(part))


def _list_to_arrow(pa: Any, part: list[Any]) -> Any:
    try:
        arrow = pa.array(part)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return None
    return arrow if _arrow_readable(pa, arrow.type) else None


def _object_to_arrow(pa: Any, part: Any) -> Any:
    """An object ndarray slice as Arrow strings or ints (NaN, NA and None as nulls: pandas'
    missing values), or None when it holds anything else."""
    try:
        arrow = pa.array(part, from_pandas=True)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return None
    return arrow if _arrow_readable(pa, arrow.type) else None


def _arrow_readable(pa: Any, type_: Any) -> bool:
    """Types whose values read as the same keys as str() of their Python values."""
    t = pa.types
    if t.is_dictionary(type_):
        return _arrow_readable(pa, type_.value_type)
    return bool(
        t.is_string(type_)
        or t.is_large_string(type_)
        or (hasattr(t, "is_string_view") and t.is_string_view(type_))
        or t.is_integer(type_)
        or t.is_null(type_)
    )


class _Context:
    """One call's constants: the prefix (as the hash state after it, for the kernels), the
    integer limit, the kernels (None: the Python engine)."""

    def __init__(self, prefix: str, lim: int, kernels: Any, np: Any) -> None:
        self.prefix = prefix
        self.lim = lim
        self.kernels = kernels
        self.np = np
        self.state = prefix_state(prefix.encode())
        self.no_bits = np.empty(0, dtype=np.uint8)
        self.no_bits.flags.writeable = False
        self.text = np.empty(24, dtype=np.uint8)  # the kernel writes each int's digits here

    def piece(self, piece: Piece, mask: Any, at: int) -> tuple[int, int, int]:
        """Fill the piece's part of the mask: (treated, missing, length)."""
        kind, data, na = piece
        length = len(data)
        out = mask[at : at + length]
        if kind == "strs":
            counts = self.strs(data, out)
            if counts is not None:
                return counts[0], counts[1], length
            kind, data, na = na()  # not all str: read the way its content needs
        if kind == "arrow":
            treated, missing = self.arrow(data, out)
        elif kind == "ints":
            treated, missing = self.ints(data, self.no_bits, 0, out)
        else:
            treated, missing = self.values(data, na, out)
        return treated, missing, length

    def strs(self, values: Any, out: Any) -> tuple[int, int] | None:
        """Keys that may all be str (or None: missing), bucketed from the str objects by the
        compiled module (no Arrow conversion); None when it is not there, the Python engine
        was asked for, or a key is anything else (or cannot be encoded)."""
        if self.kernels is None or _strings is None:
            return None
        h0, carry, nfill, plen = self.state
        counts: tuple[int, int] | None = _strings(values, h0, carry, nfill, plen, self.lim, out)
        return counts

    def values(self, values: list[Any], na: Any, out: Any) -> tuple[int, int]:
        if na is not None and na.any():
            values = [None if gone else k for k, gone in zip(values, na.tolist(), strict=True)]
        flags, missing = inside(values, self.prefix, self.lim)
        out[:] = flags
        return flags.count(True), missing

    def ints(self, values: Any, bits: Any, bits_at: int, out: Any) -> tuple[int, int]:
        np = self.np
        if self.kernels is None:
            return self.values(values.tolist(), None, out)
        if values.dtype != np.int64:
            if values.dtype.kind == "u" and len(values) and values.max() > _INT64_MAX:
                return self.values(values.tolist(), None, out)  # beyond int64: rare, slow
            values = values.astype(np.int64)
        values = np.ascontiguousarray(values).view()
        values.flags.writeable = False  # one compiled signature for every source
        h0, carry, nfill, plen = self.state
        treated, missing = self.kernels.ints(
            values, bits, bits_at, h0, carry, nfill, plen, self.lim, out, self.text
        )
        return int(treated), int(missing)

    def arrow(self, array: Any, out: Any) -> tuple[int, int]:
        np = self.np
        pa = pyarrow()
        types = pa.types
        type_ = array.type
        if len(array) == 0:
            return 0, 0
        if types.is_dictionary(type_):
            array = array.dictionary_decode()
            type_ = array.type
        if hasattr(types, "is_string_view") and types.is_string_view(type_):
            array = array.cast(pa.large_string())
            type_ = array.type
        if types.is_null(type_):
            out[:] = False
            return 0, len(array)
        strings = types.is_string(type_) or types.is_large_string(type_)
        if self.kernels is None or not (strings or types.is_integer(type_)):
            if strings and array.null_count:
                array = array.fill_null("")  # a null is a missing key, as "" is
            return self.values(array.to_pylist(), None, out)
        buffers = array.buffers()
        offset = array.offset
        bits = self.no_bits
        if buffers[0] is not None and array.null_count:
            bits = np.frombuffer(buffers[0], dtype=np.uint8)
        if not strings:
            width = np.dtype(type_.to_pandas_dtype())
            values = np.frombuffer(buffers[1], dtype=width, count=offset + len(array))[offset:]
            if width.kind == "u" and width.itemsize == 8 and values.max() > _INT64_MAX:
                return self.values(array.to_pylist(), None, out)  # beyond int64: rare, slow
            if width != np.int64:
                values = values.astype(np.int64)
                values.flags.writeable = False
            return self.ints(values, bits, offset, out)
        index = np.int32 if types.is_string(type_) else np.int64
        offsets = np.frombuffer(buffers[1], dtype=index, count=offset + len(array) + 1)[offset:]
        data = self.no_bits if buffers[2] is None else np.frombuffer(buffers[2], dtype=np.uint8)
        h0, carry, nfill, plen = self.state
        treated, missing = self.kernels.strings(
            offsets, data, bits, offset, h0, carry, nfill, plen, self.lim, out
        )
        return int(treated), int(missing)
