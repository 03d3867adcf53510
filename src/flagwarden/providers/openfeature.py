"""Any OpenFeature provider as a flagwarden source (``type: openfeature`` profiles).

:class:`OpenFeatureSource` wraps a provider named by import path (``class: module:Name``) or
registered by a package under the ``flagwarden.providers`` entry-point group, and gives it what
the built-in vendors have: a status the failover chain follows (the provider's own events, and
outages seen in its answers), a last-known-good, and re-creation in a forked child.

Outages. A provider that emits PROVIDER_ERROR / PROVIDER_STALE / PROVIDER_READY is followed as
it says. One that does not (OFREP's, which answers each call over HTTP) is judged by its
answers: a provider-level error (GENERAL, PROVIDER_NOT_READY, PROVIDER_FATAL, or an exception)
confirmed by one more question (the last one answered well, else the same flag without its
context) marks it out; from then on it is asked again every ``probe_interval`` seconds off the
evaluation path, and its first answer ends the outage. A flag-specific error (FLAG_NOT_FOUND, a
type mismatch...) or a context the provider cannot take never does.

Last-known-good. A provider that can export its definitions (``export_snapshot() -> dict``,
and ``restore_snapshot(data)`` on a new instance to answer from them offline, without
``initialize()``) gets native snapshots, as LaunchDarkly and Split do. Any other keeps an
answer cache (:mod:`flagwarden.providers.answers`): its last ``answer_cache`` good answers,
seeded from the stored ones, written to the snapshot store and served while it is out. That
is weaker than a native snapshot: a context that was never answered gets the caller's default
(PROVIDER_NOT_READY), and a rule that changed meanwhile is not seen.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent, ProviderEventDetails
from openfeature.exception import ErrorCode, OpenFeatureError
from openfeature.flag_evaluation import FlagResolutionDetails, FlagType
from openfeature.provider import FeatureProvider, ProviderStatus

from flagwarden.profiles import OpenFeatureProfile
from flagwarden.providers.answers import AnswerCache, AnswerReplay, callers_default, fingerprint
from flagwarden.providers.base import SourceProvider, error_details, type_matches
from flagwarden.providers.targets import coerce_options, load_target, scrubber

__all__ = ["OpenFeatureSource", "replay"]

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
_CHECK_FLAG = "flagwarden-connect-check"
_MAX_VERSIONS = 4096  # flags whose version is remembered (unregistered keys are unbounded)

Probe = tuple[FlagType, str, Any, EvaluationContext | None]


class OpenFeatureSource(SourceProvider):
    """An OpenFeature provider in flagwarden's chain (see the module's docstring)."""

    def __init__(
        self,
        profile: OpenFeatureProfile,
        *,
        restored: Any = None,
        carried: OpenFeatureSource | None = None,
    ) -> None:
        super().__init__(profile.name, profile.type)
        self.profile = profile
        self._factory = load_target(profile)
        self._options = coerce_options(self._factory, profile.options)
        self._scrub = scrubber(profile.options)
        self._restored = restored  # a native snapshot this replay answers from
        self._inner: FeatureProvider | None = None
        self._native = False
        self._answers = AnswerCache(profile.answer_cache)
        self._dirty = False
        self._last_good: Probe | None = None
        self._last_failed: Probe | None = None
        self._out_at_start = False
        self._wake = threading.Event()
        self._probing = False
        self._closed = False
        self._init_context: EvaluationContext | None = None
        self._versions: dict[str, tuple[str | None, str | None]] = {}
        if carried is not None:  # a forked child's: what the parent's source knew
            self._answers = carried._answers.fork_copy()
            self._last_good, self._last_failed = carried._last_good, carried._last_failed
            self._out_at_start = carried._status in (ProviderStatus.ERROR, ProviderStatus.FATAL)

    @property
    def provider(self) -> FeatureProvider | None:
        """The wrapped OpenFeature provider (None before initialization)."""
        return self._inner

    @property
    def wants_seed(self) -> bool:  # type: ignore[override]
        return bool(self.profile.answer_cache) and self._restored is None

    # -- lifecycle ---------------------------------------------------------------------

    def _make(self) -> FeatureProvider:
        made = self._factory(**self._options)
        if not all(callable(getattr(made, method, None)) for method in _METHODS.values()):
            raise TypeError(f"{type(made).__name__} is not an OpenFeature provider")
        if hasattr(made, "attach"):
            made.attach(self._on_inner_event)
        self._native = callable(getattr(made, "export_snapshot", None))
        return made

    def _failed(self, what: str, exc: Exception) -> str:
        """What went wrong, for a status message or an error: the exception's words, or its
        cause's when it has none (flagd's ProviderNotReadyError wraps the missing file's)."""
        said = str(exc)
        cause = exc.__cause__ or exc.__context__
        if not said.strip() and cause is not None:
            said = f"{type(cause).__name__}: {cause}"
        return self._scrub(f"{what}{type(exc).__name__}: {said}".rstrip(": "))

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        self._init_context = evaluation_context
        try:
            inner = self._inner = self._make()
        except Exception as exc:  # built again by the probe, every probe_interval
            message = self._failed("", exc)
            self._set_status(ProviderStatus.ERROR, message)
            self._start_probing()
            raise RuntimeError(message) from None
        if self._restored is not None:
            try:
                inner.restore_snapshot(self._restored)  # type: ignore[attr-defined]
            except Exception as exc:
                raise RuntimeError(self._failed("restore_snapshot: ", exc)) from None
            self._set_status(ProviderStatus.READY)
            return
        done = threading.Event()
        failure: list[str] = []

        def start() -> None:
            try:
                inner.initialize(evaluation_context)
            except Exception as exc:
                failure.append(self._failed("", exc))
            done.set()
            if self._closed:
                return
            if failure:
                self._set_status(ProviderStatus.ERROR, failure[0])
                self._start_probing()
            elif self._out_at_start:  # out in the parent at the fork: out until it answers
                self._set_status(ProviderStatus.ERROR, "out when this process was forked")
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
                self._status_message = self._failed("shutdown: ", exc)

    def recreate(self) -> OpenFeatureSource:
        return OpenFeatureSource(self.profile, carried=self)

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

    def reach(self) -> str | None:
        """Whether the provider answers at all (``flagwarden check --connect``): one question
        about a flag nobody defines; a flag-specific answer (FLAG_NOT_FOUND) means it is there.
        None, or what the provider said instead."""
        answer = self._ask(FlagType.BOOLEAN, _CHECK_FLAG, False, EvaluationContext(_CHECK_FLAG))
        if answer.error_code in _OUTAGE_CODES:
            return f"{answer.error_code.value}: {answer.error_message or ''}".strip(": ")
        return None

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
        if self._closed:
            return details
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
            return error_details(default_value, ErrorCode.GENERAL, self._failed("", exc))
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
        metadata = details.flag_metadata
        if metadata and len(self._versions) < _MAX_VERSIONS:
            version, set_id = metadata.get("version"), metadata.get("flagSetId")
            if version is not None or set_id is not None:
                self._versions[flag_key] = (
                    None if version is None else str(version),
                    None if set_id is None else str(set_id),
                )
        print_ = fingerprint(context)
        if print_ is None:
            return  # a context without a canonical form: not kept
        reason = details.reason
        reason = getattr(reason, "value", reason)
        value = None if callers_default(details.variant, reason) else details.value
        answer = (value, details.variant, reason)
        changed = self._answers.put((flag_key, flag_type.value, print_), answer)
        if changed and not self._dirty:
            self._dirty = True
            notify = self.data_changed
            if notify is not None:
                notify()

    def _check_outage(self, failed: Probe, details: FlagResolutionDetails[Any]) -> None:
        """A provider-level error: the provider is out unless another question still gets an
        answer: the last one that answered well, else this flag without the context (so that a
        context the provider cannot take is this context's problem, not an outage)."""
        confirm = self._last_good
        if confirm is not None and _same(confirm, failed):
            confirm = None  # what answered before fails now: out
        elif confirm is None:
            neutral = _neutral(failed)
            confirm = None if _same(neutral, failed) else neutral
        if confirm is not None:
            again = self._ask(*confirm)
            if again.error_code not in _OUTAGE_CODES:
                return  # the provider answers: the problem is this question's
        if self._closed:
            return
        self._last_failed = failed
        code = details.error_code.value if details.error_code else "GENERAL"
        self._set_status(ProviderStatus.ERROR, f"{code}: {details.error_message or ''}".strip())
        self._start_probing()

    def _start_probing(self) -> None:
        if self._probing or self._closed:
            return
        self._probing = True
        name = f"flagwarden-probe-{self.name}"
        threading.Thread(target=self._probe, name=name, daemon=True).start()

    def _probe(self) -> None:
        """Ask the provider again every ``probe_interval`` until it answers (or its events say
        it is back): its first answer ends the outage. The question is the last one that was
        answered well, else the failing flag without its context; a provider that could not
        be built or initialized is built and initialized again."""
        try:
            while not self._closed and self._status is not ProviderStatus.READY:
                if self._wake.wait(self.profile.probe_interval):
                    return
                if self._status is ProviderStatus.READY:
                    return
                target = self._last_good or (
                    _neutral(self._last_failed) if self._last_failed is not None else None
                )
                if target is None or self._inner is None:
                    try:
                        if self._inner is None:
                            self._inner = self._make()
                        self._inner.initialize(self._init_context or EvaluationContext())
                    except Exception as exc:
                        self._status_message = self._failed("", exc)
                        continue
                elif self._ask(*target).error_code in _OUTAGE_CODES:
                    continue
                if not self._closed:
                    self._set_status(ProviderStatus.READY)
        finally:
            self._probing = False

    # -- last-known-good ---------------------------------------------------------------

    def export_snapshot(self) -> dict[str, Any] | None:
        inner = self._inner
        if self._native and inner is not None:
            try:
                data = inner.export_snapshot()  # type: ignore[attr-defined]
            except Exception as exc:
                raise RuntimeError(self._failed("export_snapshot: ", exc)) from None
            return None if data is None else {"native": data}
        if not self._answers.limit or not len(self._answers):
            return None
        self._dirty = False
        return self._answers.export()

    def seed(self, data: dict[str, Any]) -> None:
        """The stored answers as older than any this process gives (a run that answered a few
        contexts never replaces what earlier runs kept)."""
        if data.get("answer_cache") == 1 and isinstance(data.get("answers"), list):
            self._answers.merge(data["answers"])

    def last_known_replay(self) -> SourceProvider | None:
        """The answer cache itself, served while the provider is out (no copy)."""
        if self._native or not len(self._answers):
            return None
        return AnswerReplay(self.profile, self._answers)

    def flag_version(self, flag_key: str) -> tuple[str | None, str | None]:
        """The ``version`` and ``flagSetId`` metadata of the flag's last good answer (flagd's
        and OFREP's names), when the provider gave them."""
        return self._versions.get(flag_key, (None, None))

    def depends_on_key(self, flag_key: str) -> bool:
        check = getattr(self._inner, "depends_on_key", None)
        if callable(check):
            try:
                return bool(check(flag_key))
            except Exception:
                return True
        return True


def _neutral(probe: Probe) -> Probe:
    """The same question without a context."""
    return (probe[0], probe[1], probe[2], EvaluationContext())


def _same(one: Probe, other: Probe) -> bool:
    if one[0] is not other[0] or one[1] != other[1]:
        return False
    return one[3] is other[3] or fingerprint(one[3]) == fingerprint(other[3]) is not None


def replay(profile: OpenFeatureProfile, data: Mapping[str, Any]) -> SourceProvider:
    """The offline replay of a snapshot: the provider's own (native) or its answer cache."""
    if "native" in data:
        return OpenFeatureSource(profile, restored=data["native"])
    return AnswerReplay.stored(profile, data)
