"""Data residency: where each materialisation stored its data, where it computed, what it contacted.

Sovereignty rules say training, storage and inference stay inside approved regions. Every materialisation
records an **attestation** (the facts: storage URI, region and KMS key; compute backend, region and host;
the hosts the step contacted) in its audit record and its Dagster metadata; a **policy** (allowed regions,
storage URI prefixes, endpoint hosts, required encryption) is evaluated against it by a blocking asset
check, so nothing downstream is built from a materialisation that left the approved area.

The attestation says what the code knows: the lake's configured location, the training backend's
configured location, the process's host and declared region (`LLM_ASSETS_COMPUTE_REGION`, else
`AWS_REGION`, else `local`) and every host the project's own clients called. It is not a network monitor:
a library making its own connections is not seen.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import socket
import threading
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

BUNDLED_POLICIES = ("local", "eu-sovereign")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
LOCAL_REGION = "local"


class ResidencyError(ValueError):
    """A policy file is missing or malformed; one line naming the file and the field."""


class ResidencyPolicy(BaseModel):
    """The approved area. Lists match exactly, except `*` wildcards (fnmatch) in regions and hosts and URI
    prefixes in `allowed_storage` (`file://` allows any local path, `s3://bucket/` one bucket)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Policy name, e.g. 'eu-sovereign'.")
    version: str = Field(description="Policy version; bump it with every change, it is recorded with each check.")
    description: str = ""
    allowed_regions: list[str] = Field(
        description="Regions where data may be stored and computed ('local' = this site)."
    )
    allowed_storage: list[str] = Field(description="URI prefixes the lake may live under.")
    allowed_endpoint_hosts: list[str] = Field(
        default_factory=list, description="Hosts a step may contact (endpoints, webhooks, cloud APIs)."
    )
    allow_loopback: bool = Field(default=True, description="Whether 127.0.0.1 / localhost / ::1 are always allowed.")
    require_encryption: bool = Field(
        default=False, description="Storage must be encrypted with a customer-managed KMS key."
    )

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode("utf-8")).hexdigest()

    def summary(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "sha256": self.digest()}


def load_policy(name_or_path: str | os.PathLike[str]) -> ResidencyPolicy:
    """A bundled policy by name (`local`, `eu-sovereign`) or a YAML file. `${VAR}` in values is expanded from
    the environment (e.g. `s3://${LLM_ASSETS_S3_BUCKET}/`); an unset variable stays as written and so matches
    nothing, which fails closed."""
    text_name = os.fspath(name_or_path)
    if text_name in BUNDLED_POLICIES:
        ref = resources.files("llm_assets.compliance") / "residency_policies" / f"{text_name}.yaml"
        label, text = f"bundled residency policy {text_name!r}", ref.read_text(encoding="utf-8")
    else:
        path = Path(text_name)
        if not path.is_file():
            raise ResidencyError(
                f"residency policy {text_name}: no such file; give a YAML file or one of {', '.join(BUNDLED_POLICIES)}"
            )
        label, text = f"residency policy {path}", path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ResidencyError(f"{label}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ResidencyError(f"{label}: expected a mapping with name, version, allowed_regions, allowed_storage")
    try:
        return ResidencyPolicy.model_validate(_expand(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ResidencyError(f"{label}: field {where}: {first['msg']}") from None


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return os.path.expandvars(value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


# ---- facts ------------------------------------------------------------------------------------------------


def compute_region() -> str:
    """The region this process runs in, as the deployment declares it."""
    return os.environ.get("LLM_ASSETS_COMPUTE_REGION") or os.environ.get("AWS_REGION") or LOCAL_REGION


def local_compute() -> dict[str, str]:
    """The step's own process: where Dagster ran the asset body."""
    return {"backend": "process", "region": compute_region(), "host": socket.gethostname()}


def storage_facts(location: Mapping[str, str]) -> dict[str, Any]:
    """A lake's `describe_location()` as residency facts: URI, region, KMS key, whether it is KMS-encrypted."""
    backend = location.get("backend", "")
    if backend == "s3":
        prefix = location.get("prefix", "").strip("/")
        uri = f"s3://{location.get('bucket', '')}/" + (f"{prefix}/" if prefix else "")
        kms = location.get("kms_key_id") or None
        return {
            "uri": uri,
            "backend": "s3",
            "region": location.get("region") or "",
            "kms_key_id": kms,
            "encrypted": bool(kms),
            "endpoint": _host(location.get("endpoint_url") or "") or None,
        }
    if backend == "local":
        root = location.get("root", "")
        return {
            "uri": Path(root).as_uri() if root.startswith("/") else f"file://{root}",
            "backend": "local",
            "region": compute_region(),
            "kms_key_id": None,
            "encrypted": False,
            "endpoint": None,
        }
    return {"uri": "", "backend": backend or "unknown", "region": "", "kms_key_id": None, "encrypted": False}


def _host(url: str) -> str:
    """`https://h:8443/v1` -> `h`; a bare `h` or `h:p` -> `h`."""
    if not url:
        return ""
    parts = urlsplit(url if "//" in url else f"//{url}")
    return (parts.hostname or "").lower()


class _StepLog:
    """Hosts the project's clients contacted, and remote compute they started, since the last materialisation
    in this process (thread-safe). A step that fails before it records leaves its notes to the next
    materialisation in the process: attested too much, never too little."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hosts: dict[str, set[str]] = {}
        self._remote: list[dict[str, Any]] = []

    def note_host(self, url: str, purpose: str) -> None:
        host = _host(url)
        if host:
            with self._lock:
                self._hosts.setdefault(host, set()).add(purpose)

    def note_compute(self, facts: Mapping[str, Any]) -> None:
        with self._lock:
            if dict(facts) not in self._remote:
                self._remote.append(dict(facts))

    def drain(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        with self._lock:
            hosts, self._hosts = self._hosts, {}
            remote, self._remote = self._remote, []
        return [{"host": h, "purposes": sorted(p)} for h, p in sorted(hosts.items())], remote


STEP_LOG = _StepLog()


def note_egress(url: str, purpose: str) -> None:
    """Called by every client of the project before it contacts a host (endpoint, webhook, cloud API)."""
    STEP_LOG.note_host(url, purpose)


def note_remote_compute(backend: str, region: str | None, **details: str) -> None:
    """Called where work is sent to other compute (a k8s training Job, a SageMaker job or endpoint)."""
    STEP_LOG.note_compute({"backend": backend, "region": region or "", **details})


def attestation(storage_location: Mapping[str, str]) -> dict[str, Any]:
    """The facts recorded with one materialisation: the lake's location, the step's own process plus any
    remote compute it started, and the hosts it contacted (both drained from this process's step log)."""
    egress, remote = STEP_LOG.drain()
    return {
        "storage": storage_facts(storage_location),
        "compute": local_compute() | {"remote": remote},
        "egress": egress,
    }


# ---- the policy against the facts ----------------------------------------------------------------------------


def _matches(value: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def violations(facts: Mapping[str, Any], policy: ResidencyPolicy) -> list[str]:
    """Each way `facts` leaves the approved area, one line each; empty when it complies."""
    found: list[str] = []
    storage = facts.get("storage") or {}
    uri = str(storage.get("uri") or "")
    if not uri or not any(uri.startswith(prefix) for prefix in policy.allowed_storage):
        allowed = ", ".join(policy.allowed_storage)
        found.append(f"storage {uri or '(unknown)'} is outside the allowed storage ({allowed})")
    region = str(storage.get("region") or "")
    if not _matches(region, policy.allowed_regions):
        found.append(f"storage region {region or '(unknown)'} is not an allowed region")
    if policy.require_encryption and not (storage.get("encrypted") and storage.get("kms_key_id")):
        found.append(f"storage {uri or '(unknown)'} is not KMS-encrypted; the policy requires a KMS key")
    endpoint = storage.get("endpoint")
    if endpoint and not _host_allowed(str(endpoint), policy):
        found.append(f"storage endpoint {endpoint} is not an allowed host")
    compute = facts.get("compute") or {}
    for place in [compute, *compute.get("remote", [])]:
        where = str(place.get("region") or "")
        if not _matches(where, policy.allowed_regions):
            backend = place.get("backend", "?")
            found.append(f"compute region {where or '(unknown)'} ({backend}) is not an allowed region")
    for item in facts.get("egress") or []:
        host = str(item.get("host", ""))
        if not _host_allowed(host, policy):
            why = ", ".join(item.get("purposes", []))
            found.append(f"contacted {host} ({why}), which is not an allowed endpoint host")
    return found


def _host_allowed(host: str, policy: ResidencyPolicy) -> bool:
    return (policy.allow_loopback and host in LOOPBACK_HOSTS) or _matches(host, policy.allowed_endpoint_hosts)


def verdict(facts: Mapping[str, Any], policy: ResidencyPolicy) -> dict[str, Any]:
    found = violations(facts, policy)
    return {"policy": policy.summary(), "compliant": not found, "violations": found}


def to_json(facts: Mapping[str, Any]) -> str:
    return json.dumps(facts, sort_keys=True, separators=(",", ":"))
