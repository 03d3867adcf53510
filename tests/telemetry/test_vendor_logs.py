"""The vendor SDKs' stdlib log records on stderr: one format with flagwarden's own, no secrets.

Each run is a process of its own (stderr captured) configured against the local LaunchDarkly or
Split server; the test stops the server mid-run, so the SDK logs its stream dropping and its
reconnects failing (with tracebacks, at debug). An application that configured logging itself
keeps it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Project, governed_project
from tests.servers.launchdarkly import LaunchDarklyServer, boolean_flag
from tests.servers.split import SplitServer, split_definition

ROOT = Path(__file__).resolve().parents[2]
FLAG = "new-scoring-model"
PASSWORD = "hunter2-relay-pw"
LD_KEY = "sdk-test-secret-key-0123456789"
# Not shaped like a key (no digits, no known prefix): only its registration can mask it.
PLAIN_KEY = "orders-pipeline-relay-key"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")
ANSI = re.compile(r"\x1b\[[0-9;]*m")

# The pipeline: configure, evaluate (an exposure line, and a context without a key, which the
# SDK warns about), say what the root logger holds, wait for the test to stop the server, let
# the SDK log its reconnects, shut down.
CHILD = r"""
import json, logging, os, sys, time
if os.environ.get("APP_LOGGING"):
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="APP|%(levelname)s|%(name)s|%(message)s"
    )
if os.environ.get("APP_STRUCTLOG"):
    import structlog
    structlog.configure(
        processors=[structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
import flagwarden
from openfeature.evaluation_context import EvaluationContext

before = list(logging.getLogger().handlers)
client = flagwarden.configure(sys.argv[1])
client.get_boolean_value("new-scoring-model", False, EvaluationContext("order-1"))
client.get_boolean_value("new-scoring-model", False)
for name, message in json.loads(os.environ.get("VENDOR_SAYS", "[]")):
    logging.getLogger(name).warning(*message)
root = logging.getLogger()
print(json.dumps({
    "kept": root.handlers == before,
    "handlers": [type(h).__name__ for h in root.handlers],
}), flush=True)
sys.stdin.readline()
time.sleep(float(os.environ.get("LINGER", "1.5")))
flagwarden.shutdown()
"""


def run(
    project: Project, stop: Callable[[], None], env: dict[str, str] | None = None
) -> tuple[dict[str, Any], str]:
    """The pipeline in a process of its own; ``stop()`` once it is configured. Returns what it
    said of the root logger's handlers, and its stderr."""
    script = project.root / "pipeline.py"
    script.write_text(CHILD)
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLAGWARDEN_")}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(project.root / "flagwarden.yaml")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=project.root,
        env={**base, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        said = proc.stdout.readline()
        stop()
        _, err = proc.communicate("\n", timeout=90)
    finally:
        proc.kill()
        proc.wait()
    assert said and proc.returncode == 0, err[-3000:]
    return json.loads(said), err


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every line of stderr as JSON (an assertion names the first that is not)."""
    events = []
    for number, line in enumerate(stderr.splitlines(), 1):
        try:
            events.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"stderr line {number} is not JSON: {line!r}") from None
    return events


def vendor_lines(events: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [e for e in events if str(e.get("logger", "")).startswith(prefix)]


def ld_project(project: Project, server: LaunchDarklyServer, **config: Any) -> None:
    """A LaunchDarkly profile whose stream URI carries a password twice (a relay proxy's user,
    and ``?password=``): the SDK logs that URI at info. The server serves ``/all?...`` as
    ``/all``, so the stream works."""
    server.set_flag(boolean_flag(FLAG, serve=True))
    profile = server.profile()
    profile["stream_uri"] = (
        f"http://fw:{PASSWORD}@127.0.0.1:{server.port}/all?password={PASSWORD}&relay="
    )
    project.profile("launchdarkly", profile)
    project.config("launchdarkly", **config)


def test_launchdarkly_lines_are_json_with_level_and_logger_and_no_secret(
    project: Project, ld_server: LaunchDarklyServer
):
    ld_project(project, ld_server)
    said, stderr = run(project, ld_server.stop)
    events = json_lines(stderr)
    assert said["handlers"] == ["_Bridge"]
    vendor = vendor_lines(events, "ldclient")
    assert vendor, stderr[-3000:]
    for event in vendor:
        assert event["level"] in ("debug", "info", "warning", "error", "critical"), event
        assert TIMESTAMP.match(event["timestamp"]), event
        assert isinstance(event["event"], str) and event["event"], event
    # The stream dropping, then refused: warnings, in the middle of flagwarden's own lines.
    dropped = [e for e in vendor if "Error on stream connection" in e["event"]]
    assert dropped and {e["level"] for e in dropped} == {"warning"}, vendor
    assert any(e["event"] == "flagwarden.outage_started" for e in events)
    assert any(e["event"] == "feature_flag.evaluation" for e in events)  # the direct writer
    # The context without a key: the SDK and its OpenFeature provider said so, each its logger.
    assert any("Context was invalid" in e["event"] for e in vendor)
    assert any(e.get("logger") == "launchdarkly-openfeature-server" for e in events)
    # The info line that carried the URI, without its credentials.
    connecting = [e["event"] for e in vendor if e["event"].startswith("Connecting to stream")]
    assert connecting and connecting[0] == (
        f"Connecting to stream at http://127.0.0.1:{ld_server.port}/all?password=***&relay=/all"
    ), connecting
    assert PASSWORD not in stderr


def test_the_log_level_governs_vendor_lines(project: Project, ld_server: LaunchDarklyServer):
    ld_project(project, ld_server)
    _, stderr = run(project, ld_server.stop, {"FLAGWARDEN_LOG_LEVEL": "warning"})
    vendor = vendor_lines(json_lines(stderr), "ldclient")
    assert vendor and {e["level"] for e in vendor} == {"warning"}, vendor
    assert not any(e["event"].startswith("Connecting to stream") for e in vendor)


def test_split_debug_lines_carry_tracebacks_as_one_field(
    project: Project, split_server: SplitServer
):
    split_server.set_split(split_definition(FLAG, on_percent=100))
    project.profile("split", split_server.profile())
    project.config("split")
    _, stderr = run(project, split_server.stop, {"FLAGWARDEN_LOG_LEVEL": "debug", "LINGER": "2.5"})
    events = json_lines(stderr)
    vendor = vendor_lines(events, "splitio")
    assert {"debug", "error"} <= {e["level"] for e in vendor}, vendor
    # The failed fetches' tracebacks: one string each, in the line that logged them.
    tracebacks = [e["exception"] for e in vendor if "exception" in e]
    assert tracebacks and all(t.startswith("Traceback (most recent call last)") for t in tracebacks)
    assert any("ConnectionError" in t for t in tracebacks)
    assert all(
        e["level"] == "debug" and TIMESTAMP.match(e["timestamp"])
        for e in vendor
        if "exception" in e
    )
    # urllib3 speaks at debug for every request: WARNING unless its level was set.
    assert not vendor_lines(events, "urllib3"), vendor_lines(events, "urllib3")[:3]


def test_configured_sdk_keys_are_masked_even_when_they_look_like_words(
    project: Project, ld_server: LaunchDarklyServer
):
    ld_server.set_flag(boolean_flag(FLAG, serve=True))
    project.profile("launchdarkly", {**ld_server.profile(), "sdk_key": PLAIN_KEY})
    project.config("launchdarkly")
    says = [
        # An SDK quoting its key back, and a request's headers.
        ["ldclient.util", [f"Received 401 for SDK key {PLAIN_KEY} - giving up"]],
        ["splitio.api.client", ["headers: %s", f"{{'Authorization': 'Bearer {LD_KEY}'}}"]],
        ["urllib3.connectionpool", [f"Retrying after {PASSWORD!r}: /x?password={PASSWORD}"]],
        # A vendor's bad format string: a line of its own, not "--- Logging error ---".
        ["splitio.sync", ["fetched %s of %s", "one"]],
    ]
    _, stderr = run(project, lambda: None, {"VENDOR_SAYS": json.dumps(says), "LINGER": "0"})
    events = json_lines(stderr)
    said = {(e["logger"], e["event"]) for e in events if "logger" in e}
    assert ("ldclient.util", "Received 401 for SDK key *** - giving up") in said
    assert ("splitio.api.client", "headers: {'Authorization': 'Bearer ***'}") in said
    assert ("urllib3.connectionpool", "Retrying after '***': /x?password=***") in said
    (unformatted,) = [event for logger, event in said if logger == "splitio.sync"]
    assert unformatted.startswith("fetched %s of %s (arguments ('one',) did not format")
    assert PLAIN_KEY not in stderr and LD_KEY not in stderr and PASSWORD not in stderr


def test_console_format_renders_vendor_lines_alike(project: Project, ld_server: LaunchDarklyServer):
    ld_project(project, ld_server, telemetry={"log_format": "console"})
    _, stderr = run(project, ld_server.stop)
    lines = [ANSI.sub("", line) for line in stderr.splitlines()]
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z \[")
    assert lines and all(stamp.match(line) for line in lines), [
        line for line in lines if not stamp.match(line)
    ][:3]
    dropped = [line for line in lines if "Error on stream connection" in line]
    assert dropped and all("[warning" in line and "[ldclient.util]" in line for line in dropped)
    assert PASSWORD not in stderr


def test_an_application_that_configured_logging_keeps_it(
    project: Project, ld_server: LaunchDarklyServer
):
    ld_project(project, ld_server)
    said, stderr = run(project, ld_server.stop, {"APP_LOGGING": "1"})
    assert said == {"kept": True, "handlers": ["StreamHandler"]}
    lines = stderr.splitlines()
    # The application's format for every stdlib record, flagwarden's JSON for its own events.
    assert any(
        line.startswith("APP|WARNING|ldclient.util|Error on stream connection") for line in lines
    )
    assert not [line for line in lines if line.startswith("{") and '"logger": "ldclient' in line]
    assert any('"event": "flagwarden.outage_started"' in line for line in lines)


def test_an_application_that_configured_structlog_gets_no_bridge(
    project: Project, ld_server: LaunchDarklyServer
):
    ld_project(project, ld_server)
    said, _ = run(project, ld_server.stop, {"APP_STRUCTLOG": "1", "LINGER": "0"})
    assert said == {"kept": True, "handlers": []}


WARN_AND_CRASH = """
import sys, threading, warnings
import flagwarden
flagwarden.configure(sys.argv[1])
warnings.warn("the old API is going away", DeprecationWarning, stacklevel=1)
warnings.warn("pandas says something", FutureWarning)

def boom():
    raise ValueError("a worker thread failed")

thread = threading.Thread(target=boom, name="loader")
thread.start()
thread.join()
flagwarden.shutdown()
"""


def test_warnings_and_thread_crashes_are_json_too(project: Project):
    """Python's warnings and an uncaught exception in a thread print plain text by default:
    through the bridge they are JSON lines like the rest."""
    config = governed_project(project)
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", WARN_AND_CRASH, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every line is JSON
    warned = [e for e in events if e.get("logger") == "py.warnings"]
    assert any("the old API is going away" in e["event"] for e in warned)
    assert any("FutureWarning: pandas says something" in e["event"] for e in warned)
    (crash,) = [e for e in events if e.get("logger") == "threading"]
    assert crash["event"] == "Exception in thread loader" and crash["level"] == "error"
    assert "ValueError: a worker thread failed" in crash["exception"]


FORK_WHILE_WRITING = """
import os, sys, threading, time
import structlog
import flagwarden
from openfeature.evaluation_context import EvaluationContext
client = flagwarden.configure(sys.argv[1])
lock = structlog.WriteLogger(sys.stderr)._lock  # held by a writer when the fork happens
held, release = threading.Event(), threading.Event()

def writer():
    with lock:
        held.set()
        release.wait()

thread = threading.Thread(target=writer)
thread.start()
held.wait()
pid = os.fork()
if pid == 0:
    client.get_boolean_value("new-scoring-model", False, EvaluationContext("child"))
    flagwarden.current().telemetry.recorder.close()
    structlog.get_logger("t").warning("child.done")
    os._exit(0)
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    time.sleep(0.05)
else:
    os.kill(pid, 9)
    print("child hung", flush=True)
release.set()
thread.join()
flagwarden.shutdown()
"""


def test_a_child_forked_while_a_line_is_written_can_write(project: Project):
    """structlog's lock for stderr, held by a writing thread at the fork, is the child's to
    use: its exposure and log lines come out (before: it waited for ever)."""
    config = governed_project(project)
    done = subprocess.run(
        [sys.executable, "-c", FORK_WHILE_WRITING, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "child hung" not in done.stdout
    events = json_lines(done.stderr)
    assert any(e.get("event") == "child.done" for e in events)
    assert any(e.get("feature_flag.context.id") == "child" for e in events)


AFTER_CONFIGURE = """
import logging, logging.config, sys, threading, warnings
import flagwarden
flagwarden.configure(sys.argv[1])
warnings.warn("first", UserWarning)
logging.config.dictConfig({"version": 1, "root": {"handlers": ["plain"], "level": "INFO"},
    "handlers": {"plain": {"class": "logging.StreamHandler", "formatter": "f"}},
    "formatters": {"f": {"format": "APP|%(name)s|%(message)s"}}})
warnings.warn("second", UserWarning)
def boom():
    raise ValueError("after the application's set-up")
thread = threading.Thread(target=boom)
thread.start()
thread.join()
"""

NAMED_LOGGER = """
import json, logging, sys
logging.getLogger("myapp").addHandler(logging.StreamHandler())
import flagwarden
flagwarden.configure(sys.argv[1])
print(json.dumps([type(h).__name__ for h in logging.getLogger().handlers]))
"""


def test_an_application_configuring_logging_later_or_by_name_is_left_alone(project: Project):
    config = governed_project(project)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    later = subprocess.run(
        [sys.executable, "-W", "always", "-c", AFTER_CONFIGURE, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert later.returncode == 0, later.stderr[-2000:]
    # Before the application's set-up: through the bridge; after: Python's own, never lost.
    lines = later.stderr.splitlines()
    first = [json.loads(line) for line in lines if line.startswith("{") and "first" in line]
    assert first and first[0]["logger"] == "py.warnings"
    assert "UserWarning: second" in later.stderr
    assert "ValueError: after the application's set-up" in later.stderr
    named = subprocess.run(
        [sys.executable, "-c", NAMED_LOGGER, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert named.returncode == 0, named.stderr[-2000:]
    assert json.loads(named.stdout.splitlines()[-1]) == []  # no bridge on the root logger
    # A framework's logger that keeps its lines to itself (dask.distributed's, Ray's).
    framework = NAMED_LOGGER.replace(
        'logging.getLogger("myapp").addHandler(logging.StreamHandler())',
        'own = logging.getLogger("framework"); own.addHandler(logging.StreamHandler()); '
        "own.propagate = False",
    )
    assert framework != NAMED_LOGGER
    kept = subprocess.run(
        [sys.executable, "-c", framework, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert kept.returncode == 0, kept.stderr[-2000:]
    assert json.loads(kept.stdout.splitlines()[-1]) == ["_Bridge"]


def test_the_exception_that_ends_the_program_is_json_too(project: Project):
    config = governed_project(project)
    script = (
        "import sys, flagwarden\n"
        "flagwarden.configure(sys.argv[1])\n"
        "raise RuntimeError('the pipeline failed')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert done.returncode == 1
    (ended,) = [e for e in json_lines(done.stderr) if e.get("logger") == "uncaught"]
    assert ended["level"] == "critical"
    assert "RuntimeError: the pipeline failed" in ended["exception"]
