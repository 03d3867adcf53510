"""A Prefect 3 flow with a flag per component: validation, transformation, enrichment.

    python examples/prefect_flow.py [ROWS]

Runs locally: Prefect starts its own temporary API for the run, no server or account needed.
Each task asks flagwarden for its own flag, so each component can be rolled out (or killed)
on its own, without a deploy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from openfeature.evaluation_context import EvaluationContext
from prefect import flow, task

import flagwarden

HERE = Path(__file__).resolve().parent
RUN = EvaluationContext(attributes={"flow": "orders"})


@task
def validate(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    client = flagwarden.current().client  # type: ignore[union-attr]
    strict = client.get_boolean_value("validation-strict", False, RUN)
    return [r for r in rows if not strict or float(r["amount"]) > 0]  # type: ignore[arg-type]


@task
def transform(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    v2 = flagwarden.assign("transform-v2", [r["order_id"] for r in rows], False, context=RUN)
    return [
        {**r, "normalised": round(float(r["amount"]) / 100, 4 if use_v2 else 2), "v2": use_v2}  # type: ignore[arg-type]
        for r, use_v2 in zip(rows, v2, strict=True)
    ]


@task
def enrich(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    client = flagwarden.current().client  # type: ignore[union-attr]
    source = client.get_string_value("enrichment-source", "geo-v1", RUN)
    return [{**r, "geo_source": source} for r in rows]


@flow(name="orders-with-flags")
def orders_flow(n: int = 1000) -> dict[str, object]:
    flagwarden.configure(HERE / "flagwarden.yaml")
    try:
        rows = [{"order_id": f"order-{i:05d}", "amount": (i % 97) - 3} for i in range(n)]
        done = enrich(transform(validate(rows)))
        return {
            "rows": len(done),
            "v2": sum(1 for r in done if r["v2"]),
            "geo_source": sorted({str(r["geo_source"]) for r in done}),
        }
    finally:
        flagwarden.shutdown()


if __name__ == "__main__":
    print(json.dumps(orders_flow(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)))
