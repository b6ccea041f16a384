"""Adapter/base compatibility checks and merged serving, on a tiny Llama and PEFT adapters made here."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from llm_assets.serving.adapters import (
    MERGE_RECORD,
    VLLM_LORA_RANKS,
    AdapterIncompatible,
    check_adapter,
    check_adapters,
    expected_shapes,
    lora_servable,
    merge_for_serving,
    read_adapter,
)
from llm_assets.training.base_model import TinyLlamaConfig, bootstrap_tiny_llama
from llm_assets.training.tokenizer import TokenizerConfig, save_pretrained, train_bpe_tokenizer

TEXTS = ["the cat sat on the mat", "hello world, one two three", "1 2 3 4 5 6 7 8 9", "a quick brown fox"] * 20
HIDDEN, INTERMEDIATE, LAYERS = 32, 64, 2


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="module")
def base_dir(workspace: Path) -> Path:
    tokenizer_dir = workspace / "tokenizer"
    save_pretrained(train_bpe_tokenizer(TEXTS, TokenizerConfig(vocab_size=300, min_frequency=1)), tokenizer_dir)
    config = TinyLlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    bootstrap_tiny_llama(tokenizer_dir, config, workspace / "base")
    return workspace / "base"


def _save_adapter(model: torch.nn.Module, folder: Path, **lora: object) -> Path:
    """A LoRA adapter with its trainable weights perturbed, as if trained, saved with save_pretrained."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(**lora))  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in peft_model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)
    peft_model.save_pretrained(str(folder))
    return folder


def _other_llama(hidden_size: int = HIDDEN, num_hidden_layers: int = LAYERS) -> torch.nn.Module:
    """A Llama unlike the base in one dimension, as if an adapter had been trained on another model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=300,
        hidden_size=hidden_size,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def make_adapter(workspace: Path, base_dir: Path) -> Callable[..., Path]:
    from transformers import AutoModelForCausalLM

    def make(name: str, model: torch.nn.Module | None = None, **lora: object) -> Path:
        folder = workspace / "adapters" / name
        if not folder.exists():
            torch.manual_seed(0)
            base = model if model is not None else AutoModelForCausalLM.from_pretrained(str(base_dir))
            _save_adapter(base, folder, **({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]} | lora))
        return folder

    return make


@pytest.fixture(scope="module")
def base_shapes(base_dir: Path) -> dict[str, tuple[int, int]]:
    return expected_shapes(base_dir)


def test_expected_shapes_come_from_the_config_without_weights(base_shapes: dict[str, tuple[int, int]]) -> None:
    assert base_shapes["model.layers.0.self_attn.q_proj"] == (HIDDEN, HIDDEN)
    assert base_shapes["model.layers.1.mlp.down_proj"] == (INTERMEDIATE, HIDDEN)
    assert base_shapes["model.layers.1.mlp.up_proj"] == (HIDDEN, INTERMEDIATE)
    assert base_shapes["model.layers.0.self_attn.k_proj"] == (HIDDEN, HIDDEN // 2)  # 2 of 4 heads for k/v
    assert base_shapes["model.embed_tokens"][1] == HIDDEN
    assert not any(path.startswith("model.layers.2.") for path in base_shapes)


def test_compatible_adapter_passes(
    make_adapter: Callable[..., Path], base_dir: Path, base_shapes: dict[str, tuple[int, int]]
) -> None:
    folder = make_adapter("broad", target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"])
    info = read_adapter("ok", folder)
    assert (info.rank, info.alpha, info.features) == (8, 16.0, ())
    assert info.shapes["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] == (8, HIDDEN)
    assert check_adapter(info, base_dir, max_lora_rank=16, base_shapes=base_shapes) == []
    assert lora_servable(info)
    assert set(check_adapters({"ok": folder}, base_dir, max_lora_rank=16)) == {"ok"}


@pytest.mark.parametrize(("max_lora_rank", "suggested"), [(16, 32), (8, 32)])
def test_rank_above_the_server_limit(
    make_adapter: Callable[..., Path],
    base_dir: Path,
    base_shapes: dict[str, tuple[int, int]],
    max_lora_rank: int,
    suggested: int,
) -> None:
    info = read_adapter("big", make_adapter("rank32", r=32))
    [problem] = check_adapter(info, base_dir, max_lora_rank=max_lora_rank, base_shapes=base_shapes)
    assert problem == (
        f"adapter 'big' has rank 32 but the server allows {max_lora_rank}: start it with --max-lora-rank "
        f"{suggested} or retrain with rank <= {max_lora_rank}"
    )
    assert suggested in VLLM_LORA_RANKS


def test_rank_between_supported_values_suggests_the_next_one(
    make_adapter: Callable[..., Path], base_dir: Path, base_shapes: dict[str, tuple[int, int]]
) -> None:
    info = read_adapter("r12", make_adapter("rank12", r=12))
    [problem] = check_adapter(info, base_dir, max_lora_rank=8, base_shapes=base_shapes)
    assert "--max-lora-rank 16 " in problem
    problems = check_adapter(info, base_dir, max_lora_rank=12, base_shapes=base_shapes)
    assert problems == [
        f"--max-lora-rank 12 is not a value vLLM accepts; use one of {', '.join(map(str, VLLM_LORA_RANKS))}"
    ]


def test_adapter_from_a_base_with_another_hidden_size(
    make_adapter: Callable[..., Path], base_dir: Path, base_shapes: dict[str, tuple[int, int]]
) -> None:
    info = read_adapter("wide", make_adapter("hidden64", model=_other_llama(hidden_size=64), r=16))
    [problem] = check_adapter(info, base_dir, max_lora_rank=16, base_shapes=base_shapes)
    assert problem.startswith(
        "adapter 'wide': lora_A of model.layers.0.self_attn.q_proj is 16x64 but the base module takes 32 inputs: "
        "the adapter was trained on another base model (hidden size differs)"
    )
    assert "more mismatched weights" in problem
    assert "\n" not in problem


def test_adapter_from_a_deeper_base(
    make_adapter: Callable[..., Path], base_dir: Path, base_shapes: dict[str, tuple[int, int]]
) -> None:
    info = read_adapter("deep", make_adapter("layers3", model=_other_llama(num_hidden_layers=3)))
    [problem] = check_adapter(info, base_dir, max_lora_rank=16, base_shapes=base_shapes)
    assert problem.startswith("adapter 'deep' adapts model.layers.2.self_attn.q_proj (and 1 more)")
    assert "(the base has 2 layers)" in problem


def test_target_module_the_base_does_not_have(
    make_adapter: Callable[..., Path], base_dir: Path, base_shapes: dict[str, tuple[int, int]]
) -> None:
    info = read_adapter("odd", make_adapter("extra_target", target_modules=["q_proj", "w9"]))
    [problem] = check_adapter(info, base_dir, max_lora_rank=16, base_shapes=base_shapes)
    assert problem.startswith("adapter 'odd' targets w9, which the base model has no linear layer of")


def test_trainable_tokens_are_served_merged(
    make_adapter: Callable[..., Path], base_dir: Path, base_shapes: dict[str, tuple[int, int]]
) -> None:
    info = read_adapter("tok", make_adapter("tokens", trainable_token_indices=[5, 6, 7]))
    assert info.features == ("trainable_token_indices",)
    assert not lora_servable(info)
    assert lora_servable(info, engine="reference")
    [problem] = check_adapter(info, base_dir, max_lora_rank=16, base_shapes=base_shapes)
    assert "trainable_token_indices" in problem
    assert problem.endswith("serve it merged (merge_for_serving) instead")
    assert check_adapter(info, base_dir, max_lora_rank=16, engine="reference", base_shapes=base_shapes) == []


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")  # lm_head is tied in the tiny base
def test_modules_to_save_and_expected_base(
    make_adapter: Callable[..., Path], base_dir: Path, base_shapes: dict[str, tuple[int, int]]
) -> None:
    info = read_adapter("head", make_adapter("modules_to_save", modules_to_save=["lm_head"]))
    assert info.features == ("modules_to_save",)
    assert not lora_servable(info)
    recorded = read_adapter("ok", make_adapter("ok"))
    with_base = type(recorded)(**{**recorded.__dict__, "base_model_name_or_path": "org/base-v1"})
    problems = check_adapter(
        with_base, base_dir, max_lora_rank=16, expected_base="org/base-v2", base_shapes=base_shapes
    )
    assert problems == [
        "adapter 'ok' was trained on base 'org/base-v1' but the server loads 'org/base-v2': retrain it on the served "
        "base or serve it with its own"
    ]
    assert (
        check_adapter(with_base, base_dir, max_lora_rank=16, expected_base="org/base-v1", base_shapes=base_shapes) == []
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "is not valid JSON"),
        ('{"peft_type": "PREFIX_TUNING"}', "peft_type is 'PREFIX_TUNING', not 'LORA'"),
        (None, "adapter_config.json is missing"),
    ],
)
def test_broken_adapter_config_is_one_line(
    make_adapter: Callable[..., Path], tmp_path: Path, content: str | None, expected: str
) -> None:
    folder = shutil.copytree(make_adapter("ok"), tmp_path / "broken")
    if content is None:
        (folder / "adapter_config.json").unlink()
    else:
        (folder / "adapter_config.json").write_text(content)
    with pytest.raises(AdapterIncompatible) as caught:
        read_adapter("broken", folder)
    assert str(caught.value).startswith("adapter 'broken': ")
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_check_adapters_lists_every_problem_in_one_line(
    make_adapter: Callable[..., Path], base_dir: Path, tmp_path: Path
) -> None:
    broken = shutil.copytree(make_adapter("ok"), tmp_path / "broken")
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    adapters = {"ok": make_adapter("ok"), "big": make_adapter("rank32", r=32), "broken": broken}
    with pytest.raises(AdapterIncompatible) as caught:
        check_adapters(adapters, base_dir, max_lora_rank=16)
    message = str(caught.value)
    assert message.startswith(f"2 of 3 adapter(s) cannot be served on {base_dir} with vllm: ")
    assert "adapter 'big' has rank 32" in message
    assert "adapter 'broken': " in message and "unreadable" in message
    assert "'ok'" not in message
    assert "\n" not in message


@pytest.mark.parametrize("adapter", ["ok", "tokens"])
def test_merge_generates_what_the_peft_model_generates(
    make_adapter: Callable[..., Path], base_dir: Path, tmp_path: Path, adapter: str
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = make_adapter(adapter, **({"trainable_token_indices": [5, 6, 7]} if adapter == "tokens" else {}))
    out = merge_for_serving(base_dir, folder, tmp_path / "merged", dtype="float32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no staging folder left behind
    record = json.loads((out / MERGE_RECORD).read_text())
    assert record["adapter"] == adapter
    assert set(record["adapter_files"]) == {"adapter_config.json", "adapter_model.safetensors"}
    assert len(record["base_model_version"]) == 64

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    merged: Any = AutoModelForCausalLM.from_pretrained(str(out))
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_dir)), str(folder))
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    inputs = tokenizer("the cat sat", return_tensors="pt")
    settings = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    with torch.no_grad():
        expected = peft_model.generate(**inputs, **settings)
        assert torch.equal(merged.generate(**inputs, **settings), expected)
        assert not torch.allclose(merged(**inputs).logits, base(**inputs).logits)


@pytest.mark.parametrize("existing", [False, True])
def test_failed_merge_leaves_out_dir_as_it_was(
    make_adapter: Callable[..., Path], base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    from transformers import PreTrainedModel

    out = tmp_path / "merged"
    if existing:
        out.mkdir()
        (out / "previous.txt").write_text("still here")

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        merge_for_serving(base_dir, make_adapter("ok"), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["merged"] if existing else [])
    if existing:
        assert [p.name for p in out.iterdir()] == ["previous.txt"]


def test_merge_that_changes_the_output_is_refused(
    make_adapter: Callable[..., Path], base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft.tuners.lora import LoraModel

    monkeypatch.setattr(LoraModel, "merge_and_unload", LoraModel.unload)  # drops the adapter instead of folding it in
    with pytest.raises(AdapterIncompatible, match=r"merged model generates .* but the PeftModel generates"):
        merge_for_serving(base_dir, make_adapter("ok"), tmp_path / "merged")
    assert list(tmp_path.iterdir()) == []
