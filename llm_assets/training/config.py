"""Training configuration shared by the Dagster assets, the CLI and the trainer script.

One pydantic model, so `llm-assets train --help`, the Launchpad and a SageMaker job read the same
fields with the same validation. Defaults are sized for the tiny CPU demo; a GPU run overrides them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

LLAMA_LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class TrainingConfig(BaseModel):
    """What one training run does: CPT (plain text, packed) or SFT (prompt/completion), LoRA or full."""

    mode: Literal["cpt", "sft"] = Field(
        default="sft", description="cpt: next-token loss on text; sft: completion-only."
    )
    method: Literal["lora", "full"] = Field(default="lora", description="lora: train an adapter; full: every weight.")
    lora_rank: int = Field(default=16, ge=1, le=1024, description="LoRA rank r (adapter capacity).")
    lora_alpha: int = Field(default=32, ge=1, description="LoRA scaling numerator; the update is scaled by alpha/r.")
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LLAMA_LINEAR_MODULES), description="Module names LoRA adapts."
    )
    epochs: float = Field(default=3.0, gt=0, description="Passes over the training set (ignored when max_steps > 0).")
    max_steps: int = Field(default=0, ge=0, description="Stop after this many optimizer steps; 0 = use epochs.")
    learning_rate: float = Field(default=2e-3, gt=0, le=1.0, description="Peak learning rate (cosine decay).")
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1, description="Share of steps spent warming up.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(default=16, ge=1, description="Examples (CPT: packed rows) per device step.")
    gradient_accumulation_steps: int = Field(default=1, ge=1, description="Steps summed per optimizer step.")
    max_length: int = Field(default=256, ge=16, description="Tokens per sequence (CPT packs text to this length).")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto",
        description="auto: bf16 on a CUDA GPU that supports it, fp32 on CPUs (bf16 there only when asked: its "
        "numbers differ between CPUs with and without AVX-512 BF16/AMX).",
    )
    train_completion_tokens: bool = Field(
        default=True,
        description="LoRA SFT: also train the embedding rows of the tokens the completions use (peft "
        "trainable_token_indices); a small model's frozen embeddings of rare label tokens are out of a low-rank "
        "update's reach.",
    )
    padding_free: bool = Field(
        default=False,
        description="SFT: flatten each batch instead of padding it. Pays off with FlashAttention on a GPU; on a CPU "
        "(sdpa) attention then spans the whole flattened batch and padded batches were 2.5x faster.",
    )
    seed: int = Field(default=0, description="Seed for initialisation, shuffling and dropout.")
    eval_points: int = Field(default=4, ge=2, le=100, description="Validation-loss evaluations during the run.")
    checkpoint_points: int = Field(
        default=4, ge=1, le=100, description="Checkpoints written during the run (with keep_best: one per evaluation)."
    )
    keep_best: bool = Field(
        default=True,
        description="End on the checkpoint with the lowest validation loss (early stopping against overfitting); "
        "checkpoints are then written at every evaluation.",
    )
    max_eval_examples: int = Field(default=256, ge=1, description="Cap on validation examples.")
    probe_generations: int = Field(default=8, ge=0, description="Greedy generations after training for the EOS gate.")
    probe_max_new_tokens: int = Field(default=24, ge=1, description="Generation budget a probe must stop within.")
    curve_examples: int = Field(
        default=64,
        ge=0,
        description="SFT with a test set: held-out examples scored (greedy exact match) at every evaluation, for "
        "the adaptation curve (score vs tokens, steps, wall time); 0 turns it off.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainingConfig:
        if self.method == "lora" and not self.target_modules:
            raise ValueError("target_modules is empty: LoRA needs at least one module name, e.g. q_proj")
        return self

    def summary(self) -> dict[str, object]:
        """The fields a registry entry or a compliance answer needs, in one flat dict."""
        return self.model_dump()
