"""Any OpenFeature provider as a flagwarden source (``type: openfeature`` profiles).

:class:`OpenFeatureSource` wraps a provider named by import path (``class: module:Name``) or
registered by a package under the ``flagwarden.providers`` entry-point group, and gives it what
the built-in vendors have: a status the failover chain follows (the provider's own events, and
outages seen in its answers), a last-known-good, and re-creation in a forked child.

Outages. A provider that emits PROVIDER_ERROR / PROVIDER_STALE / PROVIDER_READY is followed as
it says. One that does not (OFREP's, which answers each call over HTTP) is judged by its
answers: a provider-level error (GENERAL, PROVIDER_NOT_READY, PROVIDER_FATAL, or an exception)
on a flag, confirmed by asking again the last flag and context that answered well, marks it
out; from then on it is asked again every ``probe_interval`` seconds off the evaluation path,
and its first good answer ends the outage. A flag-specific error (FLAG_NOT_FOUND, a type
mismatch...) never does.

Last-known-good. A provider that can export its definitions (``export_snapshot() -> dict``,
and ``restore_snapshot(data)`` on a new instance to answer from them offline, without
``initialize()``) gets native snapshots, as LaunchDarkly and Split do. Any other keeps an
answer cache: its last ``answer_cache`` good answers, per flag, type and context fingerprint
(a hash; no context is stored), written to the snapshot store and replayed while the provider
is out. That is weaker than a native snapshot: a context that was never answered gets the
caller's default (PROVIDER_NOT_READY), and a rule that changed meanwhile is not seen.
"""

from __future__ import annotations

import importlib
import inspect
import threading
import typing
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent, ProviderEventDetails
from openfeature.exception import ErrorCode, OpenFeatureError
from openfeature.flag_evaluation import FlagResolutionDetails, FlagType
from openfeature.provider import FeatureProvider, ProviderStatus

from flagwarden.config import looks_secret
from flagwarden.errors import ConfigError
from flagwarden.profiles import OPENFEATURE, OpenFeatureProfile, registered_types
from flagwarden.providers.answers import AnswerCache, AnswerReplay, fingerprint
from flagwarden.providers.base import SourceProvider, error_details, type_matches
from flagwarden.storage import redact_text

__all__ = ["OpenFeatureSource", "coerce_options", "load_target", "replay"]

_METHODS = {
    FlagType.BOOLEAN: "resolve_boolean_details",
    FlagType.STRING: "resolve_string_details",
    FlagType.INTEGER: "resolve_integer_details",
    FlagType.FLOAT: "resolve_float_details",
    FlagType.OBJECT: "resolve_object_details",
}
# Errors that say the provider cannot answer at all, rather than something about one flag.
_OUTAGE_CODES = frozenset(
    {ErrorCode.GENERAL, ErrorCode.PROVIDER_NOT_READY, ErrorCode.PROVIDER_FATAL}
)
_STATUS_FOR_EVENT = {
    ProviderEvent.PROVIDER_READY: ProviderStatus.READY,
    ProviderEvent.PROVIDER_STALE: ProviderStatus.STALE,
    ProviderEvent.PROVIDER_ERROR: ProviderStatus.ERROR,
}
_SECRET_OPTION = ("key", "token", "secret", "password", "credential", "auth", "header")

Probe = tuple[FlagType, str, Any, EvaluationContext | None]


def load_target(profile: OpenFeatureProfile) -> Callable[..., Any]:
    """The provider class (or factory) a profile names, checked against its ``options``."""
    if profile.type == OPENFEATURE:
        assert profile.target is not None  # the profile's validation requires it
        module_name, _, attribute = profile.target.partition(":")
        try:
            found: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                None, "class", f"profile {profile.name!r}: cannot import {module_name!r} ({exc})"
            ) from None
        for part in attribute.split("."):
            found = getattr(found, part, None)
            if found is None:
                raise ConfigError(
                    None, "class", f"profile {profile.name!r}: {module_name} has no {attribute!r}"
                )
        where = f"{profile.target!r}"
    else:
        entry = registered_types()[profile.type]
        try:
            found = entry.load()
        except Exception as exc:
            raise ConfigError(
                None,
                "type",
                f"profile {profile.name!r}: the entry point {entry.value!r} registered for type "
                f"{profile.type!r} cannot be loaded ({type(exc).__name__}: {exc})",
            ) from None
        where = f"{entry.value!r} (type {profile.type!r})"
    if not callable(found):
        raise ConfigError(None, "class", f"profile {profile.name!r}: {where} is not callable")
    try:
        inspect.signature(found).bind(**profile.options)
    except TypeError as exc:
        raise ConfigError(
            None, "options", f"profile {profile.name!r}: {where} does not take these: {exc}"
        ) from None
    except ValueError:
        pass  # a builtin without a signature: its own call will say
    return found


def coerce_options(target: Callable[..., Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with each text given for a parameter annotated with an Enum turned into
    that Enum's member (by value, else by name: ``in-process`` or ``IN_PROCESS``), as a YAML
    file cannot spell an Enum; everything else as given."""
    try:
        annotated = target.__init__ if isinstance(target, type) else target  # type: ignore[misc]
        hints = typing.get_type_hints(annotated)
    except Exception:
        return dict(options)
    coerced = dict(options)
    for name, value in options.items():
        if not isinstance(value, str):
            continue
        for kind in typing.get_args(hints.get(name)) or (hints.get(name),):
            if isinstance(kind, type) and issubclass(kind, Enum):
                member = _member(kind, value)
                if member is not None:
                    coerced[name] = member
                    break
    return coerced


def _member(kind: type[Enum], value: str) -> Enum | None:
    try:
        return kind(value)
    except ValueError:
        return kind.__members__.get(value.upper().replace("-", "_"))


def _scrubber(options: Mapping[str, Any]) -> Callable[[str], str]:
    """Masks the option values that may be secrets (by name or look) in provider messages."""
    secrets: set[str] = set()
    urls: list[str] = []

    def walk(name: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{name}.{key}", item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(name, item)
        elif isinstance(value, str) and value:
            if "://" in value:
                urls.append(value)
            elif looks_secret(value) or any(word in name.lower() for word in _SECRET_OPTION):
                secrets.add(value)

    walk("", options)
    ordered = sorted(secrets, key=len, reverse=True)

    def scrub(text: str) -> str:
        for secret in ordered:
            text = text.replace(secret, "***")
        return redact_text(text, *urls)

    return scrub


class OpenFeatureSource(SourceProvider):
    """An OpenFeature provider in flagwarden's chain (see the module's docstring)."""

    def __init__(self, profile: OpenFeatureProfile, *, restored: Any = None) -> None:
        super().__init__(profile.name, profile.type)
        self.profile = profile
        self._factory = load_target(profile)
        self._options = coerce_options(self._factory, profile.options)
        self._scrub = _scrubber(profile.options)
        self._restored = restored  # a native snapshot this replay answers from
        self._inner: FeatureProvider | None = None
        self._native = False
        self._answers = AnswerCache(profile.answer_cache)
        self._dirty = False
        self._last_good: Probe | None = None
        self._wake = threading.Event()
        self._probing = False
        self._closed = False
        self._init_context: EvaluationContext | None = None

    @property
    def provider(self) -> FeatureProvider | None:
        """The wrapped OpenFeature provider (None before initialization)."""
        return self._inner

    # -- lifecycle ---------------------------------------------------------------------

    def _make(self) -> FeatureProvider:
        made = self._factory(**self._options)
        if not all(callable(getattr(made, method, None)) for method in _METHODS.values()):
            raise TypeError(f"{type(made).__name__} is not an OpenFeature provider")
        return made

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        self._init_context = evaluation_context
        try:
            inner = self._inner = self._make()
        except Exception as exc:
            raise RuntimeError(self._scrub(f"{type(exc).__name__}: {exc}")) from None
        self._native = callable(getattr(inner, "export_snapshot", None))
        if self._restored is not None:
            inner.restore_snapshot(self._restored)  # type: ignore[attr-defined]
            self._set_status(ProviderStatus.READY)
            return
        if hasattr(inner, "attach"):
            inner.attach(self._on_inner_event)
        done = threading.Event()
        failure: list[str] = []

        def start() -> None:
            try:
                inner.initialize(evaluation_context)
            except Exception as exc:
                failure.append(self._scrub(f"{type(exc).__name__}: {exc}"))
            done.set()
            if self._closed:
                return
            if failure:
                self._set_status(ProviderStatus.ERROR, failure[0])
                self._start_probing()
            elif self._status is ProviderStatus.NOT_READY:
                self._set_status(ProviderStatus.READY)

        threading.Thread(target=start, name=f"flagwarden-start-{self.name}", daemon=True).start()
        if not done.wait(self.profile.start_wait):
            self._status_message = f"not ready after start_wait={self.profile.start_wait:g}s"
        elif failure:
            raise RuntimeError(failure[0])

    def shutdown(self) -> None:
        self._closed = True
        self._wake.set()
        inner, self._inner = self._inner, None
        if inner is not None:
            try:
                inner.shutdown()
            except Exception as exc:  # a provider's own shutdown trouble ends here
                self._status_message = self._scrub(f"shutdown: {type(exc).__name__}: {exc}")

    def recreate(self) -> OpenFeatureSource:
        return OpenFeatureSource(self.profile)

    def _on_inner_event(
        self, provider: FeatureProvider, event: ProviderEvent, details: ProviderEventDetails
    ) -> None:
        if provider is not self._inner or self._closed:
            return
        if event is ProviderEvent.PROVIDER_CONFIGURATION_CHANGED:
            self._configuration_changed(details.flags_changed)
            return
        status = _STATUS_FOR_EVENT.get(event)
        if status is None:
            return
        if status is ProviderStatus.ERROR and details.error_code is ErrorCode.PROVIDER_FATAL:
            status = ProviderStatus.FATAL
        message = self._scrub(details.message) if details.message else None
        self._set_status(status, message or event.value)

    # -- evaluation --------------------------------------------------------------------

    def resolve(
        self,
        flag_type: FlagType,
        flag_key: str,
        default_value: Any,
        evaluation_context: EvaluationContext | None,
    ) -> FlagResolutionDetails[Any]:
        details = self._ask(flag_type, flag_key, default_value, evaluation_context)
        code = details.error_code
        if code is None:
            self._last_good = (flag_type, flag_key, default_value, evaluation_context)
            if self._answers.limit and not self._native:
                self._remember(flag_type, flag_key, evaluation_context, details)
        elif code in _OUTAGE_CODES and self._status is ProviderStatus.READY:
            self._check_outage((flag_type, flag_key, default_value, evaluation_context), details)
        return details

    def _ask(
        self,
        flag_type: FlagType,
        flag_key: str,
        default_value: Any,
        evaluation_context: EvaluationContext | None,
    ) -> FlagResolutionDetails[Any]:
        inner = self._inner
        if inner is None:
            return error_details(default_value, ErrorCode.PROVIDER_NOT_READY, "not started")
        try:
            details = getattr(inner, _METHODS[flag_type])(
                flag_key, default_value, evaluation_context
            )
        except OpenFeatureError as exc:
            return error_details(
                default_value, exc.error_code, self._scrub(exc.error_message or exc.error_code)
            )
        except Exception as exc:  # a provider's bug answers the default, never raises
            return error_details(
                default_value, ErrorCode.GENERAL, self._scrub(f"{type(exc).__name__}: {exc}")
            )
        if details.error_code is not None:
            if details.error_message:
                details.error_message = self._scrub(details.error_message)
            return details
        value = details.value
        if flag_type is FlagType.FLOAT and isinstance(value, int) and not isinstance(value, bool):
            details.value = float(value)
        elif not type_matches(flag_type, value):
            return error_details(
                default_value,
                ErrorCode.TYPE_MISMATCH,
                f"{flag_key} is a {type(value).__name__} flag, asked for as {flag_type.value}",
            )
        return details

    def _remember(
        self,
        flag_type: FlagType,
        flag_key: str,
        context: EvaluationContext | None,
        details: FlagResolutionDetails[Any],
    ) -> None:
        reason = details.reason
        answer = (details.value, details.variant, getattr(reason, "value", reason))
        changed = self._answers.put((flag_key, flag_type.value, fingerprint(context)), answer)
        if changed and not self._dirty:
            self._dirty = True
            notify = self.data_changed
            if notify is not None:
                notify()

    def _check_outage(self, failed: Probe, details: FlagResolutionDetails[Any]) -> None:
        """A provider-level error: out, unless the last flag that answered well still does."""
        probe = self._last_good
        if probe is not None and probe[:2] != failed[:2]:
            again = self._ask(*probe)
            if again.error_code is None or again.error_code not in _OUTAGE_CODES:
                return  # the provider answers: the problem is this flag's
        code = details.error_code.value if details.error_code else "GENERAL"
        self._set_status(ProviderStatus.ERROR, f"{code}: {details.error_message or ''}".strip())
        self._start_probing(failed)

    def _start_probing(self, failed: Probe | None = None) -> None:
        if self._probing or self._closed:
            return
        self._probing = True
        target = self._last_good or failed
        threading.Thread(
            target=self._probe, args=(target,), name=f"flagwarden-probe-{self.name}", daemon=True
        ).start()

    def _probe(self, target: Probe | None) -> None:
        """Ask the provider again every ``probe_interval`` until it answers (or its events say
        it is back): its first good answer ends the outage."""
        try:
            while not self._closed and self._status is not ProviderStatus.READY:
                if self._wake.wait(self.profile.probe_interval):
                    return
                if self._status is ProviderStatus.READY:
                    return
                if target is None:
                    try:
                        assert self._inner is not None
                        self._inner.initialize(self._init_context or EvaluationContext())
                    except Exception as exc:
                        self._status_message = self._scrub(f"{type(exc).__name__}: {exc}")
                        continue
                else:
                    answer = self._ask(*target)
                    if answer.error_code in _OUTAGE_CODES:
                        continue
                self._set_status(ProviderStatus.READY)
        finally:
            self._probing = False

    # -- last-known-good ---------------------------------------------------------------

    def export_snapshot(self) -> dict[str, Any] | None:
        inner = self._inner
        if self._native and inner is not None:
            data = inner.export_snapshot()  # type: ignore[attr-defined]
            return None if data is None else {"native": data}
        if not self._answers.limit or not len(self._answers):
            return None
        self._dirty = False
        return self._answers.export()

    def last_known(self) -> dict[str, Any] | None:
        """What this source holds in memory to answer from while it is out: its answer cache
        (the snapshot store's copy can be a debounce older)."""
        if self._native or not len(self._answers):
            return None
        return self._answers.export()

    def depends_on_key(self, flag_key: str) -> bool:
        check = getattr(self._inner, "depends_on_key", None)
        if callable(check):
            try:
                return bool(check(flag_key))
            except Exception:
                return True
        return True


def replay(profile: OpenFeatureProfile, data: Mapping[str, Any]) -> SourceProvider:
    """The offline replay of a snapshot: the provider's own (native) or its answer cache."""
    if "native" in data:
        return OpenFeatureSource(profile, restored=data["native"])
    return AnswerReplay(profile, data)
