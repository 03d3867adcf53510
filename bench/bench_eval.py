"""Per-evaluation cost of flagwarden's chain against bare OpenFeature, same provider underneath.

Run from the repository root:  python -m bench.bench_eval [--evals 20000] [--rounds 7]

For each source (env, file, LaunchDarkly, Split) the bare case registers the underlying
provider with OpenFeature directly; the flagwarden case registers the failover layer
(environment override, vendor, snapshot, default, ``flagwarden.source``) around the same
provider. The policy and the exposure recording that ``configure()`` adds on top are measured
by bench_telemetry. Rounds alternate so drift on this noisy machine hits
both; the table shows medians and the ratio flagwarden / bare. The vendors are the real SDKs
against the local protocol servers the tests use.

Then, with the vendor down: the cold-start time to first answer from a snapshot, and the
per-evaluation cost while serving from it.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import yaml
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from tests.servers.launchdarkly import LaunchDarklyServer, boolean_flag
from tests.servers.split import SplitServer, split_definition

import flagwarden
from flagwarden.events import EventSink
from flagwarden.profiles import load_profile
from flagwarden.providers.env import EnvProvider
from flagwarden.providers.failover import FailoverProvider
from flagwarden.providers.file import FileProvider
from flagwarden.providers.launchdarkly import LaunchDarklyVendor
from flagwarden.providers.split import SplitVendor

FLAG = "new-scoring-model"
for name in ("ldclient", "splitio", "launchdarkly-openfeature-server"):
    logging.getLogger(name).setLevel(logging.CRITICAL)


def per_eval_ns(client: Any, contexts: list[EvaluationContext]) -> float:
    return timed(client, contexts)[0]


def timed(client: Any, contexts: list[EvaluationContext]) -> tuple[float, int]:
    """ns per evaluation, and how many answers were True (what the row compares)."""
    get = client.get_boolean_value
    on = 0
    start = time.perf_counter_ns()
    for ctx in contexts:
        on += get(FLAG, False, ctx)
    return (time.perf_counter_ns() - start) / len(contexts), on


def write_project(root: Path, provider: str, profile: dict[str, Any]) -> Path:
    (root / "providers").mkdir(parents=True, exist_ok=True)
    (root / "providers" / f"{provider}.yaml").write_text(yaml.safe_dump(profile))
    config = root / "flagwarden.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "provider": provider,
                "fallback": {
                    "snapshot": "file:.flagwarden/snapshot.json",
                    "snapshot_debounce": 0.05,
                },
            }
        )
    )
    return config


def bare_launchdarkly(url: str) -> Callable[[], Any]:
    """The published LaunchDarkly OpenFeature provider against a local server: the baseline."""
    from ld_openfeature import LaunchDarklyProvider
    from ldclient.config import Config

    def build() -> Any:
        config = Config(
            "sdk-bench", base_uri=url, stream_uri=url, events_uri=url, send_events=False
        )
        return LaunchDarklyProvider(config, start_wait=5)

    return build


def alternate(
    bare: Callable[[], Any],
    subject: Callable[[], Any],
    contexts: list[EvaluationContext],
    rounds: int,
    close: Callable[[], None],
) -> tuple[float, float]:
    """Median ns per evaluation: bare OpenFeature with ``bare()``'s provider, then the client
    ``subject()`` returns (``close()`` undoes it), alternating so drift hits both."""
    bare_times, subject_times = [], []
    for _ in range(rounds):
        api.set_provider_and_wait(bare())
        client = api.get_client()
        per_eval_ns(client, contexts[:1000])  # warm up
        ns, bare_on = timed(client, contexts)
        bare_times.append(ns)
        api.clear_providers()
        measured = subject()
        per_eval_ns(measured, contexts[:1000])
        ns, subject_on = timed(measured, contexts)
        subject_times.append(ns)
        close()
        # The row measures the provider's answers, the same on both sides (not defaults).
        assert bare_on == subject_on > 0, (bare_on, subject_on)
    return statistics.median(bare_times), statistics.median(subject_times)


def failover_client(provider: Callable[[], Any]) -> Callable[[], Any]:
    """The failover layer alone (env override, vendor, snapshot, default, source metadata)
    around the same provider: what this bench's claim is about. configure() adds the policy
    and the exposure recording, measured by bench_telemetry."""

    def build() -> Any:
        api.set_provider_and_wait(FailoverProvider(provider(), events=EventSink()))
        return api.get_client()

    return build


def compare(
    label: str,
    bare: Callable[[], Any],
    ours: Callable[[], Any],
    contexts: list[EvaluationContext],
    rounds: int,
) -> tuple[float, float]:
    b, f = alternate(bare, failover_client(ours), contexts, rounds, api.clear_providers)
    print(f"| {label:<12} | {b / 1000:8.1f} | {f / 1000:10.1f} | {f / b:5.2f} |", flush=True)
    return b, f


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evals", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    # The outage half provokes warnings on purpose; keep the tables readable. Here, not at
    # import: a bench importing this module must keep its own logging.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    contexts = [EvaluationContext(targeting_key=f"order-{i}") for i in range(args.evals)]
    work = Path(tempfile.mkdtemp(prefix="flagwarden-bench-"))

    print(f"{args.evals} evaluations x {args.rounds} rounds, medians, µs per evaluation\n")
    print("| source       |  bare OF | flagwarden | ratio |")
    print("|--------------|---------:|-----------:|------:|")

    import os

    os.environ["BENCH_FLAG_NEW_SCORING_MODEL"] = "true"
    env = lambda: EnvProvider("BENCH_FLAG_")  # noqa: E731
    compare("env", env, env, contexts, args.rounds)

    flags = work / "flags.yaml"
    flags.write_text(
        yaml.safe_dump(
            {
                "flags": {
                    FLAG: {
                        "state": "ENABLED",
                        "variants": {"on": True, "off": False},
                        "defaultVariant": "off",
                        "targeting": {"fractional": [["on", 30], ["off", 70]]},
                    }
                }
            }
        )
    )
    flagd = lambda: FileProvider(flags)  # noqa: E731
    compare("file (flagd)", flagd, flagd, contexts, args.rounds)

    ld = LaunchDarklyServer().start()
    ld.set_flag(boolean_flag(FLAG, rollout_percent=30))
    ld_profile = {**ld.profile(), "send_events": False}
    ld_cfg = write_project(work / "ld", "launchdarkly", ld_profile)

    bare_ld = bare_launchdarkly(ld.url)

    ld_source = load_profile(work / "ld" / "providers" / "launchdarkly.yaml")
    ours_ld = lambda: LaunchDarklyVendor(ld_source)  # noqa: E731
    compare("launchdarkly", bare_ld, ours_ld, contexts, args.rounds)

    split = SplitServer().start()
    split.set_split(split_definition(FLAG, on_percent=30))
    split_cfg = write_project(work / "split", "split", split.profile())
    split_profile = load_profile(work / "split" / "providers" / "split.yaml")
    split_vendor = lambda: SplitVendor(split_profile)  # noqa: E731
    compare("split", split_vendor, split_vendor, contexts, args.rounds)

    print("\nVendor down, snapshot on disk (start_wait 0.5 s):\n")
    print(
        "| vendor       | first answer (s) | over start_wait (ms) "
        "| µs/eval from snapshot | ratio to live |"
    )
    print(
        "|--------------|-----------------:|---------------------:"
        "|----------------------:|--------------:|"
    )
    for label, server, cfg, profile in (
        ("launchdarkly", ld, ld_cfg, ld_profile),
        ("split", split, split_cfg, split.profile()),
    ):
        client = flagwarden.configure(cfg)  # vendor up: writes the snapshot
        runtime = flagwarden.current()
        assert runtime is not None and runtime.provider.snapshot_writer is not None
        while runtime.provider.snapshot_writer.writes == 0:
            time.sleep(0.01)
        live = statistics.median(per_eval_ns(client, contexts) for _ in range(args.rounds))
        flagwarden.shutdown()
        server.stop()
        provider = "launchdarkly" if label == "launchdarkly" else "split"
        write_project(cfg.parent, provider, {**profile, "start_wait": 0.5})
        starts, outage = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            client = flagwarden.configure(cfg)
            details = client.get_boolean_details(FLAG, False, contexts[0])
            starts.append(time.perf_counter() - t0)
            assert details.flag_metadata["flagwarden.source"] == "snapshot"
            outage.append(per_eval_ns(client, contexts))
            flagwarden.shutdown()
        first = statistics.median(starts)
        during = statistics.median(outage)
        print(
            f"| {label:<12} | {first:16.3f} | {(first - 0.5) * 1000:20.0f} "
            f"| {during / 1000:21.1f} | {during / live:13.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
