"""The registry answers "which version served when, approved by whom" from an append-only log plus the audit chain."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from llm_assets.audit import AuditLog
from llm_assets.lake import LocalLakeStorage
from llm_assets.registry import ModelRegistry, RegistryError, export_mlflow

MODEL = "gr-qa"
PASSED = {"eval_qa_validated": {"passed": True, "blocking": True}, "toxicity": {"passed": False, "blocking": False}}
FAILED = {"eval_qa_validated": {"passed": False, "blocking": True, "accuracy": 0.41, "threshold": 0.6}}


def minute_clock() -> Callable[[], datetime]:
    """2025-01-01 00:00, 00:01, 00:02, ...: each act gets its own minute."""
    ticks: Iterator[int] = iter(range(10_000))
    return lambda: datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=next(ticks))


def at(minute: int) -> str:
    return f"2025-01-01T00:{minute:02d}:00.000000Z"


@pytest.fixture
def registry(storage: LocalLakeStorage) -> ModelRegistry:
    return ModelRegistry(storage, clock=minute_clock())


def register(registry: ModelRegistry, version: str, gates: dict[str, Any] = PASSED, **metrics: float) -> None:
    registry.register(
        MODEL,
        version,
        eval_metrics=metrics or {"accuracy": 0.7},
        gates=gates,
        lineage={"lora_adapter": version, "pii_policy": "gr"},
        registered_by="trainer-bot",
    )


def log_lines(storage: LocalLakeStorage) -> list[bytes]:
    return storage.read_bytes(ModelRegistry.events_key(MODEL)).splitlines()


def test_lifecycle_serving_periods_rollback_and_audit(registry: ModelRegistry, storage: LocalLakeStorage) -> None:
    seen: list[bytes] = []

    def log_only_grew() -> None:
        lines = log_lines(storage)
        assert lines[: len(seen)] == seen and len(lines) == len(seen) + 1
        seen[:] = lines

    register(registry, "v1", FAILED)  # 00:00
    log_only_grew()
    with pytest.raises(RegistryError, match=r"blocking gate.*eval_qa_validated") as refused:
        registry.approve(MODEL, "v1", by="maria", reason="looks fine")
    assert "\n" not in str(refused.value)
    assert log_lines(storage) == seen  # a refused act writes nothing

    register(registry, "v1", PASSED, accuracy=0.72)  # 00:01 re-registered with new figures
    log_only_grew()
    assert registry.entry(MODEL, "v1").status == "candidate"
    assert registry.entry(MODEL, "v1").registrations == 2
    registry.approve(MODEL, "v1", by="maria", reason="QA gate passed on pilot set")  # 00:02
    log_only_grew()
    registry.deploy(MODEL, "v1", by="ops", endpoint="https://llm.internal/gr-qa")  # 00:03
    log_only_grew()

    register(registry, "v2", PASSED, accuracy=0.8)  # 00:04
    log_only_grew()
    with pytest.raises(RegistryError, match="candidate; only approved"):
        registry.deploy(MODEL, "v2", by="ops", endpoint="https://llm.internal/gr-qa")
    registry.approve(MODEL, "v2", by="nikos", reason="better accuracy")  # 00:05
    log_only_grew()
    registry.deploy(MODEL, "v2", by="ops", endpoint="https://llm.internal/gr-qa", reason="release 2")  # 00:06
    log_only_grew()

    assert registry.entry(MODEL, "v1").status == "approved"  # replaced, not serving, still a rollback target
    current = registry.deployed(MODEL)
    assert current is not None and current.version == "v2"
    periods = registry.serving_periods(MODEL)
    assert [(p["version"], p["from"], p["to"], p["approved_by"]) for p in periods] == [
        ("v1", at(3), at(6), "maria"),
        ("v2", at(6), None, "nikos"),
    ]
    assert periods[0]["approval_reason"] == "QA gate passed on pilot set"

    rolled = registry.rollback(MODEL, by="ops", reason="v2 hallucinates dates")  # 00:07
    log_only_grew()
    assert rolled.version == "v1" and rolled.status == "deployed"
    assert registry.entry(MODEL, "v2").status == "approved"
    periods = registry.serving_periods(MODEL)
    assert [(p["version"], p["action"], p["from"], p["to"]) for p in periods][-2:] == [
        ("v2", "deploy", at(6), at(7)),
        ("v1", "rollback", at(7), None),
    ]
    assert registry.history(MODEL)[-1]["event"] == "rollback"
    assert registry.history(MODEL)[-1]["replaces"] == "v2"

    registry.retire(MODEL, "v2", by="maria", reason="superseded")  # 00:08
    log_only_grew()
    with pytest.raises(RegistryError, match="no earlier deployed version"):
        registry.rollback(MODEL, by="ops", reason="again")
    with pytest.raises(RegistryError, match="retired; only approved"):
        registry.deploy(MODEL, "v2", by="ops", endpoint="https://llm.internal/gr-qa")

    events = registry.history(MODEL)
    assert [e["seq"] for e in events] == list(range(len(events)))
    records = AuditLog(storage).records()
    assert [r["event"] for r in records] == [f"registry.{e['event']}" for e in events]
    assert [(r["actor"], r["version"], r["registry_seq"]) for r in records] == [
        (e["actor"], e["version"], e["seq"]) for e in events
    ]
    assert AuditLog(storage).verify().ok
    assert registry.models() == [MODEL]


def test_retiring_the_serving_version_ends_its_period(registry: ModelRegistry) -> None:
    register(registry, "v1")
    registry.approve(MODEL, "v1", by="maria", reason="ok")
    registry.deploy(MODEL, "v1", by="ops", endpoint="http://x")
    registry.retire(MODEL, "v1", by="maria", reason="withdrawn")
    assert registry.deployed(MODEL) is None
    assert registry.serving_periods(MODEL)[0]["to"] == at(3)
    assert registry.entry(MODEL, "v1").retirement == {"by": "maria", "at": at(3), "reason": "withdrawn"}


@pytest.mark.parametrize(
    ("act", "message"),
    [
        (lambda r: r.approve(MODEL, "nope", by="maria", reason="x"), "unknown version 'nope'"),
        (lambda r: r.deploy(MODEL, "nope", by="ops", endpoint="http://x"), "unknown version 'nope'"),
        (lambda r: r.retire(MODEL, "nope", by="maria", reason="x"), "unknown version 'nope'"),
        (lambda r: r.approve(MODEL, "v1", by=" ", reason="x"), "approver"),
        (lambda r: r.approve(MODEL, "v1", by="maria", reason=""), "--reason"),
        (lambda r: r.rollback(MODEL, by="ops", reason="x"), "no earlier deployed version"),
        (lambda r: r.entry(MODEL, "nope"), "unknown version"),
        (lambda r: r.history("../etc"), "invalid model name"),
    ],
)
def test_refusals_are_one_line(registry: ModelRegistry, act: Callable[[ModelRegistry], Any], message: str) -> None:
    register(registry, "v1")
    with pytest.raises(RegistryError, match=message) as refused:
        act(registry)
    assert "\n" not in str(refused.value)


def test_approval_needs_a_recorded_blocking_gate(registry: ModelRegistry) -> None:
    register(registry, "v1", {"toxicity": {"passed": True, "blocking": False}})
    with pytest.raises(RegistryError, match="no blocking gate recorded"):
        registry.approve(MODEL, "v1", by="maria", reason="ok")
    with pytest.raises(RegistryError, match="bool 'passed'"):
        register(registry, "v2", {"qa": {"passed": "yes", "blocking": True}})


def test_export_mlflow_skips_without_mlflow(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    register(registry, "v1")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    with caplog.at_level(logging.WARNING):
        assert export_mlflow(registry.entry(MODEL, "v1")) is None
    assert "mlflow is not installed" in caplog.text


def test_an_act_is_revalidated_when_another_writer_got_in_first(storage: LocalLakeStorage) -> None:
    """Two deploys race: the second sees the first in the log and records it as the version it replaces."""
    other = ModelRegistry(storage)
    for version in ("v1", "v2"):
        register(other, version)
        other.approve(MODEL, version, by="maria", reason="ok")

    class Racing(LocalLakeStorage):
        raced = False

        def append_next_line(self, key: str, make_line: Callable[[str | None], str]) -> str:
            if not self.raced:
                self.raced = True
                other.deploy(MODEL, "v1", by="ops-a", endpoint="http://a")
            return super().append_next_line(key, make_line)

    ModelRegistry(Racing(storage.root)).deploy(MODEL, "v2", by="ops-b", endpoint="http://b")
    deploys = [e for e in other.history(MODEL) if e["event"] == "deploy"]
    assert [(e["version"], e["replaces"]) for e in deploys] == [("v1", None), ("v2", "v1")]
    assert len(AuditLog(storage).records()) == len(other.history(MODEL))


def test_health_of_the_serving_version_is_recorded_and_reset_by_a_new_deployment(registry: ModelRegistry) -> None:
    register(registry, "v1")
    register(registry, "v2")
    with pytest.raises(RegistryError, match="health applies to deployed"):
        registry.record_health(MODEL, "v1", by="loadtest", passed=True, evidence={})
    registry.approve(MODEL, "v1", by="ana", reason="ok")
    registry.deploy(MODEL, "v1", by="ops", endpoint="http://127.0.0.1:8000/v1")
    entry = registry.record_health(MODEL, "v1", by="loadtest", passed=False, evidence={"p99_e2e_s": 6.2})
    assert entry.status == "deployed"  # the verdict is evidence; status changes only by a person's act
    assert entry.health is not None and entry.health["passed"] is False
    assert entry.health["evidence"] == {"p99_e2e_s": 6.2}
    assert registry.serving_periods(MODEL)[-1]["health"]["passed"] is False
    registry.approve(MODEL, "v2", by="ana", reason="ok")
    registry.deploy(MODEL, "v2", by="ops", endpoint="http://127.0.0.1:8000/v1")
    assert registry.entry(MODEL, "v2").health is None  # a new deployment starts without a verdict
    with pytest.raises(RegistryError, match="must be JSON"):
        registry.record_health(MODEL, "v2", by="loadtest", passed=True, evidence={"x": object()})
