"""One local Spark session (local[2], up to 3 attempts per task) for the Spark tests, which all
run on one pytest-xdist worker (``xdist_group("spark")``): a session costs ~7 s and ~1 GB."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    with warnings.catch_warnings():
        # pyspark 4.3 warns that pandas 3 is not fully supported; flagwarden's UDFs use Arrow.
        warnings.simplefilter("ignore", FutureWarning)
        from pyspark.sql import SparkSession

        session = (
            SparkSession.builder.master("local[2,3]")
            .appName("flagwarden-tests")
            .config("spark.ui.enabled", "false")
            .config("spark.sql.shuffle.partitions", "4")
            .config("spark.driver.memory", "1g")
            .getOrCreate()
        )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
