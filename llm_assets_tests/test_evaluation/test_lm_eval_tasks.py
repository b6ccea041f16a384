"""lm-eval task export and offline runs on a tiny local Llama, with and without a LoRA adapter."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from llm_assets.evaluation.lm_eval_tasks import (
    EvalReport,
    EvalTaskError,
    endpoint_model_args,
    export_task,
    folder_version,
    run_local,
    task_config,
)
from llm_assets.training.base_model import TinyLlamaConfig, bootstrap_tiny_llama
from llm_assets.training.tokenizer import TokenizerConfig, save_pretrained, train_bpe_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TEXTS = ["Question: What is the capital of Greece?\nAnswer: Athens", "Η επιτροπή ενέκρινε τον προϋπολογισμό."] * 50

MC_ITEMS: list[dict[str, Any]] = [
    {
        "id": f"mc{i}",
        "kind": "multiple_choice",
        "question": q,
        "choices": choices,
        "answer": choices[a],
        "answer_index": a,
        "lang": lang,
    }
    for i, (q, choices, a, lang) in enumerate(
        [
            ("What is the capital of Greece?", ["Athens", "Rome", "Paris"], 0, "en"),
            ("Ποια είναι η πρωτεύουσα της Ελλάδας;", ["Ρώμη", "Αθήνα"], 1, "el"),
            ("Is the budget approved?", ["yes", "no"], 0, "en"),
            ("Which is a colour?", ["table", "blue", "run"], 1, "en"),
        ]
    )
]
GEN_ITEMS: list[dict[str, Any]] = [
    {"id": "g0", "kind": "generate", "question": "Capital of Greece?", "answer": "Athens", "lang": "en"},
    {"id": "g1", "kind": "cloze", "question": "Η ___ ενέκρινε τον προϋπολογισμό.", "answer": "επιτροπή", "lang": "el"},
    {"id": "g2", "kind": "generate", "question": "Two plus two?", "answer": "4", "lang": "en"},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer_dir = tmp_path_factory.mktemp("tokenizer")
    save_pretrained(train_bpe_tokenizer(TEXTS, TokenizerConfig(vocab_size=300)), tokenizer_dir)
    folder = tmp_path_factory.mktemp("model")
    bootstrap_tiny_llama(tokenizer_dir, TinyLlamaConfig(hidden_size=32, intermediate_size=64), folder)
    return folder


@pytest.fixture(scope="module")
def adapter_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(model_dir)),
        LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tasks")
    export_task(MC_ITEMS, folder, "biz_mc", "multiple_choice")
    export_task(GEN_ITEMS, folder, "biz_gen", "generate", until=["\n"], max_gen_toks=4, regex=r"\w+")
    return folder


def test_exported_yaml_loads_through_task_manager(task_dir: Path) -> None:
    from lm_eval.tasks import TaskManager

    config = yaml.safe_load((task_dir / "biz_mc.yaml").read_text(encoding="utf-8"))
    assert config["dataset_path"] == "json" and config["output_type"] == "multiple_choice"
    assert Path(config["dataset_kwargs"]["data_files"]["test"]).is_file()

    loaded = TaskManager(include_path=str(task_dir), include_defaults=False).load(["biz_mc", "biz_gen"])["tasks"]
    mc, gen = loaded["biz_mc"], loaded["biz_gen"]
    docs = list(mc.test_docs())
    assert len(docs) == len(MC_ITEMS)
    assert mc.doc_to_text(docs[1]) == "Question: Ποια είναι η πρωτεύουσα της Ελλάδας;\nAnswer:"
    assert mc.doc_to_choice(docs[1]) == ["Ρώμη", "Αθήνα"] and mc.doc_to_target(docs[1]) == 1
    assert gen.config.output_type == "generate_until"
    assert gen.config.generation_kwargs["until"] == ["\n"]
    assert gen.doc_to_target(next(iter(gen.test_docs()))) == "Athens"


def test_generate_config_has_exact_match_and_regex_filter(tmp_path: Path) -> None:
    config = task_config("t", tmp_path / "t.jsonl", "generate", regex=r"(\d+)")
    metric = config["metric_list"][0]
    assert metric["metric"] == "exact_match" and metric["ignore_case"] and metric["ignore_punctuation"]
    assert [f["name"] for f in config["filter_list"]] == ["strip", "regex"]
    assert "filter_list" in task_config("t", tmp_path / "t.jsonl", "generate")


@pytest.mark.parametrize(
    ("items", "kind", "name", "message"),
    [
        ([], "generate", "t", "no items to export"),
        ([{"id": "x", "question": "q"}], "generate", "t", r"t item 0 \(id=x\): no answer"),
        ([{"id": "x", "question": "q", "choices": ["a"], "answer_index": 0}], "multiple_choice", "t", "at least 2"),
        ([{"id": "x", "question": "q", "choices": ["a", "b"], "answer_index": 2}], "multiple_choice", "t", "index"),
        ([{"id": "x", "question": "q", "answer": "a"}], "generate", "bad-name", "task name"),
        ([{"id": "x", "question": "q", "answer": "a"}], "cloze", "t", "kind 'cloze'"),
    ],
)
def test_bad_exports_are_one_line_errors(
    tmp_path: Path, items: list[dict[str, Any]], kind: Any, name: str, message: str
) -> None:
    with pytest.raises(EvalTaskError, match=message) as error:
        export_task(items, tmp_path, name, kind)
    assert "\n" not in str(error.value)


def _check_report(report: EvalReport, adapter: bool) -> None:
    assert set(report.metrics) == {"biz_mc", "biz_gen"}
    assert report.samples == {"biz_mc": len(MC_ITEMS), "biz_gen": len(GEN_ITEMS)}
    assert set(report.metrics["biz_mc"]) == {"acc", "acc_norm"}
    assert set(report.metrics["biz_gen"]) == {"exact_match,strip", "exact_match,regex"}
    for scores in report.metrics.values():
        assert all(0.0 <= value <= 1.0 for value in scores.values())
    manifest = report.manifest
    for key in ("lm_eval_version", "num_fewshot", "fewshot_seed", "batch_size", "dtype", "backend", "model_version"):
        assert manifest[key] is not None, key
    assert manifest["lm_eval_version"] == "0.4.13" and manifest["backend"] == "hf"
    assert manifest["backend_version"]["transformers"]
    assert len(manifest["tasks"]["biz_mc"]["yaml_sha256"]) == 64
    assert len(manifest["tasks"]["biz_gen"]["data_sha256"]["test"]) == 64
    assert manifest["tasks"]["biz_mc"]["prompt_template"] == "Question: {{question}}\nAnswer:"
    assert (manifest["adapter_version"] is not None) == adapter


def test_run_local_base_and_adapter(task_dir: Path, model_dir: Path, adapter_dir: Path) -> None:
    base = run_local(task_dir, ["biz_mc", "biz_gen"], model_dir, seed=0)
    _check_report(base, adapter=False)
    assert base.manifest["model_version"] == folder_version(model_dir)

    tuned = run_local(task_dir, ["biz_mc", "biz_gen"], model_dir, adapter_dir=adapter_dir, seed=0)
    _check_report(tuned, adapter=True)
    assert tuned.manifest["adapter_version"] == folder_version(adapter_dir)
    assert tuned.manifest["model_version"] == base.manifest["model_version"]
    print("base", base.metrics, "adapter", tuned.metrics)


def test_run_local_errors_are_one_line(task_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(EvalTaskError, match=r"no config\.json"):
        run_local(task_dir, ["biz_mc"], tmp_path / "missing")
    with pytest.raises(EvalTaskError, match=r"no adapter_config\.json"):
        run_local(task_dir, ["biz_mc"], model_dir, adapter_dir=tmp_path)
    with pytest.raises(EvalTaskError, match="no task YAML"):
        run_local(task_dir, ["nope"], model_dir)


def test_endpoint_model_args() -> None:
    args = endpoint_model_args("http://127.0.0.1:8000/v1/", "tiny", tokenizer="/models/tiny")
    assert args["base_url"] == "http://127.0.0.1:8000/v1/completions"
    assert args["num_concurrent"] == 1 and args["tokenized_requests"] is True
    assert args["tokenizer"] == "/models/tiny"
    text_only = endpoint_model_args("https://host/v1/completions", "m", num_concurrent=4)
    assert text_only["base_url"] == "https://host/v1/completions"
    assert text_only["tokenizer_backend"] == "none" and text_only["tokenized_requests"] is False
    with pytest.raises(EvalTaskError, match="not an http"):
        endpoint_model_args("localhost:8000", "m")
    with pytest.raises(EvalTaskError, match="at least 1"):
        endpoint_model_args("http://h/v1", "m", num_concurrent=0)
