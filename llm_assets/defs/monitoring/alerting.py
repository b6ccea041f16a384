"""A failed run is an alert: a blocking gate (quality, PII, production health) or a step that broke.

The alert names the job, the partition, the failed checks (asset, check) and the run id, so the person on
call opens the right run. A sink that cannot deliver is logged by the sensor, never raised: the failure it
reports is already in the run history.
"""

import dagster as dg

from llm_assets.monitoring.alerts import Alert, AlertDeliveryError
from llm_assets.resources.alerts import AlertsResource


def failed_checks(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """`asset:check` of every check evaluation in the run that did not pass."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    failed = []
    for record in records:
        event = record.event_log_entry.dagster_event
        evaluation = event.asset_check_evaluation_data if event is not None else None
        if evaluation is not None and not evaluation.passed:
            failed.append(f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}")
    return sorted(set(failed))


def run_failure_alert(context: dg.RunFailureSensorContext) -> Alert:
    run = context.dagster_run
    checks = failed_checks(context.instance, run.run_id)
    partition = run.tags.get("dagster/partition")
    what = f"blocking check(s) failed: {', '.join(checks)}" if checks else "a step failed"
    where = f"{run.job_name}" + (f" [{partition}]" if partition else "")
    return Alert(
        kind="gate_failed" if checks else "run_failed",
        severity="critical",
        summary=f"{where}: {what} (run {run.run_id[:8]})",
        details={
            "run_id": run.run_id,
            "job": run.job_name,
            "partition": partition,
            "failed_checks": checks,
            "message": (context.failure_event.message or "")[:500],
        },
    )


@dg.run_failure_sensor(
    name="run_failure_alerts",
    default_status=dg.DefaultSensorStatus.RUNNING,
    monitor_all_code_locations=False,
    description="Sends an alert for every failed run, naming failed blocking checks (gates, production health).",
)
def run_failure_alerts(context: dg.RunFailureSensorContext, alerts: AlertsResource) -> None:
    alert = run_failure_alert(context)
    try:
        alerts.send(alert)
    except AlertDeliveryError as exc:
        context.log.error(f"alert not delivered: {exc}")
