"""A pipeline worker for propagation tests and the kill benchmark.

python -m tests.governance.worker CONFIG: evaluates the governed flag for 200 units in a
loop; prints "ready" once every unit gets the treatment, then "control <unix time>" when
every unit is back on control, and exits. :func:`spawn` starts some.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from openfeature.evaluation_context import EvaluationContext

import flagwarden

FLAG = "new-scoring-model"
ROOT = Path(__file__).resolve().parents[2]


def spawn(config: Path, n: int) -> list[subprocess.Popen[str]]:
    """``n`` worker processes for ``config``, their stdout a pipe to read the lines above."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "tests.governance.worker", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for _ in range(n)
    ]


def main() -> None:
    client = flagwarden.configure(sys.argv[1])
    contexts = [EvaluationContext(f"unit-{i}") for i in range(200)]

    def treated() -> int:
        return sum(client.get_boolean_value(FLAG, False, ctx) for ctx in contexts)

    deadline = time.monotonic() + 60
    while treated() < len(contexts):
        if time.monotonic() > deadline:
            print("never-ready", flush=True)
            return
        time.sleep(0.01)
    print("ready", flush=True)
    while treated() > 0:
        if time.monotonic() > deadline + 60:
            print("never-control", flush=True)
            return
    print(f"control {time.time():.6f}", flush=True)
    flagwarden.shutdown()


if __name__ == "__main__":
    main()
