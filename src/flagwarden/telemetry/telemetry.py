"""A process's telemetry: the exposure recorder, summaries, gauges, and metric export.

Pushes to a Pushgateway: exactly one process pushes per run, the one that started telemetry
(``flagwarden.configure()``) first. A process forked from it never pushes, even when it calls
``configure()`` again: with ``PROMETHEUS_MULTIPROC_DIR`` its counts reach the one push through
the multiprocess folder; without, they stay its own. The group is ``job`` plus the configured
``grouping``, never a host or a process id, so each run replaces the last run's push.

With ``telemetry.otel`` every process sends its own counts as OpenTelemetry deltas instead
(:mod:`flagwarden.telemetry.otel`): forked children too, since the backend adds them up.
"""

from __future__ import annotations

import os
from typing import Any

from openfeature import api

from flagwarden.audit.log import AuditLog
from flagwarden.config import TelemetryConfig
from flagwarden.events import Event, EventSink
from flagwarden.governance.policy import parse_duration
from flagwarden.governance.state import FlagState
from flagwarden.telemetry.cardinality import flag_labels
from flagwarden.telemetry.dedup import new_deduper
from flagwarden.telemetry.export import delete_pushed, push_metrics, serve_metrics
from flagwarden.telemetry.exposure import ExposureHook, ExposureSummary
from flagwarden.telemetry.logging import configure_logging, exposure_stream
from flagwarden.telemetry.metrics import (
    FALLBACK_ACTIVE,
    FLAG_KILLED,
    FLAG_PAUSED,
    FLAG_STAGE,
    PROVIDER_STATE,
)
from flagwarden.telemetry.otel import OtelExposures, otel_enabled
from flagwarden.telemetry.recorder import ExposureRecorder
from flagwarden.telemetry.writer import ExposureWriter

__all__ = ["Telemetry", "pushing_process"]

_STATES = ("NOT_READY", "READY", "STALE", "ERROR", "FATAL")

# The process that started telemetry first: the only one that pushes. Inherited by a fork,
# so a forked child (whose pid differs) never becomes it.
_pusher_pid: int | None = None
# Groups this process deleted at start (delete_at_start): once per process and group, so a
# second configure() in the same run does not delete what the run has pushed.
_deleted_at_start: set[tuple[str, str, tuple[tuple[str, str], ...]]] = set()


def pushing_process() -> bool:
    """Whether this process is the one that pushes to the Pushgateway (see the module doc)."""
    return _pusher_pid is not None and _pusher_pid == os.getpid()


class Telemetry:
    def __init__(self, config: TelemetryConfig, provider_name: str, audit: AuditLog | None) -> None:
        configure_logging(config.log_format)
        # First: a missing [otel] extra is a ConfigError before anything starts.
        self.otel = OtelExposures(config.otel) if otel_enabled(config.otel) else None
        self.config = config
        flag_labels.limit = config.max_unregistered_flags  # process-wide, as the registry is
        self.provider_name = provider_name
        self.audit = audit
        exposure = config.exposure_log
        self.summary = ExposureSummary(
            parse_duration(exposure.summary_interval).total_seconds(), self._audit_summary
        )
        deduper = (
            new_deduper(parse_duration(exposure.dedup_window).total_seconds(), exposure.dedup_slots)
            if exposure.enabled
            else None
        )
        # Asked again at every flush: structlog configured by the application later wins.
        writer = ExposureWriter(exposure_stream) if exposure_stream() is not None else None
        self.recorder = ExposureRecorder(
            provider_name, deduper, self.summary, writer, otel=self.otel
        )
        # Opt-in: the governing provider counts its own answers; the hook is for clients of
        # other providers (and costs every OpenFeature evaluation in the process ~5 µs).
        self.hook = ExposureHook(self.recorder) if config.hook else None
        self.metrics_port = 0

    def install(self, events: EventSink) -> None:
        global _pusher_pid
        if _pusher_pid is None:
            _pusher_pid = os.getpid()
        if self.hook is not None:
            api.add_hooks([self.hook])
        events.subscribe(self._on_event)
        self.recorder.start()
        self.summary.start()
        if self.otel is not None:
            self.otel.start()
        if self.config.prometheus.port is not None:
            self.metrics_port = serve_metrics(
                self.config.prometheus.port, self.config.prometheus.addr
            )
        self._delete_at_start()

    def _delete_at_start(self) -> None:
        """``delete_at_start``: an earlier run's group (a run that crashed before its push
        replaced the one before) is not read as this run's totals."""
        prom = self.config.prometheus
        if not (prom.pushgateway and prom.delete_at_start and pushing_process()):
            return
        group = (prom.pushgateway, prom.job, tuple(sorted(prom.grouping.items())))
        if group not in _deleted_at_start and delete_pushed(
            prom.pushgateway, prom.job, prom.grouping
        ):
            _deleted_at_start.add(group)

    def _audit_summary(self, summary: dict[str, Any]) -> None:
        if self.audit is not None:
            self.audit.append("exposure_summary", summary)

    def _on_event(self, event: Event) -> None:
        if event.name == "flagwarden.outage_started":
            FALLBACK_ACTIVE.labels(self.provider_name).set(1)
        elif event.name == "flagwarden.outage":
            FALLBACK_ACTIVE.labels(self.provider_name).set(0)
        elif event.name == "flagwarden.provider_status":
            self.provider_status(str(event.fields.get("status")))

    def provider_status(self, status: str) -> None:
        for state in _STATES:
            PROVIDER_STATE.labels(self.provider_name, state).set(1 if state == status else 0)

    @staticmethod
    def flag_states(states: dict[str, FlagState]) -> None:
        """Gauges for each governed flag's stage, killed and paused state."""
        for flag, state in states.items():
            FLAG_STAGE.labels(flag).set(state.stage)
            FLAG_KILLED.labels(flag).set(1 if state.killed else 0)
            FLAG_PAUSED.labels(flag).set(1 if state.paused else 0)

    def after_fork_in_child(self) -> None:
        self.recorder.after_fork_in_child()
        self.summary.after_fork_in_child()
        if self.otel is not None:
            self.otel.after_fork_in_child()

    def flush_at_exit(self) -> None:
        """A process ending without ``shutdown()``: the last counts and exposure lines go out
        (and to OpenTelemetry, waiting at most its close timeout)."""
        self.recorder.close()
        if self.otel is not None:
            self.otel.close()

    def close(self) -> None:
        if self.hook is not None:
            hooks = [h for h in api.get_hooks() if h is not self.hook]
            api.clear_hooks()
            api.add_hooks(hooks)
        self.recorder.close()  # its last counts go into the summary the next line writes
        self.summary.close()
        if self.otel is not None:  # after the recorder's last fold: the last counts go too
            self.otel.close()
        prom = self.config.prometheus
        if prom.pushgateway and pushing_process():
            push_metrics(prom.pushgateway, prom.job, prom.grouping)
