"""``flagwarden demo``: the provider layer's story on the embedded default, public API only.

A synthetic pipeline routes batches of records through ``new-scoring-model``. The flag file
(a copy of the packaged one, in the demo folder) is edited mid-run and picked up without a
restart; an environment override then beats everything; every answer says where it came from.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from importlib import resources
from pathlib import Path

import yaml
from openfeature.evaluation_context import EvaluationContext
from rich.console import Console
from rich.table import Table

import flagwarden
from flagwarden.providers.env import env_var_name

FLAG = "new-scoring-model"
BATCH = 2_000


def _batch(client: object, batch_no: int) -> tuple[Counter[bool], Counter[str]]:
    values: Counter[bool] = Counter()
    sources: Counter[str] = Counter()
    for i in range(BATCH):
        details = client.get_boolean_details(  # type: ignore[attr-defined]
            FLAG, False, EvaluationContext(targeting_key=f"order-{batch_no}-{i}")
        )
        values[details.value] += 1
        sources[str(details.flag_metadata.get("flagwarden.source"))] += 1
    return values, sources


def _set_rollout(flag_file: Path, percent: int) -> None:
    doc = yaml.safe_load(flag_file.read_text())
    doc["flags"][FLAG]["targeting"]["fractional"] = [["on", percent], ["off", 100 - percent]]
    flag_file.write_text(yaml.safe_dump(doc, sort_keys=False))


def run_demo(output: Path, console: Console) -> int:
    output.mkdir(parents=True, exist_ok=True)
    flag_file = output / "flags.yaml"
    shutil.copyfile(str(resources.files("flagwarden") / "defaults" / "flags.yaml"), flag_file)
    providers = output / "providers"
    providers.mkdir(exist_ok=True)
    (providers / "file.yaml").write_text("type: file\npath: ../flags.yaml\npoll_interval: 0.1\n")
    config = output / "flagwarden.yaml"
    config.write_text("provider: file\nproviders_dir: providers\nfallback: {snapshot: null}\n")

    console.rule("[bold]flagwarden demo[/bold]")
    client = flagwarden.configure(config)
    table = Table(title=f"{FLAG}: {BATCH} records per batch")
    for column in ("batch", "what happened", "treatment", "control", "answered by"):
        table.add_column(column)

    def record(batch_no: int, what: str) -> None:
        values, sources = _batch(client, batch_no)
        table.add_row(
            str(batch_no),
            what,
            str(values[True]),
            str(values[False]),
            ", ".join(f"{s}={n}" for s, n in sources.items()),
        )

    try:
        record(1, "flag file: 25% rollout")
        _set_rollout(flag_file, 50)
        time.sleep(0.5)  # the file provider polls every 0.1 s here
        record(2, "flag file edited to 50%, no restart")
        variable = env_var_name("FLAGWARDEN_FLAG_", FLAG)
        os.environ[variable] = "false"
        try:
            record(3, f"{variable}=false overrides everything")
        finally:
            del os.environ[variable]
        record(4, "override removed")
    finally:
        flagwarden.shutdown()
    console.print(table)
    console.print(f"Demo files are in [bold]{output}[/bold].")
    return 0
