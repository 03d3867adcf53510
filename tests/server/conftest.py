"""A real ``flagwarden serve`` (uvicorn, its own process, a free port) over a throwaway
project, with one token per role made through the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, Project, governed_project, run_cli, wait_for

FLAG = "new-scoring-model"
ROLES = ("viewer", "operator", "approver", "admin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Console:
    config: Path
    url: str
    process: subprocess.Popen[str]
    log: Path
    tokens: dict[str, str] = field(default_factory=dict)  # by name (also the role's name)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def as_(self, name: str) -> httpx.Client:
        return self.client(self.tokens[name])

    def token(self, name: str, role: str) -> str:
        # The first admin token is made from the store; then only an admin makes tokens.
        admin = self.tokens.get("admin")
        made = run_cli(self.config, "token", "create", "--name", name, "--role", role, token=admin)
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip().splitlines()[-1]
        self.tokens[name] = token
        return token

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_console(config: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGWARDEN_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "flagwarden.cli", "serve", "--port", str(port), "-c", str(config)],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"flagwarden serve exited: {log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=30, interval=0.1)
    return process, url


@pytest.fixture
def console_for(project: Project, tmp_path: Path) -> Iterator[object]:
    """``console_for(**project_options)``: a served governed project (see governed_project)."""
    started: list[Console] = []

    def make(**options: object) -> Console:
        config = governed_project(project, **options)  # type: ignore[arg-type]
        log = tmp_path / f"serve-{len(started)}.log"
        process, url = start_console(config, log)
        console = Console(config, url, process, log)
        started.append(console)
        for role in ROLES:
            console.token(role, role)
        return console

    yield make
    for console in started:
        console.process.terminate()
        try:
            console.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            console.process.kill()
