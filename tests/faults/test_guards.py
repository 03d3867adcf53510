"""A Prometheus answer a guard cannot judge is inconclusive for that guard only, quoted;
one flag's bad answer never stops another flag's rollback."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from flagwarden.config import load_settings
from flagwarden.governance.guards import QUOTE_LIMIT, GuardEvaluator
from flagwarden.governance.measurements import MeasurementStore, open_measurement_store
from flagwarden.governance.policy import Guard, Policy
from flagwarden.governance.project import Governance
from flagwarden.governance.state import FlagState
from flagwarden.governance.watch import Watch
from tests.conftest import POLICY, Project, wait_for


def vector(*values: object) -> str:
    series = [{"metric": {"i": str(i)}, "value": [1.0, v]} for i, v in enumerate(values)]
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": series}})


class CraftedPrometheus:
    """A local stand-in for a Prometheus that answers each query with a crafted body."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, str, str]] = {}  # query -> (status, type, body)
        answers = self.answers

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)["query"][0]
                status, content_type, body = answers[query]
                data = body.encode("utf-8", "surrogateescape")
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, query: str, body: str, content_type: str = "application/json") -> None:
        self.answers[query] = (200, content_type, body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def crafted() -> Iterator[CraftedPrometheus]:
    server = CraftedPrometheus()
    yield server
    server.close()


LONG = "x" * 5000
MALFORMED = {
    "matrix": json.dumps(
        {
            "status": "success",
            "data": {"resultType": "matrix", "result": [{"metric": {}, "values": [[1, "9"]]}]},
        }
    ),
    "empty-result": vector(),
    "missing-value": json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}}
    ),
    "non-numeric": vector("abc"),
    "nan": vector("NaN"),
    "plus-inf": vector("+Inf"),
    "minus-inf": vector("-Inf"),
    "value-not-a-pair": vector(["1"]),
    "status-error": json.dumps({"status": "error", "errorType": "bad_data", "error": "boom"}),
    "html": "<html><body><h1>Sign in</h1>" + LONG + "</body></html>",
    "json-list": "[1, 2, 3]",
    "no-data": json.dumps({"status": "success"}),
    "result-not-a-list": json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": {"a": 1}}}
    ),
    "scalar-with-several-series": json.dumps(
        {"status": "success", "data": {"resultType": "scalar", "result": [[1, "1"], [1, "9"]]}}
    ),
    "string-result": json.dumps(
        {"status": "success", "data": {"resultType": "string", "result": [1, "9"]}}
    ),
    "deeply-nested": '{"status": "success", "data": ' + "[" * 100000 + "]" * 100000 + "}",
    "long-label": vector("abc").replace('"i": "0"', '"i": "' + LONG + '"'),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_answer_is_inconclusive_with_the_answer_quoted(
    crafted: CraftedPrometheus, case: str
):
    crafted.answer(case, MALFORMED[case])
    guard = Guard(name="g", promql=case, max=5, window="0s")
    policy = Policy.model_validate({**POLICY, "guards": [guard.model_dump()]})
    state = FlagState(POLICY["flag"], stage=25, version=1)
    result = GuardEvaluator(None, crafted.url, timeout=5).evaluate(policy, guard, state)
    assert result.verdict == "inconclusive", result
    quoted = " ".join(MALFORMED[case].split())[:40]
    assert quoted in result.detail, result.detail
    assert len(result.detail) < QUOTE_LIMIT + 200  # truncated, never the whole answer
    assert result.stage == 25 and result.limit == "<= 5"


def test_several_well_formed_series_are_judged_by_the_largest(crafted: CraftedPrometheus):
    crafted.answer("q", vector("1", "7", "NaN"))
    guard = Guard(name="g", promql="q", max=5, window="0s")
    policy = Policy.model_validate({**POLICY, "guards": [guard.model_dump()]})
    result = GuardEvaluator(None, crafted.url).evaluate(policy, guard, FlagState(POLICY["flag"]))
    assert (result.verdict, result.value, result.samples) == ("breach", 7.0, 2)


def _policy(flag: str, query: str) -> dict[str, object]:
    return {
        **POLICY,
        "flag": flag,
        "guards": [{"name": "errors", "promql": query, "max": 1, "window": "0s"}],
        "on_breach": "rollback",
    }


def test_one_flags_garbage_never_stops_another_flags_rollback(
    project: Project, crafted: CraftedPrometheus
):
    """Watch.run (the loop of ``flagwarden watch``): flag A's query answers garbage of every
    kind in turn, flag B's a real breach; B is rolled back, A holds at its stage."""
    policies = project.root / "policies"
    policies.mkdir()
    for flag in ("flag-a", "flag-b"):
        doc = _policy(flag, f"{flag}-query")
        (policies / f"{flag}.yaml").write_text(yaml.safe_dump(doc))
    (project.root / "flags.json").write_text(json.dumps({"flags": {}}))
    project.profile("file", {"type": "file", "path": "../flags.json"})
    config = project.config(
        "file", fallback={"snapshot": None}, telemetry={"prometheus": {"query_url": crafted.url}}
    )
    settings = load_settings(config)
    governance = Governance.open(settings)
    measurements = open_measurement_store(settings.config.state, settings.base_dir)
    rollout = governance.rollout()
    for flag in ("flag-a", "flag-b"):
        rollout.advance(flag, actor="t", reason="go", to=25, force=True)
    crafted.answer("flag-a-query", vector("abc"))
    crafted.answer("flag-b-query", vector("9"))  # above max 1: a breach
    watch = Watch(governance, GuardEvaluator(measurements, crafted.url, timeout=2), rollout)
    stop = threading.Event()
    loop = threading.Thread(target=watch.run, args=(0.1, stop), daemon=True)
    try:
        loop.start()
        wait_for(lambda: rollout.state("flag-b").stage == 0, timeout=20)
        # Then every other kind of garbage in turn: each judged, none stops the loop.
        for case in ("plus-inf", "html", "matrix", "nan", "status-error", "missing-value"):
            crafted.answer("flag-a-query", MALFORMED[case])
            quoted = " ".join(MALFORMED[case].split())[:40]
            wait_for(lambda q=quoted: q in _detail(measurements, "flag-a"), timeout=10)
        assert loop.is_alive()
    finally:
        stop.set()
        loop.join(10)
    a = rollout.state("flag-a")
    assert (a.stage, a.paused, a.killed) == (25, False, False)
    found = measurements.verdicts("flag-a")
    assert found is not None
    (verdict,) = found[1]
    assert verdict["verdict"] == "inconclusive" and "the answer" in verdict["detail"]
    b = rollout.state("flag-b")
    assert (b.stage, b.updated_by) == (0, "flagwarden-watch")
    measurements.close()
    governance.close()


def _detail(measurements: MeasurementStore, flag: str) -> str:
    """The detail of the flag's latest guard verdict ("" before the first)."""
    found = measurements.verdicts(flag)
    return "" if found is None else str(found[1][0]["detail"])
