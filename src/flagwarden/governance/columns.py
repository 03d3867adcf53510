"""The per-record half of ``flagwarden.assign``: every key's bucket and served value, fast.

``assign`` decides once per batch what the batch gets; when the stage splits it, this module
buckets each key exactly as :func:`flagwarden.governance.bucketing.bucket` does
(``murmur3_x86_32(utf8(f"{salt}:{key}"), 0) % 100000``, with ``key = str(key)``) and gives the
served values back in the caller's shape (a list, or a pandas/polars/pyarrow column).

Two engines give the same answers, bit for bit:

* Python (always there): one fused loop over the keys calling mmh3.
* Compiled (the optional ``[fast]`` extra, numba): murmur3_x86_32 over Arrow's offsets and data
  buffers, or over int64 values written out in decimal as ``str(int)`` does, with no Python
  object per key. Columns Arrow already holds (pandas ``string[pyarrow]``, polars, pyarrow)
  are read in place; chunks of Python str (lists, pandas object columns) go to the C extension
  ``flagwarden._murmur`` when it was built; others are converted in chunks of :data:`CHUNK`
  keys, so the memory over the input stays small. ``FLAGWARDEN_NO_NUMBA=1`` turns it off.

This module is the interface and the shape building: what the input is, and the served values
in the caller's shape with the dtype the column library infers for them. The column reading
and the inside mask are in :mod:`flagwarden.governance.masks`, the compiled engine in
:mod:`flagwarden.governance.murmur`.

A key is no unit when it is empty (``""``) or missing (``None``, ``pandas.NA``, a column's null,
pandas' NaN/NaT in a pandas column): it gets control and is counted as missing.

pandas, polars, pyarrow, numpy and numba are imported only when a call needs them (the CLI
imports this package and must start fast).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sized
from typing import Any

from flagwarden.governance import masks, murmur
from flagwarden.governance.bucketing import BUCKETS
from flagwarden.governance.masks import CHUNK
from flagwarden.governance.murmur import NO_NUMBA_ENV, Engine

__all__ = [
    "CHUNK",
    "NO_NUMBA_ENV",
    "as_strings",
    "constant",
    "first_key",
    "route",
    "route_masked",
    "size",
    "wrap",
]

_COLUMN_TYPES = "a list (or iterable) or a pandas/polars Series or a pyarrow (Chunked)Array"


# ---------------------------------------------------------------------------------------------
# The interface


def route(
    keys: Any,
    salt: str,
    limit: float,
    treatment: Any,
    control: Any,
    *,
    engine: Engine = "auto",
) -> tuple[Any, int, int]:
    """Each key's served value (treatment when its bucket < limit, else control; empty or
    missing keys get control), in the caller's shape, with (treated, missing) counts.

    ``engine``: "auto" (compiled when numba is there and the batch is big enough), "numba"
    (compiled, or an error without numba; a list goes through pyarrow, Python without it) or
    "python"; all give the same answers.
    """
    kind = _kind(keys)
    lim = _int_limit(limit)
    prefix = f"{salt}:"
    if kind == "list":
        values = keys if isinstance(keys, list) else list(keys)
        np = masks.numpy() if values else None
        kernels = murmur.kernels_for(engine, len(values)) if np is not None else None
        if kernels is None or masks.pyarrow() is None:
            inside, missing = masks.inside(values, prefix, lim)
            treated = inside.count(True)
            return _select(inside, treatment, control), treated, missing
        mask, treated, missing = masks.inside_mask(
            masks.list_pieces(values), len(values), prefix, lim, kernels
        )
        return _select_mask(mask, treatment, control), treated, missing
    n = len(keys)
    np = masks.numpy()
    if n == 0 or np is None:  # no numpy (polars or pyarrow alone): as lists
        out, treated, missing = route(_to_list(keys, kind), salt, limit, treatment, control)
        return _rebuild(keys, kind, out), treated, missing
    mask, treated, missing = _column_mask(keys, kind, salt, limit, engine)
    return _shaped(keys, kind, mask, treated, treatment, control), treated, missing


def route_masked(
    keys: Any,
    salt: str,
    limit: float,
    treatment: Any,
    control: Any,
    *,
    engine: Engine = "auto",
) -> tuple[Any, Any]:
    """:func:`route` for a pandas, polars or pyarrow column, with the inside mask (a numpy
    bool array: the key's bucket is inside the stage; never for an empty or missing key)."""
    kind = _kind(keys)
    if kind == "list" or len(keys) == 0 or masks.numpy() is None:
        raise TypeError("route_masked takes a non-empty pandas, polars or pyarrow column")
    mask, treated, _ = _column_mask(keys, kind, salt, limit, engine)
    return _shaped(keys, kind, mask, treated, treatment, control), mask


def _column_mask(
    keys: Any, kind: str, salt: str, limit: float, engine: Engine
) -> tuple[Any, int, int]:
    """A non-empty column's inside mask (numpy bool) with (treated, missing) counts."""
    n = len(keys)
    mask, treated, missing = masks.inside_mask(
        masks.column_pieces(keys, kind),
        n,
        f"{salt}:",
        _int_limit(limit),
        murmur.kernels_for(engine, n),
    )
    return mask, treated, missing


def constant(keys: Any, value: Any) -> Any:
    """``value`` for every key, in the caller's shape (a killed flag, a vendor answer for all)."""
    kind = _kind(keys)
    if kind == "list":
        return [value] * (len(keys) if isinstance(keys, Sized) else sum(1 for _ in keys))
    n = len(keys)
    np = masks.numpy()
    if n == 0 or np is None:
        return _rebuild(keys, kind, [value] * n)
    if kind == "pandas":
        import pandas

        template = pandas.Series([value])  # the dtype pandas gives a list of `value`
        dtype = template.dtype
        values: Any
        if isinstance(dtype, np.dtype) and dtype.kind == "O":
            values = np.empty(n, dtype=object)
            values.fill(value)  # one object for all, as [value] * n (fill does not broadcast)
        elif isinstance(dtype, np.dtype):
            values = np.full(n, template.to_numpy()[0], dtype=dtype)
        else:
            values = template.array.take(np.zeros(n, dtype=np.intp))
        return pandas.Series(values, index=keys.index, name=keys.name, dtype=dtype, copy=False)
    if kind == "polars":
        import polars

        return polars.Series(keys.name, [value]).new_from_index(0, n)
    import pyarrow

    return pyarrow.repeat(pyarrow.array([value])[0], n)


def as_strings(keys: Any) -> list[str]:
    """The keys as targeting-key strings (``str(key)``), for the per-key path.

    A missing key (None, a null, pandas' NA) becomes ``""``, which is no unit there either, so
    both paths of ``assign`` agree. Raises TypeError for a str/bytes or a non-iterable.
    """
    kind = _kind(keys)
    values = _to_list(keys, kind)
    if kind == "pandas" and len(values):
        na = keys.isna().to_numpy()
        if na.any():
            values = [None if gone else k for k, gone in zip(values, na.tolist(), strict=True)]
    na_type = masks.pandas_na_type()
    return [
        k if k.__class__ is str else ("" if k is None or k.__class__ is na_type else str(k))
        for k in values
    ]


def size(keys: Any) -> int:
    """How many keys (raises TypeError for unsupported input, or an iterator: its length is
    unknown without consuming it, so pass ``list(keys)``)."""
    if _kind(keys) == "list" and not isinstance(keys, Sized):
        raise TypeError("an iterator of keys has no size without consuming it: pass list(keys)")
    return len(keys)


def first_key(keys: Any) -> str:
    """The first key as a targeting-key string (as :func:`as_strings`; "" when there is none):
    the context of the batch's one vendor call. Not for an iterator (pass ``list(keys)``)."""
    kind = _kind(keys)
    head: Any
    if kind == "list":
        if not isinstance(keys, Collection):
            raise TypeError("an iterator of keys cannot be peeked at: pass list(keys)")
        head = [next(iter(keys))] if len(keys) else []
    elif kind == "pandas":
        head = keys.iloc[:1]
    else:
        head = keys.slice(0, 1)
    strings = as_strings(head)
    return strings[0] if strings else ""


def wrap(keys: Any, values: Iterable[Any]) -> Any:
    """Per-key values (the per-key path's answers) in the caller's shape: a list, or a column
    of the keys' kind (same index and name for pandas, same name for polars)."""
    return _rebuild(keys, _kind(keys), list(values))


# ---------------------------------------------------------------------------------------------
# What the input is, and today's shape conversions (the reference for dtypes)


def _kind(keys: Any) -> str:
    """ "list" (any iterable), "pandas", "polars" or "pyarrow" (by module, as assign did)."""
    module = type(keys).__module__.split(".")[0]
    if module == "pandas":
        import pandas

        if isinstance(keys, pandas.Series):
            return "pandas"
    elif module == "polars":
        import polars

        if isinstance(keys, polars.Series):
            return "polars"
    elif module == "pyarrow":
        import pyarrow

        if isinstance(keys, pyarrow.Array | pyarrow.ChunkedArray):
            return "pyarrow"
    elif not isinstance(keys, str | bytes) and isinstance(keys, Iterable):
        return "list"
    raise TypeError(f"keys must be {_COLUMN_TYPES}, not {type(keys).__name__}")


def _to_list(keys: Any, kind: str) -> list[Any]:
    """The keys as Python values, as assign has always read them."""
    if kind == "pandas":
        return keys.tolist()
    if kind == "polars":
        return keys.to_list()
    if kind == "pyarrow":
        return keys.to_pylist()
    return keys if isinstance(keys, list) else list(keys)


def _rebuild(keys: Any, kind: str, out: list[Any]) -> Any:
    """A list of served values in the caller's shape, as assign has always built it."""
    if kind == "pandas":
        import pandas

        return pandas.Series(out, index=keys.index, name=keys.name)
    if kind == "polars":
        import polars

        return polars.Series(keys.name, out)
    if kind == "pyarrow":
        import pyarrow

        return pyarrow.array(out)
    return out


def _int_limit(limit: float) -> int:
    """The integer bound with ``bucket < limit`` iff ``bucket < bound`` (buckets are integers)."""
    if math.isnan(limit):
        return 0
    if limit >= BUCKETS:
        return BUCKETS
    if limit <= 0:
        return 0
    return math.ceil(limit)


# ---------------------------------------------------------------------------------------------
# Served values in the caller's shape, equal (values and dtype) to wrapping today's list


def _select(inside: list[bool], treatment: Any, control: Any) -> list[Any]:
    """The served values from the inside flags (the flags themselves for a True/False flag)."""
    if treatment is True and control is False:
        return inside
    if treatment is False and control is True:
        return [not x for x in inside]
    return list(map((control, treatment).__getitem__, inside))


def _select_mask(mask: Any, treatment: Any, control: Any) -> list[Any]:
    if treatment is True and control is False:
        return mask.tolist()
    if treatment is False and control is True:
        return (~mask).tolist()
    np = masks.numpy()
    choices = np.empty(2, dtype=object)
    choices[0], choices[1] = control, treatment  # item by item: a list value stays one object
    return choices.take(mask.view(np.uint8)).tolist()


def _plain(value: Any) -> bool:
    return value is None or type(value) in (bool, int, float, str)


def _shaped(keys: Any, kind: str, mask: Any, treated: int, treatment: Any, control: Any) -> Any:
    """The column of served values for ``mask``, with the dtype the column library infers for
    the list of those values: a True/False flag is the mask itself; otherwise a two-value
    template fixes the dtype (its first value is the first served one, as inference can
    depend on the first value) and each row takes its value from it."""
    n = len(mask)
    if treated == n:
        return constant(keys, treatment)
    if treated == 0:
        return constant(keys, control)
    if not (_plain(treatment) and _plain(control)):  # dicts, lists: as today, exactly
        return _rebuild(keys, kind, _select_mask(mask, treatment, control))
    np = masks.numpy()
    flag = (treatment, control) in ((True, False), (False, True))
    if flag and type(treatment) is bool and type(control) is bool:
        values = mask if treatment else ~mask  # a bool column, in every library
        if kind == "pandas":
            import pandas

            return pandas.Series(values, index=keys.index, name=keys.name, copy=False)
        if kind == "polars":
            import polars

            return polars.Series(keys.name, values)
        import pyarrow

        return pyarrow.array(values)
    at = 0 if mask[0] else 1  # the treatment's place in the template
    ordered = [treatment, control] if at == 0 else [control, treatment]
    index = mask.view(np.uint8) if at == 1 else (~mask).view(np.uint8)  # each row's place
    if kind == "pandas":
        import pandas

        template = pandas.Series(ordered)
        dtype = template.dtype
        out: Any
        if isinstance(dtype, np.dtype):
            values = template.to_numpy()
            if dtype.kind == "O":
                out = np.empty(n, dtype=object)
                out.fill(values[1 - at])
                out[mask] = values[at]
            else:
                out = np.where(mask, values[at], values[1 - at])
        else:
            out = template.array.take(index.astype(np.intp))
        return pandas.Series(out, index=keys.index, name=keys.name, dtype=dtype, copy=False)
    if kind == "polars":
        import polars

        return polars.Series(keys.name, ordered).gather(index)
    import pyarrow

    return pyarrow.array(ordered).take(pyarrow.array(index))
