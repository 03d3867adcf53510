"""The command line starts at once: a transition loads only what a transition needs.

Each transition runs in a process of its own that lists, as it exits, every module it
imported; none of the heavy ones may be among them. Times are not asserted
here (the machine is noisy): ``python -m bench.bench_cli`` measures them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import POLICY, Project, governed_project

FLAG = str(POLICY["flag"])
ROOT = Path(__file__).resolve().parents[1]

# Packages a transition never needs: vendor SDKs, data frames, the service, the report's
# templates, the evaluation machinery (OpenFeature, the provider chain, Prometheus).
HEAVY = (
    "ldclient",
    "splitio",
    "ld_openfeature",
    "pandas",
    "polars",
    "pyarrow",
    "numpy",
    "fastapi",
    "uvicorn",
    "starlette",
    "httpx",
    "jinja2",
    "rich.traceback",  # structlog's console renderer's, never used by a JSON log line
    "rich.pretty",
    "openfeature",
    "prometheus_client",
    "flagwarden.runtime",
    "flagwarden.providers",
    "flagwarden.governance.governed",
    "flagwarden.governance.assign",
)
# Only with audit.signing_key.
SIGNING = ("cryptography", "flagwarden.audit.signing")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGWARDEN_")}
    env["FLAGWARDEN_ACTOR"] = "alice"
    return env


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, env=_env()
    )


# Runs the command line and, as the process exits, prints the modules it imported (a failed
# import, such as structlog's of rich's traceback renderer when flagwarden hides it, is none).
RUN_CLI = """
import atexit, json, runpy, sys

atexit.register(lambda: print("MODULES " + json.dumps(sorted(sys.modules))))
sys.argv = ["flagwarden", *json.loads(sys.argv[1])]
runpy.run_module("flagwarden.cli", run_name="__main__")
"""


def _imported(stdout: str) -> set[str]:
    """The modules a :data:`RUN_CLI` run imported."""
    (line,) = [line for line in stdout.splitlines() if line.startswith("MODULES ")]
    return set(json.loads(line.removeprefix("MODULES ")))


def _loaded(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    """Which of ``packages`` (or their submodules) are among ``modules``."""
    return sorted(
        name for name in modules if any(name == p or name.startswith(p + ".") for p in packages)
    )


def _flagwarden(hooks: list[str]) -> list[str]:
    """The fork hooks (by the module of each callable) that flagwarden registered."""
    return [module for module in hooks if module.split(".")[0] == "flagwarden"]


def _transition(config: Path, action: str) -> set[str]:
    args = [action, FLAG, "--reason", "startup test", "-c", str(config)]
    done = _python("-c", RUN_CLI, json.dumps(args))
    assert done.returncode == 0, done.stdout + done.stderr
    return _imported(done.stdout)


def _state(config: Path) -> dict[str, object]:
    done = _python("-m", "flagwarden.cli", "status", FLAG, "--json", "-c", str(config))
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)["flags"]
    return dict(row)


def test_transitions_import_nothing_heavy(project: Project):
    config = governed_project(project)
    for action, check in (
        ("kill", lambda s: s["killed"] is True),
        ("revive", lambda s: s["killed"] is False),
        ("pause", lambda s: s["paused"] is True),
        ("resume", lambda s: s["paused"] is False),
        ("advance", lambda s: s["stage"] == 1),
        ("rollback", lambda s: s["stage"] == 0),
    ):
        modules = _transition(config, action)
        assert "flagwarden.governance.rollout" in modules  # the run was measured
        assert _loaded(modules, HEAVY + SIGNING) == [], action
        assert check(_state(config)), (action, _state(config))


def test_signing_key_loads_cryptography(project: Project):
    """The other side of the check above: with a key, the records are signed."""
    from flagwarden.audit.signing import generate, seed_base64

    key, _, _ = generate()
    config = governed_project(project, audit={"signing_key": seed_base64(key)})
    modules = _transition(config, "kill")
    assert _loaded(modules, SIGNING) != []
    assert _loaded(modules, HEAVY) == []


# Records the module of every fork hook registered from here on.
COUNT_FORK_HOOKS = """
import json, os, sys

calls = []
register = os.register_at_fork


def counting(**hooks):
    calls.extend(getattr(hook, "__module__", None) or "" for hook in hooks.values())
    return register(**hooks)


os.register_at_fork = counting
"""

IMPORT_ONLY = (
    COUNT_FORK_HOOKS
    + """import {module}

loaded = sorted(sys.modules)
at_import = list(calls)
import flagwarden
import flagwarden.runtime  # importing the runtime registers nothing either

public = {{name: type(getattr(flagwarden, name)).__name__ for name in flagwarden.__all__}}
print(json.dumps({{"loaded": loaded, "at_import": at_import, "fork_hooks": calls,
                  "public": public,
                  "listed": sorted(set(flagwarden.__all__) - set(dir(flagwarden))),
                  "registered": flagwarden.runtime._fork_hooks_registered}}))
"""
)


@pytest.mark.parametrize("module", ["flagwarden", "flagwarden.cli"])
def test_import_loads_no_sdk_and_registers_no_fork_hooks(module: str):
    done = _python("-c", IMPORT_ONLY.format(module=module))
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    heavy = HEAVY + SIGNING + ("structlog", "pydantic", "yaml", "sqlite3")
    assert _loaded(set(found["loaded"]), heavy) == []
    assert _flagwarden(found["at_import"]) == []
    # Importing the runtime (the public names need it) does not register its hooks either:
    # configure() does. (Modules it imports, such as the background threads', may register
    # their own.)
    assert "flagwarden.runtime" not in found["fork_hooks"] and found["registered"] is False
    # The public names still resolve (lazily) and are listed by dir().
    assert found["public"] == {
        "Assignment": "type",
        "ConfigError": "type",
        "FlagwardenError": "type",
        "Runtime": "type",
        "assign": "function",
        "configure": "function",
        "current": "function",
        "plan": "function",
        "record_exposures": "function",
        "record_metric": "function",
        "run": "function",
        "shutdown": "function",
    }
    assert found["listed"] == []


CONFIGURE = (
    COUNT_FORK_HOOKS
    + """import flagwarden
import flagwarden.runtime

flagwarden.configure(sys.argv[1])
first = flagwarden.runtime._fork_hooks_registered
flagwarden.configure(sys.argv[1])  # again: replaces the runtime, registers nothing more
flagwarden.shutdown()
print(json.dumps({"first": first, "fork_hooks": calls}))
"""
)


def test_configure_registers_fork_hooks_once(project: Project):
    config = governed_project(project)
    done = _python("-c", CONFIGURE, str(config))
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["first"] is True
    # One before-fork and one after-fork-in-child hook, registered by the first configure().
    assert found["fork_hooks"].count("flagwarden.runtime") == 2
