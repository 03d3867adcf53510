"""A pipeline process for the telemetry tests.

python -m tests.telemetry.pipeline CONFIG MODE [N]
  count N:  evaluate N records, print the values served by variant as JSON, then wait for
            stdin to close (so Prometheus can scrape the /metrics endpoint), then shut down.
  batch N:  evaluate N records and shut down (a batch run: metrics go to the Pushgateway).
  serve:    evaluate 200 units in a loop and report a null rate for the treatment (bad once
            the file BAD exists beside CONFIG); print "control" when every unit gets control.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

from openfeature.evaluation_context import EvaluationContext

import flagwarden

FLAG = "new-scoring-model"


def main() -> None:
    config, mode = Path(sys.argv[1]), sys.argv[2]
    client = flagwarden.configure(config)
    if mode in ("count", "batch"):
        n = int(sys.argv[3])
        served = Counter(
            client.get_boolean_details(FLAG, False, EvaluationContext(f"order-{i % 50}")).variant
            for i in range(n)
        )
        print(json.dumps(dict(served)), flush=True)
        if mode == "count":
            sys.stdin.read()
        flagwarden.shutdown()
        return
    contexts = [EvaluationContext(f"unit-{i}") for i in range(200)]
    print("serving", flush=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        treated = sum(client.get_boolean_value(FLAG, False, c) for c in contexts)
        null_rate = 0.3 if (config.parent / "BAD").exists() else 0.001
        flagwarden.record_metric(FLAG, "null_rate", null_rate, variant="treatment", count=treated)
        if treated == 0:
            print("control", flush=True)
            break
        time.sleep(0.2)
    flagwarden.shutdown()


if __name__ == "__main__":
    main()
