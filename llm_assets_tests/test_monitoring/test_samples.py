"""Production samples: collection with rejects and a re-scrub, and audited retention under a frozen clock."""

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from llm_assets.audit import AuditLog
from llm_assets.curation.pii.policy import load_policy
from llm_assets.defs.monitoring.assets import (
    delete_expired_samples,
    production_samples,
    sample_retention,
    sample_retention_schedule,
)
from llm_assets.lake import LocalLakeStorage
from llm_assets.lake.shards import read_dataset, read_manifest, write_table
from llm_assets.monitoring.samples import (
    PRODUCTION_SAMPLES_DATASET,
    PRODUCTION_SAMPLES_REJECTS,
    collect_day,
    enforce_retention,
    expired_days,
    raw_sample_days,
)
from llm_assets.resources.lake import LocalLakeResource
from llm_assets.serving.gateway import SampleRecorder

DAY = date(2026, 11, 2)


def _line(prompt: str, response: str = "ok", **extra: object) -> dict[str, object]:
    return {"ts": f"{DAY}T10:00:00+00:00", "model": "banking77_intents", "route": "/v1/completions",
            "prompt": prompt, "response": response, "pii_policy": "eu-gdpr@1", "e2e_s": 0.2, "output_tokens": 3,
            **extra}  # fmt: skip


def _write(storage: LocalLakeStorage, model: str, day: date, name: str, lines: list[bytes]) -> str:
    key = f"serving/samples/{model}/{day.isoformat()}/{name}.jsonl"
    storage.write_bytes(key, b"\n".join(lines) + b"\n")
    return key


def test_collect_day_rescrubs_and_rejects_every_unusable_line(storage: LocalLakeStorage) -> None:
    good = json.dumps(_line("Card lost, write to ana@example.org or call +30 210 1234567")).encode()
    clean = json.dumps(_line("What is the exchange rate?")).encode()
    key = _write(
        storage,
        "banking77_intents",
        DAY,
        "a",
        [good, b"{not json", b"\xff\xfe bad bytes", json.dumps({"ts": "x", "model": "m"}).encode(), b"[1, 2]", clean],
    )
    _write(storage, "banking77_intents", DAY + timedelta(days=1), "b", [clean])  # another day: not collected
    samples = collect_day(storage, DAY, load_policy("eu-gdpr"))
    assert samples.lines == 6 and samples.kept.num_rows == 2 and samples.rejects.num_rows == 4
    rows = samples.kept.to_pylist()
    assert "ana@example.org" not in rows[0]["prompt"] and "[EMAIL]" in rows[0]["prompt"]
    assert "1234567" not in rows[0]["prompt"] and rows[0]["residual_pii"] >= 2
    assert rows[1]["residual_pii"] == 0 and rows[1]["prompt"] == "What is the exchange rate?"
    assert rows[0]["id"] == f"{key}:1" and rows[0]["expires"] == (DAY + timedelta(days=30)).isoformat()
    rejects = samples.rejects.to_pylist()
    assert [r["rule"] for r in rejects] == ["json", "utf8", "schema", "json"]
    assert [r["locator"] for r in rejects] == ["line 2", "line 3", "line 4", "line 5"]
    assert all(r["excerpt"] is None and r["stage"] == "production_samples" for r in rejects)
    assert samples.stats()["residual_pii_by_kind"]["email"] == 1


def test_gateway_samples_round_trip(storage: LocalLakeStorage) -> None:
    now = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    recorder = SampleRecorder(storage, rate=1.0, seed=0, clock=lambda: now)
    recorder.record("civics_qa", "/v1/completions", {"prompt": "My IBAN is GB82 WEST 1234 5698 7654 32"}, "Noted.")
    recorder.record("civics_qa", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}, "Hello")
    recorder.flush()
    samples = collect_day(storage, DAY, load_policy("eu-gdpr"))
    assert samples.kept.num_rows == 2 and samples.rejects.num_rows == 0
    assert samples.kept.column("residual_pii").to_pylist() == [0, 0]  # the gateway redacted before writing
    assert "[IBAN]" in samples.kept.column("prompt").to_pylist()[0]


def test_expired_days_keeps_the_boundary_day() -> None:
    today = date(2026, 12, 2)
    days = [today - timedelta(days=n) for n in (0, 29, 30, 31, 45)]
    assert expired_days(days, today, 30) == [today - timedelta(days=45), today - timedelta(days=31)]
    with pytest.raises(ValueError, match="at least 1"):
        expired_days(days, today, 0)


def test_retention_deletes_old_days_and_audits_without_content(storage: LocalLakeStorage) -> None:
    old, recent = date(2026, 10, 1), date(2026, 11, 20)
    for day in (old, recent):
        _write(storage, "banking77_intents", day, "a", [json.dumps(_line("secret question")).encode()])
        samples = collect_day(storage, day, load_policy("eu-gdpr"))
        write_table(storage, PRODUCTION_SAMPLES_DATASET, day.isoformat(), samples.kept)
        write_table(storage, PRODUCTION_SAMPLES_REJECTS, day.isoformat(), samples.rejects)
    frozen_today = date(2026, 11, 23)  # `old` is 53 days old, `recent` 3
    records = enforce_retention(storage, frozen_today, retention_days=30)
    assert [r["day"] for r in records] == [old.isoformat()]
    # The raw file, the kept shard and its manifest, the (empty) rejects' manifest.
    assert records[0]["event"] == "retention_delete" and records[0]["objects_deleted"] == 4
    assert raw_sample_days(storage) == [recent]
    assert read_manifest(storage, PRODUCTION_SAMPLES_DATASET, old.isoformat()) is None
    assert read_manifest(storage, PRODUCTION_SAMPLES_DATASET, recent.isoformat()) is not None
    trail = AuditLog(storage)
    assert trail.verify().ok
    assert "secret question" not in json.dumps(trail.records())
    assert enforce_retention(storage, frozen_today, retention_days=30) == []  # nothing left to delete


def test_production_samples_asset_commits_with_blocking_checks(lake_root: Path, instance: dg.DagsterInstance) -> None:
    storage = LocalLakeStorage(lake_root)
    _write(
        storage,
        "banking77_intents",
        DAY,
        "a",
        [json.dumps(_line("mail me at bo@example.com")).encode(), b"{broken", json.dumps(_line("hello")).encode()],
    )
    result = dg.materialize(
        [production_samples], partition_key=DAY.isoformat(), resources={"lake": LocalLakeResource(root=str(lake_root))},
        instance=instance,
    )  # fmt: skip
    assert result.success
    meta = result.asset_materializations_for_node("production_samples")[0].metadata
    assert meta["lines"].value == 3 and meta["kept"].value == 2 and meta["rejected"].value == 1
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"counts_reconcile": True, "no_structured_pii_left": True}
    manifest = read_manifest(storage, PRODUCTION_SAMPLES_DATASET, DAY.isoformat())
    assert manifest is not None
    assert "bo@example.com" not in json.dumps(read_dataset(storage, manifest).to_pylist())


def test_retention_job_and_schedule(lake_root: Path, instance: dg.DagsterInstance) -> None:
    storage = LocalLakeStorage(lake_root)
    _write(storage, "civics_qa", date(2026, 1, 5), "a", [json.dumps(_line("old")).encode()])
    result = sample_retention.execute_in_process(
        run_config={"ops": {delete_expired_samples.name: {"config": {"today": "2026-03-01"}}}},
        resources={"lake": LocalLakeResource(root=str(lake_root))},
        instance=instance,
    )
    assert result.success and raw_sample_days(storage) == []
    assert AuditLog(storage).records()[-1]["day"] == "2026-01-05"
    assert sample_retention_schedule.cron_schedule == "15 3 * * *"
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 3, 1, 3, 15, tzinfo=UTC))
    assert isinstance(sample_retention_schedule.evaluate_tick(context).run_requests, list)
