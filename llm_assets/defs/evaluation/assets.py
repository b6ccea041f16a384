"""Evaluation wiring: the pilot eval Q&A set, grounded by construction and decontaminated against training data.

Nobody should trust a number from an eval set people have not checked: the pilot carries a human-review
check that says "awaiting review" until labels land in the lake, and never passes without them.
"""

import hashlib
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from llm_assets.curation import pipeline
from llm_assets.defs.audit_trail import record_check, record_materialization
from llm_assets.defs.curation.assets import code_version_of, curated_corpus
from llm_assets.defs.ingestion.partitions import sources_partitions
from llm_assets.defs.training.assets import SFT_PREFIX, SFT_TASKS, sft_dataset
from llm_assets.evaluation.decontamination import NgramIndex, decontaminate
from llm_assets.evaluation.extractive import (
    EvalItem,
    decontamination_text,
    dedupe,
    dedupe_key_of,
    generate_items,
    pilot_batch,
    stratum_counts,
    validate_item,
)
from llm_assets.evaluation.llm_generator import LlmGeneratorConfig, generate_llm_items, validate_llm_item
from llm_assets.lake import LakeError, LakeStorage, iter_shards
from llm_assets.plots import bar_chart
from llm_assets.resources.endpoint import EndpointError, EndpointRequestError, InferenceEndpoint
from llm_assets.resources.lake import LakeResource

EVAL_QA_PREFIX = "evaluation/qa/pilot"
REVIEW_PREFIX = "evaluation/qa/reviews"


def generator_settings(config: "EvalQaPilotConfig") -> dict[str, Any]:
    """The generator settings the pilot records and the scale-up reuses unchanged (the locked recipe)."""
    return {
        "seed": config.seed,
        "per_record": config.per_record,
        "ngram": config.ngram,
        "llm": {
            "template_version": config.llm_template_version,
            "temperature": config.llm_temperature,
            "top_p": config.llm_top_p,
            "max_tokens": config.llm_max_tokens,
            "min_passage_chars": config.llm_min_passage_chars,
        },
    }


@dataclass
class GeneratedItems:
    """Decontaminated candidate items over the held-out curated records, with what was removed and why."""

    items: list[EvalItem]
    held_out: list[dict[str, Any]]
    train_docs: list[tuple[str, str]]
    sft_versions: dict[str, str]
    curated_versions: dict[str, str]
    index: NgramIndex
    contaminated: list[str]
    overlaps: list[Any]
    llm_settings: LlmGeneratorConfig | None
    llm_summary: dict[str, Any] | None
    llm_rejects: list[dict[str, Any]]


def generate_candidates(
    context: dg.AssetExecutionContext,
    storage: LakeStorage,
    settings: dict[str, Any],
    endpoint: InferenceEndpoint,
    llm_records: int,
) -> GeneratedItems:
    """Extractive items (and LLM items when `llm_records`) from dev/test records, minus any that share an n-gram
    with the curated train split or an SFT set."""
    sources = sorted(context.instance.get_dynamic_partitions(sources_partitions.name or "sources"))
    held_out: list[dict[str, Any]] = []
    train_docs: list[tuple[str, str]] = []
    for source in sources:
        for shard in iter_shards(storage, pipeline.input_manifest(storage, pipeline.CURATED, source)):
            for row in shard.select(["id", "text", "lang", "split", "domain"]).to_pylist():
                if row["split"] == "train":
                    train_docs.append((row["id"], row["text"]))
                else:
                    held_out.append({**row, "lang": row["lang"] or "und", "domain": row["domain"] or "general"})
    sft_versions = {}
    for task in SFT_TASKS.get_partition_keys():
        try:
            prefix = json.loads(storage.read_bytes(f"{SFT_PREFIX}/{task}/current.json"))["prefix"]
        except LakeError:
            continue  # that task's set was never built: nothing of it can leak
        sft_versions[task] = prefix
        for line in storage.read_bytes(f"{prefix}/train.prompt_completion.jsonl").splitlines():
            if line.strip():
                row = json.loads(line)
                train_docs.append((f"sft/{task}/{row['id']}", f"{row['prompt']}{row['completion']}"))
    seed = settings["seed"]
    items = dedupe(generate_items(held_out, per_record=settings["per_record"], seed=seed))
    llm_settings, llm_summary, llm_rejects = None, None, []
    if llm_records:
        llm = settings["llm"]
        llm_settings = LlmGeneratorConfig(
            template_version=llm["template_version"],
            temperature=llm["temperature"],
            top_p=llm["top_p"],
            max_tokens=llm["max_tokens"],
            seed=seed,
            per_record=1,
            min_passage_chars=llm["min_passage_chars"],
        )
        chosen = random.Random(seed).sample(held_out, min(llm_records, len(held_out)))
        context.log.info(f"LLM generator: {len(chosen)} records to {endpoint.base_url} ({endpoint.model})")
        try:
            generated = generate_llm_items(
                chosen,
                endpoint,
                llm_settings,
                model_name=endpoint.model,
                existing_keys={dedupe_key_of(item) for item in items},
                request_errors=(EndpointRequestError,),  # one refused prompt is a reject; an outage fails the run
            )
        except EndpointError as exc:
            raise dg.Failure(f"{context.asset_key.to_user_string()} LLM generator: {exc}") from exc
        items += generated.accepted
        llm_rejects = [asdict(r) for r in generated.rejected]
        llm_summary = {
            "endpoint": endpoint.base_url,
            "model": endpoint.model,
            "template": f"{llm_settings.template_name}@{llm_settings.template_version}",
            "template_hash": generated.template_hash,
            "records": len(chosen),
            "requests": generated.requests,
            "accepted": len(generated.accepted),
            "rejected": generated.reason_counts,
            "temperature": llm_settings.temperature,
            "top_p": llm_settings.top_p,
        }
    index = NgramIndex.build(train_docs, n=settings["ngram"])
    by_id = {item.id: item for item in items}
    clean, contaminated, overlaps = decontaminate(((i.id, decontamination_text(i)) for i in items), index)
    return GeneratedItems(
        items=[by_id[item_id] for item_id, _ in clean],
        held_out=held_out,
        train_docs=train_docs,
        sft_versions=sft_versions,
        curated_versions={
            f"curated_corpus/{s}": pipeline.input_manifest(storage, pipeline.CURATED, s).data_version for s in sources
        },
        index=index,
        contaminated=list(contaminated),
        overlaps=list(overlaps),
        llm_settings=llm_settings,
        llm_summary=llm_summary,
        llm_rejects=llm_rejects,
    )


def grounding_problems(
    items: list[EvalItem], held_out: list[dict[str, Any]], llm_settings: LlmGeneratorConfig | None
) -> dict[str, list[str]]:
    """Items whose answer is not the exact span of their cited source record, with what is wrong."""
    sources_text = {row["id"]: row["text"] for row in held_out}
    problems = {
        item.id: validate_llm_item(item, sources_text[item.source_id], llm_settings)
        if llm_settings is not None and item.generator.startswith("llm:")
        else validate_item(item, sources_text[item.source_id])
        for item in items
    }
    return {k: v for k, v in problems.items() if v}


class EvalQaPilotConfig(dg.Config):
    """A stratified pilot batch of extractive cloze and multiple-choice items from held-out curated text."""

    pilot_size: int = Field(default=200, ge=1, description="Items in the pilot batch (the issue: 100-300).")
    per_record: int = Field(default=3, ge=1, description="Answers drawn per source record at most.")
    seed: int = 0
    ngram: int = Field(default=8, ge=3, description="Word n-gram length for decontamination.")
    min_acceptance: float = Field(default=0.9, ge=0, le=1, description="Share of reviewed items judged correct.")
    llm_records: int = Field(
        default=0,
        ge=0,
        description="Held-out records also sent to the LLM generator through the inference_endpoint resource "
        "(locked template, JSON validated, grounded in the record); 0: extractive items only.",
    )
    llm_template_version: str = Field(default="v1", description="Locked prompt template version (grounded_qa).")
    llm_temperature: float = Field(default=0.2, ge=0, le=0.7)
    llm_top_p: float = Field(default=0.9, gt=0, le=0.95)
    llm_max_tokens: int = Field(default=256, ge=32)
    llm_min_passage_chars: int = Field(
        default=40, ge=1, description="Shorter records are not sent (too little text to ground a question in)."
    )


@dg.asset(
    deps=[curated_corpus, sft_dataset],
    group_name="evaluation",
    code_version="eval_qa_pilot-v1",
    kinds={"json"},
    check_specs=[
        dg.AssetCheckSpec(
            "grounded",
            asset="eval_qa_pilot",
            blocking=True,
            description="Every answer is the exact span of its cited source record.",
        ),
        dg.AssetCheckSpec(
            "decontaminated",
            asset="eval_qa_pilot",
            blocking=True,
            description="No item shares an n-gram with the curated train split or an SFT set.",
        ),
        dg.AssetCheckSpec(
            "human_review",
            asset="eval_qa_pilot",
            description="Reviewers judged >= min_acceptance of the items correct; never passes without labels.",
        ),
    ],
)
def eval_qa_pilot(
    context: dg.AssetExecutionContext,
    config: EvalQaPilotConfig,
    lake: LakeResource,
    inference_endpoint: InferenceEndpoint,
) -> dg.MaterializeResult:
    """The pilot eval set: extractive items from dev/test records, stratified by domain, language, difficulty."""
    storage = lake.storage()
    settings = generator_settings(config)
    generated = generate_candidates(context, storage, settings, inference_endpoint, config.llm_records)
    items, held_out, index = generated.items, generated.held_out, generated.index
    contaminated, overlaps, sft_versions = generated.contaminated, generated.overlaps, generated.sft_versions
    train_docs, llm_summary, llm_rejects = generated.train_docs, generated.llm_summary, generated.llm_rejects
    llm_settings = generated.llm_settings
    pilot = pilot_batch(items, config.pilot_size, seed=config.seed)
    ungrounded = grounding_problems(pilot, held_out, llm_settings)

    lines = "".join(json.dumps(asdict(item), ensure_ascii=False) + "\n" for item in pilot).encode()
    version = hashlib.sha256(lines).hexdigest()
    prefix = f"{EVAL_QA_PREFIX}/{version[:16]}"
    storage.write_bytes(f"{prefix}/items.jsonl", lines)
    removed = [{"item_id": o.item_id, "doc_id": o.doc_id, "ngram": o.ngram, "count": o.count} for o in overlaps]
    if llm_summary is not None:
        # Every model output that did not become an item, with its reason (never its text: it may hold PII).
        rejects = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in llm_rejects).encode()
        storage.write_bytes(f"{prefix}/llm_rejects.jsonl", rejects)
    storage.write_bytes(f"{prefix}/contamination.json", json.dumps(removed, indent=2, ensure_ascii=False).encode())
    strata = {"/".join(k): v for k, v in sorted(stratum_counts(pilot).items())}
    manifest = {
        "version": version,
        "items": len(pilot),
        "generated": len(items),
        "removed_as_contaminated": len(contaminated),
        "strata": strata,
        "generator": "extractive" + (" + llm" if llm_summary else ""),
        "generator_settings": settings,
        "generators": dict(sorted(Counter(item.generator for item in pilot).items())),
        "llm": llm_summary,
        "seed": config.seed,
        "ngram": config.ngram,
        "decontaminated_against": {"curated_corpus_train_docs": len(train_docs), "sft_sets": sft_versions},
    }
    storage.write_bytes(f"{prefix}/manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False).encode())
    storage.write_bytes(f"{EVAL_QA_PREFIX}/current.json", json.dumps({"version": version, "prefix": prefix}).encode())

    labels = [
        json.loads(line)
        for info in storage.list_objects(f"{REVIEW_PREFIX}/{version[:16]}/")
        for line in storage.read_bytes(info.key).splitlines()
        if line.strip()
    ]
    accepted = sum(bool(label.get("correct")) for label in labels)
    acceptance = accepted / len(labels) if labels else 0.0
    checks = [
        dg.AssetCheckResult(
            check_name="grounded",
            passed=bool(pilot) and not ungrounded,
            metadata={"items": len(pilot), "ungrounded": dg.MetadataValue.json(dict(list(ungrounded.items())[:20]))},
        ),
        dg.AssetCheckResult(
            check_name="decontaminated",
            passed=not any(index.overlaps_for(i.id, decontamination_text(i)) for i in pilot),
            metadata={"removed": len(contaminated), "overlaps": dg.MetadataValue.json(removed[:20])},
        ),
        dg.AssetCheckResult(
            check_name="human_review",
            passed=bool(labels) and acceptance >= config.min_acceptance,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "status": "awaiting review: no labels yet" if not labels else f"{len(labels)} items reviewed",
                "labelled": len(labels),
                "acceptance": acceptance,
                "min_acceptance": config.min_acceptance,
                "labels_location": dg.MetadataValue.path(storage.uri(f"{REVIEW_PREFIX}/{version[:16]}/")),
            },
        ),
    ]
    for check in checks:
        record_check(
            context,
            storage,
            check_name=check.check_name or "",
            passed=check.passed,
            data_version=version,
            figures={k: getattr(v, "value", v) for k, v in (check.metadata or {}).items()},
        )
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions={f"sft_dataset/{k}": v for k, v in sft_versions.items()} | generated.curated_versions,
        output_data_version=version,
        counts={"items": len(pilot), "removed_as_contaminated": len(contaminated)},
        config=config.model_dump(),
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        check_results=checks,
        metadata={
            "dagster/row_count": len(pilot),
            "manifest": dg.MetadataValue.json(manifest),
            "location": dg.MetadataValue.path(storage.uri(prefix)),
            "example": dg.MetadataValue.json(asdict(pilot[0]) if pilot else {}),
            "strata_plot": dg.MetadataValue.md(
                bar_chart(
                    {k: float(v) for k, v in strata.items()} or {"none": 0.0},
                    title="Pilot items per domain / language / difficulty",
                )
            ),
        },
    )


# ---------------------------------------------------------------- baseline b per candidate base model

BASELINE_PREFIX = "evaluation/baselines"
CANDIDATES = dg.StaticPartitionsDefinition(["tiny-h64-l2", "tiny-h128-l4"])
_CANDIDATE_SHAPES = {"tiny-h64-l2": (64, 172, 2), "tiny-h128-l4": (128, 344, 4)}


def stage_candidate(storage: LakeStorage, candidate: str, source: str, work: Path) -> tuple[Path, int | None]:
    """The candidate's model folder under `work` and its parameter count.

    Empty source: a random-init Llama of the candidate's size on the project tokenizer (the embedded
    default); 'path:/dir' or 'lake:prefix': an open-weight candidate the operator staged.
    """
    from llm_assets.training.base_model import (
        ModelError,
        TinyLlamaConfig,
        bootstrap_tiny_llama,
        download_prefix,
        validate_model_dir,
    )

    if not source:
        tokenizer_pointer = json.loads(storage.read_bytes("models/tokenizer/current.json"))
        hidden, intermediate, layers = _CANDIDATE_SHAPES[candidate]
        card = bootstrap_tiny_llama(
            download_prefix(storage, tokenizer_pointer["prefix"], work / "tokenizer"),
            TinyLlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers),
            work / "model",
        )
        return work / "model", card.parameters
    if source.startswith("path:"):
        model_dir = Path(source.removeprefix("path:"))
    elif source.startswith("lake:"):
        model_dir = download_prefix(storage, source.removeprefix("lake:"), work / "model")
    else:
        raise ModelError(f"source {source!r}: use '', 'path:/dir' or 'lake:prefix'")
    return model_dir, validate_model_dir(model_dir).parameters


class BaselineEvalConfig(dg.Config):
    """The locked eval suite on one candidate base model, before any adaptation (the seeds' baseline b)."""

    source: str = Field(
        default="",
        description="Empty: bootstrap the candidate's size from the tokenizer (embedded default, random init). "
        "'path:/dir' or 'lake:prefix': a staged open-weight candidate.",
    )
    limit: int = Field(default=0, ge=0, description="Score at most this many items (0 = all).")
    batch_size: int = Field(default=8, ge=1)


@dg.asset(
    deps=[eval_qa_pilot],
    partitions_def=CANDIDATES,
    group_name="evaluation",
    code_version="baseline_eval-v1",
    kinds={"json"},
)
def baseline_eval(
    context: dg.AssetExecutionContext, config: BaselineEvalConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """Baseline b of one candidate on the eval set's multiple-choice items, via lm-evaluation-harness offline."""
    import tempfile

    from llm_assets.evaluation.lm_eval_tasks import EvalTaskError, export_task, run_local
    from llm_assets.training.base_model import ModelError

    storage = lake.storage()
    candidate = context.partition_key
    try:
        pointer = json.loads(storage.read_bytes(f"{EVAL_QA_PREFIX}/current.json"))
    except LakeError as exc:
        raise dg.Failure(
            f"{storage.uri(EVAL_QA_PREFIX)}/current.json is missing; materialize eval_qa_pilot first"
        ) from exc
    items = [json.loads(line) for line in storage.read_bytes(f"{pointer['prefix']}/items.jsonl").splitlines() if line]
    choice_items = [i for i in items if i["kind"] == "multiple_choice"]
    if not choice_items:
        raise dg.Failure(f"{storage.uri(pointer['prefix'])}: no multiple-choice items to score")
    with tempfile.TemporaryDirectory(prefix="baseline-") as tmp:
        work = Path(tmp)
        try:
            model_dir, parameters = stage_candidate(storage, candidate, config.source, work)
            export_task(choice_items, work / "tasks", "eval_qa_mc", "multiple_choice")
            report = run_local(
                work / "tasks", ["eval_qa_mc"], model_dir, batch_size=config.batch_size, limit=config.limit or None
            )
        except (ModelError, EvalTaskError, LakeError) as exc:
            raise dg.Failure(f"baseline_eval {candidate}: {str(exc).splitlines()[0]}") from exc
    scores = report.metrics["eval_qa_mc"]
    result = {
        "candidate": candidate,
        "parameters": parameters,
        "eval_set_version": pointer["version"],
        "items_scored": report.samples.get("eval_qa_mc"),
        "chance": 0.25,
        "metrics": scores,
        "manifest": report.manifest,
    }
    payload = json.dumps(result, indent=2, sort_keys=True, default=str).encode()
    version = hashlib.sha256(payload).hexdigest()
    storage.write_bytes(f"{BASELINE_PREFIX}/{candidate}/{version[:16]}/report.json", payload)
    storage.write_bytes(f"{BASELINE_PREFIX}/{candidate}/current.json", json.dumps({"version": version}).encode())
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions={"eval_qa_pilot": pointer["version"], "model": report.manifest.get("model_version", "")},
        output_data_version=version,
        counts={"items": int(result["items_scored"] or 0)},
        config=config.model_dump(),
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "baseline_acc": dg.MetadataValue.float(float(scores.get("acc", 0.0))),
            "baseline_acc_norm": dg.MetadataValue.float(float(scores.get("acc_norm", 0.0))),
            "chance": 0.25,
            "parameters": parameters,
            "items_scored": result["items_scored"],
            "reproducibility": dg.MetadataValue.json(report.manifest),
        },
    )
