"""``flagwarden watch``: the guard loop."""

from __future__ import annotations

from typing import Annotated

import typer

from flagwarden.cli.app import ConfigOption, app, fail, open_project, out
from flagwarden.governance.state import StateStoreUnavailable


@app.command()
def watch(
    once: Annotated[bool, typer.Option("--once", help="one pass, then exit (for cron)")] = False,
    interval: Annotated[float, typer.Option(help="seconds between passes")] = 30.0,
    config: ConfigOption = None,
) -> None:
    """Evaluate guards; roll back or pause on breach, advance when healthy (auto_advance)."""
    import signal
    import threading

    from flagwarden.governance.guards import GuardEvaluator
    from flagwarden.governance.measurements import open_measurement_store
    from flagwarden.governance.watch import Watch

    settings, governance = open_project(config)
    try:
        measurements = open_measurement_store(settings.config.state, settings.base_dir)
    except StateStoreUnavailable as exc:
        governance.close()
        raise fail(str(exc)) from None
    evaluator = GuardEvaluator(measurements, settings.config.telemetry.prometheus.query_url)
    watcher = Watch(governance, evaluator)
    try:
        if once:
            for decision in watcher.tick():
                out.print(
                    f"{decision.flag}: {decision.action} {decision.detail}".rstrip(),
                    highlight=False,
                )
            return
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        out.print(f"watching {len(governance.policies)} flags every {interval:g}s", highlight=False)
        watcher.run(interval, stop)
        out.print("stopped", highlight=False)
    finally:
        measurements.close()
        governance.close()
