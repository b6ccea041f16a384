"""Adaptation assets: continued pre-training over the curated corpus, LoRA SFT per task, a sweep, DPO.

Each asset stages its inputs as trainer channels (model folder, data folder), hands the run to the
`TrainingCompute` resource (in process by default; Kubernetes or SageMaker in production) and stores
what came back in the lake under a content version. Checks on the run itself (validation loss went
down, the loss mask covers the end-of-turn token, generations stop) block everything downstream.
"""

import hashlib
import json
import math
import random
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from llm_assets.curation import pipeline
from llm_assets.defs.audit_trail import record_check, record_materialization
from llm_assets.defs.curation.assets import code_version_of, curated_corpus
from llm_assets.defs.ingestion.partitions import sources_partitions
from llm_assets.defs.training.assets import BASE_MODEL_PREFIX, SFT_PREFIX, SFT_TASKS, base_model, sft_dataset
from llm_assets.evaluation.probes import canary_training_rows, make_canaries
from llm_assets.evaluation.selection import fit_rate
from llm_assets.lake import LakeError, LakeStorage, LocalLakeStorage, iter_shards
from llm_assets.plots import line_chart
from llm_assets.resources.lake import LakeResource
from llm_assets.resources.training_compute import TrainingCompute
from llm_assets.training.base_model import ModelError, download_prefix, upload_folder
from llm_assets.training.config import LLAMA_LINEAR_MODULES, TrainingConfig
from llm_assets.training.mixing import MixtureConfig, MixtureError, mix, parallel_texts

CPT_PREFIX = "models/cpt"
ADAPTER_PREFIX = "models/adapters"
CHECKPOINT_PREFIX = "checkpoints"
# Training steps hold a GPU on a cluster: they share the `gpu` concurrency pool (limit in deploy/dagster.yaml).
GPU_POOL = "gpu"


# ---------------------------------------------------------------- shared helpers


def current_pointer(storage: LakeStorage, prefix: str) -> dict[str, Any]:
    """The `current.json` an asset writes last; a clear error when the upstream asset never ran."""
    try:
        return dict(json.loads(storage.read_bytes(f"{prefix}/current.json")))
    except LakeError as exc:
        raise dg.Failure(
            f"{storage.uri(prefix)}/current.json is missing; materialize the upstream asset first"
        ) from exc


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def _run_key(*parts: object) -> str:
    """Identifies one training run by what it trains on and how: a rerun of the same run resumes."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _checkpoint_dir(storage: LakeStorage, run_key: str, scratch: Path) -> tuple[Path, str | None]:
    """(local checkpoint folder, mirror): a local lake keeps checkpoints in place, an S3 lake gets a mirror."""
    key = f"{CHECKPOINT_PREFIX}/{run_key}"
    if isinstance(storage, LocalLakeStorage):
        return storage.root / key, None
    return scratch / "checkpoints", storage.uri(key)


def _drop_checkpoints(storage: LakeStorage, run_key: str) -> None:
    """A finished run's checkpoints are not needed again (the output is in the lake)."""
    if isinstance(storage, LocalLakeStorage):
        shutil.rmtree(storage.root / CHECKPOINT_PREFIX / run_key, ignore_errors=True)
    else:
        for info in storage.list_objects(f"{CHECKPOINT_PREFIX}/{run_key}/"):
            storage.delete(info.key)


def convergence(result: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
    """The kept model's validation loss is below the starting one, and no evaluation was NaN or infinite."""
    losses = [float(point["loss"]) for point in result["eval_losses"]]
    final = float(result.get("final_eval_loss", losses[-1] if losses else float("nan")))
    finite = all(math.isfinite(loss) for loss in [*losses, final])
    passed = finite and len(losses) >= 2 and final < losses[0]
    return passed, {
        "first": losses[0] if losses else None,
        "final": final,
        "best_during_training": min(losses) if losses else None,
        "points": len(losses),
    }


def loss_plot(result: Mapping[str, Any], title: str) -> str:
    return line_chart(
        {
            "train": [(p["step"], p["loss"]) for p in result["train_losses"]],
            "validation": [(p["step"], p["loss"]) for p in result["eval_losses"]],
        },
        title=title,
        xlabel="optimizer step",
        ylabel="loss",
    )


def curve_metadata(result: Mapping[str, Any], title: str) -> dict[str, Any]:
    """The run's adaptation curve (held-out score at every evaluation) and its slope ra, where it has one."""
    points = result.get("adaptation_curve") or []
    if len(points) < 2:
        return {}
    fit = fit_rate(points)
    return {
        "ra_per_million_tokens": dg.MetadataValue.float(fit.ra_per_million_tokens),
        "ra_fit": dg.MetadataValue.json({**fit.__dict__, "ra_per_hour": fit.ra_per_hour}),
        "adaptation_curve": dg.MetadataValue.md(
            line_chart(
                {"held-out score": [(p["tokens"] / 1e6, p["score"]) for p in points]},
                title=title,
                xlabel="training tokens (millions)",
                ylabel="exact match",
            )
        ),
    }


def run_metadata(result: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "steps": result["global_step"],
        "resumed_from_step": result["resumed_from_step"],
        "precision": result["precision"],
        "tokens_per_second": dg.MetadataValue.float(float(result["tokens_per_second"])),
        "train_seconds": dg.MetadataValue.float(float(result["train_seconds"])),
        "final_eval_loss": dg.MetadataValue.float(float(result["final_eval_loss"])),
        "trainable_parameters": result["trainable_parameters"],
        "trainable_share": dg.MetadataValue.float(float(result["trainable_share"])),
    }


def _recorded(check: dg.AssetCheckResult) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in (check.metadata or {}).items()}


def _training_fields(config: dg.Config) -> dict[str, Any]:
    return {k: v for k, v in config.model_dump().items() if k in TrainingConfig.model_fields}


# ---------------------------------------------------------------- continued pre-training


class CptAssetConfig(dg.Config):
    """Continued pre-training of the base model on a weighted mixture of the curated corpus."""

    method: Literal["full", "lora"] = Field(default="full", description="Full fine-tune (small models) or LoRA.")
    lora_rank: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(LLAMA_LINEAR_MODULES))
    epochs: float = Field(default=2.0, gt=0)
    max_steps: int = Field(default=0, ge=0)
    learning_rate: float = Field(default=3e-3, gt=0)
    batch_size: int = Field(default=16, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_length: int = Field(default=256, ge=16, description="Packed sequence length in tokens.")
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    seed: int = 0
    eval_points: int = Field(default=4, ge=2)
    checkpoint_points: int = Field(default=4, ge=1)
    max_eval_examples: int = Field(default=200, ge=1)
    group_by: str = Field(default="lang", description="Mixture groups: a curated column or metadata field.")
    mixture_weights: dict[str, float] = Field(
        default_factory=lambda: {"el": 0.35, "en": 0.55, "parallel": 0.10},
        description="Share per group: target language, English (the demo's tasks are English; it also guards "
        "against forgetting), 'parallel' = English-Greek UDHR article pairs. A Greek deployment raises 'el'.",
    )
    parallel_languages: list[str] = Field(default_factory=lambda: ["en", "el"])
    budget_chars: int = Field(default=700_000, gt=0, description="Size of the CPT mixture in characters.")
    allow_upsampling: bool = Field(
        default=True, description="Repeat a group's documents (up to 4 passes) to reach its share."
    )


def _held_out(record: Mapping[str, Any]) -> bool:
    """Rows an upstream data set declares test (e.g. Banking77's test split) never reach training text."""
    if record.get("split") != "train":
        return True
    meta = json.loads(record["metadata"]) if record.get("metadata") else {}
    return meta.get("split") == "test"


def _curated(storage: LakeStorage, sources: Sequence[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for source in sources:
        for shard in iter_shards(storage, pipeline.input_manifest(storage, pipeline.CURATED, source)):
            rows.extend(shard.select(["id", "text", "lang", "split", "source", "metadata"]).to_pylist())
    return rows


def cpt_data(records: list[dict[str, Any]], config: CptAssetConfig) -> tuple[list[str], list[str], dict[str, Any]]:
    """(train texts, validation texts, mixture report): the mixture over train rows, validation from dev rows."""
    train_rows = [r for r in records if not _held_out(r)]
    items: list[tuple[str, str]] = []
    for row in train_rows:
        group = row.get(config.group_by)
        if group is None and row.get("metadata"):
            group = json.loads(row["metadata"]).get(config.group_by)
        items.append((str(group or "und"), row["text"]))
    if config.mixture_weights.get("parallel"):
        udhr = [r for r in train_rows if r.get("source") == "udhr"]
        items += [("parallel", text) for text in parallel_texts(udhr, config.parallel_languages)]
    mixture = MixtureConfig(
        weights=config.mixture_weights,
        budget=config.budget_chars,
        unit="chars",
        seed=config.seed,
        allow_upsampling=config.allow_upsampling,
        on_shortfall="redistribute",
    )
    mixed, report = mix(items, mixture)
    texts = [item.text for item in mixed]
    validation = [r["text"] for r in records if r.get("split") == "dev"][: config.max_eval_examples]
    return texts, validation, json.loads(report.to_json())


@dg.asset(
    deps=[base_model, curated_corpus],
    pool=GPU_POOL,
    group_name="training",
    code_version="cpt_model-v1",
    automation_condition=dg.AutomationCondition.eager(),
    kinds={"pytorch", "huggingface"},
    check_specs=[
        dg.AssetCheckSpec(
            "validation_loss_decreased",
            asset="cpt_model",
            blocking=True,
            description="Validation loss ends below where it started and never diverges.",
        )
    ],
)
def cpt_model(
    context: dg.AssetExecutionContext, config: CptAssetConfig, lake: LakeResource, training_compute: TrainingCompute
) -> dg.MaterializeResult:
    """The base model after continued pre-training on a weighted mixture of the curated corpus."""
    storage = lake.storage()
    sources = sorted(context.instance.get_dynamic_partitions(sources_partitions.name or "sources"))
    base = current_pointer(storage, BASE_MODEL_PREFIX)
    try:
        train_texts, eval_texts, mixture = cpt_data(_curated(storage, sources), config)
    except (MixtureError, ValueError) as exc:
        raise dg.Failure(f"cpt_model data mixture: {str(exc).splitlines()[0]}") from exc
    if not eval_texts:
        raise dg.Failure("cpt_model: the curated corpus has no dev split rows to validate on; rebuild curated_corpus")
    input_versions = {"base_model": base["version"]} | {
        f"curated_corpus/{s}": pipeline.input_manifest(storage, pipeline.CURATED, s).data_version for s in sources
    }
    data_version = hashlib.sha256("\x00".join([*train_texts, "\x01", *eval_texts]).encode()).hexdigest()
    training = TrainingConfig(mode="cpt", **_training_fields(config))
    run_key = _run_key("cpt", input_versions, data_version, training.model_dump())
    with tempfile.TemporaryDirectory(prefix="cpt-") as tmp:
        work = Path(tmp)
        try:
            download_prefix(storage, base["prefix"], work / "model")
        except ModelError as exc:
            raise dg.Failure(str(exc)) from exc
        _write_jsonl(work / "data" / "train.jsonl", [{"text": t} for t in train_texts])
        _write_jsonl(work / "data" / "eval.jsonl", [{"text": t} for t in eval_texts])
        checkpoint_dir, mirror = _checkpoint_dir(storage, run_key, work)
        context.log.info(f"CPT on {len(train_texts)} texts ({mixture['total_chars']:,} chars), run {run_key}")
        result = training_compute.run(
            context,
            job_name=f"cpt-{run_key[:12]}-{context.run.run_id[:8]}",
            spec={"config": training.model_dump()},
            channels={"model": work / "model", "data": work / "data"},
            output_dir=work / "output",
            checkpoint_dir=checkpoint_dir,
            checkpoint_mirror=mirror,
        )
        version = hashlib.sha256(
            "\n".join(f"{n}\t{d}" for n, d in sorted(result["output_files"].items())).encode()
        ).hexdigest()
        prefix = f"{CPT_PREFIX}/{version[:16]}"
        if config.method == "lora":
            # Downstream adapters need a whole model: fold the CPT adapter into the base, keep the adapter too.
            upload_folder(storage, work / "output", f"{prefix}/cpt_adapter")
            upload_folder(storage, merge_adapter(work / "model", work / "output", work / "merged"), prefix)
        else:
            upload_folder(storage, work / "output", prefix)
    data_manifest = {
        "version": data_version,
        "texts": len(train_texts),
        "validation_texts": len(eval_texts),
        "mixture": mixture,
        "source_data_versions": input_versions,
        "held_out": "rows outside the curated train split and rows an upstream set marks test",
    }
    storage.write_bytes(
        f"{prefix}/data_manifest.json", json.dumps(data_manifest, indent=2, ensure_ascii=False).encode()
    )
    storage.write_bytes(
        f"{CPT_PREFIX}/current.json", json.dumps({"version": version, "prefix": prefix, "run": run_key}).encode()
    )
    _drop_checkpoints(storage, run_key)
    passed, figures = convergence(result)
    check = dg.AssetCheckResult(
        check_name="validation_loss_decreased",
        passed=passed,
        metadata={k: v for k, v in figures.items() if v is not None},
    )
    record_check(
        context, storage, check_name="validation_loss_decreased", passed=passed, data_version=version, figures=figures
    )
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions=input_versions | {"cpt_data": data_version},
        output_data_version=version,
        counts={"steps": result["global_step"], "tokens": result["tokens_seen"]},
        config=config.model_dump(),
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        check_results=[check],
        metadata={
            **run_metadata(result),
            "location": dg.MetadataValue.path(storage.uri(prefix)),
            "mixture": dg.MetadataValue.json({g: round(r["realised_share"], 3) for g, r in mixture["groups"].items()}),
            "data_version": data_version,
            "loss_curve": dg.MetadataValue.md(loss_plot(result, "Continued pre-training loss")),
        },
    )


# ---------------------------------------------------------------- LoRA SFT per task


class LoraAdapterConfig(dg.Config):
    """LoRA SFT of one task's adapter on the CPT model, with completion-only loss."""

    method: Literal["lora", "full"] = "lora"
    lora_rank: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(LLAMA_LINEAR_MODULES))
    epochs: float = Field(
        default=0.0,
        ge=0,
        description="Passes over the task's train rows; 0: the task's default (banking77_intents 32: a tiny model "
        "needs many passes over a few hundred examples; civics_qa 16).",
    )
    max_steps: int = Field(default=0, ge=0)
    learning_rate: float = Field(
        default=0.0,
        ge=0,
        description="Peak learning rate; 0: the task's default (5e-3 for both tasks).",
    )
    batch_size: int = Field(default=16, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_length: int = Field(default=256, ge=16)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    train_completion_tokens: bool = True
    keep_best: bool | None = Field(
        default=None,
        description="End on the checkpoint with the lowest validation loss; unset: the task's default (off for "
        "civics_qa, whose 9 validation examples would pick noise).",
    )
    padding_free: bool = False
    seed: int = 0
    eval_points: int = Field(default=8, ge=2, description="Evaluations (validation loss, adaptation curve point).")
    checkpoint_points: int = Field(default=4, ge=1)
    validation_share: float = Field(default=0.1, gt=0, lt=0.5, description="Train rows held out for validation.")
    probe_generations: int = Field(default=8, ge=1)
    probe_max_new_tokens: int = Field(default=24, ge=1)
    min_probe_stop_share: float = Field(
        default=0.75,
        gt=0,
        le=1,
        description="eos_gate: share of probe generations that must stop (EOS) within the budget.",
    )
    min_accuracy_gain: float = Field(
        default=0.20, ge=0, le=1, description="Intent task: held-out accuracy gain over the model the adapter is on."
    )
    merge: bool = Field(default=False, description="Also store the adapter merged into its base model.")
    canaries: int = Field(
        default=0,
        ge=0,
        description="Synthetic PII canaries (checksum-valid card, IBAN, e-mail, phone, AFM, AMKA) planted in the "
        "training rows for a memorisation audit: the eval report's leak probe then asks for data the model really "
        "saw, and a model that reproduces any is blocked. 0: none (the probe uses a control set).",
    )
    canary_repeats: int = Field(default=1, ge=1, description="Times each canary row appears in the training rows.")
    canary_seed: int = 0


TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "banking77_intents": {"epochs": 32.0, "keep_best": True, "learning_rate": 5e-3},
    "civics_qa": {"epochs": 16.0, "keep_best": False, "learning_rate": 5e-3},
}


def task_training_config(task: str, config: "LoraAdapterConfig") -> TrainingConfig:
    """The trainer config of one task: the asset's fields, with the task's defaults where left unset."""
    fields = _training_fields(config)
    defaults = TASK_DEFAULTS.get(task, {"epochs": 3.0, "keep_best": True, "learning_rate": 5e-3})
    if not fields.get("learning_rate"):
        fields["learning_rate"] = defaults["learning_rate"]
    if not fields.get("epochs"):
        fields["epochs"] = defaults["epochs"]
    if fields.get("keep_best") is None:
        fields["keep_best"] = defaults["keep_best"]
    return TrainingConfig(mode="sft", **fields)


def split_validation(
    rows: list[dict[str, Any]], share: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, validation) by a seeded shuffle of example ids, so the split is stable across runs."""
    ordered = sorted(rows, key=lambda r: r["id"])
    random.Random(seed).shuffle(ordered)
    cut = max(1, round(len(ordered) * share))
    return ordered[cut:], ordered[:cut]


def eos_gate(result: Mapping[str, Any], min_stop_share: float = 1.0) -> tuple[bool, dict[str, Any]]:
    """The loss mask trains on every example's completion including its EOS, and generations stop.

    A model that never learned to stop runs every probe to its budget; `min_stop_share` below 1 tolerates a
    small model looping on a few prompts without letting that failure through."""
    mask = result.get("loss_mask") or {"checked": 0, "empty": 0, "without_eos": 0}
    probes = result.get("probes") or []
    stopped = sum(bool(p["stopped"]) for p in probes)
    share = stopped / len(probes) if probes else 0.0
    masks_ok = mask["checked"] > 0 and not mask["empty"] and not mask["without_eos"]
    passed = masks_ok and bool(probes) and share >= min_stop_share
    return bool(passed), {
        "examples_checked": mask["checked"],
        "empty_masks": mask["empty"],
        "masks_without_eos": mask["without_eos"],
        "probes": len(probes),
        "probes_stopped": stopped,
        "min_stop_share": min_stop_share,
    }


@dg.asset(
    deps=[cpt_model, sft_dataset],
    pool=GPU_POOL,
    partitions_def=SFT_TASKS,
    group_name="training",
    code_version="lora_adapter-v1",
    kinds={"pytorch", "huggingface"},
    check_specs=[
        dg.AssetCheckSpec("validation_loss_decreased", asset="lora_adapter", blocking=True),
        dg.AssetCheckSpec(
            "eos_gate",
            asset="lora_adapter",
            blocking=True,
            description="Loss mask non-empty and ends on EOS; probe generations stop before max_new_tokens.",
        ),
        dg.AssetCheckSpec(
            "beats_base_model",
            asset="lora_adapter",
            blocking=True,
            description="Held-out greedy accuracy (intents) or validation loss (other tasks) better than without it.",
        ),
    ],
)
def lora_adapter(
    context: dg.AssetExecutionContext, config: LoraAdapterConfig, lake: LakeResource, training_compute: TrainingCompute
) -> dg.MaterializeResult:
    """A LoRA adapter per task on the CPT model, trained on the task's SFT set with completion-only loss."""
    storage = lake.storage()
    task = context.partition_key
    cpt = current_pointer(storage, CPT_PREFIX)
    data = current_pointer(storage, f"{SFT_PREFIX}/{task}")
    sft_manifest = json.loads(storage.read_bytes(f"{data['prefix']}/manifest.json"))
    rows = [
        json.loads(line)
        for line in storage.read_bytes(f"{data['prefix']}/train.prompt_completion.jsonl").splitlines()
        if line.strip()
    ]
    test = [
        json.loads(line)
        for line in storage.read_bytes(f"{data['prefix']}/test.prompt_completion.jsonl").splitlines()
        if line.strip()
    ]
    train, validation = split_validation(rows, config.validation_share, config.seed)
    planted = {}
    if config.canaries:
        canaries = make_canaries(config.canary_seed, config.canaries)
        train = train + canary_training_rows(canaries, config.canary_repeats)
        planted = {"seed": config.canary_seed, "n": config.canaries, "repeats": config.canary_repeats}
    training = task_training_config(task, config)
    input_versions = {"cpt_model": cpt["version"], f"sft_dataset/{task}": sft_manifest["version"]}
    run_key = _run_key("sft", task, input_versions, training.model_dump(), planted)
    with tempfile.TemporaryDirectory(prefix="sft-") as tmp:
        work = Path(tmp)
        download_prefix(storage, cpt["prefix"], work / "model")
        _write_jsonl(work / "data" / "train.jsonl", train)
        _write_jsonl(work / "data" / "eval.jsonl", validation)
        _write_jsonl(work / "data" / "test.jsonl", test)
        checkpoint_dir, mirror = _checkpoint_dir(storage, run_key, work)
        result = training_compute.run(
            context,
            job_name=f"sft-{task.replace('_', '-')}-{context.run.run_id[:8]}",
            spec={"config": training.model_dump()},
            channels={"model": work / "model", "data": work / "data"},
            output_dir=work / "output",
            checkpoint_dir=checkpoint_dir,
            checkpoint_mirror=mirror,
        )
        version = hashlib.sha256(
            "\n".join(f"{n}\t{d}" for n, d in sorted(result["output_files"].items())).encode()
        ).hexdigest()
        prefix = f"{ADAPTER_PREFIX}/{task}/{version[:16]}"
        upload_folder(storage, work / "output", f"{prefix}/adapter")
        if config.merge and config.method == "lora":
            merged = merge_adapter(work / "model", work / "output", work / "merged")
            upload_folder(storage, merged, f"{prefix}/merged")
    lineage = {
        "task": task,
        "base_model": current_pointer(storage, BASE_MODEL_PREFIX)["version"],
        "cpt_model": cpt["version"],
        "sft_data_version": sft_manifest["version"],
        "sft_source_data_versions": sft_manifest["source_data_versions"],
        "training_config": training.model_dump(),
        "examples": {"train": len(train), "validation": len(validation), "test": len(test)},
        "canaries": planted or None,
    }
    storage.write_bytes(f"{prefix}/lineage.json", json.dumps(lineage, indent=2).encode())
    storage.write_bytes(
        f"{ADAPTER_PREFIX}/{task}/current.json", json.dumps({"version": version, "prefix": prefix}).encode()
    )
    _drop_checkpoints(storage, run_key)
    checks = _adapter_checks(task, result, config)
    for check in checks:
        record_check(
            context,
            storage,
            check_name=check.check_name or "",
            passed=check.passed,
            data_version=version,
            figures=_recorded(check),
        )
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions=input_versions,
        output_data_version=version,
        counts={"steps": result["global_step"], "train_examples": len(train)},
        config=config.model_dump(),
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        check_results=checks,
        metadata={
            **run_metadata(result),
            "accuracy_before": result["accuracy_before"],
            "accuracy_after": result["accuracy_after"],
            "location": dg.MetadataValue.path(storage.uri(prefix)),
            "lineage": dg.MetadataValue.json(lineage),
            "probe_samples": dg.MetadataValue.json(
                [{"text": p["text"], "stopped": p["stopped"]} for p in result["probes"][:4]]
            ),
            "loss_curve": dg.MetadataValue.md(loss_plot(result, f"LoRA SFT loss ({task})")),
            **curve_metadata(result, f"Held-out score while training ({task})"),
        },
    )


def _adapter_checks(task: str, result: Mapping[str, Any], config: LoraAdapterConfig) -> list[dg.AssetCheckResult]:
    converged, convergence_figures = convergence(result)
    eos_passed, eos_figures = eos_gate(result, config.min_probe_stop_share)
    if task == "banking77_intents":
        before, after = float(result["accuracy_before"] or 0.0), float(result["accuracy_after"] or 0.0)
        gain_passed = after - before >= config.min_accuracy_gain
        gain_figures: dict[str, Any] = {
            "accuracy_before": before,
            "accuracy_after": after,
            "gain": after - before,
            "min_gain": config.min_accuracy_gain,
            "test_examples": result["test_examples"],
        }
    else:
        first, last = result["eval_losses"][0]["loss"], result["final_eval_loss"]
        gain_passed = last < first
        gain_figures = {"validation_loss_before": first, "validation_loss_after": last}
    return [
        dg.AssetCheckResult(
            check_name="validation_loss_decreased",
            passed=converged,
            metadata={k: v for k, v in convergence_figures.items() if v is not None},
        ),
        dg.AssetCheckResult(check_name="eos_gate", passed=eos_passed, metadata=eos_figures),
        dg.AssetCheckResult(check_name="beats_base_model", passed=gain_passed, metadata=gain_figures),
    ]


def merge_adapter(model_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """The adapter folded into its base weights, for servers that cannot load adapters."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(out_dir))
    return out_dir


# ---------------------------------------------------------------- hyperparameter sweep and model selection

SWEEP_PREFIX = "models/sweeps"
SWEEP_TASK = "banking77_intents"
SWEEP_GRID = {"lr2e-3-r8": (2e-3, 8), "lr5e-3-r8": (5e-3, 8), "lr2e-3-r16": (2e-3, 16), "lr5e-3-r16": (5e-3, 16)}
SWEEP_TRIALS = dg.StaticPartitionsDefinition(list(SWEEP_GRID))


class SweepTrialConfig(dg.Config):
    """One point of the learning-rate x rank grid (the partition key); everything else as lora_adapter."""

    epochs: float = Field(default=16.0, gt=0)
    max_steps: int = Field(default=0, ge=0)
    batch_size: int = Field(default=16, ge=1)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    seed: int = 0


@dg.asset(
    deps=[cpt_model, sft_dataset],
    pool=GPU_POOL,
    partitions_def=SWEEP_TRIALS,
    group_name="training",
    code_version="lora_sweep_trial-v1",
    kinds={"pytorch"},
)
def lora_sweep_trial(
    context: dg.AssetExecutionContext, config: SweepTrialConfig, lake: LakeResource, training_compute: TrainingCompute
) -> dg.MaterializeResult:
    """One LoRA run of the intent task at one (learning rate, rank); its validation figures feed selection."""
    storage = lake.storage()
    learning_rate, rank = SWEEP_GRID[context.partition_key]
    cpt = current_pointer(storage, CPT_PREFIX)
    data = current_pointer(storage, f"{SFT_PREFIX}/{SWEEP_TASK}")
    rows = _jsonl_rows(storage, f"{data['prefix']}/train.prompt_completion.jsonl")
    train, validation = split_validation(rows, 0.1, config.seed)
    training = TrainingConfig(
        mode="sft",
        lora_rank=rank,
        lora_alpha=2 * rank,
        learning_rate=learning_rate,
        epochs=config.epochs,
        max_steps=config.max_steps,
        batch_size=config.batch_size,
        precision=config.precision,
        seed=config.seed,
        probe_generations=0,
    )
    with tempfile.TemporaryDirectory(prefix="sweep-") as tmp:
        work = Path(tmp)
        download_prefix(storage, cpt["prefix"], work / "model")
        _write_jsonl(work / "data" / "train.jsonl", train)
        _write_jsonl(work / "data" / "eval.jsonl", validation)  # selection sees validation only, never test
        result = training_compute.run(
            context,
            job_name=f"sweep-{context.partition_key.replace('.', '')}-{context.run.run_id[:8]}",
            spec={"config": training.model_dump()},
            channels={"model": work / "model", "data": work / "data"},
            output_dir=work / "output",
        )
        version = hashlib.sha256(
            "\n".join(f"{n}\t{d}" for n, d in sorted(result["output_files"].items())).encode()
        ).hexdigest()
        prefix = f"{SWEEP_PREFIX}/{SWEEP_TASK}/{context.partition_key}"
        upload_folder(storage, work / "output", f"{prefix}/{version[:16]}")
    trial = {
        "trial": context.partition_key,
        "learning_rate": learning_rate,
        "lora_rank": rank,
        "final_eval_loss": result["final_eval_loss"],
        "steps": result["global_step"],
        "train_seconds": result["train_seconds"],
        "adapter_prefix": f"{prefix}/{version[:16]}",
        "adapter_version": version,
        "cpt_model": cpt["version"],
        "sft_data": data["prefix"],
    }
    storage.write_bytes(f"{prefix}/trial.json", json.dumps(trial, indent=2).encode())
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            **run_metadata(result),
            "trial": dg.MetadataValue.json(trial),
            "loss_curve": dg.MetadataValue.md(loss_plot(result, f"Sweep {context.partition_key}")),
        },
    )


def _jsonl_rows(storage: LakeStorage, key: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in storage.read_bytes(key).splitlines() if line.strip()]


def select_trial(trials: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The trial with the lowest validation loss (ties: fewer training seconds, then name)."""
    if not trials:
        raise ValueError("no sweep trial has finished; materialize lora_sweep_trial partitions first")
    return min(trials, key=lambda t: (float(t["final_eval_loss"]), float(t["train_seconds"]), str(t["trial"])))


@dg.asset(deps=[lora_sweep_trial], group_name="training", code_version="sweep_selection-v1", kinds={"json"})
def sweep_selection(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """Which sweep trial won on validation loss, with every trial's figures: the input of model selection."""
    storage = lake.storage()
    trials = [
        json.loads(storage.read_bytes(info.key))
        for info in storage.list_objects(f"{SWEEP_PREFIX}/{SWEEP_TASK}/")
        if info.key.endswith("/trial.json")
    ]
    try:
        best = select_trial(trials)
    except ValueError as exc:
        raise dg.Failure(str(exc)) from exc
    selection = {"task": SWEEP_TASK, "selected": best, "trials": sorted(trials, key=lambda t: t["trial"])}
    payload = json.dumps(selection, indent=2, sort_keys=True).encode()
    storage.write_bytes(f"{SWEEP_PREFIX}/{SWEEP_TASK}/selection.json", payload)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(hashlib.sha256(payload).hexdigest()),
        metadata={
            "selected": best["trial"],
            "trials": dg.MetadataValue.md(
                "| trial | lr | rank | validation loss | steps |\n|---|---|---|---|---|\n"
                + "\n".join(
                    f"| {t['trial']} | {t['learning_rate']} | {t['lora_rank']} | {t['final_eval_loss']:.4f} | "
                    f"{t['steps']} |"
                    for t in selection["trials"]
                )
            ),
        },
    )


# ---------------------------------------------------------------- DPO from feedback

DPO_PREFIX = "models/dpo"
FEEDBACK_PREFIX = "feedback/preferences"


class DpoAdapterConfig(dg.Config):
    """DPO on preference pairs from production feedback; continues the task's SFT adapter."""

    task: str = Field(default="banking77_intents", description="Whose SFT adapter DPO continues.")
    synthesize_from_sft: bool = Field(
        default=True,
        description="With no feedback pairs in the lake yet, build pairs from the SFT train set (correct intent "
        "chosen, another rejected).",
    )
    beta: float = Field(default=0.1, gt=0)
    learning_rate: float = Field(default=5e-4, gt=0)
    epochs: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=8, ge=1)
    max_pairs: int = Field(default=256, ge=1)
    min_accuracy_gain: float = Field(default=0.0, ge=0, le=1)


@dg.asset(
    deps=[lora_adapter],
    pool=GPU_POOL,
    group_name="training",
    code_version="dpo_adapter-v2",
    kinds={"pytorch"},
    check_specs=[
        dg.AssetCheckSpec(
            "preference_accuracy_improved",
            asset="dpo_adapter",
            blocking=True,
            description="The chosen answer is more likely than the rejected one on more pairs after DPO.",
        )
    ],
)
def dpo_adapter(
    context: dg.AssetExecutionContext, config: DpoAdapterConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """Optional: the SFT adapter refined by DPO on preference pairs (monitoring writes them to the lake)."""
    from llm_assets.training.dpo import (
        DpoConfig,
        PreferenceError,
        intent_preference_pairs,
        preference_improved,
        read_preference_pairs,
        run_dpo,
    )
    from llm_assets.training.sft_data import SftExample

    storage = lake.storage()
    pairs = []
    sources = []
    try:
        for info in storage.list_objects(f"{FEEDBACK_PREFIX}/"):
            if info.key.endswith(".jsonl"):
                pairs += read_preference_pairs(storage.read_bytes(info.key), storage.uri(info.key))
                sources.append(info.key)
    except PreferenceError as exc:
        raise dg.Failure(str(exc)) from exc
    data = current_pointer(storage, f"{SFT_PREFIX}/{config.task}")
    if not pairs and config.synthesize_from_sft:
        rows = _jsonl_rows(storage, f"{data['prefix']}/train.prompt_completion.jsonl")
        examples = [SftExample(r["id"], r["prompt"], r["completion"], "train", r["id"]) for r in rows]
        pairs = intent_preference_pairs(examples, seed=0)
        sources.append(f"synthesized from {data['prefix']}")
    if not pairs:
        raise dg.Failure(f"no preference pairs under {storage.uri(FEEDBACK_PREFIX)}/; land feedback JSONL there first")
    pairs = pairs[: config.max_pairs]
    cpt = current_pointer(storage, CPT_PREFIX)
    adapter = current_pointer(storage, f"{ADAPTER_PREFIX}/{config.task}")
    with tempfile.TemporaryDirectory(prefix="dpo-") as tmp:
        work = Path(tmp)
        download_prefix(storage, cpt["prefix"], work / "model")
        download_prefix(storage, f"{adapter['prefix']}/adapter", work / "sft")
        # DPO trains a fresh LoRA on the SFT model merged into its base: the reference model (adapter off)
        # is then exactly the SFT model, whatever the SFT adapter carried (e.g. trainable token rows).
        merged = merge_adapter(work / "model", work / "sft", work / "sft-merged")
        result = run_dpo(
            merged,
            pairs,
            work / "output",
            DpoConfig(
                beta=config.beta, learning_rate=config.learning_rate, epochs=config.epochs, batch_size=config.batch_size
            ),
            log=context.log.info,
        )
        files = sorted(p for p in (work / "output").rglob("*") if p.is_file())
        version = hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()
        prefix = f"{DPO_PREFIX}/{config.task}/{version[:16]}"
        upload_folder(storage, work / "output", prefix)
    lineage = {
        "applies_to": "cpt_model merged with the SFT adapter",
        "sft_adapter": adapter["version"],
        "cpt_model": cpt["version"],
        "pairs": len(pairs),
        "sources": sources,
    }
    storage.write_bytes(f"{prefix}/lineage.json", json.dumps(lineage, indent=2).encode())
    check = dg.AssetCheckResult(
        check_name="preference_accuracy_improved",
        passed=preference_improved(result, config.min_accuracy_gain),
        metadata={
            "before": result["preference_accuracy_before"],
            "after": result["preference_accuracy_after"],
            "min_gain": config.min_accuracy_gain,
            # Accuracy saturates at 1.0; the mean log-prob margin (chosen - rejected) still shows the shift.
            "logprob_margin_before": result["logprob_margin_before"],
            "logprob_margin_after": result["logprob_margin_after"],
        },
    )
    record_check(
        context,
        storage,
        check_name=check.check_name or "",
        passed=check.passed,
        data_version=version,
        figures=_recorded(check),
    )
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions={"lora_adapter": adapter["version"], "cpt_model": cpt["version"]},
        output_data_version=version,
        counts={"pairs": len(pairs), "steps": result["steps"]},
        config=config.model_dump(),
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        check_results=[check],
        metadata={
            "pairs": len(pairs),
            "preference_accuracy_before": result["preference_accuracy_before"],
            "preference_accuracy_after": result["preference_accuracy_after"],
            "reward_margin": result["rewards/margins"],
            "location": dg.MetadataValue.path(storage.uri(prefix)),
            "lineage": dg.MetadataValue.json(lineage),
        },
    )
