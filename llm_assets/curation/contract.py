"""The schema/value contract of `curated_corpus`, as a great-expectations suite run shard by shard.

An ephemeral GX context validates each shard as a pandas frame (GX has no polars source), so memory
stays bounded by shard size and no GX project files are needed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

SPLITS = ["train", "dev", "test"]


@dataclass
class ContractResult:
    success: bool
    shards: int
    expectations: int
    failures: list[dict[str, Any]] = field(default_factory=list)


def _suite(gx: Any) -> Any:
    expectations = gx.expectations
    suite = gx.ExpectationSuite(name="curated_corpus_contract")
    for column in ["id", "text", "source", "licence", "jurisdiction", "lang", "domain", "split"]:
        suite.add_expectation(expectations.ExpectColumnToExist(column=column))
        suite.add_expectation(expectations.ExpectColumnValuesToNotBeNull(column=column))
    suite.add_expectation(expectations.ExpectColumnValuesToBeUnique(column="id"))
    suite.add_expectation(expectations.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1))
    suite.add_expectation(expectations.ExpectColumnValuesToBeInSet(column="split", value_set=SPLITS))
    suite.add_expectation(expectations.ExpectColumnValuesToBeBetween(column="lang_score", min_value=0, max_value=1))
    suite.add_expectation(expectations.ExpectColumnValuesToBeBetween(column="perplexity", min_value=0, mostly=1.0))
    return suite


def validate_curated_shards(shards: Iterable[pa.Table]) -> ContractResult:
    """Runs the suite over every shard; ids must also be unique across shards (checked here, not by GX)."""
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch_definition = (
        context.data_sources.add_pandas("curated")
        .add_dataframe_asset("curated_corpus")
        .add_batch_definition_whole_dataframe("shard")
    )
    suite = context.suites.add(_suite(gx))
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(data=batch_definition, suite=suite, name="curated_corpus_contract")
    )
    result = ContractResult(success=True, shards=0, expectations=len(suite.expectations))
    seen_ids: set[str] = set()
    for number, shard in enumerate(shards):
        result.shards += 1
        outcome = validation.run(batch_parameters={"dataframe": shard.to_pandas()})
        for item in outcome.results:
            if not item.success:
                config = item.expectation_config
                result.failures.append(
                    {
                        "shard": number,
                        "expectation": config.type if config else "unknown",
                        "column": config.kwargs.get("column") if config else None,
                        "unexpected_count": (item.result or {}).get("unexpected_count"),
                    }
                )
        ids = shard.column("id").to_pylist()
        duplicates = seen_ids.intersection(ids)
        if duplicates:
            result.failures.append(
                {"shard": number, "expectation": "ids_unique_across_shards", "unexpected_count": len(duplicates)}
            )
        seen_ids.update(ids)
    result.success = not result.failures
    return result
