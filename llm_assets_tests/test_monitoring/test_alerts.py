"""Alerts: log and webhook sinks, one-line delivery errors, and the run-failure sensor naming failed gates."""

import json
import logging

import dagster as dg
import httpx
import pytest

from llm_assets.defs.monitoring.alerting import run_failure_alert, run_failure_alerts
from llm_assets.monitoring.alerts import Alert, AlertDeliveryError, LogAlertSink, WebhookAlertSink
from llm_assets.resources.alerts import AlertsResource

ALERT = Alert("gate_failed", "critical", "eval_report [civics_qa]: business_score failed", {"run_id": "abc"})


def test_log_sink_writes_an_error_record(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="llm_assets.alerts"):
        LogAlertSink().send(ALERT)
    assert caplog.records[-1].levelno == logging.ERROR and "business_score failed" in caplog.records[-1].getMessage()


def test_webhook_sink_posts_json_and_fails_in_one_line_without_the_secret() -> None:
    seen: list[dict[str, object]] = []

    def accept(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200)

    url = "https://hooks.example.org/services/T000/SECRET-TOKEN"
    WebhookAlertSink(url, transport=httpx.MockTransport(accept)).send(ALERT)
    assert seen[0]["text"] == "[CRITICAL] eval_report [civics_qa]: business_score failed"
    assert seen[0]["details"] == {"run_id": "abc"}

    refused = WebhookAlertSink(url, transport=httpx.MockTransport(lambda r: httpx.Response(403)))
    with pytest.raises(AlertDeliveryError) as denied:
        refused.send(ALERT)
    assert "HTTP 403" in str(denied.value) and "SECRET" not in str(denied.value) and "\n" not in str(denied.value)

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(AlertDeliveryError, match="unreachable"):
        WebhookAlertSink(url, transport=httpx.MockTransport(unreachable)).send(ALERT)


def test_resource_reads_the_webhook_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLM_ASSETS_ALERT_WEBHOOK_URL", raising=False)
    with pytest.raises(AlertDeliveryError, match=r"\$LLM_ASSETS_ALERT_WEBHOOK_URL is empty"):
        AlertsResource(backend="webhook").sink()
    monkeypatch.setenv("LLM_ASSETS_ALERT_WEBHOOK_URL", "https://hooks.example.org/x")
    assert isinstance(AlertsResource(backend="webhook").sink(), WebhookAlertSink)
    assert isinstance(AlertsResource().sink(), LogAlertSink)


@dg.asset(check_specs=[dg.AssetCheckSpec("within_slo", asset="served", blocking=True)])
def served() -> dg.MaterializeResult:
    return dg.MaterializeResult(check_results=[dg.AssetCheckResult(check_name="within_slo", passed=False)])


@dg.asset(deps=[served])
def downstream() -> None:
    return None


def test_failure_sensor_names_the_failed_blocking_check(caplog: pytest.LogCaptureFixture) -> None:
    instance = dg.DagsterInstance.ephemeral()
    job = dg.define_asset_job("health", selection=[served, downstream])
    defs = dg.Definitions(assets=[served, downstream], jobs=[job])
    result = defs.resolve_job_def("health").execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    failure = result.get_run_failure_event()
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_alerts",
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
    ).for_run_failure()
    alert = run_failure_alert(context)
    assert alert.kind == "gate_failed" and alert.details["failed_checks"] == ["served:within_slo"]
    assert alert.summary.startswith("health: blocking check(s) failed: served:within_slo")
    with caplog.at_level(logging.WARNING, logger="llm_assets.alerts"):
        run_failure_alerts(context, alerts=AlertsResource())
    assert any("served:within_slo" in r.getMessage() for r in caplog.records)
