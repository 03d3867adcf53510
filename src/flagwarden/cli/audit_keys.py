"""``flagwarden audit keygen`` and ``flagwarden audit export``, and the key ``audit verify``
checks signatures with (registered on the ``audit`` group by :mod:`flagwarden.cli.audit`)."""

import shutil
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from flagwarden.cli.app import ConfigOption, err, fail, out, say
from flagwarden.cli.audit import _open_log, _usage, audit_app
from flagwarden.errors import ConfigError

if TYPE_CHECKING:
    from flagwarden.audit.archive import ArchiveCheck
    from flagwarden.audit.export import FileCheck
    from flagwarden.audit.log import Verification
    from flagwarden.audit.signing import PublicKey
    from flagwarden.config import Settings

__all__ = ["signatures_said", "verification_key", "verify_exports"]


def verification_key(option: Path | None, settings: "Settings | None") -> "PublicKey | None":
    """``--public-key``, else the configured key, else None; exit 1 on a key that does not
    load (the message names the option or field, never a private key)."""
    from flagwarden.audit.signing import load_public_key, public_key_from_settings

    try:
        if option is not None:
            return load_public_key(option, file="--public-key", field=None)
        return public_key_from_settings(settings) if settings is not None else None
    except ConfigError as exc:
        raise fail(str(exc)) from None


def signatures_said(result: "Verification | ArchiveCheck | FileCheck", *, signed: int) -> str:
    """How the signatures stand, for the verify line."""
    if result.key is not None:
        return f"signatures verified (key {result.key})"
    if signed:
        return "signed records present, not checked: pass --public-key"
    return "unsigned (no record carries a signature)"


def verify_exports(paths: list[Path], public_key: Path | None, config: Path | None) -> None:
    """``audit verify --export FILE...``: each file on its own, without a database."""
    from flagwarden.audit.export import verify_file
    from flagwarden.config import load_settings

    settings = None
    if public_key is None:
        try:
            settings = load_settings(config)
        except ConfigError as exc:
            raise fail(str(exc)) from None
    key = verification_key(public_key, settings)
    for path in paths:
        done = verify_file(path, key)
        if not done.ok:
            raise fail(f"{path} does not verify: {done.problem}")
        span = f" (records {done.first_seq}-{done.last_seq})" if done.records else ""
        signed = done.signed + done.manifest_signed
        out.print(
            Text.assemble(
                ("ok", "green"),
                f" {path}: {done.records} records{span}, head {(done.head or '')[:16]}; "
                + signatures_said(done, signed=signed),
            ),
            highlight=False,
        )


@audit_app.command("keygen")
def audit_keygen(
    output: Annotated[
        Path,
        typer.Option("-o", "--output", help="write PREFIX.key (private, mode 0600) and PREFIX.pub"),
    ] = Path("flagwarden-audit"),
    stdout: Annotated[
        bool,
        typer.Option(
            "--stdout",
            help="print the private key (base64 of its seed, one line) instead of writing "
            "PREFIX.key; only the public key is written",
        ),
    ] = False,
) -> None:
    """Make an Ed25519 key pair to sign the audit log with."""
    from flagwarden.audit.signing import KEY_ENV, fingerprint, seed_base64, write_keypair

    try:
        key, key_path, pub_path = write_keypair(output, private=not stdout)
    except FileExistsError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot write {exc.filename or output}: {exc.strerror or exc}") from None

    console = err if stdout else out  # with --stdout, stdout carries the key alone
    where = (
        f"the private key to {key_path} (mode 0600: keep it secret, never commit it) and "
        if key_path is not None
        else ""
    )
    console.print(
        Text.assemble(
            ("ok", "green"),
            f" wrote {where}the public key to {pub_path} (key {fingerprint(key.public_key())})",
        ),
        highlight=False,
    )
    value = str(key_path.absolute()) if key_path is not None else "<the line printed above>"
    console.print(
        Text(
            "To sign every audit record, in flagwarden.yaml:\n"
            "  audit:\n"
            "    url: sqlite:///.flagwarden/audit.db   # your audit URL\n"
            f"    signing_key: ${{{KEY_ENV}}}\n"
            f"    public_key: {pub_path}\n"
            f"and give the services the key: export {KEY_ENV}={value}\n"
            "(the key file's path, its PEM text, or the base64 seed). Auditors need only "
            f"{pub_path}: flagwarden audit verify --public-key {pub_path}"
        ),
        highlight=False,
    )
    if stdout:
        sys.stdout.write(seed_base64(key) + "\n")
        sys.stdout.flush()


def _bound(option: str, value: str | None, *, end: bool) -> datetime | None:
    from flagwarden.report.period import PeriodError, resolve_moment

    if value is None:
        return None
    try:
        moment = resolve_moment(option, value)
    except PeriodError as exc:
        raise _usage(str(exc)) from None
    return moment + timedelta(days=1) if end and len(value.strip()) == 10 else moment


@audit_app.command("export")
def audit_export(
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="the file to write (default: standard output)"),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="from: an ISO date/datetime or a duration ago (7d)"),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", help="to: an ISO date (through its end)/datetime or duration ago"),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Copy the audit log to JSON Lines (every column, signatures too) to verify offline."""
    from flagwarden.audit.export import export
    from flagwarden.audit.log import AuditError

    start, end = _bound("--since", since, end=False), _bound("--until", until, end=True)
    if start is not None and end is not None and start >= end:
        raise _usage("--since must come before --until")
    _, log = _open_log(config)
    try:
        if output is not None:
            done = export(log, output, since=start, until=end)
        else:
            with tempfile.TemporaryDirectory() as folder:
                done = export(log, Path(folder) / "export.jsonl", since=start, until=end)
                with done.path.open("rb") as file:
                    shutil.copyfileobj(file, sys.stdout.buffer)
                sys.stdout.flush()
    except AuditError as exc:
        raise fail(str(exc)) from None
    finally:
        log.close()
    span = f" ({done.first_seq}-{done.last_seq})" if done.count else ""
    signed = "signed manifest" if done.signed else "unsigned manifest: no audit.signing_key"
    message = f"exported {done.count} record{'s' * (done.count != 1)}{span}; {signed}"
    if output is not None:
        say(f"{message}, to {output}")
    else:
        err.print(Text.assemble(("ok", "green"), " ", message), highlight=False)
