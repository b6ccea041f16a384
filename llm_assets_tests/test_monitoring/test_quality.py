"""Output-quality drift wiring: the verdict rule, the monthly schedule (only deployed tasks), and the retraining
sensor acting on a drifted quality report like on a prompt-drift report."""

import json
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from llm_assets.definitions import defs
from llm_assets.defs.monitoring.drift import retraining_sensor
from llm_assets.defs.monitoring.quality import (
    QUALITY_PREFIX,
    DeployedModelEvalConfig,
    deployed_model_eval_monthly,
    labelled_production_rows,
    quality_verdict,
)
from llm_assets.lake import LocalLakeStorage
from llm_assets.monitoring.feedback import FEEDBACK_SFT_KEY
from llm_assets.registry import ModelRegistry
from llm_assets.resources.lake import LocalLakeResource

TASK = "banking77_intents"
TICK = datetime(2026, 12, 1, 4, 0, tzinfo=UTC)
REPO = defs.get_repository_def()


def test_quality_verdict_needs_labels_and_a_real_drop() -> None:
    config = DeployedModelEvalConfig(max_drop=0.1, min_labelled=10)
    assert quality_verdict(0.8, 0.75, 20, config) == ("stable", [])
    verdict, reasons = quality_verdict(0.8, 0.6, 20, config)
    assert verdict == "drifted" and "0.200 below 0.800" in reasons[0]
    assert quality_verdict(0.8, 0.0, 9, config)[0] == "too few labels"
    assert quality_verdict(0.8, None, 0, config)[0] == "too few labels"
    assert quality_verdict(None, 0.1, 50, config)[0] == "no registered score"


def test_labelled_rows_come_from_the_tasks_accepted_feedback(tmp_path: Path) -> None:
    storage = LocalLakeStorage(tmp_path)
    assert labelled_production_rows(storage, TASK, 10) == []
    rows = [
        {"id": "a", "task": TASK, "prompt": "p1", "completion": "lost_card"},
        {"id": "b", "task": "civics_qa", "prompt": "p2", "completion": "Jefferson"},
        {"id": "c", "task": TASK, "prompt": "p3", "completion": " top_up"},
    ]
    storage.write_bytes(FEEDBACK_SFT_KEY, "".join(json.dumps(r) + "\n" for r in rows).encode())
    got = labelled_production_rows(storage, TASK, 10)
    assert [(r["id"], r["completion"]) for r in got] == [("a", " lost_card"), ("c", " top_up")]
    assert [r["id"] for r in labelled_production_rows(storage, TASK, 1)] == ["c"]  # the newest


def test_monthly_schedule_asks_only_for_deployed_tasks(lake_root: Path, instance: dg.DagsterInstance) -> None:
    lake = LocalLakeResource(root=str(lake_root))
    context = dg.build_schedule_context(
        instance=instance, resources={"lake": lake}, scheduled_execution_time=TICK, repository_def=REPO
    )
    skipped = deployed_model_eval_monthly.evaluate_tick(context)
    assert not skipped.run_requests and "no task has a deployed version" in (skipped.skip_message or "")
    registry = ModelRegistry(LocalLakeStorage(lake_root))
    gates = {"business_score": {"blocking": True, "passed": True}}
    registry.register(TASK, "v" * 64, eval_metrics={"task": {"exact_match": 0.9}}, gates=gates, lineage={},
                      registered_by="test")  # fmt: skip
    registry.approve(TASK, "v" * 64, by="ana", reason="test")
    registry.deploy(TASK, "v" * 64, by="ana", endpoint="http://127.0.0.1:8000/v1")
    context = dg.build_schedule_context(
        instance=instance, resources={"lake": lake}, scheduled_execution_time=TICK, repository_def=REPO
    )
    fired = deployed_model_eval_monthly.evaluate_tick(context)
    assert [(r.partition_key, r.run_key) for r in fired.run_requests or []] == [(TASK, f"monthly-eval-2026-12-{TASK}")]


def test_a_drifted_quality_report_asks_for_retraining(lake_root: Path, instance: dg.DagsterInstance) -> None:
    storage = LocalLakeStorage(lake_root)
    report = {
        "day": "2026-12-01",
        "reason": "output_quality_drift",
        "models": {TASK: {"verdict": "drifted", "reasons": ["on 40 labelled production prompts the score is 0.5"]}},
    }
    key = f"{QUALITY_PREFIX}/{TASK}/2026-12-01/report.json"
    storage.write_bytes(key, json.dumps(report).encode())
    lake = LocalLakeResource(root=str(lake_root))
    context = dg.build_sensor_context(instance=instance, resources={"lake": lake}, definitions=defs)
    tick = retraining_sensor.evaluate_tick(context)
    assert [r.partition_key for r in tick.run_requests] == [TASK]
    tags = tick.run_requests[0].tags
    assert tags["llm_assets/retrain_reason"] == "output_quality_drift" and tags["llm_assets/evidence"] == key
