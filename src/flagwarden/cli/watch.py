"""``flagwarden watch``: the guard loop (``--once`` for cron).

``--once`` exits 0 when it did nothing, held or advanced, 3 when it rolled back or paused a
flag, and 1 when a flag could not be checked.
"""

import json
from typing import Annotated

import typer
from rich.text import Text

from flagwarden.cli.app import ConfigOption, app, clean, fail, open_project, out

ACTED = 3  # the exit code of a pass that rolled back or paused


@app.command()
def watch(
    once: Annotated[bool, typer.Option("--once", help="one pass, then exit (for cron)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="decisions as JSON (--once)")] = False,
    interval: Annotated[
        float, typer.Option(help="seconds between passes (0.1 to 86400)", min=0.1, max=86400)
    ] = 30.0,
    config: ConfigOption = None,
) -> None:
    """Evaluate guards; roll back or pause on breach, advance when healthy (auto_advance)."""
    import signal
    import threading

    from flagwarden.governance.guards import GuardEvaluator
    from flagwarden.governance.measurements import open_measurement_store
    from flagwarden.governance.state import StateStoreUnavailable
    from flagwarden.governance.watch import Watch

    settings, governance = open_project(config)
    try:
        measurements = open_measurement_store(settings.config.state, settings.base_dir)
    except StateStoreUnavailable as exc:
        governance.close()
        raise fail(str(exc)) from None
    evaluator = GuardEvaluator(measurements, settings.config.telemetry.prometheus.query_url)
    try:
        watcher = Watch(governance, evaluator)
        if once:
            decisions = watcher.tick()
            if as_json:
                print(json.dumps([d.as_dict() for d in decisions], indent=2, default=str))
            for decision in decisions if not as_json else ():
                line = f"{decision.flag}: {decision.action} {decision.detail}".rstrip()
                out.print(Text(clean(line)), highlight=False)
            actions = {d.action for d in decisions}
            if "error" in actions:
                raise typer.Exit(1)
            if actions & {"rollback", "pause"}:
                raise typer.Exit(ACTED)
            return
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        out.print(f"watching {len(governance.policies)} flags every {interval:g}s", highlight=False)
        watcher.run(interval, stop)
        out.print("stopped", highlight=False)
    except StateStoreUnavailable as exc:
        raise fail(str(exc)) from None
    finally:
        measurements.close()
        governance.close()
