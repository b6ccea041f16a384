"""The trainer script: CPT and LoRA SFT on a tiny model, spot-style kill and resume, errors on bad input."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from llm_assets.training.base_model import TinyLlamaConfig, bootstrap_tiny_llama
from llm_assets.training.config import TrainingConfig
from llm_assets.training.tokenizer import TokenizerConfig, save_pretrained, train_bpe_tokenizer
from llm_assets.training.trainer import (
    COMPLETE_MARKER,
    TrainingError,
    _schedule,
    completion_token_ids,
    main,
    read_jsonl,
    run_training,
)

COLOURS = {"red": "apple fire blood", "green": "grass leaf frog", "blue": "sky sea ice"}


def _sft_rows(count: int, offset: int = 0) -> list[dict[str, str]]:
    rows = []
    names = sorted(COLOURS)
    for number in range(offset, offset + count):
        colour = names[number % 3]
        word = COLOURS[colour].split()[number % 3]
        rows.append({"prompt": f"Which colour is {word}?\nColour:", "completion": f" {colour}"})
    return rows


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [f"{row['prompt']}{row['completion']}" for row in _sft_rows(60)] + [
        "The sky is blue and the grass is green." for _ in range(40)
    ]
    root = tmp_path_factory.mktemp("tiny")
    save_pretrained(train_bpe_tokenizer(texts, TokenizerConfig(vocab_size=300)), root / "tokenizer")
    bootstrap_tiny_llama(
        root / "tokenizer",
        TinyLlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=128,
        ),
        root / "model",
    )
    return root / "model"


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sft")
    _write(folder / "train.jsonl", _sft_rows(48))
    _write(folder / "eval.jsonl", _sft_rows(9, offset=100))
    _write(folder / "test.jsonl", _sft_rows(9, offset=200))
    return folder


SFT_CONFIG = {
    "mode": "sft",
    "method": "lora",
    "lora_rank": 4,
    "lora_alpha": 8,
    "epochs": 6,
    "learning_rate": 1e-2,
    "batch_size": 8,
    "max_length": 64,
    "probe_generations": 3,
    "probe_max_new_tokens": 8,
    "precision": "fp32",
}


def test_lora_sft_learns_and_reports_what_the_checks_need(tiny_model: Path, sft_data: Path, tmp_path: Path) -> None:
    result = run_training(
        {
            "config": SFT_CONFIG,
            "channels": {"model": str(tiny_model), "data": str(sft_data)},
            "output_dir": str(tmp_path / "out"),
            "checkpoint_dir": str(tmp_path / "ckpt"),
        },
        log=lambda _m: None,
    )
    assert result["global_step"] == result["planned_steps"] == 36  # ceil(48 / 8) * 6
    losses = [p["loss"] for p in result["eval_losses"]]
    assert losses[-1] < losses[0] and len(losses) >= 3
    assert result["loss_mask"] == {"checked": 48, "empty": 0, "without_eos": 0}
    assert 0 < result["trainable_share"] < 0.5
    assert result["tokens_seen"] > 0 and result["tokens_per_second"] > 0
    assert len(result["probes"]) == 3
    assert result["accuracy_after"] is not None and result["accuracy_after"] >= result["accuracy_before"]
    # The adaptation curve: step 0 plus one point per evaluation, tokens and training seconds rising.
    curve = result["adaptation_curve"]
    assert [p["step"] for p in curve] == [0] + [p["step"] for p in result["eval_losses"][1:]]
    assert curve[0]["score"] == result["accuracy_before"] and result["curve_examples"] == 9
    assert all(
        b["tokens"] > a["tokens"] and b["train_seconds"] > a["train_seconds"] for a, b in itertools.pairwise(curve)
    )
    assert curve[-1]["tokens"] <= result["tokens_seen"] and all(0 <= p["score"] <= 1 for p in curve)
    out = tmp_path / "out"
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert "adapter_model.safetensors" in result["output_files"]
    assert json.loads((out / "training_result.json").read_text())["global_step"] == 36
    # Only complete checkpoints are kept (the marker is written after the trainer finished the folder).
    assert all((c / COMPLETE_MARKER).is_file() for c in (tmp_path / "ckpt").glob("checkpoint-*"))


def test_cpt_full_fine_tune_lowers_validation_loss(tiny_model: Path, tmp_path: Path) -> None:
    texts = [{"text": f"{r['prompt']}{r['completion']} The sky is blue."} for r in _sft_rows(40)]
    _write(tmp_path / "data" / "train.jsonl", texts)
    _write(tmp_path / "data" / "eval.jsonl", texts[:6])
    result = run_training(
        {
            "config": {
                "mode": "cpt",
                "method": "full",
                "epochs": 3,
                "learning_rate": 5e-3,
                "batch_size": 4,
                "max_length": 32,
                "precision": "fp32",
            },
            "channels": {"model": str(tiny_model), "data": str(tmp_path / "data")},
            "output_dir": str(tmp_path / "out"),
        },
        log=lambda _m: None,
    )
    assert result["eval_losses"][-1]["loss"] < result["eval_losses"][0]["loss"]
    assert result["trainable_share"] == 1.0 and result["loss_mask"] is None
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_completion_tokens_cover_labels_and_eos(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    ids = completion_token_ids(tokenizer, _sft_rows(6))
    assert tokenizer.eos_token_id in ids
    for row in _sft_rows(6):
        assert set(tokenizer(row["completion"], add_special_tokens=False)["input_ids"]) <= set(ids)


def test_schedule_is_fixed_up_front() -> None:
    config = TrainingConfig(epochs=2, batch_size=8, eval_points=4, checkpoint_points=2, keep_best=False)
    assert _schedule(config, 50) == (14, 3, 7)
    assert _schedule(config.model_copy(update={"keep_best": True}), 50) == (14, 3, 3)  # a checkpoint per evaluation
    assert _schedule(TrainingConfig(max_steps=5), 10_000)[0] == 5


def _spec_file(tmp_path: Path, tiny_model: Path, sft_data: Path, name: str, mirror: Path | None = None) -> Path:
    spec = {
        "config": {**SFT_CONFIG, "epochs": 40, "eval_points": 8, "probe_generations": 1},
        "channels": {"model": str(tiny_model), "data": str(sft_data)},
        "output_dir": str(tmp_path / f"{name}-out"),
        "checkpoint_dir": str(tmp_path / f"{name}-ckpt"),
    }
    if mirror is not None:
        spec["checkpoint_mirror"] = str(mirror)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def _trainer(spec: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "llm_assets.training.trainer", "--spec", str(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _kill_after_first_checkpoint(process: subprocess.Popen[str], folder: Path) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if any(folder.glob(f"checkpoint-*/{COMPLETE_MARKER}")):
            process.send_signal(signal.SIGKILL)
            process.wait()
            return
        if process.poll() is not None:
            pytest.fail(f"trainer ended before its first checkpoint: {process.stderr.read() if process.stderr else ''}")
        time.sleep(0.05)
    process.kill()
    pytest.fail("no checkpoint within 240 s")


def test_killed_run_resumes_from_the_last_checkpoint_with_the_same_step_count(
    tiny_model: Path, sft_data: Path, tmp_path: Path
) -> None:
    """A spot interruption: SIGKILL mid-training, start again, finish on the planned step from a checkpoint."""
    mirror = tmp_path / "lake-checkpoints"
    spec = _spec_file(tmp_path, tiny_model, sft_data, "spot", mirror)
    process = _trainer(spec)
    # Killed once the first checkpoint is complete in the lake mirror (what survives the lost machine).
    _kill_after_first_checkpoint(process, mirror)
    assert not (tmp_path / "spot-out" / "training_result.json").exists()
    assert any(mirror.glob(f"checkpoint-*/{COMPLETE_MARKER}"))

    # The machine is gone with its disk: only the lake mirror survives.
    import shutil

    shutil.rmtree(tmp_path / "spot-ckpt")
    rerun = subprocess.run(
        [sys.executable, "-m", "llm_assets.training.trainer", "--spec", str(spec)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    result = json.loads((tmp_path / "spot-out" / "training_result.json").read_text())
    assert result["resumed_from_step"] > 0
    assert result["global_step"] == result["planned_steps"] == 240  # ceil(48 / 8) * 40, as uninterrupted
    assert result["eval_losses"][0]["step"] == 0  # the loss before training came back with the checkpoint


def test_bad_input_is_a_one_line_error(tiny_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text('{"prompt": "a", "completion": " b"}\n{not json\n')
    (data / "eval.jsonl").write_text('{"prompt": "a", "completion": " b"}\n')
    spec = {"config": SFT_CONFIG, "channels": {"model": str(tiny_model), "data": str(data)}}
    with pytest.raises(TrainingError, match=r"train\.jsonl:2: not a JSON object"):
        run_training(spec, log=lambda _m: None)
    with pytest.raises(TrainingError, match=r"field\(s\) completion missing"):
        (data / "x.jsonl").write_text('{"prompt": "a"}\n')
        read_jsonl(data / "x.jsonl", ("prompt", "completion"))
    with pytest.raises(TrainingError, match=r"no config\.json"):
        run_training({**spec, "channels": {"model": str(tmp_path), "data": str(data)}}, log=lambda _m: None)
    with pytest.raises(TrainingError, match="channel 'data' is missing"):
        run_training({"config": SFT_CONFIG, "channels": {"model": str(tiny_model)}}, log=lambda _m: None)
    with pytest.raises(TrainingError, match="training config"):
        run_training({**spec, "config": {"learning_rate": -1}}, log=lambda _m: None)


def test_cli_entry_point_reports_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"config": {}, "channels": {"model": str(tmp_path / "none"), "data": str(tmp_path)}}))
    assert main(["--spec", str(spec)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "config.json" in err[0]
