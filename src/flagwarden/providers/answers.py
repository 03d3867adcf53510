"""The answer cache: the last-known-good of an OpenFeature provider that cannot export its
definitions (see :mod:`flagwarden.providers.openfeature`).

Its last good answers, per (flag, type, context fingerprint), the most recently changed kept;
the fingerprint is an unsalted hash of the context, so no context is stored in clear (a
targeting key from a small set could still be found by trying them: pseudonymous, not
anonymous). :class:`AnswerReplay` serves them while the provider is out, with reason CACHED;
an answer that was the caller's default (a disabled flag, a flag without a default variant)
is the caller's default again; a context never answered gets the caller's default with
PROVIDER_NOT_READY.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, FlagType, Reason
from openfeature.provider import ProviderStatus

from flagwarden.profiles import OpenFeatureProfile
from flagwarden.providers.base import SourceProvider, error_details

__all__ = [
    "CACHE_FORMAT",
    "AnswerCache",
    "AnswerReplay",
    "callers_default",
    "fingerprint",
]

CACHE_FORMAT = 1


def _tagged(value: Any) -> Any:
    """What JSON cannot say, said without ambiguity: a set by its sorted members, anything
    else by its type and text (a datetime never hashes like the string of it)."""
    if isinstance(value, set | frozenset):
        return {"$set": sorted(repr(item) for item in value)}
    return {f"${type(value).__name__}": str(value)}


def fingerprint(context: EvaluationContext | None) -> str | None:
    """A context's fingerprint: a hash of its targeting key and attributes; None for a context
    that has no canonical form (a mapping with keys of mixed types, a cycle): not cached."""
    if context is None:
        return "-"
    whole = [context.targeting_key, context.attributes]
    try:
        text = json.dumps(whole, sort_keys=True, default=_tagged, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return None
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def callers_default(variant: Any, reason: Any) -> bool:
    """Whether an answer was the caller's default rather than a value of the flag's: a disabled
    flag, or a flag without a default variant (OFREP and flagd answer these without a value)."""
    return reason == "DISABLED" or (variant is None and reason == "DEFAULT")


class AnswerCache:
    """The last good answers of a provider, per (flag, type, context fingerprint), the most
    recently changed last; at most ``limit`` of them."""

    def __init__(self, limit: int, entries: Any = ()) -> None:
        self.limit = limit
        self._answers: OrderedDict[tuple[str, str, str], tuple[Any, Any, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.merge(entries)

    def __len__(self) -> int:
        return len(self._answers)

    def merge(self, entries: Any) -> None:
        """Add stored rows (``[flag, type, fingerprint, value, variant, reason]``) as older than
        every answer held: an answer held wins over a stored one."""
        with self._lock:
            held = self._answers
            merged: OrderedDict[tuple[str, str, str], tuple[Any, Any, Any]] = OrderedDict()
            for flag, kind, print_, value, variant, reason in entries:
                merged[(flag, kind, print_)] = (value, variant, reason)
            for key, answer in held.items():
                merged.pop(key, None)
                merged[key] = answer
            while len(merged) > self.limit:
                merged.popitem(last=False)
            self._answers = merged

    def put(self, key: tuple[str, str, str], answer: tuple[Any, Any, Any]) -> bool:
        """Keep ``answer``; True when it was new or changed."""
        if self._answers.get(key) == answer:
            return False
        with self._lock:
            self._answers[key] = answer
            self._answers.move_to_end(key)
            while len(self._answers) > self.limit:
                self._answers.popitem(last=False)
        return True

    def get(self, key: tuple[str, str, str]) -> tuple[Any, Any, Any] | None:
        return self._answers.get(key)

    def export(self) -> dict[str, Any]:
        with self._lock:
            rows = [[*key, *answer] for key, answer in self._answers.items()]
        return {"answer_cache": CACHE_FORMAT, "answers": rows}

    def fork_copy(self) -> AnswerCache:
        """In a forked child (no other thread runs): a copy, without the lock a parent's thread
        may have held at the fork."""
        copy = AnswerCache(self.limit)
        copy._answers = OrderedDict(self._answers)
        return copy


class AnswerReplay(SourceProvider):
    """A provider's kept answers, served while it is out (reason CACHED)."""

    def __init__(self, profile: OpenFeatureProfile, cache: AnswerCache) -> None:
        super().__init__(profile.name, profile.type)
        self._answers = cache
        self._status = ProviderStatus.READY

    @classmethod
    def stored(cls, profile: OpenFeatureProfile, data: Mapping[str, Any]) -> AnswerReplay:
        """The replay of an answer cache read from the snapshot store."""
        if data.get("answer_cache") != CACHE_FORMAT or not isinstance(data.get("answers"), list):
            raise ValueError("not an answer cache of format 1")
        return cls(profile, AnswerCache(max(profile.answer_cache, 1), data["answers"]))

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        self._set_status(ProviderStatus.READY)

    def resolve(
        self,
        flag_type: FlagType,
        flag_key: str,
        default_value: Any,
        evaluation_context: EvaluationContext | None,
    ) -> FlagResolutionDetails[Any]:
        print_ = fingerprint(evaluation_context)
        found = None if print_ is None else self._answers.get((flag_key, flag_type.value, print_))
        if found is None:
            return error_details(
                default_value,
                ErrorCode.PROVIDER_NOT_READY,
                f"{self.kind} is out and no answer was kept for {flag_key} in this context",
            )
        value, variant, reason = found
        if callers_default(variant, reason):
            value = default_value
        return FlagResolutionDetails(value=value, variant=variant, reason=Reason.CACHED)
