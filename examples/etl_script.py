"""A plain Python ETL job: route each order of a DataFrame through scorer v1 or v2.

    python examples/etl_script.py [ROWS]

The flag file turns model v2 on for the run; the policy's stage decides which orders get it
(``flagwarden.assign``: one vendor answer per batch, bucketing per record). The job reports
each variant's null rate, which the policy's guard watches (``flagwarden watch``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from openfeature.evaluation_context import EvaluationContext

import flagwarden

HERE = Path(__file__).resolve().parent


def main(rows: int = 50_000) -> dict[str, object]:
    flagwarden.configure(HERE / "flagwarden.yaml")
    try:
        rng = np.random.default_rng(7)
        orders = pd.DataFrame(
            {
                "order_id": [f"order-{i:06d}" for i in range(rows)],
                "amount": rng.gamma(2.0, 40.0, rows),
            }
        )
        run = EvaluationContext(attributes={"job": "orders-etl"})
        orders["v2"] = flagwarden.assign(
            "new-scoring-model", orders["order_id"], False, context=run
        )
        orders["score"] = np.where(orders["v2"], orders["amount"] * 0.012, orders["amount"] * 0.01)
        summary: dict[str, object] = {}
        for variant, part in (
            ("treatment", orders[orders["v2"]]),
            ("control", orders[~orders["v2"]]),
        ):
            if len(part):
                null_rate = float(part["score"].isna().mean())
                flagwarden.record_metric(
                    "new-scoring-model", "null_rate", null_rate, variant=variant, count=len(part)
                )
                summary[variant] = {"rows": len(part), "null_rate": null_rate}
        return summary
    finally:
        flagwarden.shutdown()


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)))
