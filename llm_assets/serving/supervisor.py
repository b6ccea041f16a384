"""A supervised local endpoint: vLLM replicas behind the gateway, restarted when they die.

`start_endpoint(spec)` writes the spec under `<project home>/.serving/<name>/`, starts this module detached
(`python -m llm_assets.serving.supervisor DIR`) and waits until its state file says `ready` (or `failed`,
whose one-line reason is raised). The supervisor process:

1. makes a fresh internal key (the replicas accept only it; the public keys stay with the gateway);
2. starts each vLLM replica on a free loopback port and waits for its health;
3. serves the gateway on the spec's port, in this process;
4. checks the replicas every 2 s and restarts one that died (at most `max_restarts` times), recording it;
5. on SIGTERM stops the replicas and writes `stopped`.

The state file (`state.json`: pids, ports, health, restarts, engine version) is what `llm-assets serve status`,
the `deployed_endpoint` asset and the registry's deployment record read.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from llm_assets.monitoring.feedback import FeedbackInbox
from llm_assets.paths import project_home
from llm_assets.serving.gateway import Gateway, GatewaySettings, SampleRecorder, Upstream, replicas_call
from llm_assets.serving.vllm_server import (
    ServeError,
    ServerProcess,
    VllmSettings,
    check_model_for_cpu,
    engine_version,
    find_vllm_python,
    free_port,
    pid_alive,
    start_process,
    stop_process,
    tail,
    vllm_command,
    vllm_environment,
    wait_healthy,
)

API_KEY_ENV = "LLM_ASSETS_SERVE_API_KEY"
ADMIN_KEY_ENV = "LLM_ASSETS_SERVE_ADMIN_KEY"


@dataclass
class ReplicaSpec:
    """One vLLM process: the model folder, the name it serves it under, and LoRA adapters loaded at start."""

    model_dir: str
    served_model_name: str
    lora_modules: dict[str, str] = field(default_factory=dict)
    max_lora_rank: int = 16
    max_model_len: int = 512
    max_num_seqs: int = 16
    kv_cache_gib: int = 2
    runtime_lora_updating: bool = False


@dataclass
class EndpointSpec:
    """What one local endpoint serves. `routes` maps each public model name to (replica index, replica model)."""

    name: str
    replicas: list[ReplicaSpec]
    routes: dict[str, list[tuple[int, str]]]
    port: int = 8000
    host: str = "127.0.0.1"
    sample_rate: float = 0.01
    sample_policy: str = "eu-gdpr"
    retention_days: int = 30
    lake_root: str | None = None  # samples go to this local lake; None: no sampling
    base_model_dir: str | None = None  # for the compatibility check of adapters loaded at run time
    start_timeout_s: float = 600.0
    max_restarts: int = 3

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EndpointSpec:
        values = dict(data)
        values["replicas"] = [ReplicaSpec(**r) for r in values["replicas"]]
        values["routes"] = {k: [(int(i), str(m)) for i, m in v] for k, v in values["routes"].items()}
        return cls(**values)


def endpoint_dir(name: str) -> Path:
    return project_home() / ".serving" / name


def read_state(name: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads((endpoint_dir(name) / "state.json").read_text()))
    except (OSError, json.JSONDecodeError):
        return None


def _write_state(folder: Path, state: Mapping[str, Any]) -> None:
    tmp = folder / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=2, default=str))
    os.replace(tmp, folder / "state.json")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def public_keys() -> list[str]:
    """The gateway's keys: `LLM_ASSETS_SERVE_API_KEY` (comma-separated, for rotation)."""
    return [key.strip() for key in os.environ.get(API_KEY_ENV, "").split(",") if key.strip()]


# ---------------------------------------------------------------- controller side (CLI, assets)


def start_endpoint(spec: EndpointSpec, *, log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Starts the endpoint detached and waits until it serves; returns its state. Replaces a running one."""
    if not public_keys():
        raise ServeError(f"set {API_KEY_ENV} (the key clients must send) before starting an endpoint")
    find_vllm_python()  # fail here, with the install hint, rather than inside the detached process
    stop_endpoint(spec.name)
    folder = endpoint_dir(spec.name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(json.dumps(asdict(spec), indent=2))
    (folder / "state.json").unlink(missing_ok=True)
    log_path = folder / "supervisor.log"
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "llm_assets.serving.supervisor", str(folder)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    started = time.monotonic()
    last = started
    while True:
        state = read_state(spec.name)
        if state and state.get("status") == "ready":
            return state
        if state and state.get("status") == "failed":
            raise ServeError(f"endpoint '{spec.name}' failed to start: {state.get('error')}")
        if process.poll() is not None:
            raise ServeError(f"endpoint '{spec.name}' supervisor exited ({log_path}): {tail(log_path)}")
        if time.monotonic() - started > spec.start_timeout_s + 60:
            stop_process(process.pid)
            raise ServeError(f"endpoint '{spec.name}' not ready after {spec.start_timeout_s:.0f} s ({log_path})")
        if time.monotonic() - last > 20:
            phase = (state or {}).get("status", "starting")
            log(f"endpoint '{spec.name}': {phase} ({time.monotonic() - started:.0f} s)")
            last = time.monotonic()
        time.sleep(0.5)


def stop_endpoint(name: str) -> bool:
    """Stops a running endpoint (supervisor and replicas); True when one was running."""
    state = read_state(name)
    if not state:
        return False
    stopped = False
    pid = state.get("supervisor_pid")
    if pid and pid_alive(int(pid)):
        stopped = stop_process(int(pid), grace_s=30)
    for replica in state.get("replicas", []):  # replicas outlive a supervisor killed with SIGKILL
        if replica.get("pid") and pid_alive(int(replica["pid"])):
            stop_process(int(replica["pid"]))
            stopped = True
    if stopped or state.get("status") != "stopped":
        _write_state(endpoint_dir(name), state | {"status": "stopped", "stopped_at": _now()})
    return stopped


# ---------------------------------------------------------------- supervisor side


class Supervisor:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.spec = EndpointSpec.from_json(json.loads((folder / "spec.json").read_text()))
        self.internal_key = secrets.token_urlsafe(32)
        self.python = find_vllm_python()
        self.replicas: list[ServerProcess] = []
        self.settings: list[VllmSettings] = []
        self.restarts = [0] * len(self.spec.replicas)
        self.state: dict[str, Any] = {
            "name": self.spec.name,
            "status": "starting",
            "supervisor_pid": os.getpid(),
            "started_at": _now(),
            "url": f"http://{self.spec.host}:{self.spec.port}/v1",
            "models": sorted(self.spec.routes),
            "replicas": [],
        }
        self.gateway: Gateway | None = None
        self._stopping = False

    def save(self, **changes: Any) -> None:
        self.state |= changes
        self.state["replicas"] = [
            {
                "pid": server.pid,
                "url": server.url,
                "served_model_name": settings.served_model_name,
                "lora_modules": {k: str(v) for k, v in settings.lora_modules.items()},
                "log": str(server.log_path),
                "restarts": self.restarts[i],
                "alive": server.alive(),
            }
            for i, (server, settings) in enumerate(zip(self.replicas, self.settings, strict=False))
        ]
        _write_state(self.folder, self.state)

    def _start_replica(self, index: int, port: int | None = None) -> ServerProcess:
        spec = self.spec.replicas[index]
        settings = VllmSettings(
            model_dir=Path(spec.model_dir),
            served_model_name=spec.served_model_name,
            port=port or free_port(),
            lora_modules={k: Path(v) for k, v in spec.lora_modules.items()},
            max_lora_rank=spec.max_lora_rank,
            max_model_len=spec.max_model_len,
            max_num_seqs=spec.max_num_seqs,
            kv_cache_gib=spec.kv_cache_gib,
            runtime_lora_updating=spec.runtime_lora_updating,
        )
        log_path = self.folder / f"replica-{index}.log"
        server = start_process(
            vllm_command(settings, self.python), vllm_environment(settings, self.internal_key), log_path, settings.url
        )
        if index < len(self.replicas):
            self.replicas[index], self.settings[index] = server, settings
        else:
            self.replicas.append(server)
            self.settings.append(settings)
        return server

    def start(self) -> None:
        self.state["engine"] = f"vllm {engine_version(self.python)}"
        if os.environ.get("LLM_ASSETS_VLLM_DEVICE", "cpu") == "cpu":
            for replica in self.spec.replicas:
                check_model_for_cpu(Path(replica.model_dir))
        for index in range(len(self.spec.replicas)):
            self._start_replica(index)
        self.save(status="loading")
        for index, server in enumerate(self.replicas):
            seconds = wait_healthy(server, timeout_s=self.spec.start_timeout_s, what=f"vLLM replica {index}")
            self.state.setdefault("load_seconds", []).append(round(seconds, 1))
        routes = {
            public: [Upstream(self.replicas[i].url, model, self.internal_key) for i, model in targets]
            for public, targets in self.spec.routes.items()
        }
        recorder = None
        if self.spec.lake_root and self.spec.sample_rate > 0:
            from llm_assets.lake import LocalLakeStorage

            recorder = SampleRecorder(
                LocalLakeStorage(self.spec.lake_root),
                rate=self.spec.sample_rate,
                policy=self.spec.sample_policy,
                retention_days=self.spec.retention_days,
            )
        feedback = None
        if self.spec.lake_root:
            from llm_assets.lake import LocalLakeStorage

            feedback = FeedbackInbox(LocalLakeStorage(self.spec.lake_root), policy=self.spec.sample_policy)
        admin = [k.strip() for k in os.environ.get(ADMIN_KEY_ENV, "").split(",") if k.strip()]
        self.gateway = Gateway(
            GatewaySettings(api_keys=public_keys(), routes=routes, admin_keys=admin),
            recorder=recorder,
            feedback=feedback,
            load_adapter=self.load_adapter,
            unload_adapter=self.unload_adapter,
        )

    async def load_adapter(self, name: str, path: str) -> dict[str, Any]:
        """Checks the adapter against the base, then loads it on every LoRA-enabled replica, or on none."""
        from llm_assets.serving.adapters import AdapterIncompatible, check_adapters

        targets = [(i, s) for i, s in enumerate(self.settings) if self.spec.replicas[i].runtime_lora_updating]
        if not targets:
            raise ValueError("no replica of this endpoint accepts adapters at run time (runtime_lora_updating)")
        base = self.spec.base_model_dir or str(targets[0][1].model_dir)
        try:
            check_adapters({name: Path(path)}, Path(base), max_lora_rank=targets[0][1].max_lora_rank)
        except AdapterIncompatible as exc:
            raise ValueError(str(exc)) from exc
        upstreams = [Upstream(self.replicas[i].url, s.served_model_name, self.internal_key) for i, s in targets]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            results = await replicas_call(
                session, upstreams, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path}
            )
            failed = [(u, status, body) for u, status, body in results if status != 200]
            if failed:
                loaded = [u for u, status, _ in results if status == 200]
                await replicas_call(session, loaded, "/v1/unload_lora_adapter", {"lora_name": name})
                u, status, body = failed[0]
                raise ValueError(
                    f"replica {u.url} refused adapter '{name}' (HTTP {status}: {body}); rolled back on all"
                )
        assert self.gateway is not None
        self.gateway.settings.routes[name] = [Upstream(u.url, name, self.internal_key) for u in upstreams]
        for i, _ in targets:
            self.spec.replicas[i].lora_modules[name] = path
            self.settings[i] = VllmSettings(
                **{**self.settings[i].__dict__, "lora_modules": {**self.settings[i].lora_modules, name: Path(path)}}
            )
        self.spec.routes[name] = [(i, name) for i, _ in targets]
        (self.folder / "spec.json").write_text(json.dumps(asdict(self.spec), indent=2))  # survives a restart
        self.save(models=sorted(self.spec.routes))
        return {"loaded": name, "replicas": [u.url for u in upstreams]}

    async def unload_adapter(self, name: str) -> dict[str, Any]:
        targets = [i for i, r in enumerate(self.spec.replicas) if name in r.lora_modules]
        if not targets:
            raise ValueError(f"adapter '{name}' is not loaded on this endpoint")
        upstreams = [Upstream(self.replicas[i].url, name, self.internal_key) for i in targets]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            await replicas_call(session, upstreams, "/v1/unload_lora_adapter", {"lora_name": name})
        assert self.gateway is not None
        self.gateway.settings.routes.pop(name, None)
        self.spec.routes.pop(name, None)
        for i in targets:
            self.spec.replicas[i].lora_modules.pop(name, None)
        (self.folder / "spec.json").write_text(json.dumps(asdict(self.spec), indent=2))
        self.save(models=sorted(self.spec.routes))
        return {"unloaded": name}

    async def watch(self) -> None:
        """Restarts a dead replica on its port (the gateway's routes stay valid), up to max_restarts."""
        while not self._stopping:
            await asyncio.sleep(2)
            for index, server in enumerate(self.replicas):
                if server.alive() or self._stopping:
                    continue
                if self.restarts[index] >= self.spec.max_restarts:
                    self.save(status="degraded", error=f"replica {index} died {self.restarts[index] + 1} times")
                    continue
                self.restarts[index] += 1
                port = self.settings[index].port
                new = await asyncio.to_thread(self._start_replica, index, port)
                self.save(status="restarting")
                try:
                    await asyncio.to_thread(wait_healthy, new, timeout_s=self.spec.start_timeout_s)
                except ServeError as exc:
                    self.save(status="degraded", error=str(exc))
                    continue
                self.save(status="ready")

    def stop(self) -> None:
        self._stopping = True
        for server in self.replicas:
            stop_process(server.pid)
        if self.gateway is not None and self.gateway.recorder is not None:
            self.gateway.recorder.flush()
        self.save(status="stopped", stopped_at=_now())

    async def serve(self) -> None:
        assert self.gateway is not None
        runner = web.AppRunner(self.gateway.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.spec.host, self.spec.port)
        await site.start()
        self.save(status="ready", ready_at=_now())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        watcher = asyncio.create_task(self.watch())
        await stop.wait()
        self._stopping = True
        watcher.cancel()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    supervisor = Supervisor(Path(args[0]))
    try:
        supervisor.start()
        asyncio.run(supervisor.serve())
    except (ServeError, OSError, ValueError) as exc:
        supervisor.save(status="failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        supervisor.stop()
        supervisor.save(status="failed")
        return 1
    supervisor.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
