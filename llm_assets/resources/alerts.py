"""Alerts as a Dagster resource: `log` (default) or `webhook`, the URL read from an environment variable."""

from __future__ import annotations

import os
from typing import Literal

import dagster as dg
from pydantic import Field

from llm_assets.monitoring.alerts import Alert, AlertDeliveryError, AlertSink, LogAlertSink, WebhookAlertSink


class AlertsResource(dg.ConfigurableResource):
    """Where alerts go. The webhook URL usually embeds a token, so config names the variable, not the URL."""

    backend: Literal["log", "webhook"] = Field(default="log", description="log: the run/daemon log; webhook: POST.")
    webhook_url_env: str = Field(
        default="LLM_ASSETS_ALERT_WEBHOOK_URL", description="Environment variable holding the webhook URL."
    )
    timeout_s: float = Field(default=10.0, gt=0)

    def sink(self) -> AlertSink:
        if self.backend == "log":
            return LogAlertSink()
        url = os.environ.get(self.webhook_url_env, "")
        if not url:
            raise AlertDeliveryError(
                f"alerts backend is webhook but ${self.webhook_url_env} is empty; set it to the webhook URL"
            )
        return WebhookAlertSink(url, timeout_s=self.timeout_s)

    def send(self, alert: Alert) -> None:
        self.sink().send(alert)
