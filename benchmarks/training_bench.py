"""LoRA SFT: our trainer path vs a plain TRL `SFTTrainer` script with library defaults, in one run.

Same tiny Llama (bootstrapped from a tokenizer trained on the sample corpus), same Banking77 intent
examples from the bundled sample, same LoRA shape, same number of epochs. Each side runs in its own
child process so peak RSS is its own. Reported: real (non-padding) tokens per second over the training
wall time, wall time, peak RSS, and the final completion-only validation loss, computed for both by the
same function after training.

    .venv/bin/python benchmarks/training_bench.py [--epochs 4] [--intents 8]

The peer is what a user gets from the TRL quick start: `SFTConfig(output_dir, num_train_epochs,
use_cpu)` and `SFTTrainer(model, args, train_dataset, processing_class, peft_config)`: TRL's defaults
then choose the learning rate (2e-5), batch size (8), bf16 and gradient checkpointing. Ours is
`llm_assets.training.trainer.run_training` with the `lora_adapter` asset's defaults.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "llm_assets" / "sample_corpus" / "banking77" / "banking77.jsonl"


def prepare(work: Path, intents: int) -> dict[str, Any]:
    """Tokenizer + tiny base model + train/validation JSONL, shared by both sides."""
    from llm_assets.training.base_model import TinyLlamaConfig, bootstrap_tiny_llama
    from llm_assets.training.sft_data import choose_intents, intent_examples
    from llm_assets.training.tokenizer import TokenizerConfig, save_pretrained, train_bpe_tokenizer

    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = [
        {"id": f"b77-{n}", "text": r["text"], "metadata": json.dumps({"category": r["category"], "split": r["split"]})}
        for n, r in enumerate(rows)
    ]
    examples = intent_examples(records, choose_intents(records, intents))
    train = [e for e in examples if e.split == "train"]
    validation = [e for e in examples if e.split == "test"]
    save_pretrained(train_bpe_tokenizer([r["text"] for r in rows], TokenizerConfig(vocab_size=4000)), work / "tok")
    bootstrap_tiny_llama(work / "tok", TinyLlamaConfig(), work / "model")
    data = work / "data"
    data.mkdir()
    for name, part in (("train", train), ("eval", validation)):
        (data / f"{name}.jsonl").write_text(
            "".join(json.dumps({"prompt": e.prompt, "completion": e.completion}) + "\n" for e in part)
        )
    return {"train": len(train), "validation": len(validation)}


def completion_loss(model: Any, tokenizer: Any, rows: list[dict[str, str]]) -> float:
    """Mean NLL of completion tokens (with EOS) given the prompt: the same yardstick for both sides."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for row in rows:
            prompt = tokenizer(row["prompt"])["input_ids"]
            full = tokenizer(row["prompt"] + row["completion"])["input_ids"] + [tokenizer.eos_token_id]
            ids = torch.tensor([full])
            logits = model(input_ids=ids).logits[0, :-1].float()
            targets = ids[0, 1:]
            start = len(prompt) - 1
            nll = torch.nn.functional.cross_entropy(logits[start:], targets[start:], reduction="sum")
            total += float(nll)
            count += len(full) - len(prompt)
    return total / max(1, count)


def real_tokens(tokenizer: Any, rows: list[dict[str, str]]) -> int:
    return sum(len(tokenizer(r["prompt"] + r["completion"])["input_ids"]) + 1 for r in rows)


def _rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def child(side: str, work: Path, epochs: float) -> None:
    """One side, in its own process; prints one JSON line."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_assets.defs.training.adaptation import LoraAdapterConfig, task_training_config

    tokenizer = AutoTokenizer.from_pretrained(str(work / "model"))
    train, validation = _rows(work / "data" / "train.jsonl"), _rows(work / "data" / "eval.jsonl")
    ours = LoraAdapterConfig(epochs=epochs)
    if side == "ours":
        from llm_assets.training.trainer import run_training

        fields = task_training_config("banking77_intents", ours).model_dump()
        spec = {
            "config": {**fields, "probe_generations": 0},
            "channels": {"model": str(work / "model"), "data": str(work / "data")},
            "output_dir": str(work / "ours-out"),
            "checkpoint_dir": str(work / "ours-ckpt"),
        }
        started = time.perf_counter()
        result = run_training(spec, log=lambda _m: None)
        wall = time.perf_counter() - started
        train_seconds = result["train_seconds"]
        base = AutoModelForCausalLM.from_pretrained(str(work / "model"))
        model = PeftModel.from_pretrained(base, str(work / "ours-out"))
        settings = (
            f"lr {ours.learning_rate}, batch {ours.batch_size}, {result['precision']}, "
            f"{'padding-free' if ours.padding_free else 'padded'}, labelled-positions-only LM head"
        )
    else:
        from datasets import Dataset
        from peft import LoraConfig
        from trl import SFTConfig, SFTTrainer

        started = time.perf_counter()
        args = SFTConfig(output_dir=str(work / "trl-out"), num_train_epochs=epochs, use_cpu=True, report_to="none")
        trainer = SFTTrainer(
            model=AutoModelForCausalLM.from_pretrained(str(work / "model")),
            args=args,
            train_dataset=Dataset.from_list(train),
            processing_class=tokenizer,
            peft_config=LoraConfig(
                r=ours.lora_rank,
                lora_alpha=ours.lora_alpha,
                target_modules=list(ours.target_modules),
                task_type="CAUSAL_LM",
            ),
        )
        outcome = trainer.train()
        wall = time.perf_counter() - started
        train_seconds = float(outcome.metrics["train_runtime"])
        model = trainer.model
        settings = (
            f"lr {args.learning_rate}, batch {args.per_device_train_batch_size}, "
            f"{'bf16' if args.bf16 else 'fp32'}, gradient checkpointing {args.gradient_checkpointing}"
        )
    tokens = real_tokens(tokenizer, train) * epochs
    print(
        json.dumps(
            {
                "side": side,
                "settings": settings,
                "train_seconds": train_seconds,
                "wall_seconds": wall,
                "tokens_per_second": tokens / train_seconds,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "eval_loss": completion_loss(model.float(), tokenizer, validation),
                "threads": torch.get_num_threads(),
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=4.0, help="Epochs for both sides (same examples).")
    parser.add_argument("--intents", type=int, default=8, help="Banking77 intents in the task.")
    parser.add_argument("--child", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.work, args.epochs)
        return
    with tempfile.TemporaryDirectory(prefix="training-bench-") as tmp:
        work = Path(tmp)
        sizes = prepare(work, args.intents)
        print(f"{sizes['train']} train / {sizes['validation']} validation examples, {args.epochs:g} epochs each side")
        results = {}
        for side in ("trl", "ours"):
            command = [sys.executable, __file__, "--child", side, "--work", str(work), "--epochs", str(args.epochs)]
            output = subprocess.run(command, capture_output=True, text=True, check=False)
            lines = [line for line in output.stdout.splitlines() if line.startswith("{")]
            if output.returncode or not lines:
                raise SystemExit(f"{side} failed: {output.stderr.strip().splitlines()[-1:]}")
            results[side] = json.loads(lines[-1])
    print()
    print(f"{'':<6}{'tokens/s':>10}{'train s':>9}{'wall s':>8}{'peak RSS MB':>13}{'eval loss':>11}  settings")
    for side in ("trl", "ours"):
        r = results[side]
        print(
            f"{side:<6}{r['tokens_per_second']:>10.0f}{r['train_seconds']:>9.1f}{r['wall_seconds']:>8.1f}"
            f"{r['peak_rss_mb']:>13.0f}{r['eval_loss']:>11.3f}  {r['settings']}"
        )
    ratio = results["ours"]["tokens_per_second"] / results["trl"]["tokens_per_second"]
    loss_ok = results["ours"]["eval_loss"] <= results["trl"]["eval_loss"] or math.isclose(
        results["ours"]["eval_loss"], results["trl"]["eval_loss"], rel_tol=1e-3
    )
    print()
    print(f"tokens/s ours/TRL-defaults: {ratio:.2f}x (target >= 2x); eval loss equal or better: {loss_ok}")


if __name__ == "__main__":
    main()
