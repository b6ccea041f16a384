"""Eval reports per task: the adapted model against the model it was adapted from, on the business task and on
the eval Q&A benchmark, each with the manifest that reproduces it. Registry gates read these reports.
"""

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from llm_assets.defs.audit_trail import record_check, record_materialization
from llm_assets.defs.curation.assets import code_version_of
from llm_assets.defs.evaluation.assets import EVAL_QA_PREFIX, eval_qa_pilot
from llm_assets.defs.training.adaptation import (
    ADAPTER_PREFIX,
    CPT_PREFIX,
    current_pointer,
    lora_adapter,
    merge_adapter,
)
from llm_assets.defs.training.assets import SFT_PREFIX, SFT_TASKS
from llm_assets.evaluation.lm_eval_tasks import EvalTaskError, export_task, folder_version, run_local
from llm_assets.evaluation.task_eval import TaskEvalError, TaskKind, evaluate_task
from llm_assets.lake import LakeError
from llm_assets.plots import bar_chart
from llm_assets.resources.lake import LakeResource
from llm_assets.training.base_model import download_prefix

EVAL_REPORT_PREFIX = "evaluation/reports"
TASK_KINDS: dict[str, TaskKind] = {"banking77_intents": "label", "civics_qa": "text"}
HEADLINE = {"label": "exact_match", "text": "rougeL"}


class EvalReportConfig(dg.Config):
    """Decoding and scope of one task's eval report."""

    max_new_tokens: int = Field(default=32, ge=1)
    benchmark: bool = Field(default=True, description="Also score the eval Q&A multiple-choice items (lm-eval).")
    benchmark_limit: int = Field(default=0, ge=0, description="Benchmark items at most (0 = all).")
    batch_size: int = Field(default=8, ge=1)


def _rows(storage: Any, key: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in storage.read_bytes(key).splitlines() if line.strip()]


@dg.asset(
    deps=[lora_adapter, eval_qa_pilot],
    partitions_def=SFT_TASKS,
    group_name="evaluation",
    code_version="eval_report-v1",
    kinds={"json"},
    check_specs=[
        dg.AssetCheckSpec(
            "adapter_improves_task",
            asset="eval_report",
            description="The adapted model scores above the model it was adapted from on the task's test split.",
        )
    ],
)
def eval_report(
    context: dg.AssetExecutionContext, config: EvalReportConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """Task metrics per language (with and without the adapter) and the eval-set benchmark, reproducibly."""
    storage = lake.storage()
    task = context.partition_key
    kind = TASK_KINDS[task]
    adapter = current_pointer(storage, f"{ADAPTER_PREFIX}/{task}")
    cpt = current_pointer(storage, CPT_PREFIX)
    data = current_pointer(storage, f"{SFT_PREFIX}/{task}")
    test = _rows(storage, f"{data['prefix']}/test.prompt_completion.jsonl")
    with tempfile.TemporaryDirectory(prefix="eval-report-") as tmp:
        work = Path(tmp)
        model_dir = download_prefix(storage, cpt["prefix"], work / "model")
        adapter_dir = download_prefix(storage, f"{adapter['prefix']}/adapter", work / "adapter")
        try:
            context.log.info(f"{task}: {len(test)} test rows, with and without the adapter")
            adapted = evaluate_task(
                model_dir, test, kind, adapter_dir=adapter_dir, max_new_tokens=config.max_new_tokens
            )
            without = evaluate_task(model_dir, test, kind, max_new_tokens=config.max_new_tokens)
            benchmark = None
            if config.benchmark:
                pointer = json.loads(storage.read_bytes(f"{EVAL_QA_PREFIX}/current.json"))
                items = [
                    i for i in _rows(storage, f"{pointer['prefix']}/items.jsonl") if i["kind"] == "multiple_choice"
                ]
                if items:
                    export_task(items, work / "tasks", "eval_qa_mc", "multiple_choice")
                    # lm-eval's peft= path re-ties embeddings, which an adapter with trained token rows breaks;
                    # the merged weights score the same model.
                    merged = merge_adapter(model_dir, adapter_dir, work / "merged")
                    run = run_local(
                        work / "tasks",
                        ["eval_qa_mc"],
                        merged,
                        batch_size=config.batch_size,
                        limit=config.benchmark_limit or None,
                    )
                    manifest = {**run.manifest, "adapter_version": folder_version(adapter_dir), "adapter_merged": True}
                    benchmark = {
                        "eval_set_version": pointer["version"],
                        "metrics": run.metrics["eval_qa_mc"],
                        "items": run.samples["eval_qa_mc"],
                        "manifest": manifest,
                    }
        except (TaskEvalError, EvalTaskError, LakeError) as exc:
            raise dg.Failure(f"eval_report {task}: {str(exc).splitlines()[0]}") from exc
    headline = HEADLINE[kind]
    report = {
        "task": task,
        "kind": kind,
        "adapter_version": adapter["version"],
        "model_version": cpt["version"],
        "sft_data_version": json.loads(storage.read_bytes(f"{data['prefix']}/manifest.json"))["version"],
        "adapted": adapted,
        "without_adapter": {k: without[k] for k in ("overall", "per_language", "n", "stopped_share")},
        "benchmark": benchmark,
        "headline_metric": headline,
    }
    payload = json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False).encode()
    version = hashlib.sha256(payload).hexdigest()
    prefix = f"{EVAL_REPORT_PREFIX}/{task}/{version[:16]}"
    storage.write_bytes(f"{prefix}/report.json", payload)
    storage.write_bytes(
        f"{EVAL_REPORT_PREFIX}/{task}/current.json", json.dumps({"version": version, "prefix": prefix}).encode()
    )
    after, before = adapted["overall"][headline], without["overall"][headline]
    check = dg.AssetCheckResult(
        check_name="adapter_improves_task",
        passed=after > before,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"metric": headline, "with_adapter": after, "without_adapter": before},
    )
    record_check(
        context,
        storage,
        check_name="adapter_improves_task",
        passed=check.passed,
        data_version=version,
        figures={"metric": headline, "with_adapter": after, "without_adapter": before},
    )
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions={"lora_adapter": adapter["version"], "cpt_model": cpt["version"]},
        output_data_version=version,
        counts={"test_rows": len(test)},
        config=config.model_dump(),
    )
    per_lang = {f"{lang} ({int(v['n'])})": v[headline] for lang, v in adapted["per_language"].items()}
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        check_results=[check],
        metadata={
            "metric": headline,
            "score": dg.MetadataValue.float(float(after)),
            "score_without_adapter": dg.MetadataValue.float(float(before)),
            "overall": dg.MetadataValue.json(adapted["overall"]),
            "per_language": dg.MetadataValue.json(adapted["per_language"]),
            **(
                {"benchmark_acc": dg.MetadataValue.float(float(benchmark["metrics"].get("acc", 0.0)))}
                if benchmark
                else {}
            ),
            "samples": dg.MetadataValue.json(adapted["samples"]),
            "reproducibility": dg.MetadataValue.json(
                {"task": adapted["manifest"], "benchmark": benchmark["manifest"] if benchmark else None}
            ),
            "location": dg.MetadataValue.path(storage.uri(prefix)),
            "per_language_plot": dg.MetadataValue.md(bar_chart(per_lang, title=f"{task}: {headline} per language")),
        },
    )
