"""A Celery worker (Redis broker, prefork pool) whose tasks evaluate flags.

    celery -A celery_worker worker --pool prefork --concurrency 2   # from examples/

flagwarden is configured at import, in the parent, before the pool forks; its fork handlers
give every child a working flag client and state watcher, so a `flagwarden kill` issued
after the workers started reaches every task. No Celery signal handlers needed.
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery
from openfeature.evaluation_context import EvaluationContext

import flagwarden

HERE = Path(__file__).resolve().parent
BROKER = os.environ.get("CELERY_BROKER", "redis://127.0.0.1:6379/5")

app = Celery("flagwarden_example", broker=BROKER, backend=BROKER)
app.conf.task_default_queue = os.environ.get("CELERY_QUEUE", "flagwarden-example")
app.conf.worker_hijack_root_logger = False

client = flagwarden.configure(HERE / "flagwarden.yaml")


@app.task
def score_order(order_id: str) -> dict[str, object]:
    details = client.get_boolean_details("new-scoring-model", False, EvaluationContext(order_id))
    return {
        "order_id": order_id,
        "v2": details.value,
        "killed": details.flag_metadata.get("flagwarden.killed"),
        "pid": os.getpid(),
    }
