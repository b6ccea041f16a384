"""DPO from preference pairs: a LoRA adapter trained with TRL's `DPOTrainer`, optionally on top of an SFT adapter.

Pairs come from production feedback (JSONL with prompt/chosen/rejected, read here with per-line errors) or,
until feedback exists, from the intent-classification SFT set: the right intent is preferred over a wrong one
from the same label set. The run reports preference accuracy (log p(chosen) > log p(rejected)) measured on
the pairs before and after training, next to TRL's own reward figures, so the monitoring issue can compare.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llm_assets.training.sft_data import SftExample

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

PAIR_FIELDS = ("prompt", "chosen", "rejected")
INTENT_PAIR_SOURCE = "intent-sft-standin"


class PreferenceError(ValueError):
    """Preference data that cannot be used; the message is one line naming the file, line and fix."""


@dataclass(frozen=True)
class PreferencePair:
    id: str
    prompt: str
    chosen: str
    rejected: str
    source: str

    def as_row(self) -> dict[str, str]:
        """TRL's standard (non-conversational) preference form."""
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


def _pair_id(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def read_preference_pairs(data: bytes, name: str) -> list[PreferencePair]:
    """JSONL, one object a line with string `prompt`, `chosen`, `rejected` (optional `id`, `source`).

    A missing `id` is derived from the content, a missing `source` is `name`. Blank lines are skipped.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PreferenceError(f"{name}: not UTF-8 ({exc.reason} at byte {exc.start}); re-export as UTF-8") from None
    pairs: list[PreferencePair] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PreferenceError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise PreferenceError(f"{where}: a JSON object is needed, got {type(row).__name__}")
        missing = [key for key in PAIR_FIELDS if not isinstance(row.get(key), str) or not row[key].strip()]
        if missing:
            raise PreferenceError(
                f"{where}: missing or empty {', '.join(missing)}; every line needs string prompt, chosen, rejected"
            )
        if row["chosen"].strip() == row["rejected"].strip():
            raise PreferenceError(f"{where}: chosen and rejected are the same text; drop the line, it teaches nothing")
        pair_id = str(row.get("id") or _pair_id(row["prompt"], row["chosen"], row["rejected"]))
        if pair_id in seen:
            raise PreferenceError(f"{where}: id {pair_id!r} repeats line {seen[pair_id]}; give each pair its own id")
        seen[pair_id] = number
        source = row.get("source")
        pairs.append(
            PreferencePair(
                id=pair_id,
                prompt=row["prompt"],
                chosen=row["chosen"],
                rejected=row["rejected"],
                source=source if isinstance(source, str) and source else name,
            )
        )
    return pairs


def intent_preference_pairs(
    examples: Sequence[SftExample], seed: int = 0, *, split: str = "train"
) -> list[PreferencePair]:
    """Pairs from intent-classification examples of `split`: correct intent chosen, another intent rejected.

    The wrong intent is picked by a hash of (seed, example id) among the other labels of the set, so the
    pairs are stable across runs. Only `split` examples are used, so test rows stay held out.
    """
    chosen = [e for e in examples if e.split == split]
    labels = sorted({e.completion.strip() for e in chosen})
    if len(labels) < 2:
        raise PreferenceError(
            f"intent pairs need two or more intents in the {split} examples, found {labels or 'none'}; "
            "build the SFT set with more intents"
        )
    pairs = []
    for example in chosen:
        label = example.completion.strip()
        others = [other for other in labels if other != label]
        digest = hashlib.sha256(f"{seed}\x00{example.id}".encode()).digest()
        wrong = others[int.from_bytes(digest[:8], "big") % len(others)]
        pairs.append(
            PreferencePair(
                id=_pair_id("intent-dpo", str(seed), example.id),
                prompt=example.prompt,
                chosen=example.completion,
                rejected=example.completion[: len(example.completion) - len(example.completion.lstrip())] + wrong,
                source=INTENT_PAIR_SOURCE,
            )
        )
    return pairs


class DpoConfig(BaseModel):
    """DPO hyperparameters; LoRA settings apply to a fresh adapter (an existing adapter keeps its own)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    beta: float = Field(default=0.1, gt=0, description="Strength of the pull towards the reference model.")
    learning_rate: float = Field(default=5e-4, gt=0, le=1)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, gt=0, description="Overrides epochs when set.")
    batch_size: int = Field(default=8, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_length: int = Field(default=512, ge=8, description="Tokens of prompt + completion; longer is cut.")
    lora_rank: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1)
    disable_dropout: bool = Field(default=True, description="TRL's default: policy and reference see the same net.")
    seed: int = 0
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    logging_steps: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _dropout_is_effective(self) -> DpoConfig:
        if self.lora_dropout > 0 and self.disable_dropout:
            raise ValueError(
                f"lora_dropout={self.lora_dropout} has no effect while disable_dropout is true; set one of them"
            )
        if "lm_head" in self.target_modules:
            raise ValueError("target_modules must not include lm_head: TRL's DPO reads lm_head.weight directly")
        return self


def bf16_supported() -> bool:
    """bf16 for precision "auto": a CUDA GPU with bf16 only; CPUs stay fp32 (see `trainer.bf16_supported`)."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def resolve_precision(precision: str) -> str:
    """`auto` becomes bf16 where the training device computes it natively, else fp32 (emulated bf16 is slow)."""
    if precision == "auto":
        return "bf16" if bf16_supported() else "fp32"
    return precision


def _completion_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str) -> tuple[list[int], int]:
    """prompt+completion+EOS ids and where the completion starts, split the way TRL splits them."""
    eos = tokenizer.eos_token or ""
    prompt_ids = tokenizer(prompt)["input_ids"]
    full_ids = tokenizer(prompt + completion + ("" if completion.endswith(eos) else eos))["input_ids"]
    start = 0
    while start < min(len(prompt_ids), len(full_ids)) and prompt_ids[start] == full_ids[start]:
        start += 1
    return full_ids, start


def completion_logprobs(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    max_length: int,
    batch_size: int = 16,
) -> list[float]:
    """Sum of log p(completion token | preceding tokens) for each pair of prompt and completion."""
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = [_completion_ids(tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)]
    scores: list[float] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for first in range(0, len(encoded), batch_size):
            batch = [(ids[:max_length], start) for ids, start in encoded[first : first + batch_size]]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            scored = torch.zeros((len(batch), width), dtype=torch.bool)
            for row, (ids, start) in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention[row, : len(ids)] = 1
                scored[row, start : len(ids)] = True
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
            targets = input_ids[:, 1:].to(device)
            token_logprobs = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            scores.extend((token_logprobs * scored[:, 1:].to(device)).sum(dim=1).tolist())
    model.train(was_training)
    return scores


def preference_accuracy(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PreferencePair],
    *,
    max_length: int,
) -> tuple[float, float]:
    """Share of pairs where log p(chosen) > log p(rejected), and the mean log-prob margin."""
    prompts = [p.prompt for p in pairs]
    chosen = completion_logprobs(model, tokenizer, prompts, [p.chosen for p in pairs], max_length=max_length)
    rejected = completion_logprobs(model, tokenizer, prompts, [p.rejected for p in pairs], max_length=max_length)
    wins = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    margin = math.fsum(c - r for c, r in zip(chosen, rejected, strict=True)) / len(pairs)
    return wins / len(pairs), margin


def preference_improved(result: dict[str, Any], min_gain: float) -> bool:
    """The DPO gate: more pairs won (by more than `min_gain`); or all won; or at least `min_gain` more won with a
    wider mean margin. Pairs the starting adapter already wins, or a few it cannot flip, leave accuracy flat on
    small sets while DPO still moved the policy the way it should."""
    gain = result["preference_accuracy_after"] - result["preference_accuracy_before"]
    widened = result["logprob_margin_after"] > result["logprob_margin_before"]
    return bool(gain > min_gain or result["preference_accuracy_after"] == 1.0 or (gain >= min_gain and widened))


def run_dpo(
    model_dir: Path,
    pairs: Sequence[PreferencePair],
    output_dir: Path,
    config: DpoConfig,
    *,
    adapter_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Trains a LoRA adapter with DPO and saves it (safetensors) in `output_dir`; returns the run's figures.

    From `adapter_dir` (an SFT LoRA adapter) training continues that adapter, and TRL keeps a frozen copy
    of it as the reference model, so DPO is measured against the SFT policy and not the bare base.
    Without it a fresh adapter is trained and the reference is the base model (adapter disabled).
    """
    from llm_assets.training.trainer import quiet_progress_bars

    with quiet_progress_bars():
        return _run_dpo(model_dir, pairs, output_dir, config, adapter_dir=adapter_dir, log=log)


def _run_dpo(
    model_dir: Path,
    pairs: Sequence[PreferencePair],
    output_dir: Path,
    config: DpoConfig,
    *,
    adapter_dir: Path | None,
    log: Callable[[str], None] | None,
) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise PreferenceError("no preference pairs to train on; feed feedback pairs or intent_preference_pairs(...)")
    say = log or (lambda _message: None)
    precision = resolve_precision(config.precision)
    use_cpu = not torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, device_map=None if use_cpu else "cuda"
    )
    model: PreTrainedModel | PeftModel = base
    peft_config = None
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)
    else:
        peft_config = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
            task_type="CAUSAL_LM",
        )

    accuracy_before, margin_before = preference_accuracy(model, tokenizer, pairs, max_length=config.max_length)
    say(
        f"DPO on {len(pairs)} pairs, {precision}, {'cpu' if use_cpu else 'cuda'}: accuracy before {accuracy_before:.3f}"
    )

    class _Progress(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **_: Any) -> None:
            if logs and "loss" in logs:
                accuracy = logs.get("rewards/accuracies", float("nan"))
                say(
                    f"step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f} reward accuracy {accuracy:.3f}"
                )

    args = DPOConfig(
        output_dir=str(output_dir),
        beta=config.beta,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        seed=config.seed,
        bf16=precision == "bf16",
        use_cpu=use_cpu,
        disable_dropout=config.disable_dropout,
        gradient_checkpointing=False,
        logging_steps=config.logging_steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    started = time.perf_counter()
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([pair.as_row() for pair in pairs]),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[_Progress()],
    )
    trainer.remove_callback(PrinterCallback)  # disable_tqdm swaps the bar for a raw dict print; `log` reports instead
    trained = trainer.model
    if not isinstance(trained, PeftModel):
        raise TypeError(f"DPOTrainer returned {type(trained).__name__}, expected a PeftModel; check the peft version")
    # TRL's frozen ".ref." copy of a starting adapter is the reference model, not part of the policy.
    policy = [p for name, p in trained.named_parameters() if ".ref." not in name]
    trainable = sum(p.numel() for p in policy if p.requires_grad)
    total = sum(p.numel() for p in policy)
    result = trainer.train()
    wall = time.perf_counter() - started

    output_dir.mkdir(parents=True, exist_ok=True)
    trained.save_pretrained(str(output_dir), safe_serialization=True, selected_adapters=["default"])
    accuracy_after, margin_after = preference_accuracy(trained, tokenizer, pairs, max_length=config.max_length)
    say(f"DPO done in {wall:.1f}s: accuracy {accuracy_before:.3f} -> {accuracy_after:.3f}")

    history = trainer.state.log_history
    step_logs = [entry for entry in history if "loss" in entry]
    last = step_logs[-1] if step_logs else {}
    return {
        "pairs": len(pairs),
        "steps": trainer.state.global_step,
        "train_loss": float(result.training_loss),
        "loss_history": [float(entry["loss"]) for entry in step_logs],
        "rewards/accuracies": float(last.get("rewards/accuracies", float("nan"))),
        "rewards/margins": float(last.get("rewards/margins", float("nan"))),
        "preference_accuracy_before": accuracy_before,
        "preference_accuracy_after": accuracy_after,
        "logprob_margin_before": margin_before,
        "logprob_margin_after": margin_after,
        "wall_seconds": wall,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_share": trainable / total,
        "precision": precision,
        "device": "cpu" if use_cpu else "cuda",
        "started_from": "adapter" if adapter_dir is not None else "base",
        "config": config.model_dump(mode="json"),
    }
