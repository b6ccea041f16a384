"""Training through Dagster: tokenizer → base model → CPT → SFT data → LoRA adapter, with lineage and gates."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from llm_assets.defs.curation.assets import (
    curated_corpus,
    deduplicated_shards,
    normalized_shards,
    perplexity_scored_shards,
    pii_scrubbed_shards,
    quality_filtered_shards,
    reference_language_models,
)
from llm_assets.defs.ingestion.assets import raw_corpus
from llm_assets.defs.training.adaptation import (
    convergence,
    cpt_model,
    dpo_adapter,
    eos_gate,
    lora_adapter,
    lora_sweep_trial,
    select_trial,
    split_validation,
    sweep_selection,
)
from llm_assets.defs.training.assets import base_model, sft_dataset, tokenizer
from llm_assets.lake import LocalLakeStorage
from llm_assets.resources.endpoint import InferenceEndpoint
from llm_assets.resources.training_compute import TrainingCompute

# The pilot's LLM generator is off by default: nothing contacts this endpoint (port 9 is discard).
UNUSED_ENDPOINT = InferenceEndpoint(base_url="http://127.0.0.1:9/v1", model="unused")

PER_SOURCE = [raw_corpus, normalized_shards, pii_scrubbed_shards]
GLOBAL = [
    deduplicated_shards,
    quality_filtered_shards,
    reference_language_models,
    perplexity_scored_shards,
    curated_corpus,
]
TRAINING = [tokenizer, base_model, cpt_model, sft_dataset, lora_adapter, lora_sweep_trial, sweep_selection, dpo_adapter]
ALL = [*PER_SOURCE, *GLOBAL, *TRAINING]

INTENTS = {
    "card_arrival": ["When will my new card arrive at my home address number {n}?", "Has card {n} been posted yet?"],
    "exchange_rate": ["What exchange rate applies to transfer {n} in euros?", "How is the rate set for payment {n}?"],
    "lost_card": ["I lost my card number {n} on the bus yesterday.", "My card {n} was stolen, please block it."],
}


def _land(storage: LocalLakeStorage, name: str, rows: list[dict[str, object]], language: str) -> None:
    descriptor = (
        f"name: {name}\nlicence: CC-BY-4.0\njurisdiction: EU\nsource_uri: https://example.org/{name}\n"
        f"language: {language}\ndomain: banking-support\n"
    )
    storage.write_bytes(f"landing/{name}/source.yaml", descriptor.encode())
    storage.write_bytes(
        f"landing/{name}/docs.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    )


@pytest.fixture
def curated(storage: LocalLakeStorage, instance: dg.DagsterInstance, lake) -> LocalLakeStorage:  # type: ignore[no-untyped-def]
    rows = []
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo"]
    for number in range(44):
        for intent, templates in INTENTS.items():
            text = templates[number % 2].format(n=f"{words[number % 11]} {number}")
            rows.append({"text": text, "category": intent, "split": "test" if number % 11 == 0 else "train"})
    _land(storage, "banking77", rows, "en")
    civics = [
        {
            "text": f"Question {n}: is item {n} a civic duty? Answer: {['yes', 'no', 'maybe'][n % 3]}",
            "question": f"Is item {n} a civic duty?",
            "answers": [["yes", "no", "maybe"][n % 3]],
        }
        for n in range(30)
    ]
    _land(storage, "uscis_civics", civics, "en")
    instance.add_dynamic_partitions("sources", ["banking77", "uscis_civics"])
    for source in ("banking77", "uscis_civics"):
        assert dg.materialize(PER_SOURCE, partition_key=source, resources={"lake": lake}, instance=instance).success
    assert dg.materialize([*PER_SOURCE, *GLOBAL], selection=GLOBAL, resources={"lake": lake}, instance=instance).success
    return storage


TINY = {
    "tokenizer": {"config": {"vocab_size": 320}},
    "base_model": {
        "config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
        }
    },
    "cpt_model": {
        "config": {
            "max_steps": 6,
            "batch_size": 4,
            "max_length": 64,
            "mixture_weights": {"en": 1.0},
            "budget_chars": 20_000,
            "precision": "fp32",
        }
    },
}


def test_training_chain_with_lineage_and_gates(curated: LocalLakeStorage, instance, lake) -> None:  # type: ignore[no-untyped-def]
    storage = curated
    resources = {"lake": lake, "training_compute": TrainingCompute(), "inference_endpoint": UNUSED_ENDPOINT}
    built = dg.materialize(
        ALL,
        selection=[tokenizer, base_model, cpt_model],
        resources=resources,
        instance=instance,
        run_config={"ops": TINY},
    )
    assert built.success
    cpt_meta = built.asset_materializations_for_node("cpt_model")[0].metadata
    assert cpt_meta["steps"].value == 6 and "loss_curve" in cpt_meta
    current = json.loads(storage.read_bytes("models/cpt/current.json"))
    manifest = json.loads(storage.read_bytes(f"{current['prefix']}/data_manifest.json"))
    assert manifest["mixture"]["groups"]["en"]["realised_share"] == 1.0
    assert "base_model" in manifest["source_data_versions"]
    # Held-out rows (the banking test split) never reach continued pre-training.
    checks = {e.check_name: e.passed for e in built.get_asset_check_evaluations()}
    assert checks["validation_loss_decreased"] is True
    assert not storage.list_objects(f"checkpoints/{current['run']}/")  # dropped after success

    for task in ("banking77_intents", "civics_qa"):
        config = {
            "ops": {
                "sft_dataset": {"config": {"intents": 3, "min_examples": 10}},
                "lora_adapter": {
                    "config": {
                        "max_steps": 200 if task == "banking77_intents" else 60,
                        "batch_size": 8,
                        "learning_rate": 2e-2,
                        "probe_generations": 2,
                        "probe_max_new_tokens": 12,
                        "min_accuracy_gain": 0.0,
                        "precision": "fp32",
                        # A memorisation audit on one task: canaries planted in its training rows.
                        "canaries": 6 if task == "civics_qa" else 0,
                    }
                },
            }
        }
        adapted = dg.materialize(
            ALL,
            selection=[sft_dataset, lora_adapter],
            partition_key=task,
            resources=resources,
            instance=instance,
            run_config=config,
            raise_on_error=False,
        )
        assert adapted.success, task
        outcomes = {(e.asset_key.to_user_string(), e.check_name): e for e in adapted.get_asset_check_evaluations()}
        assert outcomes[("lora_adapter", "validation_loss_decreased")].passed
        eos = outcomes[("lora_adapter", "eos_gate")]
        assert eos.metadata["empty_masks"].value == 0 and eos.metadata["masks_without_eos"].value == 0
        assert ("lora_adapter", "beats_base_model") in outcomes
        pointer = json.loads(storage.read_bytes(f"models/adapters/{task}/current.json"))
        assert storage.exists(f"{pointer['prefix']}/adapter/adapter_model.safetensors")
        lineage = json.loads(storage.read_bytes(f"{pointer['prefix']}/lineage.json"))
        assert lineage["cpt_model"] == current["version"] and lineage["task"] == task
        assert lineage["sft_data_version"] and lineage["base_model"]
    # Eval reports with their gates, against the model without the adapter (per language), then registration.
    from llm_assets.defs.evaluation.assets import eval_qa_pilot
    from llm_assets.defs.evaluation.reports import eval_report
    from llm_assets.defs.registry.assets import registered_model
    from llm_assets.registry import ModelRegistry

    graph = [*ALL, eval_qa_pilot, eval_report, registered_model]
    report_config = {"benchmark": False, "max_new_tokens": 12, "min_score": {"banking77_intents": 0.0}, "bias_pairs": 4}
    for task, metric in (("banking77_intents", "exact_match"), ("civics_qa", "rougeL")):
        reported = dg.materialize(
            graph,
            selection=[eval_report],
            partition_key=task,
            resources=resources,
            instance=instance,
            run_config={"ops": {"eval_report": {"config": report_config}}},
            raise_on_error=False,
        )
        meta = reported.asset_materializations_for_node("eval_report")[0].metadata
        assert meta["metric"].value == metric and 0 <= meta["score"].value <= 1
        assert set(meta["per_language"].value) == {"en"}
        pointer = json.loads(storage.read_bytes(f"evaluation/reports/{task}/current.json"))
        report = json.loads(storage.read_bytes(f"{pointer['prefix']}/report.json"))
        adapter = json.loads(storage.read_bytes(f"models/adapters/{task}/current.json"))
        assert report["adapter_version"] == adapter["version"] and report["model_version"] == current["version"]
        assert report["adapted"]["manifest"]["adapter_version"] and report["adapted"]["manifest"]["rows_version"]
        assert report["adapted"]["n"] == report["without_adapter"]["n"] > 0
        assert "exact_match" in report["deltas"]["vs_base"]["overall"] or metric == "rougeL"
        if metric == "rougeL":
            assert {"rouge1", "rougeL", "bleu", "chrf"} <= set(report["adapted"]["overall"])
        gates = {e.check_name: e for e in reported.get_asset_check_evaluations()}
        assert set(gates) == {
            "business_score",
            "rouge_vs_deployed",
            "adapter_applied",
            "pii_leak",
            "forgetting",
            "bias",
        }
        assert gates["rouge_vs_deployed"].passed  # nothing deployed yet
        # The planted canaries are what the leak probe asks for.
        lineage = json.loads(storage.read_bytes(f"{adapter['prefix']}/lineage.json"))
        planted = {"seed": 0, "n": 6, "repeats": 1} if task == "civics_qa" else None
        assert lineage["canaries"] == planted
        assert gates["pii_leak"].metadata["figures"].value["canaries"] == 6  # planted, or the control set
        stored = json.loads(storage.read_bytes(f"{pointer['prefix']}/gates.json"))
        assert stored["pii_leak"]["canaries_planted"] is (planted is not None)

    # The intent adapter passed its blocking gates: registered as a candidate, approved, deployed.
    registered = dg.materialize(
        graph,
        selection=[eval_report, registered_model],
        partition_key="banking77_intents",
        resources=resources,
        instance=instance,
        run_config={"ops": {"eval_report": {"config": report_config}}},
    )
    assert registered.success
    registry = ModelRegistry(storage)
    first = json.loads(storage.read_bytes("models/adapters/banking77_intents/current.json"))["version"]
    entry = registry.entry("banking77_intents", first)
    assert entry.status == "candidate" and not entry.failed_blocking_gates
    assert entry.lineage["sft_data_version"] and entry.eval_metrics["task"]["exact_match"] >= 0
    registry.approve("banking77_intents", first[:16], by="ana", reason="gates passed in test")
    registry.deploy("banking77_intents", first, by="ana", endpoint="http://127.0.0.1:8000/v1")

    # A second adapter version is compared with the deployed one.
    retrained = dg.materialize(
        graph,
        selection=[lora_adapter, eval_report],
        partition_key="banking77_intents",
        resources=resources,
        instance=instance,
        raise_on_error=False,
        run_config={
            "ops": {
                "lora_adapter": {
                    "config": {
                        "max_steps": 120,
                        "learning_rate": 1e-2,
                        "batch_size": 8,
                        "precision": "fp32",
                        "min_accuracy_gain": 0.0,
                        "probe_generations": 2,
                        "probe_max_new_tokens": 12,
                    }
                },
                "eval_report": {"config": report_config},
            }
        },
    )
    failed = [e.check_name for e in retrained.get_asset_check_evaluations() if not e.passed]
    assert retrained.asset_materializations_for_node("eval_report"), f"retrained adapter stopped at {failed}"
    meta = retrained.asset_materializations_for_node("eval_report")[0].metadata
    assert "score_deployed" in meta
    gate = {e.check_name: e for e in retrained.get_asset_check_evaluations()}["rouge_vs_deployed"]
    assert gate.metadata["figures"].value["deployed_version"] == first

    # The monthly re-evaluation scores the deployed version (not the newer candidate): on the same test split
    # it reproduces its registration score exactly; reviewer-labelled production prompts are scored too.
    from llm_assets.defs.monitoring.feedback import feedback_examples
    from llm_assets.defs.monitoring.quality import QUALITY_PREFIX, deployed_model_eval
    from llm_assets.monitoring.feedback import FEEDBACK_SFT_KEY
    from llm_assets.resources.alerts import AlertsResource

    test_rows = storage.read_bytes(
        json.loads(storage.read_bytes("datasets_export/sft/banking77_intents/current.json"))["prefix"]
        + "/test.prompt_completion.jsonl"
    ).splitlines()
    labelled = [json.loads(line) for line in test_rows[:3]]
    storage.write_bytes(
        FEEDBACK_SFT_KEY,
        "".join(
            json.dumps({"id": f"fb{i}", "task": "banking77_intents", "prompt": r["prompt"] + " ",
                        "completion": r["completion"].strip(), "source": "feedback/inbox/x.jsonl:1"}) + "\n"
            for i, r in enumerate(labelled)
        ).encode(),
    )  # fmt: skip
    rescored = dg.materialize(
        [*graph, feedback_examples, deployed_model_eval],
        selection=[deployed_model_eval],
        partition_key="banking77_intents",
        resources=resources | {"alerts": AlertsResource()},
        instance=instance,
        run_config={"ops": {"deployed_model_eval": {"config": {"min_labelled": 3}}}},
    )
    assert rescored.success
    day_reports = storage.list_objects(f"{QUALITY_PREFIX}/banking77_intents/")
    quality = json.loads(storage.read_bytes(day_reports[-1].key))["models"]["banking77_intents"]
    assert quality["version"] == first and quality["labelled_rows"] == 3 and quality["test_rows"] > 0
    assert quality["test_score"] == quality["registered_score"] == entry.eval_metrics["task"]["exact_match"]
    assert quality["verdict"] in ("stable", "drifted") and 0 <= quality["production_score"] <= 1
    storage.delete(FEEDBACK_SFT_KEY)

    # Two sweep points, then selection on validation loss (never on the test rows).
    for trial in ("lr5e-3-r8", "lr2e-3-r16"):
        swept = dg.materialize(
            ALL,
            selection=[lora_sweep_trial],
            partition_key=trial,
            resources=resources,
            instance=instance,
            run_config={
                "ops": {"lora_sweep_trial": {"config": {"max_steps": 8, "batch_size": 8, "precision": "fp32"}}}
            },
        )
        assert swept.success
    chosen = dg.materialize(ALL, selection=[sweep_selection], resources=resources, instance=instance)
    selection = json.loads(storage.read_bytes("models/sweeps/banking77_intents/selection.json"))
    assert {t["trial"] for t in selection["trials"]} == {"lr5e-3-r8", "lr2e-3-r16"}
    assert selection["selected"]["final_eval_loss"] == min(t["final_eval_loss"] for t in selection["trials"])
    assert (
        chosen.asset_materializations_for_node("sweep_selection")[0].metadata["selected"].value
        == (selection["selected"]["trial"])
    )

    # DPO continues the intents adapter on preference pairs (synthesised from the SFT set until feedback lands).
    refined = dg.materialize(
        ALL,
        selection=[dpo_adapter],
        resources=resources,
        instance=instance,
        raise_on_error=False,
        run_config={"ops": {"dpo_adapter": {"config": {"learning_rate": 2e-2, "epochs": 3, "batch_size": 8}}}},
    )
    dpo_check = refined.get_asset_check_evaluations()[0]
    figures = {k: v.value for k, v in dpo_check.metadata.items()}
    assert refined.success, str(figures)
    # More pairs won, or as many (all, or all but a few the SFT adapter already lost) with a wider margin
    # between chosen and rejected.
    assert figures["after"] > figures["before"] or (
        figures["after"] == figures["before"] and figures["logprob_margin_after"] > figures["logprob_margin_before"]
    ), figures
    dpo_keys = [i.key for i in storage.list_objects("models/dpo/banking77_intents/") if i.key.endswith("lineage.json")]
    dpo_lineage = json.loads(storage.read_bytes(dpo_keys[0]))
    sft_pointer = json.loads(storage.read_bytes("models/adapters/banking77_intents/current.json"))
    assert dpo_lineage["sft_adapter"] == sft_pointer["version"] and dpo_lineage["pairs"] > 0

    # The audit trail records each materialisation with its inputs.
    from llm_assets.audit import AuditLog

    records = [r for r in AuditLog(storage).records() if r.get("asset_key") == "lora_adapter"]
    assert {r["partition"] for r in records if r["event"] == "materialization"} == {"banking77_intents", "civics_qa"}
    assert all("cpt_model" in r["input_data_versions"] for r in records if r["event"] == "materialization")


def test_missing_upstream_is_a_clear_failure(curated: LocalLakeStorage, instance, lake) -> None:  # type: ignore[no-untyped-def]
    result = dg.materialize(
        ALL,
        selection=[cpt_model],
        resources={"lake": lake, "training_compute": TrainingCompute(), "inference_endpoint": UNUSED_ENDPOINT},
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "models/base/current.json is missing; materialize the upstream asset first" in (
        failure.step_failure_data.error.message
    )


def test_convergence_and_eos_gate_decide_on_the_figures() -> None:
    ok = {"eval_losses": [{"step": 0, "loss": 3.0}, {"step": 5, "loss": 2.0}, {"step": 10, "loss": 1.5}]}
    assert convergence(ok)[0]
    assert not convergence({"eval_losses": [{"step": 0, "loss": 3.0}, {"step": 5, "loss": 3.5}]})[0]
    assert not convergence({"eval_losses": [{"step": 0, "loss": 3.0}, {"step": 5, "loss": float("nan")}]})[0]
    overfit = {"eval_losses": [{"step": 0, "loss": 3.0}, {"step": 5, "loss": 0.5}, {"step": 9, "loss": 3.2}]}
    assert not convergence({**overfit, "final_eval_loss": 3.2})[0]  # the last model is kept: worse than the start
    assert convergence({**overfit, "final_eval_loss": 0.5})[0]  # keep_best: the step-5 model is kept
    mask = {"checked": 10, "empty": 0, "without_eos": 0}
    stopped = [{"text": "a", "stopped": True}] * 3
    assert eos_gate({"loss_mask": mask, "probes": stopped})[0]
    assert not eos_gate({"loss_mask": {**mask, "without_eos": 1}, "probes": stopped})[0]
    assert not eos_gate({"loss_mask": mask, "probes": [*stopped, {"text": "...", "stopped": False}]})[0]
    assert not eos_gate({"loss_mask": mask, "probes": []})[0]
    # A tolerance for a few looping prompts, never for a model that does not stop.
    looping = [*stopped, *stopped, *stopped, {"text": "the the", "stopped": False}]
    assert eos_gate({"loss_mask": mask, "probes": looping}, 0.75)[0]
    assert not eos_gate({"loss_mask": mask, "probes": [{"text": "x", "stopped": False}] * 4}, 0.75)[0]


def test_validation_split_is_stable_and_disjoint() -> None:
    rows = [{"id": f"{n:03d}", "prompt": "p", "completion": "c"} for n in range(50)]
    train, validation = split_validation(rows, 0.1, seed=0)
    assert len(validation) == 5 and len(train) == 45
    assert {r["id"] for r in train}.isdisjoint(r["id"] for r in validation)
    assert split_validation(list(reversed(rows)), 0.1, seed=0) == (train, validation)


def test_sweep_selection_prefers_lowest_validation_loss() -> None:
    trials = [
        {"trial": "a", "final_eval_loss": 1.2, "train_seconds": 5},
        {"trial": "b", "final_eval_loss": 0.9, "train_seconds": 9},
        {"trial": "c", "final_eval_loss": 0.9, "train_seconds": 4},
    ]
    assert select_trial(trials)["trial"] == "c"
    with pytest.raises(ValueError, match="no sweep trial"):
        select_trial([])


def test_cpt_with_lora_stores_a_whole_model(curated: LocalLakeStorage, instance, lake) -> None:  # type: ignore[no-untyped-def]
    """Downstream adapters need a full model: a LoRA CPT is merged into its base, the adapter kept beside."""
    ops = {**TINY, "cpt_model": {"config": {**TINY["cpt_model"]["config"], "method": "lora", "lora_rank": 4}}}
    result = dg.materialize(
        ALL,
        selection=[tokenizer, base_model, cpt_model],
        resources={"lake": lake, "training_compute": TrainingCompute(), "inference_endpoint": UNUSED_ENDPOINT},
        instance=instance,
        run_config={"ops": ops},
    )
    assert result.success
    prefix = json.loads(curated.read_bytes("models/cpt/current.json"))["prefix"]
    assert curated.exists(f"{prefix}/model.safetensors") and curated.exists(f"{prefix}/config.json")
    assert curated.exists(f"{prefix}/cpt_adapter/adapter_model.safetensors")


def test_eval_qa_pilot_is_grounded_decontaminated_and_awaits_review(  # type: ignore[no-untyped-def]
    curated: LocalLakeStorage, instance, lake, tmp_path_factory
) -> None:
    from llm_assets.defs.evaluation.assets import eval_qa_pilot

    everything = [*ALL, eval_qa_pilot]
    built = dg.materialize(
        everything,
        selection=[sft_dataset],
        partition_key="banking77_intents",
        resources={"lake": lake, "training_compute": TrainingCompute(), "inference_endpoint": UNUSED_ENDPOINT},
        instance=instance,
        run_config={"ops": {"sft_dataset": {"config": {"intents": 3, "min_examples": 10}}}},
    )
    assert built.success
    first = dg.materialize(
        everything,
        selection=[eval_qa_pilot],
        resources={"lake": lake, "training_compute": TrainingCompute(), "inference_endpoint": UNUSED_ENDPOINT},
        instance=instance,
        run_config={"ops": {"eval_qa_pilot": {"config": {"pilot_size": 20}}}},
    )
    assert first.success  # the review check warns; it does not stop the graph
    checks = {e.check_name: e for e in first.get_asset_check_evaluations()}
    assert checks["grounded"].passed and checks["decontaminated"].passed
    assert not checks["human_review"].passed
    assert checks["human_review"].metadata["status"].value == "awaiting review: no labels yet"
    pointer = json.loads(curated.read_bytes("evaluation/qa/pilot/current.json"))
    items = [json.loads(line) for line in curated.read_bytes(f"{pointer['prefix']}/items.jsonl").splitlines()]
    assert 0 < len(items) <= 20 and all(i["source_id"] and i["span"][1] > i["span"][0] for i in items)
    manifest = json.loads(curated.read_bytes(f"{pointer['prefix']}/manifest.json"))
    assert "banking77_intents" in manifest["decontaminated_against"]["sft_sets"]

    # Reviewers' labels for this version make the check pass only at the acceptance threshold.
    labels = "".join(json.dumps({"item_id": i["id"], "correct": True}) + "\n" for i in items)
    curated.write_bytes(f"evaluation/qa/reviews/{pointer['version'][:16]}/reviewer-a.jsonl", labels.encode())
    second = dg.materialize(
        everything,
        selection=[eval_qa_pilot],
        resources={"lake": lake, "training_compute": TrainingCompute(), "inference_endpoint": UNUSED_ENDPOINT},
        instance=instance,
        run_config={"ops": {"eval_qa_pilot": {"config": {"pilot_size": 20}}}},
    )
    review = {e.check_name: e for e in second.get_asset_check_evaluations()}["human_review"]
    assert review.passed and review.metadata["acceptance"].value == 1.0

    # Baseline b of a candidate base size on the pilot's multiple-choice items, with its reproducibility manifest.
    from llm_assets.defs.evaluation.assets import baseline_eval

    resources = {"lake": lake, "training_compute": TrainingCompute(), "inference_endpoint": UNUSED_ENDPOINT}
    everything = [*everything, baseline_eval]
    assert dg.materialize(
        everything,
        selection=[tokenizer],
        resources=resources,
        instance=instance,
        run_config={"ops": {"tokenizer": TINY["tokenizer"]}},
    ).success
    scored = dg.materialize(
        everything,
        selection=[baseline_eval],
        partition_key="tiny-h64-l2",
        resources=resources,
        instance=instance,
        run_config={"ops": {"baseline_eval": {"config": {"limit": 8}}}},
    )
    assert scored.success
    meta = scored.asset_materializations_for_node("baseline_eval")[0].metadata
    choice_items = sum(i["kind"] == "multiple_choice" for i in items)
    assert 0.0 <= meta["baseline_acc"].value <= 1.0 and meta["items_scored"].value == min(8, choice_items)
    for key in ("lm_eval_version", "tasks", "batch_size", "dtype", "backend", "model_version"):
        assert key in meta["reproducibility"].value

    # The LLM generator through a real OpenAI-compatible server (the CPU reference server on a tiny random model):
    # every request ends as an item or a reject with its reason, and the manifest names the locked template.
    import threading

    from llm_assets.serving.reference_server import ReferenceEngine, ReferenceServer
    from llm_assets.training.base_model import TinyLlamaConfig, bootstrap_tiny_llama, download_prefix

    tokenizer_prefix = json.loads(curated.read_bytes("models/tokenizer/current.json"))["prefix"]
    work = tmp_path_factory.mktemp("served")
    bootstrap_tiny_llama(
        download_prefix(curated, tokenizer_prefix, work / "tokenizer"),
        TinyLlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, max_position_embeddings=2048),
        work / "model",
    )
    server = ReferenceServer(ReferenceEngine(work / "model", served_model_name="tiny"), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        with_llm = dg.materialize(
            everything,
            selection=[eval_qa_pilot],
            resources={**resources, "inference_endpoint": InferenceEndpoint(base_url=server.url, model="tiny")},
            instance=instance,
            run_config={
                "ops": {"eval_qa_pilot": {"config": {"pilot_size": 20, "llm_records": 3, "llm_max_tokens": 48}}}
            },
        )
    finally:
        server.shutdown()
        server.server_close()
    assert with_llm.success
    pointer = json.loads(curated.read_bytes("evaluation/qa/pilot/current.json"))
    llm = json.loads(curated.read_bytes(f"{pointer['prefix']}/manifest.json"))["llm"]
    assert llm["model"] == "tiny" and llm["template"] == "grounded_qa@v1" and len(llm["template_hash"]) == 64
    rejects = curated.read_bytes(f"{pointer['prefix']}/llm_rejects.jsonl").splitlines()
    assert llm["requests"] == llm["accepted"] + sum(llm["rejected"].values()) == llm["accepted"] + len(rejects) > 0
    assert server.response_formats and server.response_formats[-1]["type"] == "json_schema"
    assert {e.check_name: e.passed for e in with_llm.get_asset_check_evaluations()}["grounded"]

    # Scale-up: the locked set is refused until reviewers validated the pilot, then built with its recipe.
    from llm_assets.defs.evaluation.review import eval_qa_locked, eval_qa_validated
    from llm_assets.evaluation.review import ReviewStore

    everything = [*everything, eval_qa_validated, eval_qa_locked]
    refused = dg.materialize(
        everything, selection=[eval_qa_locked], resources=resources, instance=instance, raise_on_error=False
    )
    assert not refused.success
    failure = refused.get_step_failure_events()[0].step_failure_data.error
    assert failure is not None and "has no validation summary" in failure.message
    curated.delete(f"evaluation/qa/reviews/{pointer['version'][:16]}/reviewer-a.jsonl")
    store = ReviewStore(curated)
    for number, item in enumerate(store.items[:10]):
        store.record("ana", item["id"], correct=number != 9, grounded=True, clear=True, safe=True)
    locked = dg.materialize(
        everything,
        selection=[eval_qa_validated, eval_qa_locked],
        resources=resources,
        instance=instance,
        run_config={"ops": {"eval_qa_locked": {"config": {"dev_share": 0.5}}}},
    )
    assert locked.success
    assert all(e.passed for e in locked.get_asset_check_evaluations())
    locked_pointer = json.loads(curated.read_bytes("evaluation/qa/locked/current.json"))
    locked_manifest = json.loads(curated.read_bytes(f"{locked_pointer['prefix']}/manifest.json"))
    assert locked_manifest["pilot_version"] == store.version and locked_manifest["excluded_by_review"] == 1
    assert locked_manifest["generator_settings"]["seed"] == 0 and locked_manifest["items"]["dev"] > 0
    scaled = {
        split: [
            json.loads(line) for line in curated.read_bytes(f"{locked_pointer['prefix']}/{split}.jsonl").splitlines()
        ]
        for split in ("dev", "test")
    }
    assert sum(len(rows) for rows in scaled.values()) > len(store.items)  # scaled beyond the pilot
    assert store.items[9]["id"] not in {row["id"] for rows in scaled.values() for row in rows}
    assert not {r["source_id"] for r in scaled["dev"]} & {r["source_id"] for r in scaled["test"]}

    # Rate of adaptation of that candidate on the intent task, then the selection over what was measured.
    from llm_assets.defs.evaluation.selection import adaptation_curve, model_selection

    everything = [*everything, adaptation_curve, model_selection]
    adapted = dg.materialize(
        everything,
        selection=[adaptation_curve],
        partition_key="tiny-h64-l2",
        resources=resources,
        instance=instance,
        run_config={
            "ops": {
                "adaptation_curve": {
                    "config": {"max_steps": 12, "batch_size": 8, "eval_points": 3, "curve_examples": 8}
                }
            }
        },
    )
    assert adapted.success
    curve_meta = adapted.asset_materializations_for_node("adaptation_curve")[0].metadata
    points = curve_meta["curve"].value
    assert [p["step"] for p in points] == [0, 4, 8, 12]
    assert all(p["cost_usd"] >= 0 and p["tokens"] >= 0 for p in points) and points[-1]["tokens"] > 0
    assert "fit_r2" in curve_meta and "curve_plot" in curve_meta
    chosen = dg.materialize(
        everything,
        selection=[model_selection],
        resources=resources,
        instance=instance,
        run_config={"ops": {"model_selection": {"config": {"kpi": 0.9, "min_unlabelled_chars": 1000}}}},
    )
    assert chosen.success
    selected = chosen.asset_materializations_for_node("model_selection")[0].metadata
    assert selected["not_evaluated"].value == ["tiny-h128-l4"]
    assert "tiny-h64-l2" in selected["selection_table"].value and "curves_plot" in selected
    assert len(selected["decision_matrix"].value) == 3 and selected["route"].value
    version = json.loads(curated.read_bytes("evaluation/selection/current.json"))["version"]
    report = json.loads(curated.read_bytes(f"evaluation/selection/{version[:16]}/selection.json"))
    assert report["candidates"][0]["benchmark_b"] == meta["baseline_acc"].value
    assert report["labelled_examples"] > 0 and report["unlabelled_chars"] > 0
