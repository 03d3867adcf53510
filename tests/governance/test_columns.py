"""columns.route buckets every key as mmh3 does, in every input shape, with either engine, and
gives the served values back with the dtype the old list-and-wrap code gave."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import mmh3
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from flagwarden.governance import columns, murmur
from flagwarden.governance.bucketing import bucket
from flagwarden.governance.columns import (
    NO_NUMBA_ENV,
    as_strings,
    constant,
    first_key,
    route,
    size,
    wrap,
)

ROOT = Path(__file__).resolve().parents[2]
SALT = "new-scoring-model:v2"
LIMIT = 42_500.0


def _numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return NO_NUMBA_ENV not in os.environ


ENGINES = [
    "python",
    pytest.param(
        "numba", marks=pytest.mark.skipif(not _numba_available(), reason="numba not installed")
    ),
]


def expected(keys: list[Any], salt: str = SALT, limit: float = LIMIT) -> list[bool]:
    """The reference, with mmh3 directly: missing (None, "") keys are outside."""
    return [
        k is not None
        and str(k) != ""
        and mmh3.hash(f"{salt}:{k}".encode(), 0, signed=False) % 100000 < limit
        for k in keys
    ]


def as_list(column: Any) -> list[Any]:
    if isinstance(column, pd.Series):
        return column.tolist()
    if isinstance(column, pl.Series):
        return column.to_list()
    if isinstance(column, pa.Array | pa.ChunkedArray):
        return column.to_pylist()
    return list(column)


# --- Bit-identical on 1M mixed keys, every shape, both engines ---------------------------------


def mixed_keys(n: int, seed: int = 7) -> list[Any]:
    """Numeric ids, UUIDs, emoji (4-byte UTF-8), empty strings, 200-byte strings (ASCII and
    not), Python ints (negative, int64's bounds, beyond int64), None."""
    rng = random.Random(seed)
    keys: list[Any] = []
    for i in range(n):
        r = i % 20
        if r < 5:
            keys.append(str(rng.randrange(10**12)))
        elif r < 8:
            keys.append(str(uuid.UUID(int=rng.getrandbits(128))))
        elif r < 10:
            keys.append("😀" * (i % 7) + f"é{i}")
        elif r == 10:
            keys.append("" if i % 40 == 10 else None)
        elif r == 11:
            keys.append(("x" * 190 + str(i)).rjust(200, "y") if i % 3 else "ü" * 100)
        elif r < 15:
            keys.append(rng.randrange(-(2**63), 2**63))
        elif r == 15:
            keys.append([-(2**63), 2**63 - 1, 0, -1, 10**9, -(10**9)][i % 6])
        elif r == 16:
            keys.append(rng.randrange(-1000, 1000))
        else:
            keys.append(f"order-{i}")
    keys[-1] = 2**64 + 5  # one beyond int64 (lists only)
    return keys


@functools.cache
def cases(n: int) -> dict[str, tuple[Any, list[bool], int]]:
    """Each input shape, with the reference mask (mmh3 on the Python values) and the count of
    missing keys."""
    keys = mixed_keys(n)
    want = expected(keys)
    gone = [k is None or k == "" for k in keys]
    strs = [i for i, k in enumerate(keys) if k is None or isinstance(k, str)]
    ints = [i for i, k in enumerate(keys) if isinstance(k, int) and -(2**63) <= k < 2**63]
    texts = [i for i in strs if keys[i] is not None]

    def of(index: list[int]) -> tuple[list[Any], list[bool], int]:
        return [keys[i] for i in index], [want[i] for i in index], sum(gone[i] for i in index)

    (s, s_want, s_gone), (t, t_want, t_gone), (j, j_want, _) = of(strs), of(texts), of(ints)
    third = len(s) // 3
    chunked = pa.chunked_array(
        [pa.array(s[:third]), pa.array(s[third - 5 :]).slice(5), pa.array([], pa.string())]
    )
    return {
        "list mixed": (keys, want, sum(gone)),
        "list str": (t, t_want, t_gone),
        "list int": (j, j_want, 0),
        "pandas object": (pd.Series(s, dtype=object), s_want, s_gone),
        "pandas object mixed": (pd.Series(keys[:-1], dtype=object), want[:-1], sum(gone)),
        "pandas string[pyarrow]": (pd.Series(s, dtype="string[pyarrow]"), s_want, s_gone),
        "pandas str": (pd.Series(t), t_want, t_gone),
        "pandas int64": (pd.Series(j, dtype="int64"), j_want, 0),
        "polars Utf8": (pl.Series("k", s, dtype=pl.Utf8), s_want, s_gone),
        "polars Int64": (pl.Series("k", j, dtype=pl.Int64), j_want, 0),
        "pyarrow string": (pa.array(s, pa.string()), s_want, s_gone),
        "pyarrow large_string": (pa.array(s, pa.large_string()), s_want, s_gone),
        "pyarrow int64": (pa.array(j, pa.int64()), j_want, 0),
        "pyarrow chunked": (chunked, s_want, s_gone),
    }


def digest(mask: list[bool]) -> str:
    return hashlib.sha1(np.packbits(np.array(mask, dtype=bool)).tobytes()).hexdigest()


def route_digests(n: int, engine: Any) -> dict[str, list[Any]]:
    """Each case's mask digest and counts through route (run in a subprocess for the fallback)."""
    out = {}
    for name, (column, _, _) in cases(n).items():
        served, treated, missing = route(column, SALT, LIMIT, True, False, engine=engine)
        out[name] = [digest(as_list(served)), treated, missing]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_route_is_bit_identical_to_mmh3_on_a_million_mixed_keys(engine):
    for name, (column, want, gone) in cases(1_000_000).items():
        served, treated, missing = route(column, SALT, LIMIT, True, False, engine=engine)
        assert as_list(served) == want, name
        assert (treated, missing) == (sum(want), gone), name


@pytest.mark.slow
def test_the_fallback_without_numba_gives_the_same_answers():
    """FLAGWARDEN_NO_NUMBA=1 in a fresh process: "auto" runs the Python engine, same answers."""
    n = 200_000
    script = (
        "import json, flagwarden.governance.murmur as m;"
        "from tests.governance.test_columns import route_digests;"
        f"print(json.dumps([route_digests({n}, 'auto'), m._kernels is None]))"
    )
    env = {**os.environ, NO_NUMBA_ENV: "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    digests, no_kernels = json.loads(result.stdout)
    assert no_kernels
    for name, (_, want, gone) in cases(n).items():
        assert digests[name] == [digest(want), sum(want), gone], name


# --- Exactness on small inputs: prefixes, nulls, layouts ---------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_every_prefix_and_key_length(engine):
    """The kernel continues the hash after the prefix: every leftover length, every tail."""
    keys = ["", *("é😀abcdefghij"[:i] for i in range(1, 12)), *range(-12, 13), 2**63 - 1]
    for salt in ("", "a", "ab", "abc", "abcd", "abcde", "🚀", "a🚀"):
        for limit in (0.0, 1500.0, 1500.5, 50_000.0, 99_999.0, 100_000.0, 250_000.0):
            served, treated, missing = route(keys, salt, limit, True, False, engine=engine)
            assert served == expected(keys, salt, limit), (salt, limit)
            assert treated == sum(served)
            assert missing == 1
            for part in (keys[:12], keys[12:]):  # Arrow strings, Arrow ints: both kernels
                column, _, _ = route(pa.array(part), salt, limit, 1, 0, engine=engine)
                assert column.to_pylist() == [int(x) for x in expected(part, salt, limit)]


def test_the_bucket_is_the_bucketing_modules():
    keys = [f"user-{i}" for i in range(2000)]
    served, _, _ = route(keys, "s", 30_000.0, True, False)
    assert served == [bucket("s", k) < 30_000.0 for k in keys]


@pytest.mark.parametrize("engine", ENGINES)
def test_nulls_and_empties_are_missing_in_every_column(engine):
    strs = ["a", None, "", "b", None, "c", "d", "e", "f"] * 3
    ints = [1, None, -5, None, 7, 2**40, -(2**63), 0, None] * 3
    want_s, want_i = expected(strs), expected(ints)
    inputs = [
        (pd.Series(strs, dtype=object), want_s, 9),
        (
            pd.Series(["a", np.nan, "", pd.NA, "b"], dtype=object),
            expected(["a", None, "", None, "b"]),
            3,
        ),
        (pd.Series(strs, dtype="string[pyarrow]"), want_s, 9),
        (pd.Series(strs, dtype="string[python]"), want_s, 9),
        (pd.Series(strs, dtype="category"), want_s, 9),
        (pd.Series(ints, dtype="Int64"), want_i, 9),
        (pd.Series(ints, dtype="int64[pyarrow]"), want_i, 9),
        (pl.Series("k", strs), want_s, 9),
        (pl.Series("k", strs, dtype=pl.Categorical), want_s, 9),
        (pl.Series("k", ints), want_i, 9),
        (pa.array(strs), want_s, 9),
        (pa.array(strs).dictionary_encode(), want_s, 9),
        (pa.array(ints), want_i, 9),
        (pa.array([None, None], pa.null()), [False, False], 2),
        ([None, "", "a", pd.NA], expected([None, "", "a", None]), 3),
    ]
    for column, want, missing in inputs:
        served, treated, counted = route(column, SALT, LIMIT, True, False, engine=engine)
        assert as_list(served) == want, column
        assert (treated, counted) == (sum(want), missing), column


@pytest.mark.parametrize("engine", ENGINES)
def test_arrow_slices_and_widths(engine):
    """Offsets and validity bits read at the slice's offset; every integer width."""
    strs = [None if i % 7 == 3 else f"k{i}" for i in range(100)]
    ints = [None if i % 5 == 1 else i * 7919 - 300 for i in range(100)]
    for lo, hi in ((0, 100), (3, 50), (13, 14), (9, 9), (61, 100)):
        for column, keys in (
            (pa.array(strs).slice(lo, hi - lo), strs[lo:hi]),
            (pa.array(strs, pa.large_string()).slice(lo, hi - lo), strs[lo:hi]),
            (pa.array(ints).slice(lo, hi - lo), ints[lo:hi]),
        ):
            served, _, _ = route(column, SALT, LIMIT, True, False, engine=engine)
            assert served.to_pylist() == expected(keys), (lo, hi, column.type)
    small = list(range(-100, 100))
    for type_ in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"):
        values = [v for v in small if v >= 0] if type_.startswith("u") else small
        for column in (pa.array(values, type_), pd.Series(values, dtype=type_)):
            served, _, _ = route(column, SALT, LIMIT, True, False, engine=engine)
            assert as_list(served) == expected(values), (type_, type(column))
    big = [2**64 - 1, 2**63, 5]  # uint64 beyond int64: the slow path, same answer
    for column in (pa.array(big, pa.uint64()), pd.Series(big, dtype="uint64")):
        served, _, _ = route(column, SALT, LIMIT, True, False, engine=engine)
        assert as_list(served) == expected(big)
    if hasattr(pa, "string_view"):
        column = pa.array(strs, pa.string_view())
        served, _, _ = route(column, SALT, LIMIT, True, False, engine=engine)
        assert served.to_pylist() == expected(strs)


@pytest.mark.parametrize("engine", ENGINES)
def test_other_key_types_read_as_str_of_the_value(engine):
    floats = [1.0, 2.5, -0.0, 1e20]
    keys = [*floats, True, b"raw", uuid.UUID(int=5), np.int64(42), np.str_("s")]
    served, _, missing = route(keys, SALT, LIMIT, True, False, engine=engine)
    assert served == expected(keys) and missing == 0
    for column in (pd.Series(floats), pl.Series("k", floats), pa.array(floats)):
        served, _, _ = route(column, SALT, LIMIT, True, False, engine=engine)
        assert as_list(served) == expected(floats)
    served, _, missing = route(pd.Series([1.5, np.nan]), SALT, 100_000.0, True, False)
    assert served.tolist() == [True, False] and missing == 1  # pandas' NaN is its missing value


# --- The caller's shape and dtype: as wrapping the old list ------------------------------------


VALUES = [
    (True, False),
    (False, True),
    ("on", "off"),
    (1, 0),
    (1, 1.5),
    (1.5, 1),
    (True, 1),
    (None, 1),
    ("a", None),
    ("a", 1),
    (2**70, 1),
    ({"model": "v2"}, {"model": "v1"}),
    ([1], [2, 3]),
    ("x", "x"),
]


def shapes(keys: list[Any]) -> list[Any]:
    return [
        keys,
        pd.Series(keys, index=range(7, 7 + len(keys)), name="order_id", dtype=object),
        pd.Series(keys, name="order_id"),
        pl.Series("order_id", keys),
        pa.array(keys),
        pa.chunked_array([keys[:3], keys[3:]], type=pa.string()) if keys else pa.array(keys),
    ]


def old_way(column: Any, out: list[Any]) -> Any:
    """How assign built its result: a list, wrapped (the reference for values and dtype)."""
    if isinstance(column, pd.Series):
        return pd.Series(out, index=column.index, name=column.name)
    if isinstance(column, pl.Series):
        return pl.Series(column.name, out)
    if isinstance(column, pa.Array | pa.ChunkedArray):
        return pa.array(out)
    return out


def same(got: Any, want: Any) -> None:
    if isinstance(want, pd.Series):
        pd.testing.assert_series_equal(got, want, check_exact=True)
    elif isinstance(want, pl.Series):
        assert (got.name, got.dtype, got.to_list()) == (want.name, want.dtype, want.to_list())
    elif isinstance(want, pa.Array):
        assert isinstance(got, pa.Array) and got.type == want.type and got.equals(want)
    else:
        assert type(got) is list and got == want


def outcome(call: Any) -> Any:
    try:
        return call()
    except (TypeError, ValueError, OverflowError, pa.ArrowException) as error:
        return type(error)


@pytest.mark.parametrize(("treatment", "control"), VALUES)
@pytest.mark.parametrize("engine", ENGINES)
def test_served_values_have_the_old_dtype(engine, treatment, control):
    keys = [f"k{i}" for i in range(40)] + ["", None]
    for limit in (LIMIT, 0.0, 100_000.0):  # mixed, all control, all treatment (but the missing)
        inside = expected(keys, limit=limit)
        out = [treatment if x else control for x in inside]
        for column in [*shapes(keys), *shapes([])]:
            want = outcome(lambda c=column, o=out: old_way(c, o[: len(c)]))
            got = outcome(
                lambda c=column, at=limit: route(c, SALT, at, treatment, control, engine=engine)
            )
            if isinstance(want, type):
                assert got is want, (column, got)
                continue
            served, treated, _ = got
            same(served, want)
            assert treated == sum(inside[: len(column)])


@pytest.mark.parametrize("value", [True, "off", 3, 2.5, None, {"a": 1}, [1, 2], 2**70])
def test_constant_has_the_old_dtype(value):
    for column in [*shapes(["a", "b", "c", "d", "e"]), *shapes([])]:
        want = outcome(lambda c=column: old_way(c, [value] * len(c)))
        got = outcome(lambda c=column: constant(c, value))
        if isinstance(want, type):
            assert got is want
        else:
            same(got, want)
    assert constant(iter(["a", "b"]), value) == [value, value]


def test_a_list_value_stays_one_object():
    control = {"model": "v1"}
    served, _, _ = route(["a", "b"], SALT, 0.0, [1], control)
    assert served[0] is control and served[1] is control
    series = constant(pd.Series(["a", "b"]), control)
    assert series.iloc[0] is control


# --- The rest of the interface -----------------------------------------------------------------


def test_as_strings_for_the_per_key_path():
    assert as_strings(["a", 1, -2, None, "", 2.5]) == ["a", "1", "-2", "", "", "2.5"]
    assert as_strings(iter([3])) == ["3"]
    served, treated, missing = route(iter(["a", None, 5]), SALT, 100_000.0, "t", "c")
    assert (served, treated, missing) == (["t", "c", "t"], 2, 1)
    assert as_strings(pd.Series(["a", None, np.nan], dtype=object)) == ["a", "", ""]
    assert as_strings(pd.Series([1, 2])) == ["1", "2"]
    assert as_strings(pl.Series("k", ["a", None])) == ["a", ""]
    assert as_strings(pa.chunked_array([[5], [None]])) == ["5", ""]


@pytest.mark.parametrize(
    "bad", ["abc", b"abc", 5, None, pd.DataFrame({"a": [1]}), pa.table({"a": [1]})]
)
def test_unsupported_input_is_a_clear_type_error(bad):
    for call in (
        as_strings,
        size,
        lambda k: route(k, SALT, LIMIT, True, False),
        lambda k: constant(k, 1),
    ):
        with pytest.raises(TypeError, match="keys must be"):
            call(bad)


def test_first_key_and_wrap():
    assert first_key(["a", "b"]) == "a" and first_key((7,)) == "7" and first_key([]) == ""
    assert first_key([None, "b"]) == ""
    assert first_key(pd.Series([3, 4], index=[9, 8])) == "3"
    assert first_key(pl.Series("k", ["x"])) == "x" and first_key(pa.array([], pa.string())) == ""
    assert first_key(pa.chunked_array([[], ["y"]], pa.string())) == "y"
    with pytest.raises(TypeError, match="list"):
        first_key(iter(["a"]))
    for column in shapes(["a", "b", "c", "d", "e"]):
        for values in ([1, 2, 3, 4, 5], ["v", None, "w", "v", "v"]):
            same(wrap(column, iter(values)), old_way(column, values))


def test_size():
    assert size(["a", "b"]) == 2
    assert size(("a",)) == 1
    assert size(pd.Series(range(4))) == 4
    assert size(pl.Series("k", [1, 2, 3])) == 3
    assert size(pa.chunked_array([[1], [2, 3]])) == 3
    with pytest.raises(TypeError, match="list"):
        size(iter(["a"]))


def test_engine_choice(monkeypatch):
    with pytest.raises(ValueError, match="engine"):
        route(["a"], SALT, LIMIT, True, False, engine="fast")
    monkeypatch.setenv(NO_NUMBA_ENV, "1")
    assert murmur.kernels_for("auto", 10**8) is None
    with pytest.raises(RuntimeError, match=NO_NUMBA_ENV):
        route(["a"], SALT, LIMIT, True, False, engine="numba")
    monkeypatch.setenv(NO_NUMBA_ENV, "0")
    assert murmur.kernels_for("auto", 10) is None  # small: the Python engine
    assert columns._int_limit(math.nan) == 0 and columns._int_limit(1500.5) == 1501


def test_importing_the_module_loads_no_column_library():
    code = (
        "import sys, flagwarden.governance.columns;"
        "print(sorted(m for m in ('numpy', 'pandas', 'polars', 'pyarrow', 'numba') "
        "if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
