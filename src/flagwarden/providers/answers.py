"""The answer cache: the last-known-good of an OpenFeature provider that cannot export its
definitions (see :mod:`flagwarden.providers.openfeature`).

Its last good answers, per (flag, type, context fingerprint), the most recently changed kept;
the fingerprint is a hash of the context (no context is stored). :class:`AnswerReplay` serves
them while the provider is out, with reason CACHED; a context never answered gets the caller's
default with PROVIDER_NOT_READY.
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

__all__ = ["CACHE_FORMAT", "AnswerCache", "AnswerReplay", "fingerprint"]

CACHE_FORMAT = 1


def fingerprint(context: EvaluationContext | None) -> str:
    """A context's fingerprint: a hash of its targeting key and attributes (never stored)."""
    if context is None:
        return "-"
    whole = [context.targeting_key, context.attributes]
    text = json.dumps(whole, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


class AnswerCache:
    """The last good answers of a provider, per (flag, type, context fingerprint), the most
    recently changed last; at most ``limit`` of them."""

    def __init__(self, limit: int, entries: Any = ()) -> None:
        self.limit = limit
        self._answers: OrderedDict[tuple[str, str, str], tuple[Any, Any, Any]] = OrderedDict()
        self._lock = threading.Lock()
        for flag, kind, print_, value, variant, reason in entries:
            self._answers[(flag, kind, print_)] = (value, variant, reason)
        while len(self._answers) > limit:
            self._answers.popitem(last=False)

    def __len__(self) -> int:
        return len(self._answers)

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


class AnswerReplay(SourceProvider):
    """A provider's kept answers, served while it is out (reason CACHED)."""

    def __init__(self, profile: OpenFeatureProfile, data: Mapping[str, Any]) -> None:
        super().__init__(profile.name, profile.type)
        if data.get("answer_cache") != CACHE_FORMAT or not isinstance(data.get("answers"), list):
            raise ValueError("not an answer cache of format 1")
        self._answers = AnswerCache(max(profile.answer_cache, 1), data["answers"])

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        self._set_status(ProviderStatus.READY)

    def resolve(
        self,
        flag_type: FlagType,
        flag_key: str,
        default_value: Any,
        evaluation_context: EvaluationContext | None,
    ) -> FlagResolutionDetails[Any]:
        found = self._answers.get((flag_key, flag_type.value, fingerprint(evaluation_context)))
        if found is None:
            return error_details(
                default_value,
                ErrorCode.PROVIDER_NOT_READY,
                f"{self.kind} is out and no answer was kept for {flag_key} in this context",
            )
        value, variant, _ = found
        return FlagResolutionDetails(value=value, variant=variant, reason=Reason.CACHED)
