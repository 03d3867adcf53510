"""assign()'s per-record bucketing: flagwarden.governance.columns.route against today's
algorithm, per input kind.

Run from the repository root:  python -m bench.bench_assign [--keys 10000000] [--rounds 5]

For each input (a list; pandas object, string[pyarrow] and int64; polars String and Int64;
pyarrow string and int64) and each implementation: keys per second of one core (the keys over
the process CPU time of the call, which on this shared machine moves less than wall time; wall
time is shown too), medians over rounds that alternate the implementations. The baseline is the
algorithm assign used before columns.py, embedded below: the keys as a Python list
(``tolist()``), ``str()`` of each, one mmh3 call per key, a list of bools, a list of values, and
the wrap into the caller's shape. "numba" is route with the compiled engine, "python" route
with ``engine="python"`` (what runs without numba). Every call's treated count must equal the
baseline's for the same keys.

Then, in a fresh process per case, the peak memory over the input for the keys from pandas
(the RSS high-water mark, reset through /proc/self/clear_refs just before the call, minus the
RSS just before it), and the numba kernels' first-call cost: compiled cold (an empty numba
cache) and loaded from numba's on-disk cache.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from flagwarden.governance.columns import Engine

SALT = "new-scoring-model"
LIMIT = 25_000.0  # stage 25%
ROOT = Path(__file__).resolve().parents[1]
KINDS = [
    "list",
    "pandas object",
    "pandas string[pyarrow]",
    "pandas int64",
    "polars String",
    "polars Int64",
    "pyarrow string",
    "pyarrow int64",
]
MEMORY_KINDS = ["pandas object", "pandas string[pyarrow]", "pandas int64"]


def baseline(keys: Any, salt: str, limit: float, treatment: Any, control: Any) -> tuple[Any, int]:
    """assign's per-record half before columns.py (assign.py as of 2026-11): from tolist()."""
    import mmh3

    module = type(keys).__module__.split(".")[0]
    rebuild: Callable[[list[Any]], Any]
    if module == "pandas":
        import pandas

        values = keys.tolist()

        def rebuild(out: list[Any]) -> Any:
            return pandas.Series(out, index=keys.index, name=keys.name)

    elif module == "polars":
        import polars

        values = keys.to_list()

        def rebuild(out: list[Any]) -> Any:
            return polars.Series(keys.name, out)

    elif module == "pyarrow":
        import pyarrow

        values = keys.to_pylist()

        def rebuild(out: list[Any]) -> Any:
            return pyarrow.array(out)

    else:
        values = list(keys)
        rebuild = list
    units = [str(k) for k in values]
    prefix, hash32 = f"{salt}:", mmh3.hash  # bucketing.buckets, as it was
    buckets = [hash32((prefix + unit).encode(), 0, signed=False) % 100_000 for unit in units]
    inside = [b < limit for b in buckets]
    if "" in units:
        for i in [i for i, u in enumerate(units) if not u]:
            inside[i] = False
    treated = sum(inside)
    return rebuild([treatment if ok else control for ok in inside]), treated


def make_input(kind: str, n: int) -> Any:
    """``n`` keys of ``kind``: "order-<i>" strings, or integer ids."""
    import numpy as np

    if kind.endswith("int64") or kind.endswith("Int64"):
        ids = np.arange(10**9, 10**9 + n, dtype=np.int64)
        if kind.startswith("pandas"):
            import pandas

            return pandas.Series(ids, name="order_id")
        if kind.startswith("polars"):
            import polars

            return polars.Series("order_id", ids)
        import pyarrow

        return pyarrow.array(ids)
    keys = [f"order-{i}" for i in range(n)]
    if kind == "list":
        return keys
    if kind.startswith("pandas"):
        import pandas

        dtype = "string[pyarrow]" if "pyarrow" in kind else object
        return pandas.Series(keys, name="order_id", dtype=dtype)
    if kind.startswith("polars"):
        import polars

        return polars.Series("order_id", keys)
    import pyarrow

    return pyarrow.array(keys, pyarrow.string())


def head(keys: Any, n: int = 1000) -> Any:
    if isinstance(keys, list):
        return keys[:n]
    return keys.iloc[:n] if hasattr(keys, "iloc") else keys.slice(0, n)


def timed(call: Callable[[], int]) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, treated) of one call."""
    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    treated = call()
    return time.process_time() - cpu, time.perf_counter() - wall, treated


def measure(kind: str, n: int, rounds: int, engines: list[Engine]) -> dict[str, Any]:
    """One input kind: M keys/s per implementation (CPU, wall), the same treated count."""
    from flagwarden.governance import columns

    keys = make_input(kind, n)
    impls: dict[str, Callable[[], int]] = {
        "baseline": lambda: baseline(keys, SALT, LIMIT, True, False)[1],
    }
    for engine in engines:

        def call(e: Engine = engine) -> int:
            return columns.route(keys, SALT, LIMIT, True, False, engine=e)[1]

        impls[engine] = call
        columns.route(head(keys), SALT, LIMIT, True, False, engine=engine)  # warm up
    cpu: dict[str, list[float]] = {name: [] for name in impls}
    wall: dict[str, list[float]] = {name: [] for name in impls}
    counts = set()
    for _ in range(rounds):  # alternate, so drift hits every implementation
        for name, impl in impls.items():
            c, w, treated = timed(impl)
            cpu[name].append(c)
            wall[name].append(w)
            counts.add(treated)
    assert len(counts) == 1, f"{kind}: treated counts differ {counts}"
    row: dict[str, Any] = {"kind": kind, "treated": counts.pop()}
    for name in impls:
        row[name] = (n / statistics.median(cpu[name]), n / statistics.median(wall[name]))
    print(f"  {kind}: done", file=sys.stderr, flush=True)
    return row


# --- Memory: one fresh process per case -----------------------------------------------------


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_case(kind: str, impl: Engine | Literal["baseline"], n: int) -> dict[str, Any]:
    """In this (fresh) process: the input, then one call; RSS peak over the RSS before it."""
    from flagwarden.governance import columns

    keys = make_input(kind, n)
    if impl != "baseline":  # numba's own footprint is paid once per process: not per call
        columns.route(head(keys), SALT, LIMIT, True, False, engine=impl)
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the RSS high-water mark
        reset = True
    except OSError:
        reset = False
    before = _status_kb("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if impl == "baseline":
        out, treated = baseline(keys, SALT, LIMIT, True, False)
    else:
        out, treated, _ = columns.route(keys, SALT, LIMIT, True, False, engine=impl)
    peak = _status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if not reset and peak <= maxrss_before:
        peak = before  # the call stayed under the input's construction peak: unknown, ~0
    return {
        "kind": kind,
        "impl": impl,
        "over_mb": (peak - before) / 1024,
        "input_mb": before / 1024,
        "treated": treated,
        "exact": reset,
        "out": len(out),
    }


def memory(n: int, engines: list[Engine], kinds: list[str]) -> list[dict[str, Any]]:
    rows = []
    for kind in [k for k in MEMORY_KINDS if k in kinds]:
        for impl in ["baseline", *engines]:
            command = [sys.executable, "-m", "bench.bench_assign", "--keys", str(n)]
            result = subprocess.run(
                [*command, "--memory-case", kind, impl],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(result.stdout.splitlines()[-1]))
            print(f"  memory {kind} {impl}: done", file=sys.stderr, flush=True)
    return rows


# --- numba: compile cold, then load from the cache --------------------------------------------


def compile_case() -> dict[str, float]:
    """In this (fresh) process: numba's import, then the kernels' compile or cache load."""
    start = time.perf_counter()
    import numba  # noqa: F401

    imported = time.perf_counter() - start
    from flagwarden.governance import murmur

    start = time.perf_counter()
    murmur.load_kernels()
    return {"import_s": imported, "kernels_s": time.perf_counter() - start}


def compile_times() -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        times = []
        for _ in range(2):  # cold, then from the cache just written
            result = subprocess.run(
                [sys.executable, "-m", "bench.bench_assign", "--compile-case"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            times.append(json.loads(result.stdout.splitlines()[-1]))
        return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--kinds", help="comma-separated subset of: " + ", ".join(KINDS))
    parser.add_argument("--memory-case", nargs=2, metavar=("KIND", "IMPL"), help=argparse.SUPPRESS)
    parser.add_argument("--compile-case", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_case:
        kind, impl = args.memory_case
        print(json.dumps(memory_case(kind, impl, args.keys)))
        return
    if args.compile_case:
        print(json.dumps(compile_case()))
        return

    from flagwarden.governance import murmur

    # "numba" when it is installed and not turned off (FLAGWARDEN_NO_NUMBA).
    engines: list[Engine] = ["python"]
    if murmur.kernels_for("auto", 10**9) is not None:
        engines = ["numba", "python"]
    n = args.keys
    print(f"\nroute() vs the baseline, {n:,} keys, stage 25%, medians of {args.rounds} rounds")
    print("(M keys/s of one core, from CPU time; wall time in brackets):\n")
    kinds = args.kinds.split(",") if args.kinds else KINDS
    rows = [measure(kind, n, args.rounds, engines) for kind in kinds]
    header = "| input | baseline | " + " | ".join(f"route ({e})" for e in engines)
    header += " | " + " | ".join(f"{e} / baseline" for e in engines) + " |"
    print(header)
    print("|" + "---|" * (2 + 2 * len(engines)))
    for row in rows:
        cells = [
            f"{row[name][0] / 1e6:.1f} ({row[name][1] / 1e6:.1f})"
            for name in ["baseline", *engines]
        ]
        ratios = [f"{row[e][0] / row['baseline'][0]:.1f}x" for e in engines]
        print(f"| {row['kind']} | " + " | ".join(cells + ratios) + " |")

    if "numba" in engines:
        cold, cached = compile_times()
        print(
            f"\nnumba: import {cold['import_s']:.2f} s; kernels compiled cold "
            f"{cold['kernels_s']:.2f} s, loaded from numba's cache {cached['kernels_s']:.2f} s "
            f"(import {cached['import_s']:.2f} s)"
        )
    if not args.no_memory:
        print(f"\nPeak RSS over the input, {n:,} keys from pandas, one fresh process each (MB):\n")
        mem = memory(n, engines, kinds)
        print("| input | input RSS | " + " | ".join(["baseline", *engines]) + " |")
        print("|" + "---|" * (2 + 1 + len(engines)))
        for kind in [k for k in MEMORY_KINDS if k in kinds]:
            by_impl = {r["impl"]: r for r in mem if r["kind"] == kind}
            counts = {r["treated"] for r in by_impl.values()}
            assert len(counts) == 1, f"{kind}: treated counts differ {counts}"
            exact = all(r["exact"] for r in by_impl.values())
            over = [f"{by_impl[i]['over_mb']:+,.0f}" for i in ["baseline", *engines]]
            input_mb = f"{by_impl['baseline']['input_mb']:,.0f}"
            print(f"| {kind} | {input_mb} | " + " | ".join(over) + " |" + ("" if exact else " *"))
        if not all(r["exact"] for r in mem):
            print("\n(* no /proc/self/clear_refs here: from ru_maxrss, a lower bound)")


if __name__ == "__main__":
    main()
