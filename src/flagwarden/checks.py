"""``flagwarden check``: every problem of a project at once, as findings.

Offline it validates ``flagwarden.yaml``, every provider profile, the active flag file and
every policy (each file's every problem: file, field, value, expectation), sequencing
(unknown prerequisites, cycles), guard sources, paths that do not exist, and lints (owners,
expiry, flags left at 100%, flags evaluated without a policy; these read local SQLite stores
that exist, never create one and never reach a server). With ``connect`` it also reaches the
state store, the audit store, Prometheus, the Pushgateway and the vendor (the SDK's own
start-up, waiting at most the profile's ``start_wait``), and says which one cannot be
reached. No finding ever carries a secret: store URLs are redacted, SDK keys are scrubbed.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from flagwarden.audit.log import AuditError, AuditLog
from flagwarden.audit.signing import fingerprint, public_key_from_settings, signer_from_settings
from flagwarden.config import FlagwardenConfig, Settings, load_settings
from flagwarden.documents import read_yaml
from flagwarden.errors import ConfigError
from flagwarden.governance.enforcement import same_value
from flagwarden.governance.lint import lint_policy, lint_state, lint_unregistered
from flagwarden.governance.policy import PolicySet, read_policies, sequencing_problems
from flagwarden.governance.state import StateStoreUnavailable, open_state_store
from flagwarden.profiles import FileProfile, OpenFeatureProfile, Profile, load_profile
from flagwarden.storage import redact_text, redact_url

__all__ = ["Finding", "check_project"]

Level = Literal["ok", "warning", "error"]


@dataclass(frozen=True)
class Finding:
    level: Level
    message: str
    file: str | None = None  # an "ok" is withdrawn when its file also has a problem


def _errors(exc: ConfigError) -> Iterator[Finding]:
    for problem in exc.problems:
        yield Finding("error", str(problem), problem.file)


def check_project(config: Path | str | None = None, *, connect: bool = False) -> list[Finding]:
    """Everything wrong (and right) with a project; never raises for a project problem."""
    found: list[Finding] = []
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        found.extend(_errors(exc))
        # The other files are still worth checking: with the folders the file names, if any.
        fallback = _fallback_settings(exc)
        if fallback is None:
            return found
        settings, where, usable = fallback, str(exc.file), False
    else:
        where, usable = str(settings.source or "the embedded default"), True
    profiles = _check_profiles(settings, where, found)
    active = profiles.get(settings.provider_name) if usable else None
    if usable and active is None:
        known = ", ".join(sorted(profiles)) or "none"
        found.append(
            Finding(
                "error",
                f"{where}: provider: no valid profile {settings.provider_name!r} in "
                f"{settings.providers_dir} (valid profiles: {known})",
                where,
            )
        )
    shadow = settings.config.shadow if usable else None
    if shadow is not None and shadow.provider not in profiles:
        found.append(
            Finding(
                "error",
                f"{where}: shadow.provider: no valid profile {shadow.provider!r} "
                f"in {settings.providers_dir}",
                where,
            )
        )
    active_name = settings.provider_name if active is not None else None
    flags = _check_flag_files(settings, profiles, found, active_name=active_name)
    policy_set = _check_policies(settings, where, found)
    if usable:
        found.extend(_guard_sources(settings, policy_set))
    if flags is not None:
        found.extend(_policy_against_flags(policy_set, *flags))
    if usable:
        found.extend(_check_audit_keys(settings, where))
        found.extend(_check_stores(settings, policy_set, connect))
        found.extend(_check_notify(settings))
        found.extend(_check_otel(settings, where))
    if usable and connect:
        found.extend(_check_telemetry(settings))
        for profile in (active, profiles.get(shadow.provider) if shadow else None):
            if profile is not None:
                found.append(_reach_vendor(settings, profile))
    troubled = {f.file for f in found if f.level != "ok" and f.file}
    found = [f for f in found if not (f.level == "ok" and f.file in troubled)]
    if not any(f.level == "error" for f in found):
        found.append(Finding("ok", f"{where}: provider {settings.provider_name!r}"))
    return found


def _fallback_settings(exc: ConfigError) -> Settings | None:
    """Settings good enough to find the providers and policies of a broken flagwarden.yaml."""
    path = Path(exc.file) if exc.file else None
    if path is None or not path.is_file():
        return None
    try:
        raw = read_yaml(path)
    except ConfigError:
        raw = None
    raw = raw if isinstance(raw, Mapping) else {}
    folders: dict[str, Any] = {
        key: raw[key] for key in ("providers_dir", "policies_dir") if isinstance(raw.get(key), str)
    }
    provider = str(raw["provider"]) if isinstance(raw.get("provider"), str) else "-"
    try:
        cfg = FlagwardenConfig(provider=provider, **folders)
    except Exception:
        cfg = FlagwardenConfig(provider=provider)
    return Settings(config=cfg, source=path.absolute(), base_dir=path.absolute().parent)


def _check_profiles(settings: Settings, where: str, found: list[Finding]) -> dict[str, Profile]:
    directory = settings.providers_dir
    if not directory.is_dir():
        found.append(
            Finding("error", f"{where}: providers_dir: {directory} is not a directory", where)
        )
        return {}
    profiles: dict[str, Profile] = {}
    for path in sorted(directory.glob("*.y*ml")):
        try:
            profile = load_profile(path)
        except ConfigError as exc:
            found.extend(_errors(exc))
            continue
        if isinstance(profile, OpenFeatureProfile):
            from flagwarden.providers.targets import load_target

            try:
                load_target(profile)  # imported and its options bound, not yet called
            except ConfigError as exc:
                found.append(Finding("error", f"{path}: {exc.field}: {exc.problem}", str(path)))
                continue
        profiles[path.stem] = profile
        found.append(Finding("ok", f"{path} ({profile.type})", str(path)))
    return profiles


def _check_flag_files(
    settings: Settings,
    profiles: dict[str, Profile],
    found: list[Finding],
    active_name: str | None,
) -> tuple[dict[str, Any], set[str]] | None:
    """Check every file profile's flag file; the active one's valid and invalid flag keys."""
    from flagwarden.providers.file import read_flag_file

    active_flags = None
    for name, profile in sorted(profiles.items()):
        if not isinstance(profile, FileProfile):
            continue
        source = str(settings.profile_path(name))
        active = name == active_name
        if not profile.path.exists():
            level: Level = "error" if active else "warning"
            found.append(Finding(level, f"{source}: path: {profile.path} does not exist", source))
            continue
        try:
            flag_file = read_flag_file(profile.path)
        except ConfigError as exc:
            found.extend(_errors(exc))
            continue
        found.extend(
            Finding("error" if problem.skipped else "warning", str(problem))
            for problem in flag_file.problems
        )
        if not any(problem.skipped for problem in flag_file.problems):
            found.append(Finding("ok", f"{profile.path}: {len(flag_file.flags)} flags"))
        if active:
            invalid = {p.flag for p in flag_file.problems if p.flag and p.skipped}
            active_flags = (flag_file.flags, invalid)
    return active_flags


def _check_policies(settings: Settings, where: str, found: list[Finding]) -> PolicySet:
    directory = settings.policies_dir
    if not directory.is_dir():
        found.append(
            Finding(
                "warning",
                f"{where}: policies_dir: {directory} does not exist: no flag is governed",
            )
        )
    policy_set = read_policies(directory)
    for problem in [*policy_set.problems, *sequencing_problems(policy_set)]:
        found.append(Finding("error", str(problem), problem.file))
    for flag, problem in sorted(policy_set.broken.items()):
        found.append(
            Finding(
                "warning",
                f"{problem.file}: until it is fixed, workers serve the caller's default for "
                f"{flag} (reason DISABLED) and it can only be killed, revived, paused or resumed",
                problem.file,
            )
        )
    for flag, policy in sorted(policy_set.policies.items()):
        source = str(policy_set.sources[flag])
        found.append(Finding("ok", f"policy {flag} (owner {policy.owner})", source))
        found.extend(Finding("warning", lint, source) for lint in lint_policy(policy))
        for i, prerequisite in enumerate(policy.requires):
            other = policy_set.policies.get(prerequisite.flag)
            if other is not None and prerequisite.stage not in other.stages:
                found.append(
                    Finding(
                        "warning",
                        f"{source}: requires[{i}].stage: {prerequisite.stage:g}% is not a stage "
                        f"of {prerequisite.flag} ({', '.join(f'{s:g}%' for s in other.stages)})",
                        source,
                    )
                )
    return policy_set


def _guard_sources(settings: Settings, policy_set: PolicySet) -> Iterator[Finding]:
    """A promql guard needs a Prometheus to ask: without one every watch pass would pause."""
    if settings.config.telemetry.prometheus.query_url:
        return
    for flag, policy in sorted(policy_set.policies.items()):
        for i, guard in enumerate(policy.guards):
            if guard.promql is not None:
                source = str(policy_set.sources[flag])
                yield Finding(
                    "error",
                    f"{source}: guards.{i}.promql: guard {guard.name!r} queries Prometheus, but "
                    "telemetry.prometheus.query_url is not set in flagwarden.yaml",
                    source,
                )


def _policy_against_flags(
    policy_set: PolicySet, flags: dict[str, Any], invalid: set[str]
) -> Iterator[Finding]:
    """A policy whose arms the flag file never serves governs nothing."""
    for flag, policy in sorted(policy_set.policies.items()):
        source = str(policy_set.sources[flag])
        definition = flags.get(flag)
        if definition is None:
            said = (
                "is invalid in the flag file (above)"
                if flag in invalid
                else ("is not in the flag file")
            )
            yield Finding("warning", f"{source}: flag: {flag!r} {said}", source)
            continue
        values = list(definition["variants"].values())
        for arm in ("control", "treatment"):
            value = getattr(policy.variants, arm)
            if not any(same_value(value, v) for v in values):
                yield Finding(
                    "warning",
                    f"{source}: variants.{arm}: {value!r} is not a value of {flag!r} in the "
                    f"flag file (its variants: {json.dumps(definition['variants'])})",
                    source,
                )


def _local_sqlite(url: str, base: Path) -> bool:
    """A SQLite store whose file exists: readable offline without creating anything."""
    if not url.startswith("sqlite:///"):
        return False
    path = Path(url[len("sqlite:///") :])
    return (path if path.is_absolute() else base / path).exists()


def _check_stores(settings: Settings, policy_set: PolicySet, connect: bool) -> list[Finding]:
    """Lints that need the state store and the audit log; with ``connect``, reachability."""
    cfg, base = settings.config, settings.base_dir
    found: list[Finding] = []
    if connect or _local_sqlite(cfg.state, base):
        try:
            store = open_state_store(cfg.state, base)
            try:
                states = store.load_all()
            finally:
                store.close()
        except StateStoreUnavailable as exc:
            found.append(Finding("error", f"state store unreachable: {exc}"))
        else:
            if connect:
                found.append(
                    Finding("ok", f"state store {redact_url(cfg.state)} ({len(states)} flags)")
                )
            found.extend(
                Finding("warning", lint) for lint in lint_state(policy_set.policies, states)
            )
    if not (connect or _local_sqlite(cfg.audit.url, base)):
        return found
    try:
        audit = AuditLog(cfg.audit.url, base)
    except AuditError as exc:
        found.append(Finding("error", f"audit store unreachable: {exc}"))
        return found
    try:
        found.extend(
            Finding("warning", lint) for lint in lint_unregistered(audit, policy_set.policies)
        )
        if connect:
            verified = audit.verify()
            found.append(
                Finding(
                    "ok", f"audit store {redact_url(cfg.audit.url)} ({verified.checked} records)"
                )
                if verified.ok
                else Finding(
                    "error",
                    f"audit chain broken at record {verified.first_bad_seq}: {verified.problem}",
                )
            )
    except AuditError as exc:
        found.append(Finding("error", f"audit store unreachable: {exc}"))
    finally:
        audit.close()
    return found


def _check_notify(settings: Settings) -> Iterator[Finding]:
    """Webhook targets, validated and never contacted (a test message would trigger them,
    even with ``--connect``); shown as ``scheme://host/…``: the path is the credential."""
    where = str(settings.source or "the embedded default")
    for i, target in enumerate(settings.config.notify):
        label, host = target.label(i), urlsplit(target.url).hostname or ""
        events = ", ".join(target.events) if target.events is not None else "every event"
        yield Finding(
            "ok",
            f"notify {label}: {target.format} to {target.shown_url} ({events}; not contacted)",
            where,
        )
        if target.url.startswith("http://") and not _loopback(host):
            yield Finding(
                "warning",
                f"{where}: notify.{i}.url: plain http to {host}: the webhook URL (a credential) "
                "and the messages travel unencrypted; use https",
            )


def _check_otel(settings: Settings, where: str) -> list[Finding]:
    """``telemetry.otel``: the ``[otel]`` extra is installed, and where the counts go."""
    from flagwarden.telemetry.otel import METRIC, missing_extra, otel_enabled, signal_endpoint

    try:
        if not otel_enabled(settings.config.telemetry.otel):
            return []
    except ConfigError as exc:
        return list(_errors(exc))
    problem = missing_extra()
    if problem is not None:
        return [Finding("error", f"{where}: {problem.field}: {problem.problem}", where)]
    endpoint = signal_endpoint("METRICS")
    return [Finding("ok", f"OpenTelemetry: {METRIC} over OTLP/HTTP to {endpoint}")]


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_audit_keys(settings: Settings, where: str) -> list[Finding]:
    """The audit signing key and public key load (the error names the field, never the key)."""
    try:
        signer = signer_from_settings(settings)
        public = public_key_from_settings(settings)
    except ConfigError as exc:
        return list(_errors(exc))
    if signer is None:
        return []
    if public is not None and fingerprint(public) != signer.fingerprint:
        return [
            Finding(
                "error",
                f"{where}: audit.public_key: is not the public half of audit.signing_key "
                "(verify would reject every record signed from now on)",
                where,
            )
        ]
    return [Finding("ok", f"audit records are signed (Ed25519, key {signer.fingerprint})")]


def _get(url: str, timeout: float = 3.0) -> str | None:
    """None when ``url`` answers 2xx, else what went wrong (without the URL's credentials)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read(1 << 16)
        return None
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return f"{type(exc).__name__}: {reason}"


def _check_telemetry(settings: Settings) -> Iterator[Finding]:
    prometheus = settings.config.telemetry.prometheus
    for name, url, probe, ok in (
        ("Prometheus", prometheus.query_url, "/api/v1/query?query=vector(1)", "answers queries"),
        ("Pushgateway", prometheus.pushgateway, "/-/ready", "ready"),
    ):
        if not url:
            continue
        base = url.rstrip("/")
        problem = _get(base + probe)
        yield (
            Finding("ok", f"{name} {redact_url(base)} {ok}")
            if problem is None
            else Finding(
                "error", f"{name} {redact_url(base)} unreachable: {redact_text(problem, base)}"
            )
        )


def _reach_vendor(settings: Settings, profile: Profile) -> Finding:
    """Start the vendor's SDK as a worker would (at most its ``start_wait``), then stop it;
    its log lines come out as a worker's would (structured, the profile's secrets masked)."""
    from flagwarden.runtime import build_vendor
    from flagwarden.telemetry.logging import configure_logging
    from flagwarden.telemetry.stdlib_logs import register_secrets

    configure_logging(settings.config.telemetry.log_format)  # the project's, as a worker's
    register_secrets(settings, profile)

    secret = getattr(profile, "sdk_key", None)

    def scrub(text: str) -> str:
        key = secret.get_secret_value() if secret is not None else ""
        return text.replace(key, "***") if key else text

    try:
        vendor = build_vendor(profile)
    except ConfigError as exc:
        return Finding("error", scrub(str(exc)))
    try:
        ready = vendor.start()
        message = vendor.status_message or vendor.status.value
        reach = getattr(vendor, "reach", None)  # a provider READY before it asked anything
        if ready and reach is not None and (problem := reach()) is not None:
            ready, message = False, problem
    finally:
        vendor.shutdown()
    if ready:
        return Finding("ok", f"provider {profile.name!r} ({profile.type}) is ready")
    return Finding(
        "error", scrub(f"provider {profile.name!r} ({profile.type}) unreachable: {message}")
    )
