"""The one trainer script: continued pre-training or LoRA/full SFT with TRL, the same file on every backend.

In-process (`run_training(spec)`), as a subprocess (`python -m llm_assets.training.trainer --spec F`) and
inside a Kubernetes pod or SageMaker container (`--pipes`: the spec arrives as Dagster Pipes extras and the
result goes back as a Pipes custom message). A spec names its channels (folders, local or `s3://`), the
output folder and the checkpoint folder; `$VARS` in paths are expanded, so a SageMaker spec can point at
`$SM_CHANNEL_TRAIN`.

Spot-safe: checkpoints are written every few steps, each one marked complete only after the trainer has
finished writing it (and, when a mirror is set, after it has been copied there), and a restarted run
resumes from the last complete one and ends on the same step count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llm_assets.training.config import TrainingConfig

Log = Callable[[str], None]
COMPLETE_MARKER = "CHECKPOINT_COMPLETE"
RESULT_FILE = "training_result.json"


class TrainingError(Exception):
    """A run that cannot start or finish; the message names the file or setting and what to do."""


# ---------------------------------------------------------------- paths: local folders or s3:// prefixes


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key.rstrip("/")


def _s3_client() -> Any:
    import boto3

    return boto3.client("s3")  # AWS_ENDPOINT_URL / AWS_REGION / credentials come from the environment


def pull(uri: str, dest: Path) -> Path:
    """A local folder as-is, or an `s3://` prefix copied into `dest`."""
    uri = os.path.expandvars(uri)
    if not uri.startswith("s3://"):
        return Path(uri)
    bucket, prefix = _split_s3(uri)
    client = _s3_client()
    found = False
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            target = dest / item["Key"][len(prefix) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, item["Key"], str(target))
            found = True
    if not found:
        raise TrainingError(f"{uri}: nothing stored there; upload the channel before starting the job")
    return dest


def push(folder: Path, uri: str) -> None:
    """Copies a folder to a local folder or an `s3://` prefix (files first, so readers see whole files)."""
    uri = os.path.expandvars(uri)
    if not uri.startswith("s3://"):
        target = Path(uri)
        if target.resolve() != folder.resolve():
            shutil.copytree(folder, target, dirs_exist_ok=True)
        return
    bucket, prefix = _split_s3(uri)
    client = _s3_client()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


# ---------------------------------------------------------------- data


def read_jsonl(path: Path, required: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a bad line or a missing field is a one-line error naming file and line."""
    if not path.is_file():
        raise TrainingError(f"{path}: missing; the data channel must hold train.jsonl and eval.jsonl")
    rows = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise TrainingError(f"{path}:{number}: not a JSON object ({exc}); fix or drop the line") from exc
            missing = [name for name in required if not isinstance(row.get(name), str)]
            if missing:
                raise TrainingError(f"{path}:{number}: field(s) {', '.join(missing)} missing or not text")
            rows.append(row)
    if not rows:
        raise TrainingError(f"{path}: no examples; rebuild the data set")
    return rows


def _fields(config: TrainingConfig) -> tuple[str, ...]:
    return ("text",) if config.mode == "cpt" else ("prompt", "completion")


# ---------------------------------------------------------------- precision and devices


def bf16_supported() -> bool:
    """What precision "auto" picks bf16 for: a CUDA GPU with bf16. On a CPU "auto" stays fp32 even where
    AVX-512 BF16 or AMX would run bf16 (ask for precision="bf16" there): bf16 autocast on a CPU changes
    the numbers between CPUs with and without those units, so the same run would pass its gates on one
    machine and fail them on another, and the small models trained on CPUs learn measurably worse in it."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def use_bf16(config: TrainingConfig) -> bool:
    if config.precision == "auto":
        return bf16_supported()
    return config.precision == "bf16"


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hides the datasets/transformers bars (dataset maps, weight loading) for the run, then restores them."""
    import datasets
    from transformers.utils import logging as transformers_logging

    datasets_on = datasets.is_progress_bar_enabled()
    transformers_on = transformers_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_on:
            datasets.enable_progress_bars()
        if transformers_on:
            transformers_logging.enable_progress_bar()


# ---------------------------------------------------------------- the run


def _schedule(config: TrainingConfig, examples: int) -> tuple[int, int, int]:
    """(total optimizer steps, eval every, save every) fixed up front, so a resumed run ends on the same step."""
    per_step = config.batch_size * config.gradient_accumulation_steps
    total = config.max_steps or max(1, math.ceil(math.ceil(examples / per_step) * config.epochs))
    eval_every = max(1, total // config.eval_points)
    save_every = eval_every if config.keep_best else max(1, total // config.checkpoint_points)
    return total, eval_every, save_every


def complete_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints whose writing finished (a kill mid-save leaves one without the marker), oldest first."""
    found = [p for p in folder.glob("checkpoint-*") if (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]))


def _restore_checkpoints(checkpoint_dir: Path, mirror: str | None) -> Path | None:
    """The last complete checkpoint, pulled from the mirror first when the local folder is fresh."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    for partial in checkpoint_dir.glob("checkpoint-*"):
        if not (partial / COMPLETE_MARKER).is_file():
            shutil.rmtree(partial)
    if mirror and not complete_checkpoints(checkpoint_dir):
        mirror = os.path.expandvars(mirror)
        if mirror.startswith("s3://"):
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    pulled = pull(mirror, Path(tmp))
                except TrainingError:
                    pulled = None
                if pulled is not None:
                    shutil.copytree(pulled, checkpoint_dir, dirs_exist_ok=True)
        elif Path(mirror).is_dir():
            for checkpoint in complete_checkpoints(Path(mirror)):
                shutil.copytree(checkpoint, checkpoint_dir / checkpoint.name, dirs_exist_ok=True)
        for partial in checkpoint_dir.glob("checkpoint-*"):
            if not (partial / COMPLETE_MARKER).is_file():
                shutil.rmtree(partial)
    done = complete_checkpoints(checkpoint_dir)
    return done[-1] if done else None


def _mirror_checkpoint(checkpoint: Path, mirror: str) -> None:
    """Copies a finished checkpoint to the mirror, marker last, so the mirror never holds a torn one."""
    mirror = os.path.expandvars(mirror)
    if mirror.startswith("s3://"):
        marker = checkpoint / COMPLETE_MARKER
        files = sorted(p for p in checkpoint.rglob("*") if p.is_file() and p != marker)
        bucket, prefix = _split_s3(mirror)
        client = _s3_client()
        for path in [*files, marker]:
            client.upload_file(
                str(path), bucket, f"{prefix}/{checkpoint.name}/{path.relative_to(checkpoint).as_posix()}"
            )
        return
    target = Path(mirror) / checkpoint.name
    staging = Path(mirror) / f".{checkpoint.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(checkpoint, staging, ignore=shutil.ignore_patterns(COMPLETE_MARKER))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    (target / COMPLETE_MARKER).write_text("ok\n")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_model(model_dir: Path, bf16: bool) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (model_dir / "config.json").is_file():
        raise TrainingError(f"{model_dir}: no config.json; the model channel must hold a transformers model folder")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.eos_token_id is None:
        raise TrainingError(f"{model_dir}: the tokenizer has no EOS token; generations could never stop")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16 if bf16 else torch.float32)
    return model, tokenizer


def loss_mask_report(dataset: Any, eos_id: int, limit: int = 256) -> dict[str, int]:
    """How many tokenized examples train on nothing, or train without the end-of-turn token (EOS)."""
    checked = empty = without_eos = 0
    for row in dataset.select(range(min(limit, len(dataset)))):
        ids = row["input_ids"]
        mask = row.get("completion_mask") or row.get("assistant_masks") or [1] * len(ids)
        trained = [token for token, keep in zip(ids, mask, strict=False) if keep]
        checked += 1
        empty += not trained
        without_eos += bool(trained) and trained[-1] != eos_id
    return {"checked": checked, "empty": empty, "without_eos": without_eos}


def greedy_generate(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int) -> list[dict[str, Any]]:
    """Greedy completions, one prompt at a time (no padding side effects); notes whether each stopped on EOS."""
    import torch

    results = []
    model.eval()
    with torch.inference_mode():
        for prompt in prompts:
            encoded = tokenizer(prompt, return_tensors="pt")
            output = model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            new = output[0, encoded["input_ids"].shape[1] :].tolist()
            stopped = tokenizer.eos_token_id in new
            if stopped:
                new = new[: new.index(tokenizer.eos_token_id)]
            results.append(
                {"prompt": prompt, "text": tokenizer.decode(new, skip_special_tokens=True), "stopped": stopped}
            )
    return results


def exact_match_accuracy(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], max_new_tokens: int) -> float:
    """Share of rows whose greedy completion equals the reference (whitespace-trimmed, case-folded)."""
    if not rows:
        return 0.0
    outputs = greedy_generate(model, tokenizer, [row["prompt"] for row in rows], max_new_tokens)
    hits = sum(
        o["text"].strip().casefold() == row["completion"].strip().casefold()
        for o, row in zip(outputs, rows, strict=True)
    )
    return hits / len(rows)


INITIAL_EVAL_FILE = "initial_eval.json"


def completion_token_ids(tokenizer: Any, rows: Sequence[dict[str, Any]]) -> list[int]:
    """The token ids the completions are made of, plus EOS: the embedding rows LoRA SFT may also train."""
    ids = {int(tokenizer.eos_token_id)}
    for row in rows:
        ids.update(tokenizer(row["completion"], add_special_tokens=False)["input_ids"])
    return sorted(ids)


def curve_rows(rows: Sequence[dict[str, Any]], size: int, seed: int) -> list[dict[str, Any]]:
    """A seeded sample of held-out rows scored at every evaluation (test sets are often grouped by label)."""
    if size <= 0 or not rows:
        return []
    if len(rows) <= size:
        return list(rows)
    return random.Random(seed).sample(list(rows), size)


CURVE_KEY = "curve_score"


def _trainer_callbacks(
    log: Log,
    mirror: str | None,
    total_steps: int,
    initial: dict[str, Any],
    curve: Sequence[dict[str, Any]] = (),
    curve_max_new_tokens: int = 8,
) -> list[Any]:
    from transformers import TrainerCallback

    class AdaptationCurve(TrainerCallback):
        """Scores the model on held-out rows at every evaluation, with tokens seen and training-only seconds.

        The points live in `state.log_history`, which every checkpoint stores, so a resumed run keeps them.
        """

        def __init__(self) -> None:
            self.seconds: float | None = None
            self.step_started = 0.0
            self.training = False

        def _last_seconds(self, state: Any) -> float:
            points = [h for h in state.log_history if CURVE_KEY in h]
            return float(points[-1]["train_seconds"]) if points else 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.training = True
            self.seconds = self._last_seconds(state)

        def on_step_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.step_started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.seconds = (self.seconds or 0.0) + time.perf_counter() - self.step_started

        def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.training = False  # the closing evaluate() scores the kept model, not a point on the curve

        def on_evaluate(
            self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any
        ) -> None:
            if not (self.training and curve):
                return
            model, tokenizer = kwargs["model"], kwargs["processing_class"]
            score = exact_match_accuracy(model, tokenizer, curve, curve_max_new_tokens)
            state.log_history.append(
                {
                    "step": state.global_step,
                    CURVE_KEY: score,
                    "tokens": int(state.num_input_tokens_seen or 0),
                    "train_seconds": round(self.seconds or 0.0, 3),
                    "validation_loss": (metrics or {}).get("eval_loss"),
                }
            )
            log(f"step {state.global_step}/{total_steps}: held-out score {score:.3f} on {len(curve)} examples")

    class Progress(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any) -> None:
            if logs:
                figures = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items())
                log(f"step {state.global_step}/{total_steps}: {figures}")

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if not checkpoint.is_dir():
                return
            # The loss before training travels with every checkpoint, so a resumed run still judges convergence.
            (checkpoint / INITIAL_EVAL_FILE).write_text(json.dumps(initial))
            (checkpoint / COMPLETE_MARKER).write_text("ok\n")
            if mirror:
                _mirror_checkpoint(checkpoint, mirror)
            log(f"checkpoint {checkpoint.name} complete")

    return [Progress(), AdaptationCurve()]


def compact_loss_trainer_class() -> type:
    """SFTTrainer whose loss projects only the labelled positions through the LM head.

    The LM head (hidden x vocab) dominates a small model's cost. On CPUs TRL's fused head scores every
    position (it compacts only on Triton devices) and computes entropy and top-1 metrics on the way; with a
    completion-only loss most positions are prompt, so gathering the labelled ones first and running one
    cross-entropy is several times cheaper. Generation and saving are untouched.
    """
    import torch
    import torch.nn.functional as F
    from trl import SFTTrainer

    class CompactLossSFTTrainer(SFTTrainer):
        def compute_loss(
            self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            labels = inputs["labels"]
            backbone_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}
            hidden = model.get_decoder()(**backbone_inputs, use_cache=False).last_hidden_state
            targets = labels[:, 1:]
            keep = targets != -100
            logits = model.get_output_embeddings()(hidden[:, :-1][keep])
            total = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
            count = keep.sum() if num_items_in_batch is None else num_items_in_batch
            loss = total / torch.as_tensor(count, device=total.device).clamp(min=1)
            mode = "train" if model.training else "eval"
            with torch.no_grad():
                correct = (logits.argmax(-1) == targets[keep]).sum().item()
            self._metrics[mode]["mean_token_accuracy"].append(correct / max(1, int(keep.sum())))
            return (loss, None) if return_outputs else loss

    return CompactLossSFTTrainer


def run_training(spec: dict[str, Any], *, log: Log | None = None) -> dict[str, Any]:
    """Runs one training job described by `spec`; returns the figures the asset checks decide on."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    try:
        config = TrainingConfig.model_validate(spec.get("config", {}))
    except ValueError as exc:
        first = str(exc).splitlines()
        raise TrainingError(f"training config: {' '.join(first[:3])}") from exc
    channels = spec.get("channels") or {}
    for name in ("model", "data"):
        if name not in channels:
            raise TrainingError(f"spec: channel {name!r} is missing; give a folder or s3:// prefix for it")
    with tempfile.TemporaryDirectory(prefix="llm-assets-train-") as scratch:
        work = Path(scratch)
        model_dir = pull(channels["model"], work / "model")
        data_dir = pull(channels["data"], work / "data")
        output_uri = os.path.expandvars(spec.get("output_dir") or str(work / "output"))
        output_dir = work / "output" if output_uri.startswith("s3://") else Path(output_uri)
        checkpoint_dir = Path(os.path.expandvars(spec.get("checkpoint_dir") or str(work / "checkpoints")))
        with quiet_progress_bars():
            result = _train(config, model_dir, data_dir, output_dir, checkpoint_dir, spec.get("checkpoint_mirror"), log)
        (output_dir / RESULT_FILE).write_text(json.dumps(result, indent=2))
        if output_uri.startswith("s3://"):
            push(output_dir, output_uri)
    return result


def _train(
    config: TrainingConfig,
    model_dir: Path,
    data_dir: Path,
    output_dir: Path,
    checkpoint_dir: Path,
    mirror: str | None,
    log: Log,
) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import set_seed
    from trl import SFTConfig

    if not (model_dir / "config.json").is_file():
        raise TrainingError(f"{model_dir}: no config.json; the model channel must hold a transformers model folder")
    fields = _fields(config)
    train_rows = read_jsonl(data_dir / "train.jsonl", fields)
    eval_rows = read_jsonl(data_dir / "eval.jsonl", fields)[: config.max_eval_examples]
    test_path = data_dir / "test.jsonl"
    test_rows = read_jsonl(test_path, ("prompt", "completion")) if config.mode == "sft" and test_path.is_file() else []
    bf16 = use_bf16(config)
    set_seed(config.seed)
    model, tokenizer = _load_model(model_dir, bf16)
    if config.mode == "sft" and test_rows:
        accuracy_before = exact_match_accuracy(model, tokenizer, test_rows, config.probe_max_new_tokens)
    else:
        accuracy_before = None

    padding_free = config.mode == "sft" and config.padding_free
    keep = list(fields)
    train_set = Dataset.from_list([{k: r[k] for k in keep} for r in train_rows])
    eval_set = Dataset.from_list([{k: r[k] for k in keep} for r in eval_rows])
    total_steps, eval_every, save_every = _schedule(config, len(train_rows)) if config.mode == "sft" else (0, 0, 0)
    args = SFTConfig(
        output_dir=str(checkpoint_dir),
        use_cpu=not torch.cuda.is_available(),
        bf16=bf16,
        fp16=False,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        weight_decay=config.weight_decay,
        num_train_epochs=config.epochs,
        max_steps=-1,
        # Padding-free SFT does not truncate; over-long examples are dropped below and counted instead.
        max_length=None if padding_free else config.max_length,
        gradient_checkpointing=False,  # tiny activations: recomputing them costs time and saves nothing
        completion_only_loss=config.mode == "sft",
        # CPT: text wrapped into full max_length rows (documents end with EOS), no padding and no L^2 attention over
        # a flattened batch, which non-flash attention would pay. SFT: padding-free batches of whole examples.
        packing=config.mode == "cpt",
        packing_strategy="wrapped",
        padding_free=padding_free,
        dataset_text_field="text",
        eval_strategy="steps",
        save_strategy="steps",
        save_total_limit=2,
        logging_strategy="steps",
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
        save_only_model=False,
        prediction_loss_only=True,
        load_best_model_at_end=config.keep_best,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
    )
    train_tokens = config.mode == "sft" and config.train_completion_tokens
    peft_config = (
        LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
            task_type="CAUSAL_LM",
            trainable_token_indices=completion_token_ids(tokenizer, train_rows) if train_tokens else None,
        )
        if config.method == "lora"
        else None
    )
    trainer = compact_loss_trainer_class()(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    too_long = 0
    if padding_free:
        before = len(trainer.train_dataset)
        trainer.train_dataset = trainer.train_dataset.filter(lambda row: len(row["input_ids"]) <= config.max_length)
        too_long = before - len(trainer.train_dataset)
        if not len(trainer.train_dataset):
            raise TrainingError(f"every training example is longer than max_length={config.max_length}; raise it")
        trainer.eval_dataset = trainer.eval_dataset.filter(lambda row: len(row["input_ids"]) <= config.max_length)
    # The schedule is fixed from the tokenized set (CPT packing changes the row count), before any checkpoint.
    total_steps, eval_every, save_every = _schedule(config, len(trainer.train_dataset))
    trainer.args.max_steps = total_steps
    trainer.args.eval_steps = eval_every
    trainer.args.save_steps = save_every
    trainer.args.logging_steps = max(1, min(eval_every, 10))
    trainer.args.warmup_steps = int(total_steps * config.warmup_ratio)
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # disable_tqdm swaps the bar for raw dict prints; `log` reports instead
    initial: dict[str, Any] = {}
    curve = curve_rows(test_rows, config.curve_examples, config.seed) if config.mode == "sft" else []
    # A generation longer than the longest reference (plus EOS) cannot match it: no need to decode further.
    curve_budget = 1 + max(
        (len(tokenizer(r["completion"], add_special_tokens=False)["input_ids"]) for r in curve), default=0
    )
    for callback in _trainer_callbacks(log, mirror, total_steps, initial, curve, curve_budget):
        trainer.add_callback(callback)

    eos_id = int(tokenizer.eos_token_id)
    mask = loss_mask_report(trainer.train_dataset, eos_id) if config.mode == "sft" else None
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in trainer.model.parameters())
    resume = _restore_checkpoints(checkpoint_dir, mirror)
    resumed_from = int(resume.name.rsplit("-", 1)[1]) if resume else 0
    if resume and (resume / INITIAL_EVAL_FILE).is_file():
        initial.update(json.loads((resume / INITIAL_EVAL_FILE).read_text()))
    else:
        initial["loss"] = float(trainer.evaluate()["eval_loss"])
        if curve:
            same = len(curve) == len(test_rows) and accuracy_before is not None
            initial[CURVE_KEY] = (
                accuracy_before if same else exact_match_accuracy(trainer.model, tokenizer, curve, curve_budget)
            )
    initial_eval = initial.get("loss")
    log(
        f"{config.mode} ({config.method}) on {len(train_rows)} examples: {total_steps} steps, "
        f"{'bf16' if bf16 else 'fp32'}, {trainable:,}/{total_params:,} trainable"
        + (f", resuming from step {resumed_from}" if resume else "")
    )
    started = time.perf_counter()
    outcome = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    wall = time.perf_counter() - started
    final_eval = float(trainer.evaluate()["eval_loss"])

    history = trainer.state.log_history
    eval_losses = [{"step": 0, "loss": initial_eval}] if initial_eval is not None else []
    # Evaluations during training; the final evaluate() (of the kept, possibly best, model) is final_eval_loss.
    during = [h for h in history if "eval_loss" in h][:-1]
    eval_losses += [{"step": h["step"], "loss": h["eval_loss"]} for h in during]
    train_losses = [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h]
    adaptation_curve = (
        [{"step": 0, "score": initial[CURVE_KEY], "tokens": 0, "train_seconds": 0.0, "validation_loss": initial_eval}]
        if CURVE_KEY in initial
        else []
    )
    adaptation_curve += [
        {"step": h["step"], "score": h[CURVE_KEY], **{k: h[k] for k in ("tokens", "train_seconds", "validation_loss")}}
        for h in history
        if CURVE_KEY in h
    ]
    tokens = int(trainer.state.num_input_tokens_seen or 0)

    output_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(str(output_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(output_dir))
    model_for_use = trainer.model
    probes: list[dict[str, Any]] = []
    probe_budget = config.probe_max_new_tokens
    if config.probe_generations and config.mode == "sft":
        # The budget leaves room for the longest reference answer, so only a model that never stops fails.
        longest = max(len(tokenizer(r["completion"], add_special_tokens=False)["input_ids"]) for r in train_rows)
        probe_budget = max(config.probe_max_new_tokens, longest + 8)
        probes = greedy_generate(
            model_for_use,
            tokenizer,
            [r["prompt"] for r in eval_rows[: config.probe_generations]],
            probe_budget,
        )
    accuracy_after = (
        exact_match_accuracy(model_for_use, tokenizer, test_rows, config.probe_max_new_tokens) if test_rows else None
    )
    return {
        "mode": config.mode,
        "method": config.method,
        "precision": "bf16" if bf16 else "fp32",
        "config": config.summary(),
        "train_examples": len(train_rows),
        "eval_examples": len(eval_rows),
        "dropped_too_long": too_long,
        "test_examples": len(test_rows),
        "global_step": int(trainer.state.global_step),
        "planned_steps": total_steps,
        "resumed_from_step": resumed_from,
        "train_seconds": round(wall, 3),
        "train_loss": float(outcome.training_loss),
        "tokens_seen": tokens,
        "tokens_per_second": round(tokens / wall, 1) if wall > 0 and tokens else 0.0,
        "eval_losses": eval_losses,
        "final_eval_loss": final_eval,
        "train_losses": train_losses,
        "trainable_parameters": trainable,
        "total_parameters": total_params,
        "trainable_share": trainable / total_params if total_params else 0.0,
        "loss_mask": mask,
        "probes": probes,
        "probe_max_new_tokens": probe_budget,
        "accuracy_before": accuracy_before,
        "adaptation_curve": adaptation_curve,
        "curve_examples": len(curve),
        "accuracy_after": accuracy_after,
        "output_files": {
            p.relative_to(output_dir).as_posix(): _sha256(p)
            for p in sorted(output_dir.rglob("*"))
            if p.is_file() and p.name != RESULT_FILE
        },
    }


# ---------------------------------------------------------------- entry points


@contextmanager
def _pipes() -> Iterator[Any]:
    """Pipes with the transport the launcher chose (S3 for SageMaker, the defaults for a pod or subprocess)."""
    from llm_assets.training.launch_specs import open_trainer_pipes

    with open_trainer_pipes() as pipes:
        yield pipes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llm_assets.training.trainer",
        description="Run one CPT or SFT training job from a spec (JSON file, or Dagster Pipes extras with --pipes).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--spec", type=Path, help="JSON spec: config, channels {model, data}, output_dir, checkpoint_dir"
    )
    source.add_argument("--pipes", action="store_true", help="read the spec from Dagster Pipes extras['spec']")
    args = parser.parse_args(argv)
    if args.pipes:
        with _pipes() as pipes:
            try:
                result = run_training(pipes.extras["spec"], log=pipes.log.info)
            except TrainingError as exc:
                pipes.log.error(str(exc))
                raise SystemExit(f"error: {exc}") from None
            pipes.report_custom_message(result)
        return 0
    try:
        spec = json.loads(args.spec.read_text(encoding="utf-8"))
        result = run_training(spec)
    except (OSError, ValueError, TrainingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps({k: result[k] for k in ("global_step", "resumed_from_step", "final_eval_loss", "tokens_per_second")})
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
