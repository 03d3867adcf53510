from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import flagwarden
from tests.servers.launchdarkly import LaunchDarklyServer
from tests.servers.split import SplitServer

# The vendor SDKs log every refused reconnect; the tests provoke many on purpose.
for name in ("ldclient", "splitio", "launchdarkly-openfeature-server"):
    logging.getLogger(name).setLevel(logging.CRITICAL)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until ``predicate()`` is truthy; return its value or fail with the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith("FLAGWARDEN_"):
            monkeypatch.delenv(key)
    yield
    flagwarden.shutdown()


@pytest.fixture
def ld_server() -> Iterator[LaunchDarklyServer]:
    server = LaunchDarklyServer().start()
    yield server
    server.stop()


@pytest.fixture
def split_server() -> Iterator[SplitServer]:
    server = SplitServer().start()
    yield server
    server.stop()


class Project:
    """A throwaway flagwarden project: flagwarden.yaml plus providers/."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "providers").mkdir(exist_ok=True)

    def profile(self, name: str, doc: dict[str, Any]) -> Path:
        path = self.root / "providers" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    def config(self, provider: str, **extra: Any) -> Path:
        doc: dict[str, Any] = {"provider": provider}
        doc.setdefault(
            "fallback", {"snapshot": "file:.flagwarden/snapshot.json", "snapshot_debounce": 0.05}
        )
        doc.update(extra)
        path = self.root / "flagwarden.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    @property
    def snapshot_file(self) -> Path:
        return self.root / ".flagwarden" / "snapshot.json"


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)
