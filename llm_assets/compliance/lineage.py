"""The upstream chain of one asset version, as one JSON document compliance staff can read without an engineer.

`build_lineage` starts at an audit record (asset, partition, version) and follows `input_data_versions`
back through the hash-chained audit trail to every ancestor record. An input is linked to the upstream
record whose output version it names (`exact`), or, for per-source datasets whose audit record holds only a
stage-wide version, to the upstream record whose lake manifests hash to that version (`manifest`). Where
neither holds, the latest earlier record of that asset and partition is taken and the link says `inferred`.

Around the chain it attaches what the lake holds for those versions: the source descriptors (licence,
jurisdiction), the PII policy and its hit and reject counts, retention of every curation stage, the SFT
data manifest, the adapter's lineage file, eval figures and gates, and the registry's approvals,
deployments and serving periods. Anything the trail or the lake does not hold for the exact version is
written as "not recorded" and listed under `gaps`; nothing is guessed. Only reads: safe for a read-only user.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pyarrow.parquet as pq

from llm_assets.audit import AuditLog
from llm_assets.ingestion.descriptor import DESCRIPTOR_FILENAME, IngestError, parse_descriptor
from llm_assets.lake.shards import DatasetManifest, iter_shards, read_manifest
from llm_assets.lake.storage import LakeError, LakeKeyNotFound, LakeStorage
from llm_assets.registry import ModelRegistry, RegistryError

SCHEMA_VERSION = "1"
NOT_RECORDED = "not recorded"

RAW_CORPUS = "raw_corpus"
PII_STAGE = "pii_scrubbed_shards"
PII_HITS = "pii_hits"
# Curation stages in pipeline order; each writes `<stage>` and `<stage>_rejects` per source.
CURATION_STAGES = (
    "normalized_shards",
    PII_STAGE,
    "deduplicated_shards",
    "quality_filtered_shards",
    "perplexity_scored_shards",
    "curated_corpus",
)
# Files the training and evaluation assets write under a folder named by the first 16 characters of their
# version, so the file of any version (not only the newest) can be found again.
VERSIONED_FILES = {
    "sft_dataset": "datasets_export/sft/{partition}/{version16}/manifest.json",
    "lora_adapter": "models/adapters/{partition}/{version16}/lineage.json",
    "cpt_model": "models/cpt/{version16}/data_manifest.json",
    "eval_report": "evaluation/reports/{partition}/{version16}/report.json",
}
LINKS = ("exact", "manifest", "inferred", "external", "not_recorded")
_HEX_VERSION = re.compile(r"^[0-9a-f]{12,}$")


class LineageError(ValueError):
    """The asked-for asset, partition or version is not in the audit trail; one line naming what is."""


# ---- the document's schema ------------------------------------------------------------------------------

_STR_OR_NULL = {"type": ["string", "null"]}
_COUNTS = {"type": "object", "additionalProperties": {"type": ["number", "null"]}}
_GATE = {
    "type": "object",
    "required": ["name", "passed", "blocking"],
    "properties": {
        "name": {"type": "string"},
        "passed": {"type": "boolean"},
        "blocking": {"type": ["boolean", "string"]},
        "figures": {"type": "object"},
        "source": {"type": "string"},
    },
}
LINEAGE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "llm_assets lineage document",
    "type": "object",
    "required": [
        "schema_version",
        "generated_at",
        "lake",
        "target",
        "audit_trail",
        "nodes",
        "sources",
        "pii",
        "retention",
        "sft_data",
        "training",
        "evaluation",
        "registry",
        "gaps",
    ],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "generated_at": {"type": "string"},
        "lake": {"type": "object"},
        "target": {
            "type": "object",
            "required": ["asset", "partition", "data_version", "node"],
            "properties": {
                "asset": {"type": "string"},
                "partition": _STR_OR_NULL,
                "data_version": {"type": "string"},
                "node": {"type": "string"},
            },
        },
        "audit_trail": {
            "type": "object",
            "required": ["key", "records", "intact", "verification"],
            "properties": {
                "key": {"type": "string"},
                "records": {"type": "integer"},
                "intact": {"type": "boolean"},
                "verification": {"type": "string"},
            },
        },
        "nodes": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": [
                    "id",
                    "asset",
                    "partition",
                    "data_version",
                    "code_version",
                    "run_id",
                    "materialized_at",
                    "materialized_by",
                    "counts",
                    "config_hash",
                    "audit_seq",
                    "checks",
                    "inputs",
                ],
                "properties": {
                    "id": {"type": "string"},
                    "asset": {"type": "string"},
                    "partition": _STR_OR_NULL,
                    "data_version": {"type": "string"},
                    "code_version": {"type": "string"},
                    "run_id": {"type": "string"},
                    "materialized_at": {"type": "string"},
                    "materialized_by": {"type": "string"},
                    "run_tags": {"type": "object"},
                    "counts": _COUNTS,
                    "config_hash": {"type": "string"},
                    "storage": {"type": "object"},
                    "residency": {
                        "type": "object",
                        "properties": {
                            "storage": {"type": "object"},
                            "compute": {"type": "object"},
                            "egress": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                    "audit_seq": {"type": "integer"},
                    "checks": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "passed", "audit_seq"],
                            "properties": {
                                "name": {"type": "string"},
                                "passed": {"type": "boolean"},
                                "audit_seq": {"type": "integer"},
                                "figures": {"type": "object"},
                            },
                        },
                    },
                    "inputs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["key", "data_version", "link", "node"],
                            "properties": {
                                "key": {"type": "string"},
                                "data_version": {"type": "string"},
                                "link": {"enum": list(LINKS)},
                                "node": _STR_OR_NULL,
                            },
                        },
                    },
                    "details": {"type": "object"},
                },
            },
        },
        "sources": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "licence", "jurisdiction", "language", "source_uri", "node"],
                "properties": {
                    "name": {"type": "string"},
                    "licence": {"type": "string"},
                    "jurisdiction": {"type": "string"},
                    "language": {"type": "string"},
                    "source_uri": {"type": "string"},
                    "node": {"type": "string"},
                    "ingested_as": {"type": ["object", "string"]},
                },
            },
        },
        "pii": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["source", "policy", "hits_by_kind", "counts", "node"],
                "properties": {
                    "source": {"type": "string"},
                    "policy": {"type": "string"},
                    "policy_sha256": {"type": "string"},
                    "hits_by_kind": {"type": ["object", "string"]},
                    "rejects_by_rule": {"type": ["object", "string"]},
                    "counts": _COUNTS,
                    "node": {"type": "string"},
                },
            },
        },
        "retention": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["stage", "partition", "in", "kept", "rejected", "retention", "node"],
                "properties": {
                    "stage": {"type": "string"},
                    "partition": _STR_OR_NULL,
                    "in": {"type": ["integer", "null"]},
                    "kept": {"type": ["integer", "null"]},
                    "rejected": {"type": ["integer", "null"]},
                    "retention": {"type": ["number", "null"]},
                    "removed_by_source": {"type": ["object", "string"]},
                    "rejects_by_rule": {"type": ["object", "string"]},
                    "node": {"type": "string"},
                },
            },
        },
        "sft_data": {"type": "array", "items": {"type": "object", "required": ["node", "manifest"]}},
        "training": {"type": "array", "items": {"type": "object", "required": ["node", "asset"]}},
        "evaluation": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["node", "task", "gates"],
                "properties": {"gates": {"type": "array", "items": _GATE}},
            },
        },
        "registry": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["model", "version", "status", "approval", "deployment", "serving_periods", "gates"],
                "properties": {
                    "model": {"type": "string"},
                    "version": {"type": "string"},
                    "status": {"type": "string"},
                    "approval": {"type": ["object", "string"]},
                    "deployment": {"type": ["object", "string"]},
                    "serving_periods": {"type": "array", "items": {"type": "object"}},
                    "gates": {"type": "array", "items": _GATE},
                    "audit_acts": {"type": "array", "items": {"type": "object"}},
                },
            },
        },
        "gaps": {"type": "array", "items": {"type": "string"}},
    },
}


def validate_lineage(doc: Mapping[str, Any]) -> None:
    """Raise LineageError naming the first field that breaks LINEAGE_SCHEMA."""
    try:
        jsonschema.validate(doc, LINEAGE_SCHEMA)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(part) for part in exc.absolute_path) or "(top level)"
        raise LineageError(f"lineage document at {where}: {exc.message}") from None


# ---- walking the audit trail ----------------------------------------------------------------------------


def _node_id(record: Mapping[str, Any]) -> str:
    partition = record.get("partition")
    where = f"[{partition}]" if partition is not None else ""
    return f"{record['asset_key']}{where}@{str(record.get('output_data_version', ''))[:16]}#{record['seq']}"


def _stage_hash(parts: Iterable[tuple[str, str, str]]) -> str:
    """The stage-wide version a curation stage records: sha256 of `source:kept_version:rejects_version` lines."""
    return hashlib.sha256("\n".join(f"{s}:{k}:{r}" for s, k, r in parts).encode()).hexdigest()


@dataclass
class _Walk:
    storage: LakeStorage
    records: list[dict[str, Any]]
    materializations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    current_manifests: dict[int, dict[str, tuple[DatasetManifest, DatasetManifest | None]] | None] = field(
        default_factory=dict
    )
    gaps: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for record in self.records:
            if record.get("event") == "materialization" and isinstance(record.get("asset_key"), str):
                self.materializations.setdefault(record["asset_key"], []).append(record)

    def gap(self, text: str) -> None:
        if text not in self.gaps:
            self.gaps.append(text)

    # The lake keeps only the newest manifest of each dataset partition. They describe an audit record's
    # output only when they hash to the version that record wrote.
    def manifests_of(self, record: Mapping[str, Any]) -> dict[str, tuple[DatasetManifest, DatasetManifest | None]]:
        seq = int(record["seq"])
        if seq not in self.current_manifests:
            self.current_manifests[seq] = self._read_current_manifests(record)
        return self.current_manifests[seq] or {}

    def _read_current_manifests(
        self, record: Mapping[str, Any]
    ) -> dict[str, tuple[DatasetManifest, DatasetManifest | None]] | None:
        asset = record["asset_key"]
        if asset != RAW_CORPUS and asset not in CURATION_STAGES:
            return None
        partition = record.get("partition")
        sources = (
            [partition]
            if partition is not None
            else sorted({key.split("/", 1)[1] for key in record.get("input_data_versions", {}) if "/" in key})
        )
        found: dict[str, tuple[DatasetManifest, DatasetManifest | None]] = {}
        for source in sources:
            try:
                kept = read_manifest(self.storage, asset, source)
                rejects = read_manifest(self.storage, f"{asset}_rejects", source)
            except LakeError:
                return None
            if kept is None or rejects is None:
                return None
            found[source] = (kept, rejects)
        if asset == RAW_CORPUS:
            kept, rejects = found[sources[0]] if sources else (None, None)
            if kept is None or rejects is None:
                return None
            version = hashlib.sha256(f"{kept.data_version}:{rejects.data_version}".encode()).hexdigest()
        else:
            version = _stage_hash((s, k.data_version, r.data_version if r else "") for s, (k, r) in found.items())
        return found if version == record.get("output_data_version") else None

    def resolve(self, key: str, version: str, consumer: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
        asset, _, partition = key.partition("/")
        wanted = partition or None
        earlier = [r for r in self.materializations.get(asset, []) if r["seq"] < consumer["seq"]]
        if asset not in self.materializations:
            return None, "external"
        if not earlier or not version:
            return None, "not_recorded"
        exact = [r for r in earlier if r.get("output_data_version") == version]
        if exact:
            preferred = (
                [r for r in exact if r.get("partition") == wanted]
                or [r for r in exact if r.get("partition") == consumer.get("partition")]
                or exact
            )
            return preferred[-1], "exact"
        part = wanted if wanted is not None else consumer.get("partition")
        same = [r for r in earlier if r.get("partition") == part] or [r for r in earlier if r.get("partition") is None]
        if not same:
            return None, "not_recorded"
        upstream = same[-1]
        manifests = self.manifests_of(upstream)
        if wanted is not None and wanted in manifests and manifests[wanted][0].data_version == version:
            return upstream, "manifest"
        return upstream, "inferred"

    def visit(self, record: dict[str, Any]) -> str:
        node_id = _node_id(record)
        if node_id in self.nodes:
            return node_id
        node = self._node(record)
        self.nodes[node_id] = node
        for key, version in sorted((record.get("input_data_versions") or {}).items()):
            version = str(version)
            upstream, link = self.resolve(key, version, record)
            if version and not _HEX_VERSION.match(version):
                self.gap(f"{node_id}: input {key} is recorded with version {version!r}, which is not a data version")
            if link == "not_recorded":
                self.gap(f"{node_id}: input {key}@{version[:16] or '(empty)'} has no earlier audit record")
            elif link == "inferred" and upstream is not None:
                self.gap(
                    f"{node_id}: input {key}@{version[:16] or '(empty)'} could not be matched to a recorded "
                    f"version; linked to the latest earlier materialisation {_node_id(upstream)}"
                )
            node["inputs"].append(
                {
                    "key": key,
                    "data_version": version,
                    "link": link,
                    "node": self.visit(upstream) if upstream is not None else None,
                }
            )
        return node_id

    def _node(self, record: Mapping[str, Any]) -> dict[str, Any]:
        who = record.get("who") or {}
        return {
            "id": _node_id(record),
            "asset": record["asset_key"],
            "partition": record.get("partition"),
            "data_version": str(record.get("output_data_version") or NOT_RECORDED),
            "code_version": str(record.get("code_version") or NOT_RECORDED),
            "run_id": str(record.get("run_id") or NOT_RECORDED),
            "materialized_at": str(record.get("ts") or NOT_RECORDED),
            "materialized_by": str(who.get("user") or NOT_RECORDED),
            "run_tags": dict(who.get("run_tags") or {}),
            "counts": dict(record.get("counts") or {}),
            "config_hash": str(record.get("config_hash") or NOT_RECORDED),
            "storage": dict(record.get("storage") or {}),
            "residency": dict(record.get("residency") or {}),
            "audit_seq": int(record["seq"]),
            "checks": self._checks(record),
            "inputs": [],
            "details": {},
        }

    def _checks(self, record: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Each check recorded on this output version, the one nearest the materialisation in the log."""
        nearest: dict[str, dict[str, Any]] = {}
        for check in self.records:
            if (
                check.get("event") != "check"
                or check.get("asset_key") != record["asset_key"]
                or check.get("partition") != record.get("partition")
                or check.get("data_version") != record.get("output_data_version")
            ):
                continue
            name = str(check.get("check"))
            best = nearest.get(name)
            if best is None or abs(check["seq"] - record["seq"]) < abs(best["seq"] - record["seq"]):
                nearest[name] = check
        return [
            {
                "name": name,
                "passed": bool(check.get("passed")),
                "audit_seq": int(check["seq"]),
                "checked_at": str(check.get("ts") or NOT_RECORDED),
                "figures": dict(check.get("figures") or {}),
            }
            for name, check in sorted(nearest.items(), key=lambda item: item[1]["seq"])
        ]


# ---- what the lake holds for the versions in the chain --------------------------------------------------


def _read_json(storage: LakeStorage, key: str) -> Any | None:
    try:
        return json.loads(storage.read_bytes(key))
    except LakeKeyNotFound:
        return None
    except ValueError as exc:
        raise LakeError(f"{storage.uri(key)}: not valid JSON ({exc})") from exc


def _count_column(storage: LakeStorage, manifest: DatasetManifest, column: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for shard in iter_shards(storage, manifest):
        for value in shard.column(column).to_pylist():
            counts[str(value)] = counts.get(str(value), 0) + 1
    return dict(sorted(counts.items()))


def _versioned_file(storage: LakeStorage, node: Mapping[str, Any]) -> tuple[str, Any | None]:
    template = VERSIONED_FILES[node["asset"]]
    key = template.format(partition=node["partition"], version16=node["data_version"][:16])
    return key, _read_json(storage, key)


def _descriptor(storage: LakeStorage, source: str) -> tuple[dict[str, str], str | None]:
    key = f"landing/{source}/{DESCRIPTOR_FILENAME}"
    try:
        raw = storage.read_bytes(key)
    except LakeKeyNotFound:
        return {}, f"{storage.uri(key)} is missing"
    try:
        descriptor = parse_descriptor(raw, storage.uri(key))
    except IngestError as exc:
        return {}, str(exc)
    return {
        "title": descriptor.title,
        "licence": descriptor.licence,
        "jurisdiction": descriptor.jurisdiction,
        "language": descriptor.language or NOT_RECORDED,
        "source_uri": descriptor.source_uri,
        "domain": descriptor.domain,
    }, None


def _ingested_provenance(storage: LakeStorage, manifest: DatasetManifest) -> dict[str, list[str]]:
    """Licence, jurisdiction and URI as stamped on the ingested records (first shard; one descriptor per source)."""
    if not manifest.shards:
        return {}
    table = pq.read_table(
        io.BytesIO(storage.read_bytes(manifest.shards[0].path)),
        columns=["licence", "jurisdiction", "source_uri"],
    )
    return {name: sorted({str(v) for v in table.column(name).to_pylist()}) for name in table.column_names}


def _source_entry(walk: _Walk, node: dict[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
    source = str(node["partition"])
    descriptor, problem = _descriptor(walk.storage, source)
    if problem:
        walk.gap(f"source {source}: descriptor not readable ({problem}); licence and jurisdiction not recorded")
    entry: dict[str, Any] = {
        "name": source,
        "title": descriptor.get("title", NOT_RECORDED),
        "licence": descriptor.get("licence", NOT_RECORDED),
        "jurisdiction": descriptor.get("jurisdiction", NOT_RECORDED),
        "language": descriptor.get("language", NOT_RECORDED),
        "source_uri": descriptor.get("source_uri", NOT_RECORDED),
        "domain": descriptor.get("domain", NOT_RECORDED),
        "descriptor": walk.storage.uri(f"landing/{source}/{DESCRIPTOR_FILENAME}"),
        "landing_version": str((record.get("input_data_versions") or {}).get(f"landing/{source}", NOT_RECORDED)),
        "records": node["counts"].get("records"),
        "rejects": node["counts"].get("rejects"),
        "node": node["id"],
    }
    manifests = walk.manifests_of(record)
    if source in manifests:
        ingested = _ingested_provenance(walk.storage, manifests[source][0])
        entry["ingested_as"] = ingested
        for name in ("licence", "jurisdiction", "source_uri"):
            stamped = ingested.get(name, [])
            if descriptor and stamped and stamped != [descriptor[name]]:
                walk.gap(
                    f"source {source}: the descriptor now says {name} {descriptor[name]!r} but the ingested "
                    f"records carry {', '.join(stamped)}; the records show what was ingested"
                )
    else:
        entry["ingested_as"] = NOT_RECORDED
        walk.gap(
            f"source {source}: the lake holds a newer raw_corpus than {node['id']}; licence and jurisdiction "
            "are the current descriptor's, not necessarily those at ingestion"
        )
    return entry


def _removed_by_source(node: Mapping[str, Any]) -> dict[str, Any] | str:
    for check in node["checks"]:
        if check["name"] == "removal_guardrail" and isinstance(check["figures"].get("per_source"), dict):
            return dict(check["figures"]["per_source"])
    return NOT_RECORDED


def _ratio(part: Any, whole: Any) -> float | None:
    return round(part / whole, 6) if isinstance(part, int) and isinstance(whole, int) and whole else None


def _retention_entry(walk: _Walk, node: dict[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
    counts = node["counts"]
    rows_in, kept, rejected = counts.get("in"), counts.get("kept"), counts.get("rejected")
    manifests = walk.manifests_of(record)
    rules: dict[str, int] | str = NOT_RECORDED
    if manifests:
        rules = {}
        for _kept, rejects in manifests.values():
            if rejects is not None:
                for rule, n in _count_column(walk.storage, rejects, "rule").items():
                    rules[rule] = rules.get(rule, 0) + n
        rules = dict(sorted(rules.items()))
    else:
        walk.gap(f"{node['id']}: rejects per rule not recorded (the lake holds a newer version)")
    return {
        "stage": node["asset"],
        "partition": node["partition"],
        "in": rows_in,
        "kept": kept,
        "rejected": rejected,
        "retention": _ratio(kept, rows_in),
        "removed_by_source": _removed_by_source(node),
        "rejects_by_rule": rules,
        "node": node["id"],
    }


def _pii_entry(walk: _Walk, node: dict[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
    source = str(node["partition"])
    entry: dict[str, Any] = {
        "source": source,
        "policy": NOT_RECORDED,
        "policy_sha256": NOT_RECORDED,
        "hits_by_kind": NOT_RECORDED,
        "rejects_by_rule": NOT_RECORDED,
        "counts": dict(node["counts"]),
        "structured_pii_left": next(
            (c["figures"] for c in node["checks"] if c["name"] == "no_structured_pii_left"), NOT_RECORDED
        ),
        "node": node["id"],
    }
    manifests = walk.manifests_of(record)
    if source not in manifests:
        walk.gap(
            f"{node['id']}: PII policy and hit counts not recorded for this version (the audit record keeps only "
            "a config hash and the lake holds a newer version)"
        )
        return entry
    kept, rejects = manifests[source]
    extra = kept.extra
    if extra.get("policy"):
        entry["policy"] = f"{extra['policy']}@{extra.get('policy_version', '?')}"
        entry["policy_sha256"] = str(extra.get("policy_sha256", NOT_RECORDED))
    else:
        walk.gap(f"{node['id']}: the manifest names no PII policy")
    if rejects is not None:
        entry["rejects_by_rule"] = _count_column(walk.storage, rejects, "rule")
    hits = read_manifest(walk.storage, PII_HITS, source)
    if hits is not None and hits.extra.get("input") == extra.get("input"):
        entry["hits_by_kind"] = _count_column(walk.storage, hits, "kind")
    else:
        walk.gap(f"{node['id']}: PII hit counts not recorded (no pii_hits manifest for this version)")
    return entry


def _gates_from(gates: Mapping[str, Any], source: str) -> list[dict[str, Any]]:
    return [
        {
            "name": str(name),
            "passed": bool(gate.get("passed")),
            "blocking": gate.get("blocking") if isinstance(gate.get("blocking"), bool) else NOT_RECORDED,
            "figures": dict(gate.get("figures") or {}),
            "source": source,
        }
        for name, gate in sorted(gates.items())
        if isinstance(gate, Mapping)
    ]


def _evaluation_entry(walk: _Walk, node: dict[str, Any]) -> dict[str, Any]:
    key, report = _versioned_file(walk.storage, node)
    entry: dict[str, Any] = {"node": node["id"], "task": node["partition"], "report": walk.storage.uri(key)}
    if not isinstance(report, dict):
        walk.gap(f"{node['id']}: eval report {walk.storage.uri(key)} not found; gates taken from the audit checks")
        entry["gates"] = [
            {
                "name": c["name"],
                "passed": c["passed"],
                "blocking": NOT_RECORDED,
                "figures": c["figures"],
                "source": "audit",
            }
            for c in node["checks"]
        ]
        return entry
    adapted = report.get("adapted") or {}
    entry |= {
        "headline_metric": report.get("headline_metric", NOT_RECORDED),
        "adapted": adapted.get("overall", NOT_RECORDED),
        "per_language": adapted.get("per_language", NOT_RECORDED),
        "without_adapter": (report.get("without_adapter") or {}).get("overall", NOT_RECORDED),
        "deployed": (report.get("deployed") or {}).get("overall") if report.get("deployed") else None,
        "benchmark": (report.get("benchmark") or {}).get("metrics", NOT_RECORDED),
        "benchmark_before": (report.get("benchmark") or {}).get("base_metrics", NOT_RECORDED),
        "eval_set_version": (report.get("benchmark") or {}).get("eval_set_version", NOT_RECORDED),
        "sft_data_version": report.get("sft_data_version", NOT_RECORDED),
        "adapter_version": report.get("adapter_version", NOT_RECORDED),
        "model_version": report.get("model_version", NOT_RECORDED),
        "gates": _gates_from(report.get("gates") or {}, "eval report"),
    }
    return entry


def _registry_entries(walk: _Walk, registry: ModelRegistry, nodes: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Registry state of every adapter version in the chain (registered_model records the adapter version)."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    models = set(registry.models())
    for node in nodes:
        if node["asset"] not in ("lora_adapter", "registered_model") or node["partition"] not in models:
            continue
        model, version = str(node["partition"]), node["data_version"]
        if (model, version) in seen:
            continue
        seen.add((model, version))
        try:
            entry = registry.entry(model, version)
        except RegistryError:
            walk.gap(f"{node['id']}: version {version[:16]} of {model} is not in the registry")
            continue
        acts = [
            {k: r.get(k) for k in ("seq", "event", "actor", "reason", "ts", "endpoint") if k in r}
            for r in walk.records
            if str(r.get("event", "")).startswith("registry.")
            and r.get("model") == model
            and r.get("version") == version
        ]
        if entry.approval is None:
            walk.gap(f"model {model} version {version[:16]}: not approved")
        out.append(
            {
                "model": model,
                "version": version,
                "status": entry.status,
                "registered_by": entry.registered_by,
                "registered_at": entry.registered_at,
                "approval": dict(entry.approval) if entry.approval else NOT_RECORDED,
                "deployment": dict(entry.deployment) if entry.deployment else NOT_RECORDED,
                "retirement": dict(entry.retirement) if entry.retirement else None,
                "health": dict(entry.health) if entry.health else None,
                "serving_periods": [p for p in registry.serving_periods(model) if p["version"] == version],
                "eval_metrics": dict(entry.eval_metrics),
                "gates": _gates_from(entry.gates, "registry"),
                "lineage": dict(entry.lineage),
                "audit_acts": acts,
            }
        )
    return out


def _attach(walk: _Walk, registry: ModelRegistry | None) -> dict[str, list[dict[str, Any]]]:
    by_id = {_node_id(r): r for rs in walk.materializations.values() for r in rs}
    sections: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ("sources", "pii", "retention", "sft_data", "training", "evaluation")
    }
    for node in walk.nodes.values():
        record = by_id[node["id"]]
        asset = node["asset"]
        if asset == RAW_CORPUS:
            sections["sources"].append(_source_entry(walk, node, record))
        if asset == PII_STAGE:
            sections["pii"].append(_pii_entry(walk, node, record))
        if asset in CURATION_STAGES:
            sections["retention"].append(_retention_entry(walk, node, record))
        if asset == "sft_dataset":
            key, manifest = _versioned_file(walk.storage, node)
            if manifest is None:
                walk.gap(f"{node['id']}: SFT data manifest {walk.storage.uri(key)} not found")
            sections["sft_data"].append({"node": node["id"], "manifest": manifest or NOT_RECORDED})
        if asset in ("cpt_model", "lora_adapter"):
            key, data = _versioned_file(walk.storage, node)
            if data is None:
                walk.gap(f"{node['id']}: {walk.storage.uri(key)} not found")
            if asset == "cpt_model" and isinstance(data, dict):
                mixture = data.get("mixture") or {}
                data = {
                    "version": data.get("version"),
                    "texts": data.get("texts"),
                    "realised_share": {g: v.get("realised_share") for g, v in (mixture.get("groups") or {}).items()},
                    "source_data_versions": data.get("source_data_versions"),
                }
            sections["training"].append(
                {"node": node["id"], "asset": asset, "file": walk.storage.uri(key), "recorded": data or NOT_RECORDED}
            )
        if asset == "eval_report":
            sections["evaluation"].append(_evaluation_entry(walk, node))
    sections["retention"].sort(key=lambda e: (CURATION_STAGES.index(e["stage"]), str(e["partition"])))
    sections["sources"].sort(key=lambda e: e["name"])
    sections["pii"].sort(key=lambda e: e["source"])
    return sections


# ---- the entry point ------------------------------------------------------------------------------------


def _choose(
    records: list[dict[str, Any]], asset: str, partition: str | None, version: str | None, known: Sequence[str]
) -> dict[str, Any]:
    if not records:
        raise LineageError(f"unknown asset {asset!r}: the audit trail has materialisations of {', '.join(known)}")
    partitions = sorted({str(r.get("partition")) for r in records if r.get("partition") is not None})
    if partition is not None:
        records = [r for r in records if r.get("partition") == partition]
        if not records:
            raise LineageError(
                f"asset {asset} has no materialisation of partition {partition!r}; recorded partitions: "
                f"{', '.join(partitions) or 'none (unpartitioned)'}"
            )
    elif len(partitions) > 1:
        raise LineageError(f"asset {asset} is partitioned; pass --partition, one of: {', '.join(partitions)}")
    if version:
        matching = [r for r in records if str(r.get("output_data_version", "")).startswith(version)]
        if not matching:
            versions = sorted({str(r.get("output_data_version", ""))[:16] for r in records})
            raise LineageError(
                f"asset {asset}{f' partition {partition}' if partition else ''} has no version {version!r}; "
                f"recorded versions: {', '.join(versions)}"
            )
        if len({r.get("output_data_version") for r in matching}) > 1:
            raise LineageError(f"asset {asset}: version prefix {version!r} is ambiguous; type more of it")
        records = matching
    return records[-1]


def build_lineage(
    asset: str,
    partition: str | None = None,
    version: str | None = None,
    *,
    audit: AuditLog,
    storage: LakeStorage,
    registry: ModelRegistry | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The lineage document of `asset` (newest recorded version, or the one `version` starts with)."""
    verification = audit.verify()
    records = audit.records()
    walk = _Walk(storage, records)
    target = _choose(
        list(walk.materializations.get(asset, [])), asset, partition, version, sorted(walk.materializations)
    )
    target_id = walk.visit(target)
    sections = _attach(walk, registry)
    registry_entries = _registry_entries(walk, registry, walk.nodes.values()) if registry is not None else []
    if registry is None:
        walk.gap("registry not consulted: approvals and deployments not included")
    if not verification.ok:
        walk.gap(f"the audit trail failed verification: {verification.reason}")
    nodes = sorted(walk.nodes.values(), key=lambda n: n["audit_seq"])
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "generated_at": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lake": storage.describe_location(),
        "target": {
            "asset": asset,
            "partition": target.get("partition"),
            "data_version": str(target.get("output_data_version") or NOT_RECORDED),
            "node": target_id,
        },
        "audit_trail": {
            "key": audit.key,
            "records": len(records),
            "intact": verification.ok,
            "verification": verification.reason,
        },
        "nodes": nodes,
        **sections,
        "registry": registry_entries,
        "gaps": walk.gaps,
    }
    return doc


def missing_links(doc: Mapping[str, Any]) -> list[str]:
    """Links a deployed model's lineage must have: licensed sources, a PII policy, gate results, an approval,
    and no version in the chain that failed its residency check."""
    missing = []
    if not doc["sources"]:
        missing.append("no raw source in the chain")
    for source in doc["sources"]:
        for name in ("licence", "jurisdiction"):
            if source[name] == NOT_RECORDED:
                missing.append(f"source {source['name']}: {name} not recorded")
    if not any(p["policy"] != NOT_RECORDED for p in doc["pii"]):
        missing.append("no PII policy recorded")
    if not any(e["gates"] for e in doc["evaluation"]) and not any(r["gates"] for r in doc["registry"]):
        missing.append("no gate results recorded")
    for node in doc["nodes"]:
        failed = [c for c in node["checks"] if c["name"] == "residency_compliant" and not c["passed"]]
        if failed:
            missing.append(
                f"{node['id']}: residency check failed ({'; '.join(failed[0]['figures'].get('violations', []))})"
            )
    return missing


# ---- rendering ------------------------------------------------------------------------------------------


@dataclass
class _Section:
    title: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    items: list[str] = field(default_factory=list)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value) or "none"
    return str(value)


def _short(version: Any) -> str:
    text = str(version)
    return text[:16] if _HEX_VERSION.match(text) else text


def _pct(value: Any) -> str:
    return f"{value * 100:.2f} %" if isinstance(value, int | float) else _fmt(value)


def _as_ingested(source: Mapping[str, Any]) -> str:
    stamped = source.get("ingested_as")
    if not isinstance(stamped, Mapping):
        return _fmt(stamped)
    if all(stamped.get(k) == [source[k]] for k in ("licence", "jurisdiction", "source_uri")):
        return "matches the descriptor"
    return _fmt(stamped)


def _input_links(node: Mapping[str, Any]) -> str:
    links = []
    for item in node["inputs"]:
        upstream = f"#{str(item['node']).rsplit('#', 1)[-1]}" if item["node"] else item["key"]
        links.append(f"{upstream} {item['link']}")
    return ", ".join(links) or "none"


def _gate_rows(gates: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    return [
        [g["name"], "PASS" if g["passed"] else "FAIL", _fmt(g["blocking"]), _fmt(g.get("figures", {}))[:200]]
        for g in gates
    ]


def _sections(doc: Mapping[str, Any]) -> list[_Section]:
    target = doc["target"]
    trail = doc["audit_trail"]
    summary = _Section(
        "Summary",
        facts=[
            ("Asset", target["asset"] + (f" / {target['partition']}" if target["partition"] else "")),
            ("Data version", target["data_version"]),
            ("Generated", doc["generated_at"]),
            ("Lake", _fmt(doc["lake"])),
            (
                "Audit trail",
                f"{trail['records']} records, {'intact' if trail['intact'] else 'BROKEN'}: {trail['verification']}",
            ),
            ("Versions in the chain", str(len(doc["nodes"]))),
            ("Gaps", str(len(doc["gaps"]))),
        ],
    )
    sections = [summary]
    sections.append(
        _Section(
            "Sources",
            header=["source", "licence", "jurisdiction", "language", "source URI", "records", "as ingested"],
            rows=[
                [
                    s["name"],
                    s["licence"],
                    s["jurisdiction"],
                    s["language"],
                    s["source_uri"],
                    _fmt(s.get("records")),
                    _as_ingested(s),
                ]
                for s in doc["sources"]
            ],
        )
    )
    sections.append(
        _Section(
            "PII policy",
            header=["source", "policy", "policy sha256", "in", "kept", "dropped", "hits by kind", "left after re-scan"],
            rows=[
                [
                    p["source"],
                    p["policy"],
                    _short(p["policy_sha256"]),
                    _fmt(p["counts"].get("in")),
                    _fmt(p["counts"].get("kept")),
                    _fmt(p["counts"].get("rejected")),
                    _fmt(p["hits_by_kind"]),
                    _fmt({k: v for k, v in p["structured_pii_left"].items() if v})
                    if isinstance(p["structured_pii_left"], Mapping)
                    else _fmt(p["structured_pii_left"]),
                ]
                for p in doc["pii"]
            ],
        )
    )
    sections.append(
        _Section(
            "Curation retention",
            header=["stage", "partition", "in", "kept", "removed", "retention", "removed by rule"],
            rows=[
                [
                    r["stage"],
                    _fmt(r["partition"]),
                    _fmt(r["in"]),
                    _fmt(r["kept"]),
                    _fmt(r["rejected"]),
                    _pct(r["retention"]),
                    _fmt(r["rejects_by_rule"]),
                ]
                for r in doc["retention"]
            ],
        )
    )
    for sft in doc["sft_data"]:
        manifest = sft["manifest"]
        facts = [("Node", sft["node"])]
        if isinstance(manifest, Mapping):
            facts += [
                ("Task", _fmt(manifest.get("task"))),
                ("Version", _fmt(manifest.get("version"))),
                ("Examples", f"{_fmt(manifest.get('examples'))} ({_fmt(manifest.get('splits'))})"),
                ("Built from", _fmt({k: _short(v) for k, v in (manifest.get("source_data_versions") or {}).items()})),
                ("Code version", _fmt(manifest.get("pipeline_code_version"))),
                ("Description", _fmt(manifest.get("description"))),
            ]
        else:
            facts.append(("Manifest", NOT_RECORDED))
        sections.append(_Section(f"SFT data: {sft['node']}", facts=facts))
    for item in doc["training"]:
        recorded = item["recorded"]
        facts = [("Node", item["node"]), ("File", item["file"])]
        if isinstance(recorded, Mapping):
            for key in ("base_model", "cpt_model", "sft_data_version", "examples", "realised_share", "canaries"):
                if key in recorded:
                    facts.append((key, _fmt(recorded[key])))
            config = recorded.get("training_config")
            if isinstance(config, Mapping):
                keys = ("method", "lora_rank", "learning_rate", "epochs", "seed")
                facts.append(("training config", _fmt({k: config[k] for k in keys if k in config})))
        else:
            facts.append(("Recorded", NOT_RECORDED))
        sections.append(_Section(f"Training: {item['asset']}", facts=facts))
    for ev in doc["evaluation"]:
        section = _Section(
            f"Evaluation and gates: {ev['task']}",
            facts=[
                ("Report", _fmt(ev.get("report"))),
                ("Headline metric", _fmt(ev.get("headline_metric", NOT_RECORDED))),
                ("With adapter", _fmt(ev.get("adapted", NOT_RECORDED))),
                ("Without adapter", _fmt(ev.get("without_adapter", NOT_RECORDED))),
                ("Deployed version", _fmt(ev.get("deployed"))),
                (
                    "Benchmark before → after",
                    f"{_fmt(ev.get('benchmark_before', NOT_RECORDED))} → {_fmt(ev.get('benchmark', NOT_RECORDED))}",
                ),
                ("Eval set version", _short(ev.get("eval_set_version", NOT_RECORDED))),
            ],
            header=["gate", "result", "blocking", "figures"],
            rows=_gate_rows(ev["gates"]),
        )
        sections.append(section)
    for entry in doc["registry"]:
        approval, deployment = entry["approval"], entry["deployment"]
        facts = [
            ("Model", entry["model"]),
            ("Version", entry["version"]),
            ("Status", entry["status"]),
            ("Registered", f"{entry['registered_at']} by {entry['registered_by']}"),
            (
                "Approved",
                f"{approval['at']} by {approval['by']}: {approval['reason']}"
                if isinstance(approval, Mapping)
                else NOT_RECORDED,
            ),
            (
                "Deployed",
                f"{deployment['at']} by {deployment['by']} at {deployment.get('endpoint')}: {deployment['reason']}"
                if isinstance(deployment, Mapping)
                else "not serving",
            ),
            ("Production health", _fmt(entry["health"])),
            ("Acts in the audit trail", _fmt([f"seq {a.get('seq')} {a.get('event')}" for a in entry["audit_acts"]])),
        ]
        sections.append(
            _Section(
                f"Registry: {entry['model']}",
                facts=facts,
                header=["from", "to", "endpoint", "deployed by", "approved by", "approval reason"],
                rows=[
                    [
                        _fmt(p.get("from")),
                        _fmt(p.get("to")) if p.get("to") else "serving",
                        _fmt(p.get("endpoint")),
                        _fmt(p.get("deployed_by")),
                        _fmt(p.get("approved_by")),
                        _fmt(p.get("approval_reason")),
                    ]
                    for p in entry["serving_periods"]
                ],
            )
        )
        if not doc["evaluation"]:
            sections.append(
                _Section(
                    f"Gates recorded in the registry: {entry['model']}",
                    header=["gate", "result", "blocking", "figures"],
                    rows=_gate_rows(entry["gates"]),
                )
            )
    sections.append(
        _Section(
            "Chain of versions",
            header=[
                "audit seq",
                "asset",
                "partition",
                "version",
                "code version",
                "run",
                "at",
                "by",
                "counts",
                "checks",
                "built from",
            ],
            rows=[
                [
                    str(n["audit_seq"]),
                    n["asset"],
                    _fmt(n["partition"]),
                    _short(n["data_version"]),
                    n["code_version"],
                    n["run_id"][:8],
                    n["materialized_at"],
                    n["materialized_by"],
                    _fmt(n["counts"]),
                    ", ".join(f"{c['name']} {'PASS' if c['passed'] else 'FAIL'}" for c in n["checks"]) or "none",
                    _input_links(n),
                ]
                for n in doc["nodes"]
            ],
        )
    )
    sections.append(
        _Section(
            "Where data was stored and computed",
            header=[
                "asset",
                "partition",
                "storage",
                "storage region",
                "KMS key",
                "compute",
                "hosts contacted",
                "residency",
            ],
            rows=[_residency_row(n) for n in doc["nodes"]],
        )
    )
    sections.append(_Section("Gaps in the record", items=list(doc["gaps"]) or ["none"]))
    return sections


def _residency_row(node: Mapping[str, Any]) -> list[str]:
    facts = node.get("residency") or {}
    storage = facts.get("storage") or {}
    compute = facts.get("compute") or {}
    places = [compute, *compute.get("remote", [])] if compute else []
    where = "; ".join(f"{p.get('backend', '?')} in {p.get('region') or '?'}" for p in places)
    hosts = ", ".join(e.get("host", "?") for e in facts.get("egress") or []) or "none"
    verdict = [c for c in node["checks"] if c["name"] == "residency_compliant"]
    check = ("PASS" if verdict[0]["passed"] else "FAIL") if verdict else "not run"
    if not facts:
        return [node["asset"], _fmt(node["partition"]), "not recorded", "", "", "", "", check]
    return [
        node["asset"],
        _fmt(node["partition"]),
        str(storage.get("uri") or "?"),
        str(storage.get("region") or "?"),
        str(storage.get("kms_key_id") or "none"),
        where,
        hosts,
        check,
    ]


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: Mapping[str, Any]) -> str:
    """The document as a Markdown report (what the Dagster UI shows)."""
    target = doc["target"]
    lines = [f"# Lineage of {target['asset']}" + (f" / {target['partition']}" if target["partition"] else ""), ""]
    for section in _sections(doc):
        lines += [f"## {section.title}", ""]
        lines += [f"- **{_md_cell(k)}**: {_md_cell(v)}" for k, v in section.facts]
        if section.facts:
            lines.append("")
        if section.header:
            if section.rows:
                lines.append("| " + " | ".join(section.header) + " |")
                lines.append("|" + "---|" * len(section.header))
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in section.rows]
            else:
                lines.append(f"_{NOT_RECORDED}_")
            lines.append("")
        lines += [f"- {_md_cell(item)}" for item in section.items]
        if section.items:
            lines.append("")
    return "\n".join(lines)


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}"
    "th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top;font-size:.9em}"
    "th{background:#f0f0f0}dt{font-weight:600}dd{margin:0 0 .4em 1em}"
)


def to_html(doc: Mapping[str, Any]) -> str:
    """The document as one self-contained HTML page: every value escaped, no scripts or external assets."""
    esc = html.escape
    target = doc["target"]
    title = f"Lineage of {target['asset']}" + (f" / {target['partition']}" if target["partition"] else "")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    for section in _sections(doc):
        parts.append(f"<h2>{esc(section.title)}</h2>")
        if section.facts:
            parts.append("<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in section.facts) + "</dl>")
        if section.header:
            if section.rows:
                head = "".join(f"<th>{esc(h)}</th>" for h in section.header)
                body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in section.rows)
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            else:
                parts.append(f"<p><em>{esc(NOT_RECORDED)}</em></p>")
        if section.items:
            parts.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in section.items) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def to_json(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def content_version(doc: Mapping[str, Any]) -> str:
    """sha256 of the document without its generation time: equal lineage gives an equal version."""
    body = {k: v for k, v in doc.items() if k != "generated_at"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def report_targets(registry: ModelRegistry) -> list[tuple[str, str, bool]]:
    """(model, version, serving) for every registered model: the serving version, else the newest
    registered one; serving models first."""
    targets = []
    for model in registry.models():
        entries = registry.entries(model)
        if not entries:
            continue
        serving = registry.deployed(model)
        chosen = serving or entries[-1]
        targets.append((model, chosen.version, serving is not None))
    return sorted(targets, key=lambda t: (not t[2], t[0]))


def attach_runs(doc: dict[str, Any], run_of: Callable[[str], Mapping[str, Any] | None]) -> None:
    """Add what the Dagster instance says of each node's run (status, job, tags) under `details.run`."""
    for node in doc["nodes"]:
        found = run_of(node["run_id"]) if node["run_id"] != NOT_RECORDED else None
        node["details"]["run"] = dict(found) if found is not None else NOT_RECORDED
