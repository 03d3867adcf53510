"""A log that scales: `status`, `report` and `audit verify` on a large audit log.

Run from the repository root:  python -m bench.bench_audit [--records 500000] [--postgres]

Builds a project whose audit log holds N chained records (written the way AuditLog.append
writes them, in bulk: same text, same hashes), spread over the last six days and mixed as a
busy log is: exposure summaries (70%, three rows each), aggregated violations (20%), guard
decisions (8%), transitions (1.5%) and outages (0.5%) across ten governed flags. Then, each in
a process of its own, wall time and peak RSS (``os.wait4``) of:

* the baseline, measured in the same run on the same log: the same commands run by the code
  from before the log streamed (``--baseline-ref``, default 741ac72: its ``src/`` tree taken
  with ``git archive`` into a temporary folder and put first on PYTHONPATH), which read every
  record into a list (``records()`` returned one; ``verify()`` fetched all rows at once);
* the streamed commands as an operator runs them: ``flagwarden status --json``,
  ``flagwarden report --format json -o FILE`` and ``flagwarden audit verify``.

The older code reads the newer table (it names its columns; the ``ref`` column and the indexes
are extra). Both report the same facts: the bench checks both reports.

It asserts the work was done: the report verified every record, counted every exposure row
the log holds for the governed flags, every outage and every transition; status named each
flag's latest transition.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from flagwarden.audit.log import COLUMNS, GENESIS, AuditLog, AuditRecord

ROOT = Path(__file__).resolve().parent.parent
PG = "postgresql://postgres@127.0.0.1:5432/test"
FLAGS = [f"flag-{i:02d}" for i in range(10)]
SPAN = timedelta(days=6)


@dataclass
class Expected:
    """What the report must find in the log the builder wrote."""

    records: int = 0
    exposures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FLAGS, 0))
    transitions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FLAGS, 0))
    outages: int = 0
    last_action: dict[str, str] = field(default_factory=dict)


def _records(n: int, end: datetime, expected: Expected) -> Iterator[tuple[Any, ...]]:
    """(at, kind, flag, actor, data) for N records, oldest first."""
    step = SPAN / n
    start = end - SPAN
    stage: dict[str, int] = dict.fromkeys(FLAGS, 0)
    for i in range(n):
        at = start + step * i
        flag = FLAGS[(i // 200 + i) % len(FLAGS)]
        slot = i % 200
        if slot < 140:
            rows = []
            for k in range(3):
                f = FLAGS[(i + k) % len(FLAGS)]
                rows.append(
                    {
                        "flag": f,
                        "variant": "on" if k else "off",
                        "reason": "SPLIT",
                        "source": "vendor",
                        "arm": "treatment" if k else "control",
                        "capped": False,
                        "count": 7 + k,
                    }
                )
                expected.exposures[f] += 7 + k
            moment = at.isoformat()
            yield at, "exposure_summary", None, None, {"from": moment, "to": moment, "rows": rows}
        elif slot < 180:
            data = {"kind": "missing_unit", "count": 3, "since": at.isoformat()}
            yield at, "violation", flag, None, data
        elif slot < 196:
            guard = {"guard": "null-rate", "verdict": "healthy", "value": 0.01, "samples": 500}
            yield at, "guard", flag, "flagwarden-watch", {"tick": f"t{i}", "guards": [guard]}
        elif slot < 199:
            before = stage[flag]
            after = 1 if before == 0 else 0
            stage[flag] = after
            action = "advance" if after else "rollback"
            expected.transitions[flag] += 1
            expected.last_action[flag] = action
            data = {
                "action": action,
                "reason": "bench",
                "before": {"stage": before, "killed": False, "paused": False},
                "after": {"stage": after, "killed": False, "paused": False},
            }
            yield at, "transition", flag, "bench", data
        else:
            expected.outages += 1
            yield at, "outage", None, None, {"provider": "file", "cause": "bench"}


def build_log(url: str, n: int, end: datetime | None = None) -> Expected:
    """Write N chained records to the (new) audit log at ``url``; say what they hold."""
    end = end or datetime.now(UTC) - timedelta(minutes=1)
    expected = Expected(records=n)
    AuditLog(url).close()  # the schema and its indexes
    if url.startswith("sqlite"):
        import sqlite3

        conn: Any = sqlite3.connect(url[len("sqlite:///") :])
        ph = "?"
    else:
        import psycopg

        conn = psycopg.connect(url)
        ph = "%s"
    insert = f"INSERT INTO flagwarden_audit ({COLUMNS}) VALUES ({', '.join([ph] * 10)})"
    prev, batch = GENESIS, []
    cursor = conn.cursor()
    for seq, (at, kind, flag, actor, data) in enumerate(_records(n, end, expected), 1):
        body = json.dumps(data, sort_keys=True, separators=(",", ":"))
        digest = AuditRecord.digest(seq, at.isoformat(), kind, flag, actor, body, prev)
        batch.append((seq, at.isoformat(), kind, flag, actor, body, prev, digest, None, None))
        prev = digest
        if len(batch) == 10_000:
            cursor.executemany(insert, batch)
            batch.clear()
    cursor.executemany(insert, batch)
    conn.commit()
    conn.close()
    return expected


def project(root: Path, audit: str) -> Path:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "providers").mkdir(exist_ok=True)
    for flag in FLAGS:
        policy = {
            "flag": flag,
            "owner": "bench@example.com",
            "expires": "2099-01-01",
            "variants": {"control": False, "treatment": True},
            "stages": [1, 5, 25, 50, 100],
            "soak": "0s",
        }
        (root / "policies" / f"{flag}.yaml").write_text(yaml.safe_dump(policy))
    flags = {
        "flags": {
            f: {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "on"}
            for f in FLAGS
        }
    }
    (root / "flags.json").write_text(json.dumps(flags))
    (root / "providers" / "file.yaml").write_text(
        yaml.safe_dump({"type": "file", "path": "../flags.json"})
    )
    config = {
        "provider": "file",
        "fallback": {"snapshot": None},
        "state": f"sqlite:///{root}/state.db",
        "audit": audit,
    }
    path = root / "flagwarden.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Run:
    seconds: float
    peak_mb: float
    stdout: str


# A child's peak RSS includes what it inherited at fork (Linux records the old address space's
# high-water mark at exec), so commands are started by a small launcher, never by this process
# after it built the log: the launcher reports its child's own peak.
_LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(proc.pid, 0)
sys.stderr.write(f"\\npeak-kb {usage.ru_maxrss} exit {os.waitstatus_to_exitcode(status)}\\n")
"""


def measure(argv: list[str], stdout: Path, env: dict[str, str] | None = None) -> Run:
    """Run ``argv`` in a process of its own: wall time and that process's peak RSS."""
    with stdout.open("w") as out:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, *argv],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            check=False,
        )
        seconds = time.perf_counter() - started
    *_, last = done.stderr.strip().splitlines() or [""]
    words = last.split()
    if len(words) != 4 or words[3] != "0":
        sys.exit(f"{' '.join(argv[:6])}... failed: {done.stderr[-2000:]}")
    return Run(seconds, int(words[1]) / 1024, stdout.read_text())


def baseline_tree(ref: str, into: Path) -> Path:
    """The ``src/`` tree of commit ``ref``, extracted under ``into`` (read-only git use)."""
    archive = subprocess.run(
        ["git", "archive", ref, "src"], cwd=ROOT, capture_output=True, check=False
    )
    if archive.returncode != 0:
        sys.exit(f"git archive {ref} failed: {archive.stderr.decode().strip()}")
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--postgres", action="store_true", help="audit log in PostgreSQL")
    parser.add_argument(
        "--baseline-ref", default="741ac72", help="the commit whose code is the baseline"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        schema = None
        if args.postgres:
            import psycopg

            schema = f"fw_bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(PG, autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA {schema}")
            url = f"{PG}?options=-csearch_path%3D{schema}"
        else:
            url = f"sqlite:///{root}/audit.db"
        try:
            started = time.perf_counter()
            expected = build_log(url, args.records)
            print(
                f"built {args.records:,} records ({'postgres' if schema else 'sqlite'}) in "
                f"{time.perf_counter() - started:.1f}s"
            )
            config = project(root, url)
            cli = [sys.executable, "-m", "flagwarden.cli"]
            old = str(baseline_tree(args.baseline_ref, root / "baseline"))
            runs: dict[str, Run] = {}
            for name, env in (("baseline", {"PYTHONPATH": old}), ("streamed", {})):
                runs[f"status {name}"] = status = measure(
                    [*cli, "status", "--json", "-c", str(config)], root / "s.json", env
                )
                for row in json.loads(status.stdout)["flags"]:
                    last = row["last_change"]["action"]
                    assert last == expected.last_action[row["flag"]], (name, row)
                out = root / f"report-{name}.json"
                runs[f"report {name}"] = measure(
                    [*cli, "report", "--format", "json", "-o", str(out), "-c", str(config)],
                    root / "r.txt",
                    env,
                )
                _check_report(json.loads(out.read_text()), expected)
                runs[f"verify {name}"] = verify = measure(
                    [*cli, "audit", "verify", "-c", str(config)], root / "v.txt", env
                )
                assert f"ok {args.records} records" in verify.stdout, verify.stdout
        finally:
            if schema is not None:
                import psycopg

                with psycopg.connect(PG, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA {schema} CASCADE")
    print(f"{'':30}{'seconds':>9}{'peak MB':>9}{'time ratio':>12}{'memory ratio':>14}")
    for command in ("status --json", "report --format json", "audit verify"):
        key = command.split()[-1] if command.startswith("audit") else command.split()[0]
        base, new = runs[f"{key} baseline"], runs[f"{key} streamed"]
        print(f"{command + ': baseline':30}{base.seconds:>9.2f}{base.peak_mb:>9.0f}")
        print(
            f"{command + ': streamed':30}{new.seconds:>9.2f}{new.peak_mb:>9.0f}"
            f"{base.seconds / new.seconds:>11.1f}x{base.peak_mb / new.peak_mb:>13.1f}x"
        )
    print("(ratios: baseline / streamed; above 1 the streamed path is faster or smaller)")
    digest = hashlib.sha256(json.dumps(expected.exposures, sort_keys=True).encode()).hexdigest()
    print(f"report counted {sum(expected.exposures.values()):,} exposures ({digest[:12]})")


def _check_report(doc: dict[str, Any], expected: Expected) -> None:
    """The report did the work it claims: every record verified, every exposure, outage and
    transition counted."""
    audit = doc["audit"]
    assert audit["verified"] and audit["records_checked"] == expected.records, audit
    by_flag = {f["flag"]: f for f in doc["flags"]}
    assert sorted(by_flag) == FLAGS
    for flag in FLAGS:
        assert by_flag[flag]["exposures"]["total"] == expected.exposures[flag], flag
        assert len(by_flag[flag]["changes"]) == expected.transitions[flag], flag
    assert len(doc["outages"]) == expected.outages


if __name__ == "__main__":
    main()
