"""drift_report on committed samples, and the retraining sensor: a shifted language mix asks for a retraining
run of that task (once), an unshifted sample asks for nothing."""

import json
import random
from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from llm_assets.definitions import defs
from llm_assets.defs.monitoring.assets import production_samples
from llm_assets.defs.monitoring.drift import DRIFT_PREFIX, MIN_NEW_LABELLED_ENV, drift_report, retraining_sensor
from llm_assets.defs.training.assets import SFT_PREFIX
from llm_assets.lake import LocalLakeStorage
from llm_assets.monitoring.feedback import FEEDBACK_SFT_KEY
from llm_assets.resources.alerts import AlertsResource
from llm_assets.resources.lake import LocalLakeResource
from llm_assets_tests.test_monitoring.test_drift import GREEK, _banking_prompts

TASK = "banking77_intents"


def _sample_line(day: date, prompt: str) -> str:
    return json.dumps({"ts": f"{day}T10:00:00+00:00", "model": TASK, "prompt": prompt, "response": "lost_card"})


def _materialize_day(lake_root: Path, instance: dg.DagsterInstance, day: date, prompts: list[str]) -> dict:
    storage = LocalLakeStorage(lake_root)
    key = f"serving/samples/{TASK}/{day.isoformat()}/a.jsonl"
    storage.write_bytes(key, ("\n".join(_sample_line(day, p) for p in prompts) + "\n").encode())
    result = dg.materialize(
        [production_samples, drift_report],
        partition_key=day.isoformat(),
        resources={"lake": LocalLakeResource(root=str(lake_root)), "alerts": AlertsResource()},
        instance=instance,
    )
    assert result.success
    return json.loads(storage.read_bytes(f"{DRIFT_PREFIX}/{day.isoformat()}/report.json"))


def test_drift_report_and_sensor(lake_root: Path, instance: dg.DagsterInstance) -> None:
    storage = LocalLakeStorage(lake_root)
    prompts = _banking_prompts()
    random.Random(0).shuffle(prompts)
    prefix = f"{SFT_PREFIX}/{TASK}/v1"
    rows = "".join(json.dumps({"prompt": p, "completion": " x"}) + "\n" for p in prompts[:300])
    storage.write_bytes(f"{prefix}/train.prompt_completion.jsonl", rows.encode())
    storage.write_bytes(f"{SFT_PREFIX}/{TASK}/current.json", json.dumps({"prefix": prefix}).encode())
    lake = LocalLakeResource(root=str(lake_root))

    stable = _materialize_day(lake_root, instance, date(2026, 11, 1), prompts[300:360])
    assert stable["models"][TASK]["verdict"] == "stable", stable
    context = dg.build_sensor_context(instance=instance, resources={"lake": lake}, definitions=defs)
    tick = retraining_sensor.evaluate_tick(context)
    assert tick.run_requests == []

    shifted = _materialize_day(lake_root, instance, date(2026, 11, 2), prompts[360:380] + GREEK * 7)
    assert shifted["models"][TASK]["verdict"] == "drifted"
    context = dg.build_sensor_context(instance=instance, resources={"lake": lake}, definitions=defs, cursor=tick.cursor)
    tick = retraining_sensor.evaluate_tick(context)
    assert len(tick.run_requests) == 1
    request = tick.run_requests[0]
    assert request.partition_key == TASK and request.tags["llm_assets/retrain_reason"] == "drift"
    assert request.tags["llm_assets/evidence"] == f"{DRIFT_PREFIX}/2026-11-02/report.json"
    assert "language mix" in request.tags["llm_assets/drift_reasons"]

    # The same evidence never fires twice.
    context = dg.build_sensor_context(instance=instance, resources={"lake": lake}, definitions=defs, cursor=tick.cursor)
    assert retraining_sensor.evaluate_tick(context).run_requests == []


def test_drift_report_without_enough_samples_gives_no_verdict(lake_root: Path, instance: dg.DagsterInstance) -> None:
    report = _materialize_day(lake_root, instance, date(2026, 11, 3), ["I lost my card"] * 3)
    assert report["models"][TASK]["verdict"] in ("no reference", "too few samples")


def test_sensor_asks_for_retraining_when_labelled_examples_reach_the_threshold(
    lake_root: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "New labelled data > Y": accepted feedback examples per task, counted from the last request."""
    storage = LocalLakeStorage(lake_root)
    lake = LocalLakeResource(root=str(lake_root))
    monkeypatch.setenv(MIN_NEW_LABELLED_ENV, "3")

    def land(count: int) -> None:
        rows = [{"id": f"{i:016x}", "task": TASK, "prompt": f"p{i}", "completion": "lost_card"} for i in range(count)]
        storage.write_bytes(FEEDBACK_SFT_KEY, "".join(json.dumps(r) + "\n" for r in rows).encode())

    def tick(cursor: str | None) -> dg.SensorResult:
        context = dg.build_sensor_context(instance=instance, resources={"lake": lake}, definitions=defs, cursor=cursor)
        return retraining_sensor.evaluate_tick(context)

    first = tick(None)
    assert first.run_requests == []  # no feedback yet
    land(2)
    below = tick(first.cursor)
    assert below.run_requests == []  # 2 < 3
    land(3)
    fired = tick(below.cursor)
    assert [r.partition_key for r in fired.run_requests] == [TASK]
    tags = fired.run_requests[0].tags
    assert tags["llm_assets/retrain_reason"] == "new_labelled_examples"
    assert tags["llm_assets/new_labelled_examples"] == "3" and tags["llm_assets/min_new_labelled"] == "3"
    assert tick(fired.cursor).run_requests == []  # the same examples never fire twice
    land(5)
    assert tick(fired.cursor).run_requests == []  # 2 new since the last request
    monkeypatch.setenv(MIN_NEW_LABELLED_ENV, "many")
    with pytest.raises(Exception, match="not a whole number"):
        tick(fired.cursor)


def test_sensor_reads_the_first_cursor_format(lake_root: Path, instance: dg.DagsterInstance) -> None:
    lake = LocalLakeResource(root=str(lake_root))
    context = dg.build_sensor_context(instance=instance, resources={"lake": lake}, definitions=defs, cursor='["abc"]')
    result = retraining_sensor.evaluate_tick(context)
    assert json.loads(result.cursor or "{}") == {"labelled": {}, "reports": ["abc"]}
