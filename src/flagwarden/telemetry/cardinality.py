"""The flag label of metrics and in-memory counts, bounded for flags without a policy.

``unregistered: allow|warn`` lets a pipeline evaluate any flag key, so a bug that builds keys
(``f"flag-{order_id}"``) could otherwise create a metric series and a counter entry per key:
100,000 keys cost 418 MB of RSS and a 65 MB /metrics page. A governed flag always keeps its
own label; the first ``limit`` distinct unregistered flags of a process keep theirs; every
further one is counted as :data:`OVERFLOW` (``__unregistered__``), so counts still add up.
"""

from __future__ import annotations

import os
import threading

__all__ = ["OVERFLOW", "FlagLabels", "flag_labels"]

OVERFLOW = "__unregistered__"


class FlagLabels:
    """Flag key -> the label it is counted under (see the module docstring).

    Process-wide (one instance, :data:`flag_labels`) because Prometheus's registry is: the
    series a flag already has stay its own for the life of the process.
    """

    def __init__(self, limit: int = 100) -> None:
        self.limit = limit
        self._admitted: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, flag: str, *, registered: bool) -> str:
        if registered or flag in self._admitted:
            return flag
        if len(self._admitted) >= self.limit:
            return OVERFLOW  # the steady state of a flood: no lock, no growth
        with self._lock:
            if flag in self._admitted:
                return flag
            if len(self._admitted) < self.limit:
                self._admitted.add(flag)
                return flag
        return OVERFLOW

    @property
    def admitted(self) -> frozenset[str]:
        """The unregistered flags counted under their own key so far."""
        return frozenset(self._admitted)

    def after_fork_in_child(self) -> None:
        # The child's registry holds the parent's series: keep the flags, renew the lock.
        self._lock = threading.Lock()


flag_labels = FlagLabels()
os.register_at_fork(after_in_child=flag_labels.after_fork_in_child)
