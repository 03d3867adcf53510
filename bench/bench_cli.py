"""A command line that starts at once: ``flagwarden kill`` from process start to the state write.

Run from the repository root:  python -m bench.bench_cli [--rounds 7] [--baseline-src DIR]

A small project (one governed flag in a flagd file, SQLite state and audit under the project,
no snapshot). Each round runs, each in a process of its own and in this order:

* the interpreter floor: ``python -c pass``;
* ``python -c "import typer"`` (the CLI framework alone) and ``python -c "import flagwarden"``;
* ``flagwarden kill FLAG --reason ...`` then ``flagwarden revive FLAG --reason ...`` (so each
  kill really writes), as an operator runs them: the console script next to this interpreter
  (``python -m flagwarden.cli`` when there is none);
* with ``--baseline-src DIR``, the same kill and revive again with DIR first on PYTHONPATH (a
  copy of ``src/`` holding other code to compare with, e.g. from before a change), so both are
  measured in the same rounds on the same machine.

For kill and revive it takes, from just before the process is started: the wall time until the
process exited (an upper bound of "until the state write"), until the state's ``updated_at``
(the write itself) and until the audit record's ``at``; and for every command the CPU time
(user + system) the process used, steadier than wall time on a busy machine. Medians over the
rounds.

It asserts the work was done: after each kill the flag is killed and the latest transition in
the audit log is that kill (after each revive: not killed, a revive), each read through the
library; every command exits 0.

Then one ``-X importtime`` run of the kill: the total import time and the 15 modules with the
largest cumulative import time (a module's own time plus its imports').
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.bench_governance import project as governed_project
from flagwarden.config import load_settings
from flagwarden.governance.project import Governance

ROOT = Path(__file__).resolve().parent.parent
FLAG = "new-scoring-model"


def project(root: Path) -> Path:
    """One governed flag served from a flagd file; SQLite state and audit (the defaults)."""
    return governed_project(root, f"sqlite:///{root}/.flagwarden/state.db")


def flagwarden_command() -> list[str]:
    """The console script beside this interpreter (not a shim), else ``python -m``."""
    script = Path(sys.executable).with_name("flagwarden")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "flagwarden.cli"]


def env(src: Path | None = None) -> dict[str, str]:
    """This environment without FLAGWARDEN_*; with ``src`` first on PYTHONPATH."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("FLAGWARDEN_")}
    e["FLAGWARDEN_ACTOR"] = "bench"
    if src is not None:
        e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), e.get("PYTHONPATH")]))
    return e


def cpu_used() -> float:
    """CPU seconds (user + system) of the children waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Timed:
    exited: float  # seconds from start to exit
    cpu: float  # CPU seconds of the process
    stdout: str
    stderr: str


def timed(command: list[str], src: Path | None = None) -> Timed:
    """Run ``command`` to its end; it must succeed."""
    cpu = cpu_used()
    started = time.time()
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env=env(src), timeout=120
    )
    exited = time.time() - started
    cpu = cpu_used() - cpu
    assert done.returncode == 0, (command, done.returncode, done.stdout, done.stderr)
    return Timed(exited, cpu, done.stdout, done.stderr)


@dataclass
class Written:
    exited: float
    state: float
    audit: float
    cpu: float


def transition(base: list[str], config: Path, action: str, src: Path | None = None) -> Written:
    """``flagwarden ACTION FLAG``; checks it was done; the times from the process's start."""
    command = [*base, action, FLAG, "--reason", f"bench: {action}", "-c", str(config)]
    started = time.time()
    done = timed(command, src)
    gov = Governance.open(load_settings(config))
    try:
        state = gov.rollout().state(FLAG)
        assert gov.audit is not None
        latest = gov.audit.records(flag=FLAG, kind="transition", newest_first=True, limit=1).first()
    finally:
        gov.close()
    assert state.killed == (action == "kill"), (action, state)
    assert state.updated_at is not None, state
    assert latest is not None and latest.data.get("action") == action, latest
    return Written(
        exited=done.exited,
        state=state.updated_at.timestamp() - started,
        audit=latest.at.timestamp() - started,
        cpu=done.cpu,
    )


def import_times(base: list[str], config: Path) -> tuple[float, list[tuple[float, int, str]]]:
    """One kill under ``-X importtime`` (then a revive): total ms and the top 15 modules."""
    command = [sys.executable, "-X", "importtime", "-m", "flagwarden.cli"]
    done = timed([*command, "kill", FLAG, "--reason", "bench: importtime", "-c", str(config)])
    assert state_of(config), "the -X importtime kill did not kill"
    transition(base, config, "revive")
    rows: list[tuple[float, int, str]] = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|")
        depth = (len(name) - len(name.lstrip())) // 2
        rows.append((int(cumulative) / 1000, depth, name.strip()))
    total = sum(ms for ms, depth, _ in rows if depth == 0)
    return total, sorted(rows, reverse=True)[:15]


def state_of(config: Path) -> bool:
    """Whether the flag is killed now."""
    gov = Governance.open(load_settings(config))
    try:
        return gov.rollout().state(FLAG).killed
    finally:
        gov.close()


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="a folder holding another flagwarden package (a copy of src/) to compare with",
    )
    args = parser.parse_args()
    base = flagwarden_command()
    # What each flagwarden row runs: this tree, and the baseline's (first on PYTHONPATH).
    trees: dict[str, Path | None] = {"": None}
    if args.baseline_src is not None:
        src = args.baseline_src.resolve()
        assert (src / "flagwarden" / "__init__.py").exists(), f"no flagwarden package in {src}"
        trees = {" (baseline)": src, "": None}
    baselines: dict[str, tuple[list[str], Path | None]] = {
        "python -c pass": ([sys.executable, "-c", "pass"], None),
        'python -c "import typer"': ([sys.executable, "-c", "import typer"], None),
    }
    for tree, src in trees.items():
        command = [sys.executable, "-c", "import flagwarden"]
        baselines[f'python -c "import flagwarden"{tree}'] = (command, src)
    floor: dict[str, list[Timed]] = {name: [] for name in baselines}
    written: dict[str, list[Written]] = {
        f"{action}{tree}": [] for tree in trees for action in ("kill", "revive")
    }
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        config = project(Path(tmp))
        for src in trees.values():  # warm the file cache, create the stores
            transition(base, config, "kill", src)
            transition(base, config, "revive", src)
        for _ in range(args.rounds):
            for name, (command, src) in baselines.items():
                floor[name].append(timed(command, src))
            for tree, src in trees.items():
                for action in ("kill", "revive"):
                    written[f"{action}{tree}"].append(transition(base, config, action, src))
        total, top = import_times(base, config)

    where = f"; baseline: {args.baseline_src}" if args.baseline_src else ""
    print(f"flagwarden: {' '.join(Path(part).name for part in base)}; {args.rounds} rounds{where}")
    print()
    print("| command | to exit (ms) | to the state write | to the audit record | CPU (ms) |")
    print("|---|---:|---:|---:|---:|")
    for name, values in floor.items():
        wall, cpu = median_ms([v.exited for v in values]), median_ms([v.cpu for v in values])
        print(f"| `{name}` | {wall:.0f} | - | - | {cpu:.0f} |")
    for name, times in written.items():
        print(
            f"| `flagwarden {name}` | {median_ms([w.exited for w in times]):.0f} "
            f"| {median_ms([w.state for w in times]):.0f} "
            f"| {median_ms([w.audit for w in times]):.0f} "
            f"| {median_ms([w.cpu for w in times]):.0f} |"
        )
    print()
    print(f"Import time on the kill path (-X importtime, one run): {total:.0f} ms in all")
    print()
    print("| cumulative ms | depth | module |")
    print("|---:|---:|---|")
    for ms, depth, name in top:
        print(f"| {ms:.1f} | {depth} | {name} |")


if __name__ == "__main__":
    main()
