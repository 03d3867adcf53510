"""Real Prometheus and Pushgateway (Debian's packages, installed by .ci/run) on loopback ports."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import wait_for
from tests.servers.launchdarkly import free_port


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def _up(url: str) -> bool:
    try:
        _get(url)
        return True
    except OSError:
        return False


class Prometheus:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, targets: list[int]) -> Prometheus:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "pipeline",
                    "scrape_interval": "1s",
                    "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in targets]}],
                }
            ],
        }
        (self.root / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={self.root / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: _up(f"{self.url}/-/ready"), timeout=30, interval=0.1)
        return self

    def query(self, promql: str) -> list[dict[str, Any]]:
        doc = json.loads(
            _get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        )
        return doc["data"]["result"]

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed: .ci/run installs Debian's package")
    server = Prometheus(tmp_path / "prometheus")
    server.root.mkdir()
    yield server
    server.stop()


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    if shutil.which("prometheus-pushgateway") is None:
        pytest.fail("prometheus-pushgateway is not installed: .ci/run installs Debian's package")
    port = free_port()
    proc = subprocess.Popen(
        [
            "prometheus-pushgateway",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--persistence.file={tmp_path / 'push.data'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _up(f"{url}/-/ready"), timeout=20, interval=0.1)
    yield url
    proc.terminate()
    proc.wait(10)
