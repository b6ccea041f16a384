"""Alerts for people on call: drift, failed quality gates, failed production health.

Two sinks: the log (the embedded default) and a webhook (Slack/Teams/Mattermost-style JSON POST; its URL
usually embeds a token, so it comes from the environment, never from config). A sink that cannot deliver
raises `AlertDeliveryError` with one line naming the sink and what to do; callers decide whether that stops
anything (the run-failure sensor logs it and goes on: a broken webhook must not hide the failure itself).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import httpx

from llm_assets.compliance.residency import note_egress

Severity = Literal["info", "warning", "critical"]

_log = logging.getLogger("llm_assets.alerts")


class AlertDeliveryError(RuntimeError):
    """The alert did not reach its sink; the message is one line with the fix."""


@dataclass(frozen=True)
class Alert:
    """One alert: `kind` says what tripped (e.g. `gate_failed`, `run_failed`, `drift`), `details` carry ids."""

    kind: str
    severity: Severity
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        # `text` is what chat webhooks display; the structured fields are for machines.
        return {"text": f"[{self.severity.upper()}] {self.summary}", **asdict(self)}


class AlertSink(Protocol):
    def send(self, alert: Alert) -> None: ...


class LogAlertSink:
    """Alerts as log records (warning or error level), e.g. for the embedded default."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or _log

    def send(self, alert: Alert) -> None:
        level = logging.ERROR if alert.severity == "critical" else logging.WARNING
        self.logger.log(level, "ALERT %s %s: %s %s", alert.severity, alert.kind, alert.summary, alert.details)


class WebhookAlertSink:
    """Alerts POSTed as JSON to a webhook; any non-2xx answer or transport error is a delivery error."""

    def __init__(self, url: str, *, timeout_s: float = 10.0, transport: httpx.BaseTransport | None = None) -> None:
        if not url.startswith(("https://", "http://")):
            raise AlertDeliveryError("alert webhook URL must start with https:// (or http:// on loopback)")
        self.url = url
        self.timeout_s = timeout_s
        self.transport = transport

    def _where(self) -> str:
        # Never print the path: chat webhooks carry their secret there.
        parsed = httpx.URL(self.url)
        return f"{parsed.scheme}://{parsed.host}"

    def send(self, alert: Alert) -> None:
        note_egress(self.url, "alert_webhook")
        try:
            with httpx.Client(timeout=self.timeout_s, transport=self.transport, trust_env=False) as client:
                response = client.post(self.url, json=alert.payload())
        except httpx.HTTPError as exc:
            raise AlertDeliveryError(
                f"alert webhook {self._where()} unreachable ({type(exc).__name__}); check the URL in the "
                "environment and the network path"
            ) from exc
        if not response.is_success:
            raise AlertDeliveryError(
                f"alert webhook {self._where()} answered HTTP {response.status_code}; check its token and payload"
            )
