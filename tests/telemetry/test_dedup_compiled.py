"""The compiled dedup table (flagwarden._dedup) keeps the Python table's promises: repeats
within the window found, new triples never hidden, a fixed memory, expiry and wrap-around."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from flagwarden.telemetry.dedup import ExposureDeduper, compiled, new_deduper

ROOT = Path(__file__).resolve().parents[2]
Table = compiled()
pytestmark = pytest.mark.skipif(Table is None, reason="flagwarden._dedup was not built")
FLAG = "new-scoring-model"
HOUR = 3600.0


def test_repeats_variants_flags_and_memory():
    table = Table(HOUR, 4096)
    python = ExposureDeduper(HOUR, 4096)
    assert table.memory_bytes == python.memory_bytes and table.entries == python.entries
    assert table.first_in_window(FLAG, "k1", "treatment") is True
    assert table.first_in_window(FLAG, "k1", "treatment") is False
    assert table.first_in_window(FLAG, "k1", "control") is True  # the variant changed
    assert table.first_in_window("other", "k1", "treatment") is True
    before = table.memory_bytes
    logged = sum(table.first_in_window(FLAG, f"key-{i}", "control") for i in range(100_000))
    assert logged == 100_000  # an eviction may re-log early, never hide a new key
    assert table.memory_bytes == before


def test_same_answers_as_the_python_table_while_nothing_is_evicted():
    rng = random.Random(7)
    table, python = Table(HOUR), ExposureDeduper(HOUR)
    keys = [f"unit-{rng.randrange(20_000)}" for _ in range(100_000)]
    variants = [rng.choice(("on", "off")) for _ in keys]
    ours = [table.first_in_window(FLAG, k, v) for k, v in zip(keys, variants, strict=True)]
    theirs = [python.first_in_window(FLAG, k, v) for k, v in zip(keys, variants, strict=True)]
    assert ours == theirs
    assert sum(ours) == len(set(zip(keys, variants, strict=True)))


def test_a_zero_window_never_dedups_an_infinite_one_never_expires():
    zero = Table(0.0)
    assert zero.first_in_window(FLAG, "k", "v") and zero.first_in_window(FLAG, "k", "v")
    forever = Table(float("inf"))
    assert forever.first_in_window(FLAG, "k", "v") is True
    forever.advance(10**9)
    assert forever.first_in_window(FLAG, "k", "v") is False


def test_expiry_and_wrap_around_match_an_exact_model():
    """Thousands of steps (the stamps are rebased each time the tick passes a byte): each
    answer is what an exact record of when each key was logged says, except within a tick
    of the window's end (an entry may expire up to window/128 early)."""
    rng = random.Random(11)
    table = Table(128.0)  # a tick is one second
    logged: dict[str, float] = {}
    now = 0.0
    checked = 0
    for _ in range(5_000):
        step = rng.choice((0.3, 1.0, 7.0, 31.0, 64.0))
        table.advance(step)
        now += step
        key = f"k{rng.randrange(8)}"
        age = now - logged[key] if key in logged else None
        first = table.first_in_window(FLAG, key, "v")
        if first:
            logged[key] = now
        if age is None:
            assert first is True
        elif age < 126.0:
            assert first is False, (key, age)
            checked += 1
        elif age >= 128.0:
            assert first is True, (key, age)
            checked += 1
    assert checked > 3_000


@pytest.mark.slow
def test_re_logs_at_most_5_percent_at_1m_units_per_window():
    table = Table(HOUR)
    units = [f"unit-{i}" for i in range(1_000_000)]
    assert all(table.first_in_window(FLAG, u, "on") for u in units)
    again = sum(table.first_in_window(FLAG, u, "on") for u in units)
    assert again <= 0.05 * len(units), again


def test_new_deduper_picks_the_compiled_table_unless_told_not_to():
    assert isinstance(new_deduper(HOUR), Table)
    script = (
        "from flagwarden.telemetry.dedup import ExposureDeduper, new_deduper\n"
        "assert type(new_deduper(60)) is ExposureDeduper\n"
    )
    env = {**os.environ, "FLAGWARDEN_NO_SPEEDUPS": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, env=env, timeout=60)
