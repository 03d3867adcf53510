"""Pushgateway pushes through a real Pushgateway, from real processes.

One process pushes per run (the one that ran ``configure()`` first), to a group without a
host or a process id: forked workers' counts reach it through ``PROMETHEUS_MULTIPROC_DIR``,
a run replaces the previous run's push, ``grouping`` labels the group, and a group can be
deleted. A gateway that is down or refuses never breaks shutdown, nor shows a password.

This file is also the pipeline those processes run:

python -m tests.telemetry.test_pushgateway CONFIG MODE ARGS...
  run N [hold]:         evaluate N units, print the variants served as JSON (with ``hold``
                        wait for stdin to close), shut down, print "done".
  fork WORKERS N HOW:   fork WORKERS workers that evaluate N distinct units each and end
                        (HOW: ``exit`` as pool workers do, without a shutdown; ``shutdown``;
                        ``reconfigure``: configure() again in the worker first), print the
                        pids and the variants served as JSON, shut down, print "done".
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest, push_to_gateway
from prometheus_client import Counter as PromCounter
from prometheus_client.parser import text_string_to_metric_families

from flagwarden.config import load_settings
from flagwarden.governance.project import Governance
from flagwarden.telemetry import export
from flagwarden.telemetry.export import delete_pushed, push_metrics
from tests.conftest import Project, governed_project, wait_for
from tests.servers.launchdarkly import free_port

ROOT = Path(__file__).resolve().parents[2]
FLAG = "new-scoring-model"
JOB = "orders-etl"
PASSWORD = "pw-s3cr3t"
# bcrypt of PASSWORD (cost 4), for the Pushgateway's basic_auth_users.
PASSWORD_BCRYPT = "$2b$04$o9nsp.4Qd/i8GgYP6S9bGefu33NLHvsr.Jx8EvoFd5AGjwv4u50fu"

Labels = frozenset[tuple[str, str]]


def pipeline(
    config: Path, *args: str, multiproc: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if multiproc is not None:
        multiproc.mkdir(parents=True, exist_ok=True)  # empty, as prometheus_client requires
        environ["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
    return subprocess.Popen(
        [sys.executable, "-m", "tests.telemetry.test_pushgateway", str(config), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=environ,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[list[str], str]:
    """Close stdin, wait for a clean end: the lines printed and stderr."""
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[-1] == "done", (out, err)  # shutdown completed
    return lines, err


def run(config: Path, n: int, **kwargs: Any) -> tuple[dict[str, int], str]:
    lines, err = finish(pipeline(config, "run", str(n), **kwargs))
    return json.loads(lines[0]), err


def set_stage(config: Path, stage: float) -> None:
    gov = Governance.open(load_settings(config))
    try:
        gov.rollout().advance(FLAG, actor="test", reason="test", to=stage, force=True)
    finally:
        gov.close()


def project_with(project: Project, gateway: str, **prometheus: Any) -> Path:
    config = governed_project(
        project, telemetry={"prometheus": {"pushgateway": gateway, "job": JOB, **prometheus}}
    )
    set_stage(config, 50)  # a governed rollout: both variants served
    return config


def samples(gateway: str, password: str | None = None) -> list[tuple[str, dict[str, str], float]]:
    """Every sample the gateway exposes on /metrics: (name, labels, value)."""
    request = urllib.request.Request(f"{gateway}/metrics")
    if password is not None:
        token = base64.b64encode(f"alice:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def groups(gateway: str, job: str = JOB, **kwargs: Any) -> set[Labels]:
    """The groups the gateway holds for ``job``: the labels of each one's push_time_seconds."""
    return {
        frozenset(labels.items())
        for name, labels, _ in samples(gateway, **kwargs)
        if name == "push_time_seconds" and labels.get("job") == job
    }


def evaluations(gateway: str, job: str = JOB, **kwargs: Any) -> dict[str, float]:
    """feature_flag_evaluations_total for ``job``, by variant (every group together)."""
    counts: dict[str, float] = {}
    for name, labels, value in samples(gateway, **kwargs):
        if name == "feature_flag_evaluations_total" and labels.get("job") == job:
            variant = labels["feature_flag_result_variant"]
            counts[variant] = counts.get(variant, 0) + value
    return counts


def pushes(gateway: str) -> float:
    """How many pushes (PUT) the gateway has accepted."""
    return sum(
        value
        for name, labels, value in samples(gateway)
        if name == "pushgateway_http_requests_total" and labels.get("handler") == "push"
    )


def group(job: str = JOB, **labels: str) -> Labels:
    # The Pushgateway gives a group without an instance label instance="".
    return frozenset({"job": job, "instance": "", **labels}.items())


def failures(stderr: str) -> list[dict[str, Any]]:
    """The flagwarden.pushgateway_failed events a process logged (JSON lines on stderr)."""
    lines = [line for line in stderr.splitlines() if line.startswith("{")]
    return [e for e in map(json.loads, lines) if e.get("event") == "flagwarden.pushgateway_failed"]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["exit", "shutdown", "reconfigure"])
def test_forked_workers_counts_reach_one_push_without_a_pid(
    project: Project, pushgateway: str, tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
):
    config = project_with(project, pushgateway)
    lines, _ = finish(pipeline(config, "fork", "3", "10", how, multiproc=tmp_path / "mp"))
    report = json.loads(lines[0])
    assert sum(report["served"].values()) == 30

    # Exactly the sum over the workers, once: no worker pushed, the parent pushed the total.
    assert evaluations(pushgateway) == {k: float(v) for k, v in report["served"].items()}
    assert pushes(pushgateway) == 1
    assert groups(pushgateway) == {group()}
    # No label names a process or a host: not the group, not a gauge kept per process.
    pids = [report["parent"], *report["workers"]]
    host = socket.gethostname()
    pushed = [(name, labels) for name, labels, _ in samples(pushgateway) if "job" in labels]
    assert pushed
    for name, labels in pushed:
        assert "pid" not in labels and labels.get("instance", "") == "", (name, labels)
        for value in labels.values():
            assert value != host and not value.startswith(f"{host}-"), (name, labels)
            assert not any(re.search(rf"\b{pid}\b", value) for pid in pids), (name, labels)
    stage = [v for n, _, v in samples(pushgateway) if n == "flagwarden_flag_stage_percent"]
    assert stage == [50.0]  # one series, not one per process

    # A /metrics scrape of the same folder: the same total, and no series per process either.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "mp"))
    text = generate_latest(export._registry()).decode()
    scraped = [s for f in text_string_to_metric_families(text) for s in f.samples]
    assert scraped
    for sample in scraped:
        assert "pid" not in sample.labels, sample
    served = Counter[str]()
    for sample in scraped:
        if sample.name == "feature_flag_evaluations_total":
            served[sample.labels["feature_flag_result_variant"]] += int(sample.value)
    assert served == report["served"]
    stage = [s.value for s in scraped if s.name == "flagwarden_flag_stage_percent"]
    assert stage == [50.0]


@pytest.mark.slow
@pytest.mark.parametrize("multiprocess", [False, True], ids=["single", "multiprocess"])
def test_a_second_run_replaces_the_first(
    project: Project, pushgateway: str, tmp_path: Path, multiprocess: bool
):
    config = project_with(project, pushgateway)
    first, _ = run(config, 12, multiproc=tmp_path / "mp1" if multiprocess else None)
    assert evaluations(pushgateway) == {k: float(v) for k, v in first.items()}
    second, _ = run(config, 5, multiproc=tmp_path / "mp2" if multiprocess else None)
    assert groups(pushgateway) == {group()}
    assert evaluations(pushgateway) == {k: float(v) for k, v in second.items()}
    assert sum(evaluations(pushgateway).values()) == 5
    assert pushes(pushgateway) == 2  # one per run


@pytest.mark.slow
def test_grouping_labels_the_group(
    project: Project, pushgateway: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("SHARD", "eu")  # for this process's set_stage; each run sets its own
    # ${VAR} in a value, and a value with a slash (sent base64-encoded, as the gateway wants).
    config = project_with(project, pushgateway, grouping={"shard": "${SHARD}", "run": "daily/eu"})
    eu, _ = run(config, 3, env={"SHARD": "eu"})
    us, _ = run(config, 4, env={"SHARD": "us"})
    assert groups(pushgateway) == {
        group(shard="eu", run="daily/eu"),
        group(shard="us", run="daily/eu"),
    }

    def by_shard() -> dict[str, float]:
        totals: dict[str, float] = {}
        for name, labels, value in samples(pushgateway):
            if name == "feature_flag_evaluations_total" and labels.get("job") == JOB:
                totals[labels["shard"]] = totals.get(labels["shard"], 0) + value
        return totals

    assert by_shard() == {"eu": sum(eu.values()), "us": sum(us.values())}
    run(config, 6, env={"SHARD": "eu"})  # the next eu run replaces eu's group only
    assert by_shard() == {"eu": 6, "us": 4}
    assert len(groups(pushgateway)) == 2


def test_delete_pushed_deletes_one_group(pushgateway: str):
    job = "delete-me"
    assert push_metrics(pushgateway, job, {"shard": "a"})
    assert push_metrics(pushgateway, job, {"shard": "b"})
    assert push_metrics(pushgateway, "other-job")
    assert groups(pushgateway, job) == {group(job, shard="a"), group(job, shard="b")}

    assert delete_pushed(pushgateway, job, {"shard": "a"}) is True
    assert groups(pushgateway, job) == {group(job, shard="b")}
    assert delete_pushed(pushgateway, job) is True  # the group of job alone: not shard b's
    assert groups(pushgateway, job) == {group(job, shard="b")}
    assert delete_pushed(pushgateway, job, {"shard": "b"}) is True
    assert groups(pushgateway, job) == set()
    assert groups(pushgateway, "other-job") == {group("other-job")}
    assert delete_pushed(f"http://127.0.0.1:{free_port()}", job) is False


@pytest.mark.slow
@pytest.mark.parametrize("delete_at_start", [True, False])
def test_delete_at_start_removes_a_crashed_runs_group(
    project: Project, pushgateway: str, delete_at_start: bool
):
    # What an earlier run left in the group (it crashed before its own push replaced it).
    stale = CollectorRegistry()
    counter = PromCounter(
        "feature_flag_evaluations", "", ["feature_flag_result_variant"], registry=stale
    )
    counter.labels("served").inc(999)
    PromCounter("stale_run", "a crashed run's counter", registry=stale).inc()
    push_to_gateway(pushgateway, job=JOB, registry=stale, grouping_key={"shard": "eu"})
    config = project_with(
        project, pushgateway, grouping={"shard": "eu"}, delete_at_start=delete_at_start
    )
    proc = pipeline(config, "run", "4", "hold")
    try:
        served = json.loads(proc.stdout.readline())  # configured, and counting
        during = groups(pushgateway)
    finally:
        finish(proc)
    if delete_at_start:
        assert during == set()  # the crashed run's totals are not read as this run's
    else:
        assert during == {group(shard="eu")}  # still there until this run's push
    assert groups(pushgateway) == {group(shard="eu")}
    assert evaluations(pushgateway) == {k: float(v) for k, v in served.items()}
    assert not [name for name, _, _ in samples(pushgateway) if name.startswith("stale_run")]


@pytest.mark.slow
@pytest.mark.parametrize(
    "url",
    [
        "http://alice:{password}@127.0.0.1:{port}",  # nothing listens
        "alice:{password}@127.0.0.1:{port}",  # no scheme: http, as prometheus_client reads it
        "http://alice:{password}@127.0.0.1:notaport",  # not even a URL that can be opened
    ],
    ids=["refused", "no-scheme", "bad-port"],
)
def test_unreachable_gateway_is_logged_without_the_password(project: Project, url: str):
    gateway = url.format(password=PASSWORD, port=free_port())
    config = project_with(project, gateway, delete_at_start=True)
    served, err = run(config, 3)
    assert sum(served.values()) == 3
    failed = failures(err)
    assert [f["action"] for f in failed] == ["delete", "push"], err
    for event in failed:
        assert event["job"] == JOB and event["gateway"].startswith("http://127.0.0.1:")
    assert PASSWORD not in err and "alice:" not in err


@pytest.fixture
def auth_pushgateway(tmp_path: Path) -> Iterator[str]:
    """A Pushgateway that wants HTTP basic authentication (alice, PASSWORD)."""
    if shutil.which("prometheus-pushgateway") is None:
        pytest.fail("prometheus-pushgateway is not installed: .ci/run installs Debian's package")
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  alice: '{PASSWORD_BCRYPT}'\n")
    port = free_port()
    proc = subprocess.Popen(
        [
            "prometheus-pushgateway",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--web.config.file={web}",
            f"--persistence.file={tmp_path / 'auth-push.data'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"127.0.0.1:{port}"

    def up() -> bool:
        try:
            samples(f"http://{url}", password=PASSWORD)
            return True
        except OSError:
            return False

    wait_for(up, timeout=20, interval=0.1)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.mark.slow
def test_credentials_in_the_gateway_url_authenticate(project: Project, auth_pushgateway: str):
    plain = f"http://{auth_pushgateway}"
    config = project_with(project, f"http://alice:{PASSWORD}@{auth_pushgateway}")
    served, err = run(config, 3)
    assert failures(err) == [] and PASSWORD not in err
    assert evaluations(plain, password=PASSWORD) == {k: float(v) for k, v in served.items()}

    wrong = Project(project.root / "wrong")
    config = project_with(wrong, f"http://alice:wrong-{PASSWORD}@{auth_pushgateway}")
    _, err = run(config, 2)
    failed = failures(err)
    assert len(failed) == 1 and "401" in failed[0]["error"], err
    assert failed[0]["gateway"] == plain
    assert PASSWORD not in err
    assert sum(evaluations(plain, password=PASSWORD).values()) == 3  # the good push stands
    assert delete_pushed(f"http://alice:{PASSWORD}@{auth_pushgateway}", JOB) is True
    assert groups(plain, password=PASSWORD) == set()


# -- the pipeline (run in a process of its own) --------------------------------------------


def _evaluate(prefix: str, n: int) -> dict[str, int]:
    from openfeature.evaluation_context import EvaluationContext

    import flagwarden

    runtime = flagwarden.current()
    assert runtime is not None
    served = Counter(
        runtime.client.get_boolean_details(FLAG, False, EvaluationContext(f"{prefix}-{i}")).variant
        for i in range(n)
    )
    return {str(k): v for k, v in served.items()}


def _worker(config: str, index: int, n: int, how: str, results: Any) -> None:
    import flagwarden

    if how == "reconfigure":
        flagwarden.configure(config)
    served = _evaluate(f"w{index}-unit", n)
    if how in ("shutdown", "reconfigure"):
        flagwarden.shutdown()
    results.put((os.getpid(), served))
    # Returning ends the process with os._exit, as a pool worker ends: no atexit, no shutdown.


def main(argv: list[str]) -> None:
    import flagwarden

    config, mode = argv[0], argv[1]
    flagwarden.configure(config)
    if mode == "run":
        print(json.dumps(_evaluate("unit", int(argv[2]))), flush=True)
        if argv[3:] == ["hold"]:
            sys.stdin.read()
    elif mode == "fork":
        workers, n, how = int(argv[2]), int(argv[3]), argv[4]
        ctx = multiprocessing.get_context("fork")
        results = ctx.SimpleQueue()
        procs = [
            ctx.Process(target=_worker, args=(config, i, n, how, results)) for i in range(workers)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0, proc.exitcode
        served: Counter[str] = Counter()
        pids = []
        for _ in procs:
            pid, counts = results.get()
            pids.append(pid)
            served.update(counts)
        report = {"parent": os.getpid(), "workers": pids, "served": dict(served)}
        print(json.dumps(report), flush=True)
    flagwarden.shutdown()
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
