"""The compiled bucketing of str keys (flagwarden._murmur) gives mmh3's buckets for every prefix
and key, steps aside for anything that is not a str, and the columns that use it keep their
answers when a chunk is not all str or the module is turned off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flagwarden import speedups
from flagwarden.governance import masks
from flagwarden.governance.columns import CHUNK, route
from flagwarden.governance.murmur import prefix_state
from tests.governance.test_columns import ENGINES, LIMIT, SALT, expected

ROOT = Path(__file__).resolve().parents[2]
_murmur = speedups.load("_murmur")
pytestmark = pytest.mark.skipif(_murmur is None, reason="flagwarden._murmur was not built")
NUMBA = [e for e in ENGINES if e != "python"]


def strings(keys: object, salt: str, limit: int) -> tuple[list[bool], tuple[int, int] | None]:
    out = np.zeros(len(keys), dtype=bool)  # type: ignore[arg-type]
    assert _murmur is not None
    counts = _murmur.strings(keys, *prefix_state(f"{salt}:".encode()), limit, out)
    return out.tolist(), counts


def test_every_prefix_and_key_length_is_mmh3s_bucket():
    keys = ["", "é😀abcdefghij", "x" * 200, "ü" * 100, "😀" * 50]
    keys += ["é😀abcdefghijklmnop"[:i] for i in range(1, 18)]
    keys += [f"order-{i}" for i in range(2000)]
    for salt in ("", "a", "ab", "abc", "abcd", "abcde", "🚀", "a🚀", SALT):
        for limit in (0, 1500, 42_500, 99_999, 100_000):
            mask, counts = strings(keys, salt, limit)
            assert mask == expected(keys, salt, limit), (salt, limit)
            assert counts == (sum(mask), keys.count(""))


def test_none_is_missing_anything_else_steps_aside():
    keys = ["a", None, "", "b"]
    mask, counts = strings(keys, SALT, 50_000)
    assert mask == expected(keys, SALT, 50_000) and counts == (sum(mask), 2)
    for other in (7, b"b", "\ud800", np.str_("x"), float("nan"), True):
        assert strings(["a", other], SALT, 50_000)[1] is None, other
    # an object ndarray is read as the list it holds
    mask, counts = strings(np.array(["a", "b", ""], dtype=object), SALT, 50_000)
    assert mask == expected(["a", "b", ""], SALT, 50_000) and counts is not None
    assert _murmur is not None
    with pytest.raises(ValueError, match="one byte per key"):
        _murmur.strings(["a"], 0, 0, 0, 0, 5, np.zeros(1, dtype=np.int64))
    with pytest.raises(ValueError, match="one byte per key"):
        _murmur.strings(["a", "b"], 0, 0, 0, 0, 5, np.zeros(1, dtype=bool))


@pytest.mark.parametrize("engine", NUMBA)
def test_lists_and_object_columns_of_str_go_through_it(engine, monkeypatch):
    calls: list[int] = []
    real = masks._strings
    assert real is not None

    def spy(keys, *state):  # the real function, counted
        calls.append(len(keys))
        return real(keys, *state)

    monkeypatch.setattr(masks, "_strings", spy)
    keys = [f"unit-{i}" for i in range(5000)] + [None, ""] * 10
    for column in (keys, pd.Series(keys, dtype=object)):
        calls.clear()
        served, treated, missing = route(column, SALT, LIMIT, True, False, engine=engine)
        assert list(served) == expected(keys) and (treated, missing) == (sum(served), 20)
        assert calls == [len(keys)]


@pytest.mark.parametrize("engine", NUMBA)
def test_columns_whose_later_chunk_is_not_all_str_keep_their_answers(engine):
    """The first chunk is all str (the compiled module), the second holds None, NaN or an
    int (read as before: pandas' NaN is missing, a list's int is its text)."""
    head = [f"unit-{i}" for i in range(CHUNK)]
    for tail in ([None, "a", ""], ["a", float("nan")], [5, "c"], ["a", np.str_("d")]):
        keys = head + tail * 1000
        served, treated, missing = route(keys, SALT, LIMIT, True, False, engine=engine)
        texts = [None if k is None else str(k) for k in keys]
        want = expected(texts)
        assert served == want
        column = pd.Series(keys, dtype=object)
        served_column, _, column_missing = route(column, SALT, LIMIT, True, False, engine=engine)
        gone = column.isna().tolist()
        assert served_column.tolist() == [w and not g for w, g in zip(want, gone, strict=True)]
        assert column_missing == sum(gone) + keys.count("")
        assert treated == sum(want) and missing == keys.count(None) + keys.count("")


def test_turned_off_the_columns_do_without_it():
    script = "import flagwarden.governance.masks as m; print(m._strings is None)"
    env = {**os.environ, speedups.NO_SPEEDUPS_ENV: "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
    assert masks._strings is not None  # and this process has it
