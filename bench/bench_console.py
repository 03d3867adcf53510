"""Kill through the admin API against kill through the command line, to every worker.

Run from the repository root:  python -m bench.bench_console [--workers 8] [--trials 3]

For each state store (SQLite, Redis) one project (bench_governance's), one ``flagwarden
serve`` process and, per trial and per way of killing, N fresh worker processes
(tests/governance/worker.py) that serve the treatment to all their 200 units at 100%. The
clock starts when the kill is asked for and stops when the last worker reports all its units
on control:

* api: just before ``POST /api/v1/flags/{flag}/kill`` with an operator's bearer token;
* cli: just before ``flagwarden kill`` is started as a process of its own, as an operator
  would type it (its Python start-up included: that is what the operator waits for);
* write: the library's ``Rollout.kill`` in this process (bench_governance's measurement:
  the propagation floor, nothing before the write).

The three alternate within each trial. Median and worst over trials of the time until all N
workers serve control, its ratio to the CLI's median, the median time until the kill was
stored (the state's ``updated_at``: what start-up and HTTP cost before propagation begins),
and the API's HTTP round trip on its own. The server has seen the token once before the
trials (its first check is a deliberate scrypt). The bench asserts that every worker served
the treatment to all its units before each kill and control to all of them after it, and that
the served audit trail holds every kill, the API's under the token's name.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis
from tests.server.conftest import start_console

from bench.bench_governance import FLAG, kill_propagation, project, ready_workers
from flagwarden.config import load_settings
from flagwarden.governance.project import Governance

ROOT = Path(__file__).resolve().parents[1]
WAYS = ("write", "cli", "api")


@dataclass
class Trial:
    """Seconds from asking for the kill: to the last worker on control, to the kill stored,
    to the HTTP answer (the API only)."""

    all: float
    write: float
    answer: float | None = None


def cli_command(config: Path, *args: str) -> list[str]:
    """``flagwarden ARGS -c CONFIG`` as an operator would run it."""
    return [sys.executable, "-m", "flagwarden.cli", *args, "-c", str(config)]


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_command(config, *args),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def all_on_control(procs: list[subprocess.Popen[str]], started: float) -> float:
    """Seconds from ``started`` until the last worker served control to all its units."""
    last = 0.0
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line and line[0] == "control", f"a worker never went to control: {line!r}"
        last = max(last, float(line[1]) - started)
        proc.wait(30)
    return last


def written_at(config: Path) -> float:
    """When the flag's current state (the kill) was written, as a unix time."""
    gov = Governance.open(load_settings(config))
    try:
        state = gov.rollout().state(FLAG)
    finally:
        gov.close()
    assert state.killed and state.updated_at is not None, state
    return state.updated_at.timestamp()


def kill_by_write(config: Path, workers: int) -> Trial:
    """bench_governance's measurement: from the library's write, no start-up, no HTTP."""
    return Trial(all=max(kill_propagation(config, workers)), write=0.0)


def kill_by_api(config: Path, workers: int, url: str, token: str) -> Trial:
    procs = ready_workers(config, workers)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        started = time.time()
        answer = client.post(f"/api/v1/flags/{FLAG}/kill", json={"reason": "bench: api"})
        answered = time.time() - started
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["result"] == "changed" and body["after"]["killed"], body
    last = all_on_control(procs, started)
    return Trial(all=last, write=written_at(config) - started, answer=answered)


def kill_by_cli(config: Path, workers: int) -> Trial:
    procs = ready_workers(config, workers)
    started = time.time()
    command = subprocess.Popen(
        cli_command(config, "kill", FLAG, "--reason", "bench: cli"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    last = all_on_control(procs, started)
    _, err = command.communicate(timeout=120)
    assert command.returncode == 0, err
    return Trial(all=last, write=written_at(config) - started)


def operator_token(config: Path) -> str:
    made = cli(config, "token", "create", "--name", "bench-operator", "--role", "operator")
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().splitlines()[-1]


def killed_by(url: str, token: str) -> list[str]:
    """The actors of the flag's kills, from the served audit trail."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        trail = client.get(f"/api/v1/flags/{FLAG}/audit", params={"limit": 1000}).json()
    return [
        r["actor"] for r in trail if r["kind"] == "transition" and r["data"]["action"] == "kill"
    ]


def ms(values: list[float]) -> tuple[float, float]:
    return statistics.median(values) * 1000, max(values) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flagwarden-bench-console-"))
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    backends = {
        "sqlite": f"sqlite:///{work}/sqlite/.flagwarden/state.db",
        "redis": f"redis://127.0.0.1:6379/0?prefix={prefix}",
    }
    rows: list[str] = []
    try:
        for name, state in backends.items():
            config = project(work / name, state)
            token = operator_token(config)
            server, url = start_console(config, work / f"serve-{name}.log")
            try:
                # The first sight of a token costs a scrypt: not what a kill costs.
                with httpx.Client(base_url=url) as client:
                    me = client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
                assert me.status_code == 200 and me.json()["role"] == "operator", me.text
                trials: dict[str, list[Trial]] = {way: [] for way in WAYS}
                ways: dict[str, Callable[[], Trial]] = {
                    "write": lambda: kill_by_write(config, args.workers),  # noqa: B023
                    "cli": lambda: kill_by_cli(config, args.workers),  # noqa: B023
                    "api": lambda: kill_by_api(config, args.workers, url, token),  # noqa: B023
                }
                for trial in range(args.trials):
                    for way in WAYS:  # alternating: a slow minute hits every way alike
                        done = ways[way]()
                        trials[way].append(done)
                        print(
                            f"{name} trial {trial + 1} {way}: all on control {done.all * 1000:.0f}"
                            f" ms, stored {done.write * 1000:.0f} ms",
                            flush=True,
                        )
                actors = killed_by(url, token)
                assert actors.count("bench-operator") == args.trials, actors  # the API's kills
                assert len(actors) == 3 * args.trials, actors
            finally:
                server.terminate()
                server.wait(10)
            cli_median = statistics.median(t.all for t in trials["cli"])
            for way in WAYS:
                median, worst = ms([t.all for t in trials[way]])
                ratio = statistics.median(t.all for t in trials[way]) / cli_median
                stored = statistics.median(t.write for t in trials[way]) * 1000
                answers = [t.answer for t in trials[way] if t.answer is not None]
                answer = "{:.0f} / {:.0f}".format(*ms(answers)) if way == "api" else "-"
                rows.append(
                    f"| {name:<7} | {way:<5} | {median:11.0f} | {worst:10.0f} | {ratio:6.2f} "
                    f"| {stored:19.0f} | {answer:>27} |"
                )
    finally:
        client = redis.Redis()
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)

    print(f"\nKill to all {args.workers} workers on control, {args.trials} trials:\n")
    print(
        "| backend | kill  | median (ms) | worst (ms) | / cli  | stored, median (ms) "
        "| API answer med / worst (ms) |"
    )
    print(
        "|---------|-------|------------:|-----------:|-------:|--------------------:"
        "|---------------------------:|"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
