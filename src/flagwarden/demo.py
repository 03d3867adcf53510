"""``flagwarden demo``: the whole story on the embedded default, through the public API only.

A synthetic pipeline routes batches of orders through a new transform, ``new-transform``.
The flag file (the embedded default's provider) turns the transform on for the run; the
policy's stage decides which records get it. With compressed soak times the rollout climbs
1% -> 5% -> 25% -> 50% on healthy guards; a flag-source outage in the middle is answered
from the last-known-good snapshot by a worker that starts during it; at 50% the transform
starts producing nulls, the guard breaches, and the rollout rolls itself back: every record
returns to control. A summary table closes the run, and the compliance report (Markdown and
HTML) lands in the demo folder.
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from openfeature.evaluation_context import EvaluationContext
from rich.console import Console
from rich.table import Table
from rich.text import Text

import flagwarden
from flagwarden.report import build_report, render_html, render_markdown

FLAG = "new-transform"
BATCH = 20_000
CHUNKS = 10  # a batch is processed (and its quality reported) in chunks, as a pipeline would
SOAK = 1.0  # seconds: the compressed soak time


@dataclass
class Batch:
    number: int
    stage: float
    treatment: int
    control: int
    source: str
    null_rate: float
    decision: str


def _write_project(root: Path) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    (root / "providers").mkdir(parents=True)
    (root / "policies").mkdir()
    flags = yaml.safe_load((resources.files("flagwarden") / "defaults" / "flags.yaml").read_text())
    # The "vendor" turns the transform on for this run; the policy's stage picks the records.
    flags["flags"][FLAG] = {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "on",
    }
    (root / "flags.yaml").write_text(yaml.safe_dump(flags, sort_keys=False))
    (root / "providers" / "file.yaml").write_text(
        "type: file\npath: ../flags.yaml\npoll_interval: 0.1\n"
    )
    policy = {
        "flag": FLAG,
        "owner": "data-platform@example.com",
        "description": "Route orders through the v2 enrichment transform",
        "expires": "2099-12-31",
        "variants": {"control": False, "treatment": True},
        "stages": [1, 5, 25, 50, 100],
        "soak": f"{SOAK}s",
        "guards": [
            {
                "name": "null-rate",
                "metric": "null_rate",
                "max": 0.02,
                "min_samples": 100,
                "window": "3s",
            }
        ],
        "on_breach": "rollback",
        "auto_advance": True,
    }
    (root / "policies" / f"{FLAG}.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    config = {
        "provider": "file",
        "fallback": {"snapshot": "file:.flagwarden/snapshot.json", "snapshot_debounce": 0.05},
        "state": "sqlite:///.flagwarden/state.db",
        "audit": "sqlite:///.flagwarden/audit.db",
        "telemetry": {
            "prometheus": {"port": 0, "addr": "127.0.0.1"},
            "exposure_log": {"summary_interval": "1s"},
        },
    }
    (root / "flagwarden.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root / "flagwarden.yaml"


def _run_batch(number: int, broken: bool, rng: random.Random) -> tuple[Batch, Any]:
    """Route one batch through the flag chunk by chunk; report each chunk's null rate per
    variant with ``record_metric``, as a pipeline would. Spreads over the compressed soak."""
    runtime = flagwarden.current()
    assert runtime is not None
    orders = [f"order-{number:03d}-{i:05d}" for i in range(BATCH)]
    run = EvaluationContext(attributes={"run": f"batch-{number}"})
    # The transform: v2 leaves a null in 8% of records once the bug lands, 0.1% before;
    # v1 (control) leaves one in 0.1%.
    rate = 0.08 if broken else 0.001
    treated = treated_nulls = 0
    size = BATCH // CHUNKS
    for start in range(0, BATCH, size):
        routes = flagwarden.assign(FLAG, orders[start : start + size], False, context=run)
        on = sum(routes)
        nulls = sum(1 for _ in range(on) if rng.random() < rate)
        control_nulls = sum(1 for _ in range(len(routes) - on) if rng.random() < 0.001)
        if on:
            flagwarden.record_metric(FLAG, "null_rate", nulls / on, variant="treatment", count=on)
        if len(routes) > on:
            flagwarden.record_metric(
                FLAG,
                "null_rate",
                control_nulls / (len(routes) - on),
                variant="control",
                count=len(routes) - on,
            )
        treated += on
        treated_nulls += nulls
        time.sleep(SOAK * 1.1 / CHUNKS)  # the compressed soak, spread over the batch
    details = runtime.client.get_boolean_details(FLAG, False, EvaluationContext(orders[0]))
    state = runtime.governed.state(FLAG)
    batch = Batch(
        number,
        state.stage,
        treated,
        BATCH - treated,
        str(details.flag_metadata.get("flagwarden.source")),
        treated_nulls / treated if treated else 0.0,
        "",
    )
    return batch, runtime


def _wait_for_source(runtime: Any, source: str, timeout: float = 3.0) -> None:
    """Until answers come from ``source`` again (the flag file is re-read every 0.1 s)."""
    deadline = time.monotonic() + timeout
    probe = EvaluationContext("order-probe")
    while time.monotonic() < deadline:
        details = runtime.client.get_boolean_details(FLAG, False, probe)
        if details.flag_metadata.get("flagwarden.source") == source:
            return
        time.sleep(0.05)


def run_demo(output: Path, console: Console) -> int:
    started = time.monotonic()
    config = _write_project(output)
    rng = random.Random(42)
    console.rule("[bold]flagwarden demo[/bold]: a guarded rollout of new-transform")
    flagwarden.configure(config)
    runtime = flagwarden.current()
    assert runtime is not None
    port = runtime.telemetry.metrics_port
    console.print(
        f"metrics: http://127.0.0.1:{port}/metrics   state, audit, snapshot: {output}/.flagwarden"
    )
    runtime.rollout.advance(FLAG, actor="demo", reason="start the rollout at 1%")

    batches: list[Batch] = []
    outage_done = broken = False
    for number in range(1, 15):
        stage = flagwarden.current().governed.state(FLAG).stage  # type: ignore[union-attr]
        note = ""
        if stage >= 25 and not outage_done:
            # The flag source goes away, and a new worker starts during the outage.
            outage_done = True
            flag_file = output / "flags.yaml"
            flag_file.rename(output / "flags.yaml.away")
            flagwarden.shutdown()
            flagwarden.configure(config)
            note = "outage: new worker, "
        if stage >= 50 and not broken:
            broken = True
            note += "v2 starts writing nulls, "
        batch, runtime = _run_batch(number, broken, rng)
        if note.startswith("outage"):
            (output / "flags.yaml.away").rename(output / "flags.yaml")  # the source is back
            _wait_for_source(runtime, "file")
        decisions = runtime.watch_once()
        decision = next((d for d in decisions if d.flag == FLAG), None)
        batch.decision = note + (f"{decision.action} {decision.detail}".strip() if decision else "")
        batches.append(batch)
        if decision is not None and decision.action == "rollback":
            final, runtime = _run_batch(number + 1, broken, rng)
            final.decision = "every record back on control"
            batches.append(final)
            break

    table = Table(title=f"{FLAG}: {BATCH:,} orders per batch")
    for column in (
        "batch",
        "stage",
        "v2 (treatment)",
        "v1 (control)",
        "answered by",
        "v2 null rate",
        "what happened",
    ):
        table.add_column(column)
    for b in batches:
        table.add_row(
            str(b.number),
            f"{b.stage:g}%",
            f"{b.treatment:,}",
            f"{b.control:,}",
            b.source,
            f"{b.null_rate:.2%}" if b.treatment else "-",
            b.decision,
        )
    console.print(table)

    flagwarden.shutdown()  # flushes exposure summaries and violations into the audit log
    from flagwarden.config import load_settings
    from flagwarden.governance.measurements import open_measurement_store
    from flagwarden.governance.project import Governance

    settings = load_settings(config)
    governance = Governance.open(settings)
    measurements = open_measurement_store(settings.config.state, settings.base_dir)
    try:
        assert governance.audit is not None and governance.store is not None
        report = build_report(
            governance.audit,
            governance.policies,
            governance.store.load_all(),
            measurements=measurements,
            provider="file",
        )
    finally:
        measurements.close()
        governance.close()
    (output / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (output / "report.html").write_text(render_html(report), encoding="utf-8")
    flag = report.flags[0]
    outage = report.outages[0] if report.outages else None
    path = " -> ".join(f"{t.stage:g}%" for t in flag.timeline)
    violations = sum(flag.violations.values())
    summary = (
        f"\nRolled out {path}; {flag.breaches} guard breach"
        f"{'es' if flag.breaches != 1 else ''}, {flag.automatic_rollbacks} automatic rollback"
        f"{'s' if flag.automatic_rollbacks != 1 else ''}, {violations} policy violation"
        f"{'s' if violations != 1 else ''}"
        + (
            f"; during the {outage.duration_seconds or 0:.1f} s outage "
            + ", ".join(
                f"{n:,} evaluations were answered from the {source}"
                for source, n in sorted(outage.served.items())
            )
            if outage
            else ""
        )
        + f"\nVerdict: {flag.verdict.text}"
        + f"\nAudit chain {'verified' if report.audit.verified else 'BROKEN'}, "
        f"report digest {report.digest[:16]}"
    )
    console.print(Text(summary))
    console.print(
        Text.assemble(
            "Reports: ",
            (str(output / "report.md"), "bold"),
            " and ",
            (str(output / "report.html"), "bold"),
            f" ({time.monotonic() - started:.1f} s)",
        )
    )
    return 0 if report.audit.verified else 1
