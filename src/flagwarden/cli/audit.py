"""``flagwarden audit ...`` and ``flagwarden report``."""

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from flagwarden.cli.app import (
    ActorOption,
    ConfigOption,
    app,
    clean,
    err,
    fail,
    open_project,
    out,
    say,
    warn,
    write_pending_records,
)
from flagwarden.errors import ConfigError

if TYPE_CHECKING:
    from flagwarden.audit.log import AuditLog
    from flagwarden.config import Settings
    from flagwarden.governance.changes import Unrecorded

audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


PublicKeyOption = Annotated[
    Path | None,
    typer.Option(
        "--public-key",
        help="check signatures with this Ed25519 public key (a PEM or base64 file; default: "
        "audit.public_key, else the public half of audit.signing_key)",
    ),
]
ExportFiles = Annotated[
    list[Path] | None,
    typer.Option(
        "--export",
        help="verify this export (or archive) file on its own, offline: no database (repeatable)",
    ),
]
ArchiveFiles = Annotated[
    list[Path] | None,
    typer.Option(
        "--archive",
        help="archive files to verify too, and that they join the live chain (repeatable; "
        "more files may follow as arguments)",
    ),
]


@audit_app.command("verify")
def audit_verify(
    archives: ArchiveFiles = None,
    more: Annotated[
        list[Path] | None, typer.Argument(metavar="[FILE]...", help="more archive files")
    ] = None,
    public_key: PublicKeyOption = None,
    exports: ExportFiles = None,
    config: ConfigOption = None,
) -> None:
    """Check the audit log's hash chain and signatures; name the first edited, deleted,
    moved, unsigned or forged record.

    First writes the records that wait in the state store's outbox (changes whose record
    could not be written at the time), then checks that every state version has its record.
    With --export, checks export files offline instead.
    """
    from flagwarden.audit.archive import verify_archives
    from flagwarden.audit.log import AuditError
    from flagwarden.cli.audit_keys import signatures_said, verification_key, verify_exports

    files = [*(archives or ()), *(more or ())]
    if exports:
        if files:
            raise _usage("--export checks files on their own: give archive files with --export")
        return verify_exports(exports, public_key, config)
    if more and not archives:
        raise _usage("archive files are given with --archive FILE...")
    settings, log = _open_log(config)
    try:
        key = verification_key(public_key, settings)
    except typer.Exit:
        log.close()
        raise
    try:
        written, unrecorded = _cross_check(settings, log)
        result = log.verify(key)
        joined = verify_archives(log, files, key) if files else None
    except AuditError as exc:
        raise fail(str(exc)) from None
    finally:
        log.close()
    if written:
        say(f"wrote {written} record{'s' * (written != 1)} that waited in the state store's outbox")
    if not result.ok:
        signed = "signed" in (result.problem or "") or "signature" in (result.problem or "")
        what = "audit signatures fail" if signed else "audit chain broken"
        raise fail(f"{what} at record {result.first_bad_seq}: {result.problem}")
    if joined is not None and not joined.ok:
        raise fail(f"archive does not verify: {joined.problem}")
    if unrecorded:
        for missing in unrecorded[:20]:
            fail(f"state change without its record: {missing}")
        raise fail(f"{len(unrecorded)} state version(s) have no audit record")
    cut = f" (records 1-{result.archived_through} archived)" if result.archived_through else ""
    out.print(
        f"[green]ok[/green] {result.checked} records{cut}, chain head {result.head[:16]}; "
        + signatures_said(result, signed=result.signed),
        highlight=False,
    )
    if joined is not None:
        say(
            f"{joined.records} archived records in {joined.files} file"
            f"{'s' * (joined.files != 1)} (records {joined.first_seq}-{joined.last_seq}) "
            "verify and join the live chain"
            + ("" if joined.first_seq == 1 else f"; records before {joined.first_seq} not given")
            + ("; manifests: " + signatures_said(joined, signed=joined.signed))
            + (
                f"; {joined.unsigned} archived records unsigned (before signing was turned on)"
                if joined.key is not None and joined.unsigned
                else ""
            )
        )


def _open_log(config: Path | None) -> tuple["Settings", "AuditLog"]:
    """The settings and the audit log, or exit 1 saying what is wrong."""
    from flagwarden.audit.log import AuditError, AuditLog
    from flagwarden.audit.signing import signer_from_settings
    from flagwarden.config import load_settings

    try:
        settings = load_settings(config)
        signer = signer_from_settings(settings)
        return settings, AuditLog(settings.config.audit.url, settings.base_dir, signer=signer)
    except (ConfigError, AuditError) as exc:
        raise fail(str(exc)) from None


def _cross_check(settings: "Settings", log: "AuditLog") -> tuple[int, list["Unrecorded"]]:
    """Write what waits in the state store's outbox, then name every state version that has
    no audit record (exit 1 when the state store cannot be read: the check is not done)."""
    from flagwarden.governance.rollout import Rollout
    from flagwarden.governance.state import StateStoreUnavailable, open_state_store

    try:
        store = open_state_store(settings.config.state, settings.base_dir)
    except StateStoreUnavailable as exc:
        raise fail(
            f"cannot open the state store, so state versions cannot be checked: {exc}"
        ) from None
    try:
        rollout = Rollout({}, store, log)
        done = rollout.reconcile()
        if done.error is not None:
            warn(f"not every record waiting in the outbox could be written: {done.error}")
        return done.written, rollout.unrecorded()
    except StateStoreUnavailable as exc:
        raise fail(
            f"cannot read the state store, so state versions cannot be checked: {exc}"
        ) from None
    finally:
        store.close()


@audit_app.command("archive")
def audit_archive(
    before: Annotated[
        str,
        typer.Option(
            "--before",
            help="move records older than this: an ISO date or datetime (UTC unless it says "
            "otherwise) or a duration ago (90d); at least 24 hours ago",
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="the archive file (default audit-before-DATE.jsonl)"),
    ] = None,
    actor: ActorOption = None,
    config: ConfigOption = None,
) -> None:
    """Move old records to a JSON Lines file; the live chain keeps verifying from the cut."""
    from flagwarden.audit.archive import archive
    from flagwarden.audit.log import AuditError
    from flagwarden.governance.rollout import resolve_actor
    from flagwarden.report.period import PeriodError, resolve_moment

    try:
        moment = resolve_moment("--before", before)
    except PeriodError as exc:
        raise _usage(str(exc)) from None
    path = output or Path(f"audit-before-{moment:%Y-%m-%dT%H%M%S}.jsonl")
    _, log = _open_log(config)
    try:
        done = archive(log, moment, path, actor=resolve_actor(actor))
    except AuditError as exc:
        raise fail(str(exc)) from None
    finally:
        log.close()
    if done is None:
        say(f"nothing to archive: no record is older than {moment:%Y-%m-%d %H:%M:%S} UTC")
        return
    unsigned = (
        f"; {done.unsigned} of them unsigned (written before signing was turned on"
        + (f": signed from record {done.first_signed_seq})" if done.first_signed_seq else ")")
        if done.unsigned and done.record.signature is not None
        else ""
    )
    say(
        f"archived {done.count} record{'s' * (done.count != 1)} "
        f"({done.first_seq}-{done.last_seq}) to {done.path}; "
        f"archive record {done.record.seq} states the cut (head {done.head[:16]}){unsigned}"
    )


def _usage(message: str) -> typer.Exit:
    """A usage error (exit 2), said without interpreting Rich markup in ``message``."""
    err.print(Text.assemble(("error:", "red"), " ", clean(message)), highlight=False)
    return typer.Exit(2)


@app.command()
def report(
    since: Annotated[
        str,
        typer.Option(
            "--since",
            help="start: a duration before --until (7d, 24h) or an ISO date/datetime (UTC "
            "unless it says otherwise)",
        ),
    ] = "7d",
    until: Annotated[
        str | None,
        typer.Option("--until", help="end: an ISO date/datetime, or a duration ago (default: now)"),
    ] = None,
    flags: Annotated[
        list[str] | None,
        typer.Option(
            "--flag", help="only this flag (repeat for more; default: every governed flag)"
        ),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="md, html or json")] = "md",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="file to write")] = None,
    config: ConfigOption = None,
) -> None:
    """The compliance report: verdicts, changes, soak, guards, violations, exposures, outages."""
    from flagwarden.audit.log import AuditError
    from flagwarden.audit.signing import public_key_from_settings
    from flagwarden.governance.measurements import open_measurement_store
    from flagwarden.governance.state import StateStoreUnavailable
    from flagwarden.report import (
        PeriodError,
        build_report,
        render_html,
        render_markdown,
        resolve_period,
    )

    if fmt not in ("md", "html", "json"):
        raise _usage(f"--format must be md, html or json, not {fmt!r}")
    try:
        start, end = resolve_period(since, until)
    except PeriodError as exc:
        raise _usage(str(exc)) from None
    settings, governance = open_project(config)
    measurements = None
    try:
        assert governance.store is not None
        if governance.audit is None:  # the report is read from it: nothing to say without it
            raise fail(f"cannot open the audit store: {governance.audit_problem}")
        unknown = sorted(set(flags or ()) - set(governance.policies))
        if unknown:
            known = ", ".join(sorted(governance.policies)) or "none"
            raise fail(f"no policy for {', '.join(unknown)} (governed flags: {known})")
        try:
            measurements = open_measurement_store(settings.config.state, settings.base_dir)
        except StateStoreUnavailable as exc:
            warn(f"guard charts without measurements: {exc}")
        public_key = public_key_from_settings(settings)  # signatures checked when configured
        # What still cannot be written makes the log not verified; when everything could be,
        # what waits now is a change still being made.
        pending = len(governance.store.pending_outbox()) if write_pending_records(governance) else 0
        doc = build_report(
            governance.audit,
            governance.policies,
            governance.store.load_all(),
            since=start,
            until=end,
            flags=flags or None,
            measurements=measurements,
            provider=settings.provider_name,
            public_key=public_key,
            pending=pending,
        )
    except (StateStoreUnavailable, AuditError, ConfigError) as exc:
        raise fail(str(exc)) from None
    finally:
        if measurements is not None:
            measurements.close()
        governance.close()
    text = (
        doc.dumps()
        if fmt == "json"
        else render_html(doc)
        if fmt == "html"
        else render_markdown(doc)
    )
    if output is None:
        sys.stdout.write(text)
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise fail(f"cannot write {output}: {exc.strerror or exc}") from None
        say(f"{fmt} report written to {output} (digest {doc.digest[:16]})")
    if not doc.audit.verified and doc.audit.pending_records and doc.audit.first_bad_record is None:
        raise fail(f"the audit log is incomplete: {doc.audit.problem}")
    if not doc.audit.verified:
        raise fail(
            f"the audit chain did not verify (record {doc.audit.first_bad_record}: "
            f"{doc.audit.problem}); the report says where it broke"
        )


# keygen and export live in their own module and register on audit_app.
from flagwarden.cli import audit_keys as _audit_keys  # noqa: E402, F401
