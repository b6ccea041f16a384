"""raw_corpus and the landing sensor through Dagster's own helpers, on a temporary lake and instance."""

from __future__ import annotations

import gzip
import json

import dagster as dg
import pytest

from llm_assets.audit import AuditLog
from llm_assets.definitions import defs
from llm_assets.defs.ingestion.assets import RAW_CORPUS, RAW_CORPUS_REJECTS, raw_corpus
from llm_assets.defs.ingestion.sensors import landing_sensor
from llm_assets.lake import LocalLakeStorage, read_dataset, read_manifest
from llm_assets.resources.lake import LocalLakeResource

DESCRIPTOR = (
    "name: {name}\nlicence: CC-BY-4.0\njurisdiction: GR\nsource_uri: https://example.org/{name}\nlanguage: el\n"
)


def land(storage: LocalLakeStorage, name: str, files: dict[str, bytes]) -> None:
    storage.write_bytes(f"landing/{name}/source.yaml", DESCRIPTOR.format(name=name).encode())
    for rel, data in files.items():
        storage.write_bytes(f"landing/{name}/{rel}", data)


def mixed_files() -> dict[str, bytes]:
    good = [json.dumps({"text": f"Έγγραφο αριθμός {i}", "lang": "el"}, ensure_ascii=False) for i in range(5)]
    lines = [*good[:3], "{not json", json.dumps({"title": "no text"}), *good[3:]]
    return {
        "docs.jsonl": ("\n".join(lines) + "\n").encode(),
        "more.jsonl.gz": gzip.compress(b'{"text": "Second file"}\n'),
        "notes/readme.md": "# Σημείωση\n\nΚείμενο σε markdown.".encode(),
        "broken.txt": b"\xff\xfe bad bytes \xc3\x28",
        "empty.jsonl": b"",
        "table.xlsx": b"PK\x03\x04 not supported",
    }


def materialize(instance: dg.DagsterInstance, lake: LocalLakeResource, source: str) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions("sources", [source])
    return dg.materialize(
        [raw_corpus], partition_key=source, resources={"lake": lake}, instance=instance, raise_on_error=False
    )


def test_raw_corpus_keeps_or_rejects_every_input(instance, lake, storage) -> None:  # type: ignore[no-untyped-def]
    land(storage, "gazette", mixed_files())
    result = materialize(instance, lake, "gazette")
    assert result.success
    records = read_dataset(storage, read_manifest(storage, RAW_CORPUS, "gazette"))
    rejects = read_dataset(storage, read_manifest(storage, RAW_CORPUS_REJECTS, "gazette"))
    assert records.num_rows == 7  # 5 good JSONL lines + 1 gzip line + 1 markdown file
    assert sorted(rejects.column("rule").to_pylist()) == sorted(
        ["malformed_json", "missing_text", "bad_utf8", "empty_file", "unsupported_type"]
    )
    assert set(rejects.column("stage").to_pylist()) == {"ingest"}
    assert all(records.column("licence").to_pylist()[i] == "CC-BY-4.0" for i in range(records.num_rows))
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations == {"counts_reconcile": True, "ids_unique": True}
    mat = result.asset_materializations_for_node("raw_corpus")[0]
    assert mat.metadata["units"].value == 12
    assert mat.metadata["records"].value == 7 and mat.metadata["rejects"].value == 5


def test_raw_corpus_writes_audit_records_and_stable_data_version(instance, lake, storage) -> None:  # type: ignore[no-untyped-def]
    land(storage, "gazette", mixed_files())
    first = materialize(instance, lake, "gazette")
    second = dg.materialize([raw_corpus], partition_key="gazette", resources={"lake": lake}, instance=instance)
    version = lambda r: r.asset_materializations_for_node("raw_corpus")[0].tags["dagster/data_version"]  # noqa: E731
    assert version(first) == version(second)
    log = AuditLog(storage)
    events = [r["event"] for r in log.records()]
    assert events.count("materialization") == 2 and events.count("check") == 4
    mat = next(r for r in log.records() if r["event"] == "materialization")
    assert mat["asset_key"] == "raw_corpus" and mat["partition"] == "gazette"
    assert mat["run_id"] == first.run_id and mat["code_version"] == "raw_corpus-v2"
    assert mat["input_data_versions"]["landing/gazette"]
    assert mat["counts"] == {"files": 6, "units": 12, "records": 7, "rejects": 5}
    assert mat["who"]["user"]
    assert log.verify().ok

    storage.write_bytes("landing/gazette/docs.jsonl", b'{"text": "changed"}\n')
    third = materialize(instance, lake, "gazette")
    assert version(third) != version(first)


def test_raw_corpus_fails_clearly_for_a_partition_without_landing_folder(instance, lake) -> None:  # type: ignore[no-untyped-def]
    result = materialize(instance, lake, "ghost")
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "has no folder under" in failure.step_failure_data.error.message


def evaluate(context: dg.SensorEvaluationContext, instance: dg.DagsterInstance):  # type: ignore[no-untyped-def]
    return landing_sensor.evaluate_tick(context)


def test_landing_sensor_registers_sources_and_requests_runs(instance, lake, storage) -> None:  # type: ignore[no-untyped-def]
    land(storage, "gazette", {"a.jsonl": b'{"text": "x"}\n'})
    storage.write_bytes("landing/nameless/a.jsonl", b'{"text": "x"}\n')  # no descriptor: skipped, not fatal
    with dg.build_sensor_context(
        instance=instance, instance_ref=instance.get_ref(), resources={"lake": lake}, definitions=defs
    ) as context:
        tick = evaluate(context, instance)
    assert [r.partition_key for r in tick.run_requests] == ["gazette"]
    assert tick.dynamic_partitions_requests[0].partition_keys == ["gazette"]

    instance.add_dynamic_partitions("sources", ["gazette"])
    with dg.build_sensor_context(
        instance=instance,
        instance_ref=instance.get_ref(),
        resources={"lake": lake},
        cursor=tick.cursor,
        definitions=defs,
    ) as context:
        quiet = evaluate(context, instance)
    assert quiet.run_requests == [] and not quiet.dynamic_partitions_requests

    land(storage, "laws", {"b.txt": "Νόμος".encode()})
    storage.write_bytes("landing/gazette/a.jsonl", b'{"text": "changed"}\n')
    with dg.build_sensor_context(
        instance=instance,
        instance_ref=instance.get_ref(),
        resources={"lake": lake},
        cursor=quiet.cursor,
        definitions=defs,
    ) as context:
        again = evaluate(context, instance)
    assert sorted(r.partition_key for r in again.run_requests) == ["gazette", "laws"]
    assert again.dynamic_partitions_requests[0].partition_keys == ["laws"]


@pytest.mark.parametrize("bad", ["name: Bad Name!\n", "name: x\n"])
def test_landing_sensor_skips_bad_descriptors(instance, lake, storage, bad) -> None:  # type: ignore[no-untyped-def]
    storage.write_bytes("landing/x/source.yaml", bad.encode())
    with dg.build_sensor_context(
        instance=instance, instance_ref=instance.get_ref(), resources={"lake": lake}, definitions=defs
    ) as context:
        tick = evaluate(context, instance)
    assert tick.run_requests == []
