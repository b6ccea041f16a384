"""Serving paths on vLLM, in one run: base model vs one LoRA adapter vs four adapters (multi-LoRA) vs the
adapter merged into its base, plus the merged model through our gateway; our load-test client cross-checked
against guidellm on the same server.

Same tiny Llama (bootstrapped like the demo's base: 2 heads of 32), same canary prompts, same concurrency and
output length for every row. Adapters have the demo's LoRA shape (rank 16 on all seven linear modules) with
random non-zero weights: serving cost depends on shapes, not on values. Reported per row: requests/s,
output tokens/s, TTFT and end-to-end p50/p99, and throughput relative to the base model; then which path an
endpoint with one adapter should take, and why. Each vLLM server starts in `.venv-vllm/` (`make vllm`).

    .venv/bin/python benchmarks/serving_bench.py [--requests 200] [--concurrency 8] [--max-tokens 32] [--rounds 3]

guidellm runs from `.venv-guidellm/` (`python3 -m venv .venv-guidellm && .venv-guidellm/bin/pip install
torch==2.13.0 guidellm==0.8.1`: torch first, or it pulls a CUDA build); `--no-guidellm` skips the cross-check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "llm_assets" / "sample_corpus" / "banking77" / "banking77.jsonl"
GUIDELLM = ROOT / ".venv-guidellm" / "bin" / "guidellm"


def prepare(work: Path, adapters: int) -> dict[str, Any]:
    """Tokenizer, tiny base, `adapters` random LoRA adapters of the demo's shape, one merged model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llm_assets.serving.adapters import merge_for_serving
    from llm_assets.training.base_model import TinyLlamaConfig, bootstrap_tiny_llama
    from llm_assets.training.config import LLAMA_LINEAR_MODULES
    from llm_assets.training.tokenizer import TokenizerConfig, save_pretrained, train_bpe_tokenizer

    texts = [json.loads(line)["text"] for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    save_pretrained(train_bpe_tokenizer(texts, TokenizerConfig(vocab_size=8000)), work / "tok")
    bootstrap_tiny_llama(work / "tok", TinyLlamaConfig(), work / "base")
    paths = {}
    for n in range(adapters):
        torch.manual_seed(n)
        model = AutoModelForCausalLM.from_pretrained(str(work / "base"))
        config = LoraConfig(r=16, lora_alpha=32, target_modules=list(LLAMA_LINEAR_MODULES), init_lora_weights=False)
        get_peft_model(model, config).save_pretrained(str(work / f"adapter{n}"))
        paths[f"adapter{n}"] = work / f"adapter{n}"
    merge_for_serving(work / "base", paths["adapter0"], work / "merged")
    parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(work / "base")).parameters())
    return {"adapters": paths, "parameters": parameters}


class Engine:
    """One vLLM server for the duration of a `with` block."""

    def __init__(self, model: Path, name: str, work: Path, lora: dict[str, Path] | None = None) -> None:
        from llm_assets.serving.vllm_server import VllmSettings, find_vllm_python, free_port

        self.key = secrets.token_urlsafe(16)
        self.settings = VllmSettings(
            model, name, free_port(), lora_modules=lora or {}, max_loras=4, runtime_lora_updating=False
        )
        self.python = find_vllm_python()
        self.log = work / f"vllm-{name}-{self.settings.port}.log"

    def __enter__(self) -> Engine:
        from llm_assets.serving.vllm_server import start_process, vllm_command, vllm_environment, wait_healthy

        self.server = start_process(
            vllm_command(self.settings, self.python),
            vllm_environment(self.settings, self.key),
            self.log,
            self.settings.url,
        )
        seconds = wait_healthy(self.server, timeout_s=900, log=print)
        print(
            f"  vLLM serving {self.settings.served_model_name} (+{len(self.settings.lora_modules)} LoRA) "
            f"after {seconds:.0f} s"
        )
        return self

    def __exit__(self, *_: object) -> None:
        from llm_assets.serving.vllm_server import stop_process

        stop_process(self.server.pid)

    @property
    def url(self) -> str:
        return f"{self.settings.url}/v1"


def measure(url: str, models: list[str], key: str, args: argparse.Namespace) -> dict[str, Any]:
    from llm_assets.serving.loadtest import run_loadtest

    warm = run_loadtest(
        url, models, requests=len(models) * 4, concurrency=2, max_tokens=4, api_key=key, log=lambda _: None
    )
    assert warm["overall"]["failed"] == 0, warm["overall"]
    report = run_loadtest(
        url,
        models,
        requests=args.requests,
        concurrency=args.concurrency,
        max_tokens=args.max_tokens,
        api_key=key,
        log=lambda _: None,
    )
    return report["overall"]


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median output throughput (all its figures from that one round)."""
    ordered = sorted(runs, key=lambda r: r["output_tokens_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def through_gateway(upstream: str, model: str, key: str) -> tuple[str, str, Any]:
    """Our gateway (key check, routing, 1 % sampling off) in front of a running replica, in a thread."""
    from aiohttp import web

    from llm_assets.serving.gateway import Gateway, GatewaySettings, Upstream

    public = secrets.token_urlsafe(16)
    app = Gateway(GatewaySettings(api_keys=[public], routes={model: [Upstream(upstream, model, key)]})).app()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    ready = threading.Event()
    box: dict[str, str] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        box["url"] = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"  # type: ignore[union-attr]
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    ready.wait(10)
    return box["url"], public, (loop, runner)


def guidellm(url: str, model: str, key: str, work: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """guidellm's view of the same server and load (concurrent streams, same request count and length)."""
    out = work / "guidellm.json"
    # Each option group as JSON, not key=value: guidellm parses key=value values as YAML, so a key like "1e5"
    # would arrive as a float. Streamed /v1/completions with ignore_eos, as our load test sends them.
    groups = {
        "--backend": {
            "kind": "openai_http",
            "target": url,
            "model": model,
            "api_key": key,
            "request_format": "/v1/completions",
        },
        "--profile": {"kind": "concurrent", "streams": args.concurrency},
        "--constraint": {"kind": "max_requests", "count": args.requests},
        "--data": {"kind": "synthetic_text", "prompt_tokens": 24, "output_tokens": args.max_tokens},
        "--tokenizer": {"kind": "hf_auto", "model": str(work / "base")},
        "--output": {"kind": "json", "path": str(out)},
    }
    cmd = [str(GUIDELLM), "run", "--disable-console"]
    for option, value in groups.items():
        cmd += [option, json.dumps(value)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    except subprocess.TimeoutExpired:
        print("  guidellm failed: no result after 900 s")
        return None
    if run.returncode != 0 or not out.is_file():
        tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
        print(f"  guidellm failed ({run.returncode}): {tail[0][-300:]}")
        return None
    data = json.loads(out.read_text())
    # guidellm exits 0 even when every request failed (a wrong key, say): its figures only count with no errors.
    bench = data["benchmarks"][0]
    totals = bench["metrics"]["request_totals"]
    if totals["errored"] or not totals["successful"]:
        errors = [r["info"]["error"] for r in bench["requests"].get("errored") or [] if r["info"].get("error")]
        first = (errors or ["no error recorded"])[0].splitlines()[0][:300]
        print(f"  guidellm: {totals['errored']} of {totals['total']} requests failed, e.g. {first}")
        return None
    return data


def _guidellm_figures(data: dict[str, Any]) -> dict[str, float]:
    """Our figures from guidellm's JSON: rates are means over the run (requests or output tokens / duration),
    latencies medians of successful requests (request_latency in s, time_to_first_token_ms in ms)."""
    bench = data["benchmarks"][0]["metrics"]

    def stat(name: str, field: str) -> float:
        return float(bench[name]["successful"][field])

    return {
        "requests_per_s": stat("requests_per_second", "mean"),
        "output_tokens_per_s": stat("output_tokens_per_second", "mean"),
        "e2e_p50": stat("request_latency", "median"),
        "ttft_p50": stat("time_to_first_token_ms", "median") / 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds per path; the median is shown.")
    parser.add_argument("--no-guidellm", action="store_true", help="Skip the guidellm cross-check.")
    parser.add_argument("--out", type=Path, help="Also write the results as JSON here.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        work = Path(tmp)
        prepared = prepare(work, adapters=4)
        adapters = prepared["adapters"]
        print(
            f"tiny Llama {prepared['parameters'] / 1e6:.1f}M parameters; {args.requests} requests, concurrency "
            f"{args.concurrency}, {args.max_tokens} output tokens each; {args.rounds} interleaved rounds, median shown"
        )
        cross: dict[str, Any] = {}
        samples: dict[str, list[dict[str, Any]]] = {}
        # The three servers run side by side (an idle vLLM CPU engine waits on its queue) and the paths are
        # measured in interleaved rounds, so drift over the run (warm-up, a busy neighbour) hits all alike.
        with (
            Engine(work / "base", "base", work) as base,
            Engine(work / "base", "base", work, lora=adapters) as lora,
            Engine(work / "merged", "merged", work) as merged,
        ):
            gateway_url, public, (loop, runner) = through_gateway(merged.settings.url, "merged", merged.key)
            paths = {
                "base model": (base.url, ["base"], base.key),
                "base model, LoRA enabled": (lora.url, ["base"], lora.key),
                "one adapter (LoRA)": (lora.url, ["adapter0"], lora.key),
                "four adapters (multi-LoRA)": (lora.url, sorted(adapters), lora.key),
                "one adapter (merged)": (merged.url, ["merged"], merged.key),
                "one adapter (merged) via gateway": (gateway_url, ["merged"], public),
            }
            for round_ in range(args.rounds):
                for name, (url, models, key) in paths.items():
                    samples.setdefault(name, []).append(measure(url, models, key, args))
                print(f"  round {round_ + 1}/{args.rounds} done")
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            if not args.no_guidellm and GUIDELLM.is_file():
                data = guidellm(base.url, "base", base.key, work, args)
                if data is not None:
                    cross = {"ours": median_row(samples["base model"]), "guidellm": _guidellm_figures(data)}
        rows = {name: median_row(runs) for name, runs in samples.items()}

    base = rows["base model"]["output_tokens_per_s"]
    print()
    print("| path | req/s | output tok/s | rounds' range | vs base | TTFT p50 ms | e2e p50 ms | e2e p99 ms | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        spread = [run["output_tokens_per_s"] for run in samples[name]]
        print(
            f"| {name} | {r['requests_per_s']:.2f} | {r['output_tokens_per_s']:.0f} | "
            f"{min(spread):.0f}-{max(spread):.0f} | "
            f"{r['output_tokens_per_s'] / base:.0%} | {r['ttft_s']['p50'] * 1000:.0f} | "
            f"{r['e2e_s']['p50'] * 1000:.0f} | {r['e2e_s']['p99'] * 1000:.0f} | {r['error_rate']:.1%} |"
        )
    lora = rows["one adapter (LoRA)"]["output_tokens_per_s"]
    merged = rows["one adapter (merged)"]["output_tokens_per_s"]
    chosen = "merged" if merged >= lora else "LoRA"
    best = max(merged, lora)
    print()
    print(
        f"one adapter: merged {merged / base:.0%} of base, LoRA {lora / base:.0%} of base -> serve it {chosen} "
        f"({best / base:.0%} of base; target >= 90 %: {'met' if best / base >= 0.9 else 'NOT met'})"
    )
    gateway = rows["one adapter (merged) via gateway"]["output_tokens_per_s"]
    print(f"gateway overhead: {gateway / merged:.0%} of direct throughput through the gateway")
    if cross:
        ours, peer = cross["ours"], cross["guidellm"]
        print(
            f"cross-check on the base model, ours/guidellm: req/s {ours['requests_per_s']:.2f}/"
            f"{peer['requests_per_s']:.2f} ({ours['requests_per_s'] / peer['requests_per_s']:.2f}x), output tok/s "
            f"{ours['output_tokens_per_s']:.0f}/{peer['output_tokens_per_s']:.0f} "
            f"({ours['output_tokens_per_s'] / peer['output_tokens_per_s']:.2f}x), e2e p50 "
            f"{ours['e2e_s']['p50']:.3f}/{peer['e2e_p50']:.3f} s, TTFT p50 {ours['ttft_s']['p50']:.3f}/"
            f"{peer['ttft_p50']:.3f} s"
        )
    if args.out:
        results = {"rows": rows, "rounds": samples, "chosen": chosen, "cross_check": cross}
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
