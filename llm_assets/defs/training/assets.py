"""Training-stage assets. `tokenizer`: byte-level BPE trained on the curated train split, stored in the lake."""

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from pydantic import Field

from llm_assets.curation import pipeline
from llm_assets.defs.audit_trail import record_check, record_materialization
from llm_assets.defs.curation.assets import code_version_of, curated_corpus
from llm_assets.defs.ingestion.partitions import sources_partitions
from llm_assets.lake import LakeError, LakeStorage, iter_shards
from llm_assets.lake.storage import LakeKeyNotFound
from llm_assets.monitoring.feedback import FEEDBACK_SFT_KEY
from llm_assets.plots import bar_chart
from llm_assets.resources.lake import LakeResource
from llm_assets.training.base_model import (
    ModelError,
    TinyLlamaConfig,
    bootstrap_tiny_llama,
    download_prefix,
    upload_folder,
    validate_model_dir,
)
from llm_assets.training.sft_data import (
    choose_intents,
    feedback_sft_examples,
    intent_examples,
    manifest,
    qa_examples,
    quality_figures,
    to_jsonl,
)
from llm_assets.training.tokenizer import TokenizerConfig, fertility, save_pretrained, train_bpe_tokenizer

TOKENIZER_PREFIX = "models/tokenizer"


class TokenizerAssetConfig(dg.Config):
    vocab_size: int = Field(default=8_000, ge=300, le=256_000)
    min_frequency: int = Field(default=2, ge=1)
    max_fertility: float = Field(default=3.0, gt=0, description="Tokens per word above which a language warns.")
    fertility_docs_per_language: int = Field(default=200, gt=0)


def _texts(storage: LakeStorage, sources: list[str], split: str) -> Iterator[tuple[str, str]]:
    """(language, text) of the curated records of one split, shard by shard."""
    for source in sources:
        for shard in iter_shards(storage, pipeline.input_manifest(storage, pipeline.CURATED, source)):
            for text, lang, row_split in zip(
                shard.column("text").to_pylist(),
                shard.column("lang").to_pylist(),
                shard.column("split").to_pylist(),
                strict=True,
            ):
                if row_split == split:
                    yield lang or "und", text


@dg.asset(
    deps=[curated_corpus],
    group_name="training",
    code_version="tokenizer-v1",
    automation_condition=dg.AutomationCondition.eager(),
    kinds={"huggingface"},
    check_specs=[
        dg.AssetCheckSpec(
            "fertility_within_band",
            asset="tokenizer",
            description="No language needs more than max_fertility tokens per word on held-out text.",
        )
    ],
)
def tokenizer(
    context: dg.AssetExecutionContext, config: TokenizerAssetConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """The tokenizer the embedded default trains its own model with (production stages an open model's)."""
    storage = lake.storage()
    sources = sorted(context.instance.get_dynamic_partitions(sources_partitions.name or "sources"))
    trained = train_bpe_tokenizer(
        (text for _lang, text in _texts(storage, sources, "train")),
        TokenizerConfig(vocab_size=config.vocab_size, min_frequency=config.min_frequency),
    )
    # Fertility on held-out (dev) text; a language with no dev document is measured on its train text.
    held_out: dict[str, list[str]] = {}
    measured_on: dict[str, str] = {}
    for split in ("dev", "train"):
        for lang, text in _texts(storage, sources, split):
            if measured_on.setdefault(lang, split) != split:
                continue
            docs = held_out.setdefault(lang, [])
            if len(docs) < config.fertility_docs_per_language:
                docs.append(text)
    per_language = fertility(trained, held_out)
    with tempfile.TemporaryDirectory() as tmp:
        sha256 = save_pretrained(trained, Path(tmp))
        prefix = f"{TOKENIZER_PREFIX}/{sha256[:16]}"
        for path in sorted(Path(tmp).iterdir()):
            storage.write_bytes(f"{prefix}/{path.name}", path.read_bytes())
    storage.write_bytes(f"{TOKENIZER_PREFIX}/current.json", json.dumps({"sha256": sha256, "prefix": prefix}).encode())
    too_high = {lang: round(f, 3) for lang, f in per_language.items() if f > config.max_fertility}
    check = dg.AssetCheckResult(
        check_name="fertility_within_band",
        passed=not too_high,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"above_band": dg.MetadataValue.json(too_high), "max_fertility": config.max_fertility},
    )
    record_check(
        context, storage, check_name="fertility_within_band", passed=check.passed, data_version=sha256, figures=too_high
    )
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions={
            f"curated_corpus/{s}": pipeline.input_manifest(storage, pipeline.CURATED, s).data_version for s in sources
        },
        output_data_version=sha256,
        counts={"vocab_size": trained.get_vocab_size(), "languages": len(per_language)},
        config=config.model_dump(),
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(sha256),
        check_results=[check],
        metadata={
            "vocab_size": trained.get_vocab_size(),
            "sha256": sha256,
            "location": dg.MetadataValue.path(storage.uri(prefix)),
            "fertility": dg.MetadataValue.json({k: round(v, 3) for k, v in per_language.items()}),
            "fertility_measured_on": dg.MetadataValue.json(measured_on),
            "fertility_plot": dg.MetadataValue.md(bar_chart(per_language or {"none": 0.0}, title="Tokens per word")),
        },
    )


BASE_MODEL_PREFIX = "models/base"


class BaseModelConfig(dg.Config):
    source: str = Field(
        default="",
        description="Empty: bootstrap a tiny Llama from the tokenizer. 'path:/dir' or 'lake:prefix': a model the "
        "operator staged (config.json, tokenizer, *.safetensors); nothing is downloaded from a hub.",
    )
    hidden_size: int = Field(default=64, ge=16)
    intermediate_size: int = Field(default=172, ge=16)
    num_hidden_layers: int = Field(default=2, ge=1)
    num_attention_heads: int = Field(default=2, ge=1)
    num_key_value_heads: int = Field(default=1, ge=1)
    seed: int = 0


def _current_tokenizer(storage: LakeStorage, dest: Path) -> Path:
    current = json.loads(storage.read_bytes(f"{TOKENIZER_PREFIX}/current.json"))
    return download_prefix(storage, current["prefix"], dest)


@dg.asset(
    deps=[tokenizer],
    group_name="training",
    code_version="base_model-v1",
    automation_condition=dg.AutomationCondition.eager(),
    kinds={"huggingface", "pytorch"},
)
def base_model(context: dg.AssetExecutionContext, config: BaseModelConfig, lake: LakeResource) -> dg.MaterializeResult:
    """The base model every adaptation starts from, validated and identified by the SHA-256 of its files."""
    storage = lake.storage()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            if not config.source:
                tiny = TinyLlamaConfig(
                    hidden_size=config.hidden_size,
                    intermediate_size=config.intermediate_size,
                    num_hidden_layers=config.num_hidden_layers,
                    num_attention_heads=config.num_attention_heads,
                    num_key_value_heads=config.num_key_value_heads,
                    seed=config.seed,
                )
                card = bootstrap_tiny_llama(_current_tokenizer(storage, work / "tokenizer"), tiny, work / "model")
            elif config.source.startswith("path:"):
                staged = Path(config.source.removeprefix("path:"))
                validate_model_dir(staged)
                shutil.copytree(staged, work / "model")
                card = validate_model_dir(work / "model")
            elif config.source.startswith("lake:"):
                card = validate_model_dir(download_prefix(storage, config.source.removeprefix("lake:"), work / "model"))
            else:
                raise ModelError(f"source {config.source!r}: use '', 'path:/dir' or 'lake:prefix'")
        except ModelError as exc:
            raise dg.Failure(str(exc).splitlines()[0]) from exc
        prefix = f"{BASE_MODEL_PREFIX}/{card.version[:16]}"
        upload_folder(storage, work / "model", prefix)
    storage.write_bytes(
        f"{BASE_MODEL_PREFIX}/current.json", json.dumps({"version": card.version, "prefix": prefix}).encode()
    )
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions={"source": config.source or "bootstrap"},
        output_data_version=card.version,
        counts={"parameters": card.parameters, "files": len(card.files)},
        config=config.model_dump(),
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(card.version),
        metadata={
            "architecture": card.architecture,
            "parameters": card.parameters,
            "vocab_size": card.vocab_size,
            "source": config.source or "bootstrapped from the tokenizer (random init)",
            "location": dg.MetadataValue.path(storage.uri(prefix)),
            "files_sha256": dg.MetadataValue.json(card.files),
        },
    )


SFT_TASKS = dg.StaticPartitionsDefinition(["banking77_intents", "civics_qa"])
SFT_PREFIX = "datasets_export/sft"


class SftDatasetConfig(dg.Config):
    banking_source: str = "banking77"
    civics_source: str = "uscis_civics"
    intents: int = Field(default=8, ge=2, le=77, description="How many Banking77 intents the demo task uses.")
    min_examples: int = Field(default=50, ge=1)
    max_duplicate_prompt_ratio: float = Field(default=0.05, ge=0, le=1)
    include_feedback: bool = Field(
        default=True,
        description="Add the task's accepted feedback corrections (feedback_examples) to the train split.",
    )


def _curated_records(storage: LakeStorage, source: str) -> list[dict[str, object]]:
    return [
        row
        for shard in iter_shards(storage, pipeline.input_manifest(storage, pipeline.CURATED, source))
        for row in shard.select(["id", "text", "metadata", "split", "lang"]).to_pylist()
    ]


@dg.asset(
    deps=[curated_corpus, dg.AssetKey("feedback_examples")],
    partitions_def=SFT_TASKS,
    group_name="training",
    code_version="sft_dataset-v3",
    kinds={"parquet", "json"},
    check_specs=[
        dg.AssetCheckSpec("enough_examples", asset="sft_dataset", blocking=True),
        dg.AssetCheckSpec("no_structured_pii", asset="sft_dataset", blocking=True),
        dg.AssetCheckSpec("duplicate_prompt_ratio", asset="sft_dataset", blocking=True),
    ],
)
def sft_dataset(
    context: dg.AssetExecutionContext, config: SftDatasetConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """Instruction data per task in prompt/completion and chat `messages` JSONL, with its data manifest."""
    storage = lake.storage()
    task = context.partition_key
    source = config.banking_source if task == "banking77_intents" else config.civics_source
    try:
        records = _curated_records(storage, source)
    except LakeError as exc:
        raise dg.Failure(f"sft_dataset {task}: {exc}") from exc
    if task == "banking77_intents":
        intents = choose_intents(records, config.intents)
        examples = intent_examples(records, intents)
        description = f"Banking77 intent classification over {len(intents)} intents: {', '.join(intents)}"
    else:
        examples = qa_examples(records)
        description = "USCIS civics questions answered with their first accepted answer"
    curated_version = pipeline.input_manifest(storage, pipeline.CURATED, source).data_version
    source_versions = {f"curated_corpus/{source}": curated_version}
    if config.include_feedback:
        try:
            feedback = storage.read_bytes(FEEDBACK_SFT_KEY)
        except LakeKeyNotFound:
            feedback = b""
        added = feedback_sft_examples(
            [json.loads(line) for line in feedback.splitlines() if line.strip()], task, examples
        )
        if added:
            examples += added
            source_versions["feedback_examples"] = hashlib.sha256(feedback).hexdigest()
            description += f"; plus {len(added)} reviewers' corrections from feedback_examples"
            context.log.info(f"{len(added)} feedback corrections added to the {task} train split")
    figures = quality_figures(examples)
    data_manifest = manifest(
        task,
        examples,
        description=description,
        source_versions=source_versions,
        code_version=code_version_of(context),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    prefix = f"{SFT_PREFIX}/{task}/{data_manifest['version'][:16]}"
    for split in ("train", "test"):
        part = [e for e in examples if e.split == split]
        for form in ("prompt_completion", "messages"):
            storage.write_bytes(f"{prefix}/{split}.{form}.jsonl", to_jsonl(part, form))
    storage.write_bytes(f"{prefix}/manifest.json", json.dumps(data_manifest, indent=2, ensure_ascii=False).encode())
    storage.write_bytes(f"{SFT_PREFIX}/{task}/current.json", json.dumps({"prefix": prefix}).encode())
    checks = [
        dg.AssetCheckResult(
            check_name="enough_examples",
            passed=figures["train"] >= config.min_examples and figures["test"] > 0,
            metadata={"train": figures["train"], "test": figures["test"], "min_examples": config.min_examples},
        ),
        dg.AssetCheckResult(
            check_name="no_structured_pii",
            passed=not figures["pii_left"],
            metadata={"pii_left": dg.MetadataValue.json(figures["pii_left"])},
        ),
        dg.AssetCheckResult(
            check_name="duplicate_prompt_ratio",
            passed=figures["duplicate_prompt_ratio"] <= config.max_duplicate_prompt_ratio,
            metadata={
                "ratio": dg.MetadataValue.float(figures["duplicate_prompt_ratio"]),
                "max": config.max_duplicate_prompt_ratio,
            },
        ),
    ]
    for check in checks:
        record_check(
            context,
            storage,
            check_name=check.check_name or "",
            passed=check.passed,
            data_version=data_manifest["version"],
            figures={k: v.value if hasattr(v, "value") else v for k, v in (check.metadata or {}).items()},
        )
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions=data_manifest["source_data_versions"],
        output_data_version=data_manifest["version"],
        counts={"examples": figures["examples"], "train": figures["train"], "test": figures["test"]},
        config=config.model_dump(),
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(data_manifest["version"]),
        check_results=checks,
        metadata={
            "dagster/row_count": figures["examples"],
            "manifest": dg.MetadataValue.json(data_manifest),
            "location": dg.MetadataValue.path(storage.uri(prefix)),
            "example": dg.MetadataValue.json(examples[0].messages() if examples else []),
        },
    )
