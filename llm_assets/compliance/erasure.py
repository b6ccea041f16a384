"""Erasure impact: everywhere one document (or every document holding one person's PII hash) reached.

Reads the lake only: every Parquet shard under `datasets/` (current and superseded writes, since a rewrite
leaves the old folder in place), the SFT exports, CPT data manifests, adapter `lineage.json` files, eval
reports and the registry. The report never repeats document text: it names ids, versions, stages and rules.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from llm_assets.compliance.exclusions import EXCLUSIONS_KEY, read_exclusions
from llm_assets.lake import LakeKeyNotFound, LakeStorage, read_manifest
from llm_assets.registry import ModelRegistry

SCHEMA_VERSION = "1"
ID_COLUMNS = ("id", "record_id", "member_id", "kept_id")
# Columns that hold document content; they are never copied into the report.
CONTENT_COLUMNS = frozenset({"text", "excerpt", "metadata"})
SFT_PREFIX = "datasets_export/sft"
CPT_PREFIX = "models/cpt"
ADAPTER_PREFIX = "models/adapters"
EVAL_PREFIX = "evaluation/reports"
SFT_SPLITS = ("train", "test")


class ErasureError(ValueError):
    """The asked-for document or person hash is nowhere in the lake; one line saying so."""


def sft_example_id(task: str, source_id: str, template_version: str) -> str:
    """The id `llm_assets.training.sft_data` gives the example a task builds from record `source_id`."""
    return hashlib.sha256(f"{task}\x00{source_id}\x00{template_version}".encode()).hexdigest()[:32]


def _read_json(storage: LakeStorage, key: str) -> Any | None:
    try:
        return json.loads(storage.read_bytes(key))
    except (LakeKeyNotFound, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _dataset_of(key: str) -> tuple[str, str | None, str]:
    """(dataset, partition, write folder) of a shard key `datasets/<dataset>/<partition>/<write>/part-*.parquet`."""
    _, dataset, partition, write, *_ = key.split("/")
    return dataset, None if partition == "__all__" else partition, write


def _current_shards(storage: LakeStorage, keys: Iterable[str]) -> dict[str, str]:
    """Shard key -> data version, for every shard a committed manifest points to."""
    current: dict[str, str] = {}
    for dataset, partition in sorted({_dataset_of(k)[:2] for k in keys}, key=str):
        manifest = read_manifest(storage, dataset, partition)
        if manifest is not None:
            current.update({s.path: manifest.data_version for s in manifest.shards})
    return current


def _matching_rows(data: bytes, ids: set[str]) -> list[dict[str, Any]]:
    schema = pq.read_schema(io.BytesIO(data))
    columns = [c for c in ID_COLUMNS if c in schema.names]
    if not columns:
        return []
    table = pq.read_table(io.BytesIO(data), columns=[n for n in schema.names if n not in CONTENT_COLUMNS])
    wanted = pa.array(sorted(ids), pa.string())
    mask = None
    for column in columns:
        hit = pc.is_in(table.column(column), value_set=wanted)
        mask = hit if mask is None else pc.or_(mask, hit)
    return table.filter(mask).to_pylist() if mask is not None else []


def _role(dataset: str, row: Mapping[str, Any], doc_id: str) -> dict[str, Any]:
    """What one matching row says about the document, by the kind of dataset it is in."""
    if dataset == "dedup_clusters":
        return {
            "role": "dedup_kept" if row["kept_id"] == doc_id else "dedup_duplicate",
            "cluster_id": row["cluster_id"],
        }
    if dataset == "dedup_paragraph_events":
        role = "paragraph_owner" if row["kept_id"] == doc_id else "paragraph_removed"
        return {"role": role, "rule": row.get("rule")}
    if dataset == "pii_hits":
        return {"role": "pii_hit", "kind": row.get("kind"), "action": row.get("action")}
    if dataset.endswith("_rejects"):
        return {"role": "rejected", "stage": row.get("stage"), "rule": row.get("rule")}
    found = {"role": "kept"}
    found |= {k: row[k] for k in ("split", "lang", "source", "file", "locator") if row.get(k) is not None}
    return found


def _scan_datasets(storage: LakeStorage, ids: set[str]) -> list[dict[str, Any]]:
    """Every row of every shard in the lake that names one of `ids`, grouped per dataset write."""
    keys = [o.key for o in storage.list_objects("datasets/") if o.key.endswith(".parquet")]
    current = _current_shards(storage, keys)
    found: dict[tuple[str, str | None, str, str], dict[str, Any]] = {}
    for key in keys:
        dataset, partition, write = _dataset_of(key)
        for row in _matching_rows(storage.read_bytes(key), ids):
            for doc_id in sorted(ids.intersection(str(row.get(c)) for c in ID_COLUMNS if row.get(c) is not None)):
                entry = found.setdefault(
                    (doc_id, dataset, str(partition), write),
                    {
                        "doc_id": doc_id,
                        "dataset": dataset,
                        "partition": partition,
                        "write": write,
                        "current": key in current,
                        "data_version": current.get(key),
                        "rows": [],
                    },
                )
                entry["rows"].append(_role(dataset, row, doc_id))
    return sorted(found.values(), key=lambda e: (e["doc_id"], e["dataset"], str(e["partition"]), e["write"]))


def _clusters(storage: LakeStorage, ids: set[str]) -> list[dict[str, Any]]:
    manifest = read_manifest(storage, "dedup_clusters", None)
    if manifest is None:
        return []
    rows: list[dict[str, Any]] = []
    for shard in manifest.shards:
        rows += pq.read_table(io.BytesIO(storage.read_bytes(shard.path))).to_pylist()
    members: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        members.setdefault(row["cluster_id"], []).append(row)
    out = []
    for cluster_id, group in sorted(members.items()):
        for doc_id in sorted(ids.intersection(r["member_id"] for r in group)):
            kept_id = group[0]["kept_id"]
            others = sorted({r["member_id"] for r in group} - {doc_id})
            out.append(
                {
                    "doc_id": doc_id,
                    "cluster_id": cluster_id,
                    "kept_id": kept_id,
                    "was_kept": kept_id == doc_id,
                    "rule": next(r["rule"] for r in group if r["member_id"] == doc_id),
                    "members": sorted(r["member_id"] for r in group),
                    # Duplicates carry the same content: those the document suppressed, or the copy that survived.
                    "content_also_in": others if kept_id == doc_id else [kept_id],
                    "data_version": manifest.data_version,
                }
            )
    return out


def _folders(storage: LakeStorage, prefix: str, filename: str) -> list[str]:
    return sorted(o.key for o in storage.list_objects(f"{prefix}/") if o.key.endswith(f"/{filename}"))


def _sft_sets(storage: LakeStorage, ids: set[str]) -> list[dict[str, Any]]:
    out = []
    for key in _folders(storage, SFT_PREFIX, "manifest.json"):
        manifest = _read_json(storage, key)
        if not isinstance(manifest, dict):
            continue
        task = str(manifest.get("task"))
        folder = key.rsplit("/", 1)[0]
        by_example = {sft_example_id(task, d, str(manifest.get("template_version"))): d for d in ids}
        for split in SFT_SPLITS:
            try:
                lines = storage.read_bytes(f"{folder}/{split}.prompt_completion.jsonl").splitlines()
            except LakeKeyNotFound:
                continue
            for line in lines:
                example_id = json.loads(line).get("id") if line.strip() else None
                if example_id in by_example:
                    out.append(
                        {
                            "doc_id": by_example[example_id],
                            "task": task,
                            "data_version": manifest.get("version"),
                            "split": split,
                            "example_id": example_id,
                            "folder": folder,
                        }
                    )
    return out


def _cpt_models(storage: LakeStorage, kept: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """CPT models whose mixture drew on a curated version of a source holding the document.

    The mixture samples the train split, so a model is listed when the source was in its input: conservative,
    since `version_matches` false only means that curated version is no longer known to the lake.
    """
    curated = [k for k in kept if k["dataset"] == "curated_corpus"]
    out = []
    for key in _folders(storage, CPT_PREFIX, "data_manifest.json"):
        manifest = _read_json(storage, key)
        if not isinstance(manifest, dict):
            continue
        versions = manifest.get("source_data_versions") or {}
        for entry in curated:
            recorded = versions.get(f"curated_corpus/{entry['partition']}")
            if recorded is None:
                continue
            split = next((r.get("split") for r in entry["rows"] if r["role"] == "kept"), None)
            out.append(
                {
                    "doc_id": entry["doc_id"],
                    "model_prefix": key.rsplit("/", 1)[0],
                    "version16": key.split("/")[-2],
                    "curated_version": recorded,
                    "version_matches": recorded == entry["data_version"],
                    "split": split,
                    "in_training_mixture": split == "train",
                }
            )
    return out


def _adapters(storage: LakeStorage, sft_versions: set[str], cpt_version16s: set[str]) -> list[dict[str, Any]]:
    out = []
    for key in _folders(storage, ADAPTER_PREFIX, "lineage.json"):
        lineage = _read_json(storage, key)
        if not isinstance(lineage, dict):
            continue
        via = []
        if lineage.get("sft_data_version") in sft_versions:
            via.append("sft_data")
        if str(lineage.get("cpt_model", ""))[:16] in cpt_version16s:
            via.append("cpt_model")
        if via:
            out.append(
                {
                    "task": lineage.get("task", key.split("/")[2]),
                    "version16": key.split("/")[-2],
                    "folder": key.rsplit("/", 1)[0],
                    "sft_data_version": lineage.get("sft_data_version"),
                    "cpt_model": lineage.get("cpt_model"),
                    "via": via,
                }
            )
    return out


def _registry(registry: ModelRegistry, adapters: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    affected = {(a["task"], a["version16"]) for a in adapters}
    sft = {a["sft_data_version"] for a in adapters}
    out = []
    for model in registry.models():
        periods = registry.serving_periods(model)
        for entry in registry.entries(model):
            if (model, entry.version[:16]) not in affected and entry.lineage.get("sft_data_version") not in sft:
                continue
            out.append(
                {
                    "model": model,
                    "version": entry.version,
                    "status": entry.status,
                    "deployment": dict(entry.deployment) if entry.deployment else None,
                    "serving_periods": [p for p in periods if p.get("version") == entry.version],
                }
            )
    return out


def _eval_reports(storage: LakeStorage, adapters: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    adapter16 = {a["version16"] for a in adapters}
    sft = {a["sft_data_version"] for a in adapters}
    out = []
    for key in _folders(storage, EVAL_PREFIX, "report.json"):
        report = _read_json(storage, key)
        if not isinstance(report, dict):
            continue
        if str(report.get("adapter_version", ""))[:16] in adapter16 or report.get("sft_data_version") in sft:
            out.append(
                {
                    "task": key.split("/")[2],
                    "version16": key.split("/")[-2],
                    "key": key,
                    "adapter_version": report.get("adapter_version"),
                    "sft_data_version": report.get("sft_data_version"),
                }
            )
    return out


def documents_with_hash(storage: LakeStorage, person_hash: str) -> list[dict[str, Any]]:
    """PII hits whose salted hash is `person_hash`: (record id, source, kind), from every pii_hits shard."""
    hits: dict[tuple[str, str, str], dict[str, Any]] = {}
    for info in storage.list_objects("datasets/pii_hits/"):
        if not info.key.endswith(".parquet"):
            continue
        table = pq.read_table(io.BytesIO(storage.read_bytes(info.key)), columns=["record_id", "kind", "value_hash"])
        table = table.filter(pc.equal(table.column("value_hash"), person_hash))
        source = _dataset_of(info.key)[1] or ""
        for row in table.to_pylist():
            hits[(row["record_id"], source, row["kind"])] = {
                "doc_id": row["record_id"],
                "source": source,
                "kind": row["kind"],
            }
    return sorted(hits.values(), key=lambda h: (h["doc_id"], h["kind"]))


def rebuild_plan(sources: Sequence[str], tasks: Sequence[str], models: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The jobs to re-run, in order, once the documents are on the exclusion list."""
    launch = "dagster job launch -m llm_assets.definitions -j {job}"
    steps = [launch.format(job="corpus_pipeline") + f' --tags \'{{"dagster/partition": "{s}"}}\'' for s in sources]
    steps.append(launch.format(job="corpus_curation"))
    steps += [launch.format(job="task_adaptation") + f' --tags \'{{"dagster/partition": "{t}"}}\'' for t in tasks]
    steps += [
        f"llm-assets registry retire {m['model']} {m['version'][:16]} --by NAME --reason 'erasure request' "
        "(after its rebuilt successor is approved and deployed)"
        for m in models
        if m["status"] != "retired"
    ]
    return {"sources": list(sources), "tasks": list(tasks), "steps": steps}


def erasure_impact(
    storage: LakeStorage,
    *,
    doc_id: str | None = None,
    person_hash: str | None = None,
    registry: ModelRegistry | None = None,
) -> dict[str, Any]:
    """Every dataset version, dedup cluster, SFT set, model, deployment and eval report a document reached.

    Give exactly one of `doc_id` or `person_hash` (a salted value hash from `pii_hits`, which maps to the
    documents that contained it). Raises ErasureError when nothing in the lake names it.
    """
    if (doc_id is None) == (person_hash is None):
        raise ErasureError("give exactly one of doc_id or person_hash")
    person_hits: list[dict[str, Any]] = []
    if person_hash is not None:
        person_hits = documents_with_hash(storage, person_hash)
        if not person_hits:
            raise ErasureError(f"no PII hit with hash {person_hash[:16]}… in {storage.uri('datasets/pii_hits/')}")
        ids = {h["doc_id"] for h in person_hits}
    else:
        ids = {str(doc_id)}
    datasets = _scan_datasets(storage, ids)
    if not datasets:
        raise ErasureError(f"document {doc_id} is in no dataset under {storage.uri('datasets/')}; check the id")
    clusters = _clusters(storage, ids)
    sft = _sft_sets(storage, ids)
    cpt = _cpt_models(storage, datasets)
    adapters = _adapters(storage, {s["data_version"] for s in sft}, {c["version16"] for c in cpt})
    models = _registry(registry or ModelRegistry(storage), adapters)
    located = {
        (e["doc_id"], r.get("source") or e["partition"], r.get("file"), r.get("locator"))
        for e in datasets
        if e["dataset"] == "raw_corpus"
        for r in e["rows"]
    }
    landing = [
        {"doc_id": d, "source": s, "key": f"landing/{s}/{f}", "locator": loc}
        for d, s, f, loc in sorted(located, key=str)
        if f is not None
    ]
    sources = sorted({e["partition"] for e in datasets if e["partition"] is not None})
    tasks = sorted({s["task"] for s in sft} | {a["task"] for a in adapters})
    exclusions = [e for e in read_exclusions(storage) if e["doc_id"] in ids]
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "query": {"doc_id": doc_id, "person_hash": person_hash},
        "documents": sorted(ids),
        "person_hits": person_hits,
        "landing": landing,
        "datasets": datasets,
        "superseded_writes": sorted(
            {
                f"datasets/{e['dataset']}/{e['partition'] or '__all__'}/{e['write']}/"
                for e in datasets
                if not e["current"]
            }
        ),
        "dedup_clusters": clusters,
        "content_also_in": sorted({d for c in clusters for d in c["content_also_in"]} - ids),
        "sft_sets": sft,
        "cpt_models": cpt,
        "adapters": adapters,
        "registry": models,
        "eval_reports": _eval_reports(storage, adapters),
        "exclusions": exclusions,
        "exclusions_key": EXCLUSIONS_KEY,
        "rebuild": rebuild_plan(sources, tasks, models),
    }


def summary(doc: Mapping[str, Any]) -> dict[str, int]:
    """Counts per section, for the audit record and the command's last line."""
    keys = ("documents", "datasets", "dedup_clusters", "sft_sets", "cpt_models", "adapters", "registry", "eval_reports")
    return {k: len(doc[k]) for k in keys}


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return lines


def to_markdown(doc: Mapping[str, Any]) -> str:
    query = doc["query"]
    asked = f"document `{query['doc_id']}`" if query["doc_id"] else f"person hash `{query['person_hash'][:16]}…`"
    out = [f"# Erasure impact: {asked}", "", f"Generated {doc['generated_at']}; documents: "]
    out[-1] += ", ".join(f"`{d}`" for d in doc["documents"])
    sections: list[tuple[str, list[str], list[list[Any]]]] = [
        (
            "Landing files (still hold the text)",
            ["doc", "key", "locator"],
            [[d["doc_id"][:12], d["key"], d["locator"]] for d in doc["landing"]],
        ),
        (
            "Dataset versions",
            ["doc", "dataset", "partition", "version", "current", "what"],
            [
                [
                    e["doc_id"][:12],
                    e["dataset"],
                    e["partition"],
                    (e["data_version"] or e["write"])[:16],
                    e["current"],
                    "; ".join(
                        " ".join(f"{k}={v}" for k, v in r.items() if k not in ("source", "file", "locator"))
                        for r in e["rows"]
                    ),
                ]
                for e in doc["datasets"]
            ],
        ),
        (
            "Dedup clusters",
            ["doc", "cluster", "kept", "was kept", "rule", "content also in"],
            [
                [
                    c["doc_id"][:12],
                    c["cluster_id"][:12],
                    c["kept_id"][:12],
                    c["was_kept"],
                    c["rule"],
                    ", ".join(m[:12] for m in c["content_also_in"]),
                ]
                for c in doc["dedup_clusters"]
            ],
        ),
        (
            "SFT sets",
            ["doc", "task", "data version", "split"],
            [[s["doc_id"][:12], s["task"], str(s["data_version"])[:16], s["split"]] for s in doc["sft_sets"]],
        ),
        (
            "CPT models",
            ["doc", "model", "curated version", "matches", "in mixture"],
            [
                [
                    c["doc_id"][:12],
                    c["version16"],
                    str(c["curated_version"])[:16],
                    c["version_matches"],
                    c["in_training_mixture"],
                ]
                for c in doc["cpt_models"]
            ],
        ),
        (
            "Adapters",
            ["task", "version", "via"],
            [[a["task"], a["version16"], ", ".join(a["via"])] for a in doc["adapters"]],
        ),
        (
            "Registry and deployments",
            ["model", "version", "status", "endpoint", "serving periods"],
            [
                [
                    m["model"],
                    m["version"][:16],
                    m["status"],
                    (m["deployment"] or {}).get("endpoint"),
                    len(m["serving_periods"]),
                ]
                for m in doc["registry"]
            ],
        ),
        ("Eval reports", ["task", "report"], [[r["task"], r["key"]] for r in doc["eval_reports"]]),
    ]
    for title, header, rows in sections:
        out += ["", f"## {title}", ""]
        out += _table(header, rows) if rows else ["none"]
    if doc["content_also_in"]:
        out += [
            "",
            "Duplicates carrying the same content (exclude them too): "
            + ", ".join(f"`{d}`" for d in doc["content_also_in"]),
        ]
    if doc["superseded_writes"]:
        out += [
            "",
            "Superseded writes still in the lake (delete them to erase): "
            + ", ".join(f"`{w}`" for w in doc["superseded_writes"]),
        ]
    out += ["", "## Rebuild", "", *[f"{n}. `{s}`" for n, s in enumerate(doc["rebuild"]["steps"], start=1)]]
    return "\n".join(out) + "\n"


def to_json(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"
