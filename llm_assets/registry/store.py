"""The model registry: an append-only event log per model in the lake, and the state derived from it.

Each model has `registry/<model>/events.jsonl`; every act (register, approve, deploy, rollback, retire) is
one JSON line with a contiguous `seq`, and is also appended to the hash-chained audit log. Nothing is ever
rewritten: status, approvals and "which version served when" are folded from the events on every read.

Status of a version: `candidate` (registered) -> `approved` -> `deployed` -> `retired`. When another
version is deployed (or rolled back to), the one it replaces goes back to `approved`: still approved, not
serving, and a valid rollback target. `retired` is final; retiring the serving version ends its serving
period and leaves nothing serving.

An act is validated against the state derived from the log and appended only if the log has not grown
since it was read (checked under the lake's per-key lock), so concurrent acts never interleave unseen.
The registry line is written before the audit record; a writer that dies in between leaves an act that
`history` shows and the audit trail lacks.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from llm_assets.audit import AuditLog
from llm_assets.lake.storage import LakeKeyNotFound, LakeStorage

REGISTRY_PREFIX = "registry/"
EVENTS_FILE = "events.jsonl"

CANDIDATE, APPROVED, DEPLOYED, RETIRED = "candidate", "approved", "deployed", "retired"
EVENT_TYPES = ("register", "approve", "deploy", "rollback", "retire", "health")

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_APPEND_ATTEMPTS = 5
_log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


class RegistryError(ValueError):
    """An act the registry refuses, or a log it cannot read; the message is one line naming what to do."""


class _LogMoved(Exception):
    """Another writer appended between our read and our append; re-read and re-validate."""


@dataclass(frozen=True)
class RegistryEntry:
    """One model version as the event log says it is now."""

    model: str
    version: str
    status: str
    eval_metrics: dict[str, Any]
    gates: dict[str, dict[str, Any]]
    lineage: dict[str, Any]
    registered_by: str
    registered_at: str
    registrations: int
    approval: dict[str, str] | None = None
    deployment: dict[str, str] | None = None
    retirement: dict[str, str] | None = None
    health: dict[str, Any] | None = None  # the latest production health check of its deployment

    @property
    def failed_blocking_gates(self) -> list[str]:
        return sorted(name for name, gate in self.gates.items() if gate["blocking"] and not gate["passed"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _State:
    """The fold of one model's events."""

    entries: dict[str, RegistryEntry] = field(default_factory=dict)
    periods: list[dict[str, Any]] = field(default_factory=list)
    serving: str | None = None
    events: int = 0


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise RegistryError("the registry clock returned a naive datetime; return an aware UTC datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _require(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RegistryError(f"{what} is required and may not be empty")
    if "\n" in value or "\r" in value:
        raise RegistryError(f"{what} must be one line")
    return value.strip()


def _check_model(model: str) -> str:
    if not isinstance(model, str) or not _MODEL_NAME.match(model):
        raise RegistryError(
            f"invalid model name {model!r}: use letters, digits, '.', '_' or '-' (starting with a letter or digit)"
        )
    return model


def _check_gates(gates: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    checked = {}
    for name, gate in gates.items():
        if not isinstance(gate, Mapping) or not isinstance(gate.get("passed"), bool):
            raise RegistryError(f"gate {name!r}: needs a bool 'passed' (and a bool 'blocking')")
        if not isinstance(gate.get("blocking"), bool):
            raise RegistryError(f"gate {name!r}: needs a bool 'blocking' (and a bool 'passed')")
        checked[str(name)] = dict(gate)
    return checked


def _fold(events: list[dict[str, Any]]) -> _State:
    state = _State(events=len(events))
    for event in events:
        kind, version, ts = event["event"], event["version"], event["ts"]
        old = state.entries.get(version)
        if kind == "register":
            state.entries[version] = RegistryEntry(
                model=event["model"],
                version=version,
                status=old.status if old else CANDIDATE,
                eval_metrics=event["eval_metrics"],
                gates=event["gates"],
                lineage=event["lineage"],
                registered_by=old.registered_by if old else event["actor"],
                registered_at=old.registered_at if old else ts,
                registrations=old.registrations + 1 if old else 1,
                approval=old.approval if old else None,
                deployment=old.deployment if old else None,
                retirement=old.retirement if old else None,
                health=old.health if old else None,
            )
            continue
        if old is None:
            raise RegistryError(
                f"registry log of {event['model']}: seq {event['seq']} acts on unregistered {version!r}"
            )
        record = {"by": event["actor"], "at": ts, "reason": event["reason"]}
        if kind == "approve":
            state.entries[version] = _replace(old, status=APPROVED, approval=record)
        elif kind in ("deploy", "rollback"):
            _end_serving(state, ts)
            deployment = {**record, "endpoint": event["endpoint"], "action": kind}
            state.entries[version] = _replace(old, status=DEPLOYED, deployment=deployment, health=None)
            state.serving = version
            approval = old.approval or {}
            state.periods.append(
                {
                    "version": version,
                    "from": ts,
                    "to": None,
                    "endpoint": event["endpoint"],
                    "action": kind,
                    "deployed_by": event["actor"],
                    "deploy_reason": event["reason"],
                    "approved_by": approval.get("by"),
                    "approved_at": approval.get("at"),
                    "approval_reason": approval.get("reason"),
                }
            )
        elif kind == "health":
            health = {"passed": event["passed"], "at": ts, "by": event["actor"], "evidence": event["evidence"]}
            state.entries[version] = _replace(old, health=health)
            if state.periods and state.periods[-1]["version"] == version and state.periods[-1]["to"] is None:
                state.periods[-1]["health"] = health
        elif kind == "retire":
            if state.serving == version:
                _end_serving(state, ts)
            state.entries[version] = _replace(state.entries[version], status=RETIRED, retirement=record)
    return state


def _replace(entry: RegistryEntry, **changes: Any) -> RegistryEntry:
    return RegistryEntry(**{**entry.to_dict(), **changes})


def _end_serving(state: _State, ts: str) -> None:
    """Close the open serving period; the version it served goes back to approved-but-not-serving."""
    if state.serving is None:
        return
    state.periods[-1]["to"] = ts
    previous = state.entries[state.serving]
    state.entries[state.serving] = _replace(previous, status=APPROVED, deployment=None)
    state.serving = None


class ModelRegistry:
    """Which model versions exist, which are approved by whom and why, and which served when.

    `clock` returns the current aware datetime; tests inject a fixed sequence.
    """

    def __init__(self, storage: LakeStorage, *, clock: Clock = _utc_now) -> None:
        self._storage = storage
        self._clock = clock
        self._audit = AuditLog(storage)

    @staticmethod
    def events_key(model: str) -> str:
        return f"{REGISTRY_PREFIX}{_check_model(model)}/{EVENTS_FILE}"

    # ---- reading -------------------------------------------------------------------------------------

    def models(self) -> list[str]:
        """Every model with an event log, sorted."""
        suffix = "/" + EVENTS_FILE
        return sorted(
            info.key[len(REGISTRY_PREFIX) : -len(suffix)]
            for info in self._storage.list_objects(REGISTRY_PREFIX)
            if info.key.endswith(suffix) and info.key.count("/") == 2
        )

    def history(self, model: str) -> list[dict[str, Any]]:
        """Every event of `model`, oldest first, exactly as logged."""
        key = self.events_key(model)
        try:
            data = self._storage.read_bytes(key)
        except LakeKeyNotFound:
            return []
        events = []
        for n, raw in enumerate(data.decode("utf-8").splitlines(), start=1):
            try:
                event = json.loads(raw)
            except ValueError as exc:
                raise RegistryError(
                    f"{self._storage.uri(key)} line {n}: not valid JSON ({exc}); restore the log from a backup"
                ) from None
            if not isinstance(event, dict) or event.get("seq") != n - 1 or event.get("event") not in EVENT_TYPES:
                raise RegistryError(
                    f"{self._storage.uri(key)} line {n}: not registry event seq {n - 1}; restore the log from a backup"
                )
            events.append(event)
        return events

    def entries(self, model: str) -> list[RegistryEntry]:
        """Every version of `model` in the order first registered."""
        return list(self._state(model).entries.values())

    def entry(self, model: str, version: str) -> RegistryEntry:
        """One version (full or a unique prefix); RegistryError when it was never registered."""
        return self._known(self._state(model), model, self.resolve_version(model, version))

    def resolve_version(self, model: str, version: str) -> str:
        """The full version for `version` or a unique prefix of it (at least 8 characters), as people type it."""
        state = self._state(model)
        if version in state.entries or len(version) < 8:
            return version
        matches = [known for known in state.entries if known.startswith(version)]
        if len(matches) > 1:
            raise RegistryError(f"model {model}: version prefix {version!r} matches {len(matches)} versions; type more")
        return matches[0] if matches else version

    def deployed(self, model: str) -> RegistryEntry | None:
        """The version serving now, or None."""
        state = self._state(model)
        return state.entries[state.serving] if state.serving else None

    current = deployed

    def serving_periods(self, model: str) -> list[dict[str, Any]]:
        """Which version served when, where, deployed by whom and approved by whom; `to` None = still serving."""
        return [dict(period) for period in self._state(model).periods]

    def _state(self, model: str) -> _State:
        return _fold(self.history(model))

    @staticmethod
    def _known(state: _State, model: str, version: str) -> RegistryEntry:
        found = state.entries.get(version)
        if found is None:
            versions = list(state.entries)
            known = ", ".join(versions[-5:]) or "none"
            if len(versions) > 5:
                known = f"{len(versions)} versions, newest {known}"
            raise RegistryError(f"model {model}: unknown version {version!r} (registered: {known})")
        return found

    # ---- acts ----------------------------------------------------------------------------------------

    def register(
        self,
        model: str,
        version: str,
        *,
        eval_metrics: Mapping[str, Any],
        gates: Mapping[str, Mapping[str, Any]],
        lineage: Mapping[str, Any],
        registered_by: str,
    ) -> RegistryEntry:
        """Record a version with its eval figures, gate results and lineage. Registering it again records
        the new figures as a new event; its status and approval stay as they are."""
        version = _require(version, "version")
        actor = _require(registered_by, "registered_by")
        payload = {"eval_metrics": dict(eval_metrics), "gates": _check_gates(gates), "lineage": dict(lineage)}
        try:
            _canonical(payload)
        except (TypeError, ValueError) as exc:
            raise RegistryError(
                f"model {model} version {version}: eval_metrics/gates/lineage must be JSON ({exc})"
            ) from None
        self._act(model, version, "register", actor, "", lambda state: payload)
        return self.entry(model, version)

    def approve(self, model: str, version: str, *, by: str, reason: str) -> RegistryEntry:
        """Approve a candidate whose blocking gates all passed; records who, when and why."""
        version = self.resolve_version(model, version)
        actor, why = _require(by, "--by (approver)"), _require(reason, "--reason")

        def validate(state: _State) -> dict[str, Any]:
            entry = self._known(state, model, version)
            if entry.status != CANDIDATE:
                raise RegistryError(
                    f"model {model} version {version} is {entry.status}, not a candidate; nothing to approve"
                )
            if not any(gate["blocking"] for gate in entry.gates.values()):
                raise RegistryError(
                    f"model {model} version {version}: no blocking gate recorded; register it with its eval gates"
                )
            failed = entry.failed_blocking_gates
            if failed:
                raise RegistryError(
                    f"model {model} version {version}: blocking gate(s) not passed: {', '.join(failed)}; "
                    "fix and re-register before approving"
                )
            return {}

        self._act(model, version, "approve", actor, why, validate)
        return self.entry(model, version)

    def deploy(self, model: str, version: str, *, by: str, endpoint: str, reason: str = "") -> RegistryEntry:
        """Serve an approved version at `endpoint`; the version serving before goes back to approved."""
        version = self.resolve_version(model, version)
        actor, where = _require(by, "--by"), _require(endpoint, "--endpoint")

        def validate(state: _State) -> dict[str, Any]:
            entry = self._known(state, model, version)
            if entry.status == DEPLOYED:
                raise RegistryError(f"model {model} version {version} is already serving")
            if entry.status != APPROVED:
                raise RegistryError(f"model {model} version {version} is {entry.status}; only approved versions deploy")
            return {"endpoint": where, "replaces": state.serving}

        self._act(model, version, "deploy", actor, reason.strip(), validate)
        return self.entry(model, version)

    def rollback(self, model: str, *, by: str, reason: str) -> RegistryEntry:
        """Serve again the most recent other version that served before and is not retired."""
        actor, why = _require(by, "--by"), _require(reason, "--reason")

        def validate(state: _State) -> dict[str, Any]:
            previous = [
                period
                for period in reversed(state.periods)
                if period["version"] != state.serving and state.entries[period["version"]].status == APPROVED
            ]
            if not previous:
                raise RegistryError(f"model {model}: no earlier deployed version to roll back to")
            serving = state.entries[state.serving].deployment if state.serving else None
            endpoint = serving["endpoint"] if serving else previous[0]["endpoint"]
            return {"version": previous[0]["version"], "endpoint": endpoint, "replaces": state.serving}

        event = self._act(model, "", "rollback", actor, why, validate)
        return self.entry(model, event["version"])

    def record_health(
        self, model: str, version: str, *, by: str, passed: bool, evidence: Mapping[str, Any]
    ) -> RegistryEntry:
        """Record the production health check (load test vs SLO) of the serving version; status is unchanged."""
        version = self.resolve_version(model, version)
        actor = _require(by, "by")
        try:
            _canonical(dict(evidence))
        except (TypeError, ValueError) as exc:
            raise RegistryError(f"model {model} version {version}: health evidence must be JSON ({exc})") from None

        def validate(state: _State) -> dict[str, Any]:
            entry = self._known(state, model, version)
            if entry.status != DEPLOYED:
                raise RegistryError(f"model {model} version {version} is {entry.status}; health applies to deployed")
            return {"passed": bool(passed), "evidence": dict(evidence)}

        self._act(model, version, "health", actor, "", validate)
        return self.entry(model, version)

    def retire(self, model: str, version: str, *, by: str, reason: str) -> RegistryEntry:
        """Retire a version for good; if it is serving, it stops serving and nothing replaces it."""
        version = self.resolve_version(model, version)
        actor, why = _require(by, "--by"), _require(reason, "--reason")

        def validate(state: _State) -> dict[str, Any]:
            entry = self._known(state, model, version)
            if entry.status == RETIRED:
                raise RegistryError(f"model {model} version {version} is already retired")
            return {"was_serving": state.serving == version}

        self._act(model, version, "retire", actor, why, validate)
        return self.entry(model, version)

    def _act(
        self,
        model: str,
        version: str,
        kind: str,
        actor: str,
        reason: str,
        validate: Callable[[_State], dict[str, Any]],
    ) -> dict[str, Any]:
        """Validate against the log as read, append one event if the log has not moved, then audit it.

        `validate` raises RegistryError to refuse, or returns the act's own fields (it may choose `version`).
        """
        key = self.events_key(model)
        for _attempt in range(_APPEND_ATTEMPTS):
            events = self.history(model)
            state = _fold(events)
            extra = validate(state)
            event = {
                "seq": len(events),
                "ts": _iso(self._clock()),
                "event": kind,
                "model": model,
                "version": version,
                "actor": actor,
                "reason": reason,
                **extra,
            }
            expected_last = events[-1]["seq"] if events else None

            def make_line(last_line: str | None, event: dict[str, Any] = event, expected: Any = expected_last) -> str:
                last_seq = json.loads(last_line)["seq"] if last_line else None
                if last_seq != expected:
                    raise _LogMoved
                return _canonical(event)

            try:
                self._storage.append_next_line(key, make_line)
            except _LogMoved:
                continue
            self._audit.append(
                {
                    **{k: v for k, v in event.items() if k not in ("seq", "event")},
                    "event": f"registry.{kind}",
                    "registry_key": key,
                    "registry_seq": event["seq"],
                }
            )
            return event
        raise RegistryError(
            f"model {model}: {self._storage.uri(key)} kept changing under {_APPEND_ATTEMPTS} attempts; retry"
        )


def export_mlflow(entry: RegistryEntry, *, tracking_uri: str | None = None) -> str | None:
    """Log `entry` as an MLflow run (params, numeric metrics, gates/lineage/approval as a JSON artifact).

    Returns the run id, or None with a logged message when mlflow is not installed: the registry itself
    never needs it.
    """
    try:
        import mlflow
    except ImportError:
        _log.warning("mlflow is not installed; skipped exporting %s %s to MLflow", entry.model, entry.version)
        return None
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_name=f"{entry.model}-{entry.version[:12]}") as run:
        mlflow.log_params({"model": entry.model, "version": entry.version, "status": entry.status})
        numeric = {
            name: float(value)
            for name, value in entry.eval_metrics.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        if numeric:
            mlflow.log_metrics(numeric)
        mlflow.log_dict(entry.to_dict(), "registry_entry.json")
        return str(run.info.run_id)
