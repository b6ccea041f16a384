"""Checks that a PEFT LoRA adapter fits the base model and the engine before a server tries to load it.

vLLM loads adapters at start-up and fails with shape errors that name neither the adapter nor the cause;
here every problem is one line naming the adapter, what is wrong and what to do. Shapes are read from the
safetensors header and from the base model built on the meta device, so nothing is loaded into memory.
What vLLM cannot load as a LoRA (trainable tokens, modules_to_save, DoRA, ...) is served merged instead:
`merge_for_serving` writes a plain model folder and proves it generates what the PeftModel does.

vLLM facts (vLLM 0.32, `vllm/config/lora.py`, `vllm/lora/peft_helper.py`, `vllm/lora/utils.py`):
`--max-lora-rank` must be one of `VLLM_LORA_RANKS`; an adapter whose rank (or any `rank_pattern` entry)
exceeds it is rejected; `modules_to_save` other than classifier/score heads, DoRA, LoRA bias, aLoRA,
layer_replication, BD-LoRA, QALoRA and base-modifying inits (PiSSA, OLoRA, CorDA, LoftQ) are rejected; a
weight other than lora_A/lora_B/lora_embedding_A/B (peft's `trainable_tokens_delta`) is "unsupported LoRA
weight". LoRA on embed_tokens/lm_head (lora_embedding_A/B) is still loaded; the extra-vocabulary variant
was removed (vllm-project/vllm#28382, #28545).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MERGE_RECORD = "merged_from.json"
ENGINES = ("vllm", "reference")
# The values vLLM accepts for --max-lora-rank (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Base-modifying initialisations vLLM refuses; the ones that only seed the adapter are fine.
_VLLM_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
_VLLM_MODULES_TO_SAVE = ("classifier", "score")
_PEFT_PREFIX = "base_model.model."
_LORA_SUFFIXES = {
    ".lora_A.weight": "lora_A",
    ".lora_B.weight": "lora_B",
    ".lora_embedding_A": "lora_A",
    ".lora_embedding_B": "lora_B",
}
_VERIFY_PROMPTS = ("The", "Hello world", "1 2 3")
_VERIFY_NEW_TOKENS = 8


class AdapterIncompatible(ValueError):
    """An adapter that cannot be served as asked; the one-line message names it, the problem and the fix."""


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter folder says about itself, read without loading a tensor."""

    name: str
    path: Path
    rank: int  # the largest rank in the adapter (r or any rank_pattern entry)
    alpha: float
    target_modules: tuple[str, ...]
    base_model_name_or_path: str | None
    shapes: dict[str, tuple[int, ...]]  # safetensors key -> shape
    features: tuple[str, ...]  # PEFT features vLLM cannot load as a LoRA


def read_adapter(name: str, adapter_dir: Path) -> AdapterInfo:
    """Reads adapter_config.json and the safetensors header; anything unreadable is an AdapterIncompatible."""
    from safetensors import safe_open

    config_path = adapter_dir / CONFIG_FILE
    weights_path = adapter_dir / WEIGHTS_FILE
    if not config_path.is_file():
        raise AdapterIncompatible(f"adapter {name!r}: {config_path} is missing; save the adapter with save_pretrained")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AdapterIncompatible(
            f"adapter {name!r}: {config_path} is not valid JSON ({exc}); save the adapter again"
        ) from exc
    if not isinstance(config, dict):
        raise AdapterIncompatible(f"adapter {name!r}: {config_path} is not a JSON object; save the adapter again")
    if config.get("peft_type") != "LORA":
        raise AdapterIncompatible(
            f"adapter {name!r}: peft_type is {config.get('peft_type')!r}, not 'LORA'; only LoRA adapters can be "
            "served as adapters (merge it into the base model instead)"
        )
    try:
        base_rank = int(config["r"])
        alpha = float(config.get("lora_alpha", base_rank))
        rank_pattern = {str(k): int(v) for k, v in (config.get("rank_pattern") or {}).items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterIncompatible(
            f"adapter {name!r}: {config_path} has no usable r/lora_alpha/rank_pattern ({exc}); save the adapter again"
        ) from exc
    if not weights_path.is_file():
        extra = (
            " (found adapter_model.bin: save it again with safetensors)"
            if (adapter_dir / "adapter_model.bin").is_file()
            else ""
        )
        raise AdapterIncompatible(f"adapter {name!r}: {weights_path} is missing{extra}")
    try:
        with safe_open(str(weights_path), framework="pt") as tensors:
            shapes = {key: tuple(tensors.get_slice(key).get_shape()) for key in tensors.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for a corrupt header
        raise AdapterIncompatible(
            f"adapter {name!r}: {weights_path} is unreadable ({exc}); save the adapter again"
        ) from exc
    targets = config.get("target_modules") or ()
    target_modules = (targets,) if isinstance(targets, str) else tuple(str(t) for t in targets)
    base = config.get("base_model_name_or_path")
    return AdapterInfo(
        name=name,
        path=adapter_dir,
        rank=max([base_rank, *rank_pattern.values()]),
        alpha=alpha,
        target_modules=target_modules,
        base_model_name_or_path=str(base) if base else None,
        shapes=shapes,
        features=_vllm_unsupported_features(config, shapes),
    )


def _vllm_unsupported_features(config: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, ...]:
    found = []
    if config.get("trainable_token_indices") or any("trainable_tokens" in key for key in shapes):
        found.append("trainable_token_indices")
    if any(m not in _VLLM_MODULES_TO_SAVE for m in config.get("modules_to_save") or ()):
        found.append("modules_to_save")
    for flag in ("use_dora", "lora_bias", "alora_invocation_tokens", "layer_replication", "use_bdlora", "use_qalora"):
        if config.get(flag):
            found.append(flag)
    if config.get("bias", "none") != "none":
        found.append("bias")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in _VLLM_INITS:
        found.append(f"init_lora_weights={init}")
    return tuple(found)


def expected_shapes(base_model_dir: Path) -> dict[str, tuple[int, int]]:
    """Module path -> (in, out) of every nn.Linear and (vocab, dim) of every nn.Embedding, weights unread.

    The model is built from config.json on the meta device, so a 70B base costs no memory.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (base_model_dir / "config.json").is_file():
        raise AdapterIncompatible(f"{base_model_dir}: no config.json; point at a transformers model folder")
    config = AutoConfig.from_pretrained(str(base_model_dir))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shapes: dict[str, tuple[int, int]] = {}
    for path, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            shapes[path] = (module.in_features, module.out_features)
        elif isinstance(module, torch.nn.Embedding):
            shapes[path] = (module.num_embeddings, module.embedding_dim)
    return shapes


def _module_and_kind(key: str) -> tuple[str, str] | None:
    """`base_model.model.model.layers.0.mlp.up_proj.lora_A.weight` -> (`model.layers.0.mlp.up_proj`, lora_A)."""
    for suffix, kind in _LORA_SUFFIXES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)].removeprefix(_PEFT_PREFIX), kind
    return None


def _base_sizes(base_model_dir: Path) -> dict[int, str]:
    """Names for the sizes in a base config, so a mismatch says which dimension differs."""
    try:
        config = json.loads((base_model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    names = {}
    for field, label in (
        ("intermediate_size", "intermediate size"),
        ("vocab_size", "vocabulary"),
        ("hidden_size", "hidden size"),
    ):
        if isinstance(config.get(field), int):
            names[config[field]] = label
    return names


def _smallest_rank_at_least(rank: int) -> int | None:
    return next((r for r in VLLM_LORA_RANKS if r >= rank), None)


def check_adapter(
    info: AdapterInfo,
    base_model_dir: Path,
    *,
    max_lora_rank: int,
    engine: str = "vllm",
    expected_base: str | None = None,
    base_shapes: Mapping[str, tuple[int, int]] | None = None,
) -> list[str]:
    """Every reason `info` would fail to load on `engine` serving `base_model_dir`, one line each.

    `base_shapes` (from `expected_shapes`) saves rebuilding the base when checking many adapters.
    `expected_base` is compared with the base the adapter records, when both are known.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")
    shapes = dict(base_shapes) if base_shapes is not None else expected_shapes(base_model_dir)
    who = f"adapter {info.name!r}"
    problems: list[str] = []
    if engine == "vllm":
        problems.extend(_rank_problems(info, max_lora_rank))
        if info.features:
            problems.append(
                f"{who} uses {', '.join(info.features)}, which vLLM cannot load as a LoRA: serve it merged "
                "(merge_for_serving) instead"
            )
    if (
        expected_base is not None
        and info.base_model_name_or_path is not None
        and expected_base != info.base_model_name_or_path
    ):
        problems.append(
            f"{who} was trained on base {info.base_model_name_or_path!r} but the server loads {expected_base!r}: "
            "retrain it on the served base or serve it with its own"
        )
    leaf_names = {path.rsplit(".", 1)[-1] for path in shapes}
    missing_targets = [t for t in info.target_modules if t != "all-linear" and not _matches_any(t, shapes, leaf_names)]
    if missing_targets:
        problems.append(
            f"{who} targets {', '.join(missing_targets)}, which the base model has no linear layer of: it was "
            "trained on another architecture; retrain it on this base"
        )
    problems.extend(_shape_problems(info, shapes, _base_sizes(base_model_dir)))
    return problems


def _rank_problems(info: AdapterInfo, max_lora_rank: int) -> Iterable[str]:
    who = f"adapter {info.name!r}"
    allowed = ", ".join(map(str, VLLM_LORA_RANKS))
    if max_lora_rank not in VLLM_LORA_RANKS:
        yield f"--max-lora-rank {max_lora_rank} is not a value vLLM accepts; use one of {allowed}"
    if info.rank > max_lora_rank:
        fits = _smallest_rank_at_least(info.rank)
        if fits is None:
            yield (
                f"{who} has rank {info.rank} but vLLM serves ranks up to {VLLM_LORA_RANKS[-1]}: retrain with a "
                "smaller rank or serve it merged (merge_for_serving)"
            )
        else:
            yield (
                f"{who} has rank {info.rank} but the server allows {max_lora_rank}: start it with --max-lora-rank "
                f"{fits} or retrain with rank <= {max_lora_rank}"
            )


def _matches_any(target: str, shapes: Mapping[str, tuple[int, int]], leaf_names: set[str]) -> bool:
    """PEFT's rule: a target names a module by its last component(s) or, as one string, a full-match regex."""
    if target in leaf_names:
        return True
    if "." in target:
        return any(path == target or path.endswith("." + target) for path in shapes)
    try:
        pattern = re.compile(target)
    except re.error:
        return False
    return any(pattern.fullmatch(path) for path in shapes)


def _shape_problems(info: AdapterInfo, shapes: Mapping[str, tuple[int, int]], sizes: Mapping[int, str]) -> list[str]:
    """Unknown modules and lora_A (r, in) / lora_B (out, r) mismatches; repeats are counted, not listed."""
    who = f"adapter {info.name!r}"
    layers = {int(p.split(".")[2]) for p in shapes if p.startswith("model.layers.") and p.split(".")[2].isdigit()}
    unknown: list[str] = []
    mismatched: list[str] = []
    for key, shape in sorted(info.shapes.items()):
        parsed = _module_and_kind(key)
        if parsed is None:
            continue  # trainable tokens, modules_to_save and saved base embeddings are features, not LoRA weights
        module, kind = parsed
        if module not in shapes:
            if module not in unknown:
                unknown.append(module)
            continue
        base_in, base_out = shapes[module]
        if len(shape) != 2:
            mismatched.append(f"{kind} of {module} has shape {shape}, not a matrix")
        elif kind == "lora_A" and shape[1] != base_in:
            reason = sizes.get(base_in, "layer size")
            mismatched.append(
                f"{kind} of {module} is {shape[0]}x{shape[1]} but the base module takes {base_in} inputs: the adapter "
                f"was trained on another base model ({reason} differs)"
            )
        elif kind == "lora_B" and shape[0] != base_out:
            reason = sizes.get(base_out, "layer size")
            mismatched.append(
                f"{kind} of {module} is {shape[0]}x{shape[1]} but the base module outputs {base_out}: the adapter "
                f"was trained on another base model ({reason} differs)"
            )
    problems = []
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        layer_note = f" (the base has {len(layers)} layers)" if layers else ""
        problems.append(
            f"{who} adapts {unknown[0]}{more}, which the base model does not have{layer_note}: it was trained on "
            "another base model; retrain it on this base"
        )
    if mismatched:
        more = f" (and {len(mismatched) - 1} more mismatched weights)" if len(mismatched) > 1 else ""
        problems.append(f"{who}: {mismatched[0]}{more}")
    return problems


def check_adapters(
    adapters: Mapping[str, Path], base_model_dir: Path, *, max_lora_rank: int, engine: str = "vllm"
) -> dict[str, AdapterInfo]:
    """Reads and checks every adapter against one base; raises one AdapterIncompatible listing every problem."""
    shapes = expected_shapes(base_model_dir)
    infos: dict[str, AdapterInfo] = {}
    problems: list[str] = []
    failed: set[str] = set()
    for name, folder in adapters.items():
        try:
            info = read_adapter(name, Path(folder))
        except AdapterIncompatible as exc:
            problems.append(str(exc))
            failed.add(name)
            continue
        found = check_adapter(info, base_model_dir, max_lora_rank=max_lora_rank, engine=engine, base_shapes=shapes)
        if found:
            failed.add(name)
            problems.extend(found)
        infos[name] = info
    if problems:
        raise AdapterIncompatible(
            f"{len(failed)} of {len(adapters)} adapter(s) cannot be served on {base_model_dir} with {engine}: "
            + "; ".join(problems)
        )
    return infos


def lora_servable(info: AdapterInfo, engine: str = "vllm") -> bool:
    """False when the engine cannot load the adapter as a LoRA; such an adapter is served merged."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")
    return engine != "vllm" or not info.features


# ---------------------------------------------------------------- merging


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _folder_version(hashes: Mapping[str, str]) -> str:
    text = "\n".join(f"{name}\t{digest}" for name, digest in sorted(hashes.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def _greedy(model: Any, tokenizer: Any) -> list[list[int]]:
    import torch

    outputs = []
    with torch.no_grad():
        for prompt in _VERIFY_PROMPTS:
            encoded = tokenizer(prompt, return_tensors="pt")
            generated = model.generate(
                **encoded,
                max_new_tokens=_VERIFY_NEW_TOKENS,
                min_new_tokens=_VERIFY_NEW_TOKENS,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            )
            outputs.append(generated[0].tolist())
    return outputs


def merge_for_serving(base_model_dir: Path, adapter_dir: Path, out_dir: Path, *, dtype: str = "bfloat16") -> Path:
    """Folds the adapter into the base and writes a plain model folder at `out_dir`, atomically.

    Merged and PeftModel greedy outputs on a few prompts are compared in fp32 before casting to `dtype`; a
    difference raises and leaves `out_dir` untouched. `merged_from.json` records the base and adapter hashes.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target_dtype = getattr(torch, dtype, None)
    if not isinstance(target_dtype, torch.dtype):
        raise ValueError(f"dtype {dtype!r}: use a torch dtype name such as bfloat16, float16 or float32")
    info = read_adapter(adapter_dir.name, adapter_dir)
    tokenizer_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_model_dir
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    base = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(adapter_dir))
    peft_model.eval()
    expected = _greedy(peft_model, tokenizer)
    merged = peft_model.merge_and_unload()
    merged.eval()
    got = _greedy(merged, tokenizer)
    if got != expected:
        raise AdapterIncompatible(
            f"adapter {info.name!r}: merged model generates {got} but the PeftModel generates {expected}; do not "
            "serve this merge (check the adapter against the base with check_adapter)"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        merged.to(target_dtype).save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        base_hashes = _file_hashes(base_model_dir)
        record = {
            "base_model": str(base_model_dir),
            "base_model_version": _folder_version(base_hashes),
            "adapter": info.name,
            "adapter_path": str(adapter_dir),
            "adapter_files": {n: _sha256(adapter_dir / n) for n in (CONFIG_FILE, WEIGHTS_FILE)},
            "dtype": dtype,
            "verified_prompts": list(_VERIFY_PROMPTS),
        }
        (staging / MERGE_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _replace_folder(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _replace_folder(staging: Path, out_dir: Path) -> None:
    """Renames `staging` onto `out_dir`; an existing `out_dir` is set aside first and restored on failure."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
    old.rmdir()
    os.replace(out_dir, old)
    try:
        os.replace(staging, out_dir)
    except BaseException:
        os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
