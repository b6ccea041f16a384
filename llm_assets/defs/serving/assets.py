"""Serving wiring: the approved adapters deployed behind the gateway, and the load test that proves it.

`deployed_endpoint` serves the newest approved (or deployed) version of each configured registry model:
`local` starts a supervised vLLM endpoint on 127.0.0.1; `k8s` and `sagemaker` render (and with `apply: true`
apply) the deployment. A deployment that serves goes to the registry (what served when).
`loadtest_report` measures it under load with a fixed canary prompt set; its blocking `production_health`
check compares p99 latency and error rate with the SLO, and the verdict is recorded in the registry.
"""

import hashlib
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import httpx
from pydantic import Field

from llm_assets.compliance.residency import note_egress
from llm_assets.defs.audit_trail import record_materialization
from llm_assets.defs.curation.assets import code_version_of
from llm_assets.defs.registry.assets import registered_model
from llm_assets.defs.training.adaptation import ADAPTER_PREFIX, CPT_PREFIX
from llm_assets.lake import LakeStorage, LocalLakeStorage
from llm_assets.plots import bar_chart
from llm_assets.registry import ModelRegistry, RegistryEntry, RegistryError
from llm_assets.resources.lake import LakeResource
from llm_assets.training.base_model import download_prefix

DEPLOYMENT_PREFIX = "serving/deployments"
LOADTEST_PREFIX = "serving/loadtests"
SERVABLE = ("approved", "deployed")


class DeployedEndpointConfig(dg.Config):
    """Where and what to serve. Models are registry names (tasks); each serves its newest approved version."""

    name: str = Field(default="llm-assets", description="Endpoint name (local state under .serving/<name>/).")
    target: Literal["local", "k8s", "sagemaker"] = Field(default="local", description="Where the endpoint runs.")
    models: list[str] = Field(default_factory=lambda: ["banking77_intents"], min_length=1)
    merge: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="auto: an endpoint serving one adapter serves it merged into its base (benchmarks/"
        "serving_bench.py measured that faster than LoRA on vLLM), several share one base through multi-LoRA; "
        "an adapter vLLM cannot load as a LoRA (e.g. trainable token rows) is always merged.",
    )
    port: int = Field(default=8000, ge=1024, le=65535, description="Gateway port on 127.0.0.1 (local).")
    sample_rate: float = Field(default=0.01, ge=0, le=1, description="Share of traffic kept (PII-redacted).")
    max_model_len: int = Field(default=512, ge=32)
    start_timeout_s: float = Field(default=900, gt=0)
    apply: bool = Field(default=False, description="k8s/sagemaker: apply for real (otherwise render and validate).")
    k8s: str = Field(default="{}", description="K8sServingConfig fields as a JSON object (image, namespace, ...).")
    sagemaker: str = Field(default="{}", description="SageMakerServingConfig fields as a JSON object.")


def _servable_entry(registry: ModelRegistry, model: str) -> RegistryEntry:
    """The version to serve: one approved after the current deployment began (the newest such), else the one
    deployed now. So a new approval rolls forward, and a rolled-back version is not picked up again."""
    entries = [e for e in registry.entries(model) if e.status in SERVABLE]
    if not entries:
        raise dg.Failure(
            f"no approved version of {model}: approve one with `llm-assets registry approve {model} VERSION "
            "--by NAME --reason TEXT`"
        )
    deployed = next((e for e in entries if e.status == "deployed"), None)
    if deployed is None:
        return entries[-1]
    since = (deployed.deployment or {}).get("at", "")
    newer = [e for e in entries if e.status == "approved" and (e.approval or {}).get("at", "") > since]
    return newer[-1] if newer else deployed


def _stage(storage: LakeStorage, prefix: str, dest: Path) -> Path:
    """The lake folder `prefix` as a local folder vLLM can read (downloaded once per content version)."""
    if isinstance(storage, LocalLakeStorage) and (storage.root / prefix).is_dir():
        return storage.root / prefix
    if not dest.is_dir():
        tmp = dest.with_name(dest.name + ".partial")
        download_prefix(storage, prefix, tmp)
        os.replace(tmp, dest)
    return dest


def plan_models(
    storage: LakeStorage, registry: ModelRegistry, config: DeployedEndpointConfig, work: Path, log: Any
) -> list[dict[str, Any]]:
    """Per model: version, base folder, adapter folder, serving path (lora | merged) and why."""
    from llm_assets.serving.adapters import (
        AdapterIncompatible,
        check_adapter,
        lora_servable,
        merge_for_serving,
        read_adapter,
    )

    plans = []
    for model in config.models:
        entry = _servable_entry(registry, model)
        cpt_version = entry.lineage.get("cpt_model")
        if not cpt_version:
            raise dg.Failure(f"{model} {entry.version[:16]}: its lineage names no cpt_model; re-register it")
        base = _stage(storage, f"{CPT_PREFIX}/{cpt_version[:16]}", work / "base" / cpt_version[:16])
        adapter_dir = _stage(
            storage,
            f"{ADAPTER_PREFIX}/{model}/{entry.version[:16]}/adapter",
            work / "adapters" / model / entry.version[:16],
        )
        try:
            info = read_adapter(model, adapter_dir)
        except AdapterIncompatible as exc:
            raise dg.Failure(str(exc)) from exc
        servable = lora_servable(info)
        if not servable:
            path, why = "merged", f"vLLM cannot load {', '.join(info.features)} as a LoRA"
        elif config.merge == "always":
            path, why = "merged", "merge: always"
        elif config.merge == "auto" and len(config.models) == 1:
            path, why = "merged", "one adapter on this endpoint: merged weights serve at base-model speed"
        else:
            path, why = "lora", "several adapters share one base through multi-LoRA"
        if path == "lora":
            problems = check_adapter(info, base, max_lora_rank=max(16, info.rank))
            if problems:
                raise dg.Failure(f"adapter {model} {entry.version[:16]} does not fit its base: {'; '.join(problems)}")
            served = adapter_dir
        else:
            served = work / "merged" / model / entry.version[:16]
            if not served.is_dir():
                log(f"{model}: merging adapter {entry.version[:16]} into its base ({why})")
                merge_for_serving(base, adapter_dir, served)
        plans.append(
            {
                "model": model,
                "version": entry.version,
                "status": entry.status,
                "base_model": cpt_version,
                "base_dir": str(base),
                "adapter_dir": str(adapter_dir),
                "rank": info.rank,
                "path": path,
                "reason": why,
                "served_dir": str(served),
            }
        )
    return plans


def local_spec(config: DeployedEndpointConfig, plans: list[dict[str, Any]], lake_root: str | None) -> Any:
    from llm_assets.serving.supervisor import EndpointSpec, ReplicaSpec

    replicas: list[ReplicaSpec] = []
    routes: dict[str, list[tuple[int, str]]] = {}
    bases: dict[str, int] = {}
    for plan in plans:
        if plan["path"] == "merged":
            replicas.append(ReplicaSpec(plan["served_dir"], plan["model"], max_model_len=config.max_model_len))
            routes[plan["model"]] = [(len(replicas) - 1, plan["model"])]
            continue
        index = bases.get(plan["base_dir"])
        if index is None:
            replicas.append(
                ReplicaSpec(plan["base_dir"], "base", max_model_len=config.max_model_len, runtime_lora_updating=True)
            )
            index = bases[plan["base_dir"]] = len(replicas) - 1
        replica = replicas[index]
        replica.lora_modules[plan["model"]] = plan["served_dir"]
        replica.max_lora_rank = max(replica.max_lora_rank, plan["rank"])
        routes[plan["model"]] = [(index, plan["model"])]
    return EndpointSpec(
        name=config.name,
        replicas=replicas,
        routes=routes,
        port=config.port,
        sample_rate=config.sample_rate,
        lake_root=lake_root,
        start_timeout_s=config.start_timeout_s,
    )


def _smoke(url: str, models: list[str], key: str) -> dict[str, Any]:
    """One short completion per model with the key, and proof that a request without it gets 401."""
    answers = {}
    note_egress(url, "deployment_smoke_test")
    with httpx.Client(timeout=120) as client:
        for model in models:
            reply = client.post(
                f"{url}/completions",
                json={"model": model, "prompt": "Hello", "max_tokens": 4, "temperature": 0},
                headers={"Authorization": f"Bearer {key}"},
            )
            if reply.status_code != 200:
                raise dg.Failure(f"endpoint {url} answered HTTP {reply.status_code} for {model}: {reply.text[:200]}")
            answers[model] = reply.json()["usage"]["completion_tokens"]
        anonymous = client.post(f"{url}/completions", json={"model": models[0], "prompt": "Hello", "max_tokens": 1})
    if anonymous.status_code != 401:
        raise dg.Failure(f"endpoint {url} served a request without an API key (HTTP {anonymous.status_code})")
    return {"completion_tokens": answers, "unauthenticated_status": anonymous.status_code}


@dg.asset(
    deps=[registered_model],
    group_name="serving",
    code_version="deployed_endpoint-v1",
    kinds={"vllm"},
)
def deployed_endpoint(
    context: dg.AssetExecutionContext, config: DeployedEndpointConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """The approved adapters served by vLLM behind the gateway (API key, 1 % PII-redacted sample)."""
    from llm_assets.paths import project_home
    from llm_assets.serving.supervisor import API_KEY_ENV, public_keys, start_endpoint
    from llm_assets.serving.vllm_server import ServeError

    storage = lake.storage()
    registry = ModelRegistry(storage)
    work = project_home() / ".serving" / "models"
    plans = plan_models(storage, registry, config, work, context.log.info)
    deployed_at = datetime.now(UTC).isoformat(timespec="seconds")
    record: dict[str, Any] = {"name": config.name, "target": config.target, "models": plans, "at": deployed_at}
    metadata: dict[str, Any] = {}
    endpoint_uri = None
    if config.target == "local":
        lake_root = str(storage.root) if isinstance(storage, LocalLakeStorage) else None
        spec = local_spec(config, plans, lake_root)
        try:
            state = start_endpoint(spec, log=context.log.info)
        except ServeError as exc:
            raise dg.Failure(str(exc)) from exc
        keys = public_keys()
        smoke = _smoke(state["url"], sorted(spec.routes), keys[0])
        endpoint_uri = state["url"]
        record |= {"url": state["url"], "engine": state.get("engine"), "smoke": smoke, "api_key_env": API_KEY_ENV}
        metadata |= {
            "url": state["url"],
            "supervisor_pid": state["supervisor_pid"],
            "replicas": dg.MetadataValue.json(state["replicas"]),
            "load_seconds": dg.MetadataValue.json(state.get("load_seconds", [])),
            "engine": state.get("engine", ""),
            "stop_with": dg.MetadataValue.md(f"`llm-assets serve stop --name {config.name}`"),
        }
    elif config.target == "k8s":
        endpoint_uri = _k8s(config, plans, storage, record, metadata)
    else:
        endpoint_uri = _sagemaker(config, plans, storage, record, metadata)
    payload = json.dumps(record, indent=2, sort_keys=True, default=str).encode()
    version = hashlib.sha256(payload).hexdigest()
    storage.write_bytes(f"{DEPLOYMENT_PREFIX}/{config.name}/{version[:16]}.json", payload)
    storage.write_bytes(
        f"{DEPLOYMENT_PREFIX}/{config.name}/current.json",
        json.dumps({"version": version, "key": f"{DEPLOYMENT_PREFIX}/{config.name}/{version[:16]}.json"}).encode(),
    )
    if endpoint_uri is not None:  # serving now: the registry says what served when
        for plan in plans:
            entry = registry.entry(plan["model"], plan["version"])
            if entry.status == "deployed" and entry.deployment and entry.deployment["endpoint"] == endpoint_uri:
                continue
            try:
                registry.deploy(
                    plan["model"],
                    plan["version"],
                    by=f"dagster run {context.run.run_id}",
                    endpoint=endpoint_uri,
                    reason=f"{config.target} {plan['path']}: {plan['reason']}",
                )
            except RegistryError as exc:
                raise dg.Failure(str(exc)) from exc
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions={f"lora_adapter/{p['model']}": p["version"] for p in plans},
        output_data_version=version,
        counts={"models": len(plans)},
        config=config.model_dump(),
    )
    table = "| model | version | path | why |\n|---|---|---|---|\n" + "\n".join(
        f"| {p['model']} | {p['version'][:16]} | {p['path']} | {p['reason']} |" for p in plans
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata=metadata | {"target": config.target, "models": dg.MetadataValue.md(table)},
    )


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise dg.Failure(f"deployed_endpoint config '{what}' is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise dg.Failure(f"deployed_endpoint config '{what}' must be a JSON object")
    return value


def _k8s(
    config: DeployedEndpointConfig, plans: list[dict[str, Any]], storage: LakeStorage, record: dict, metadata: dict
) -> str | None:
    from llm_assets.serving.k8s_deploy import (
        K8sDeployError,
        K8sServingConfig,
        apply_manifests,
        render_manifests,
        to_yaml,
        validate_manifests,
    )

    values = {"name": config.name, "served_model_name": plans[0]["model"]} | _json_object(config.k8s, "k8s")
    values.setdefault("base_model_uri", storage.uri(f"{CPT_PREFIX}/{plans[0]['base_model'][:16]}"))
    values.setdefault(
        "adapters",
        {p["model"]: storage.uri(f"{ADAPTER_PREFIX}/{p['model']}/{p['version'][:16]}/adapter") for p in plans},
    )
    try:
        manifests = render_manifests(K8sServingConfig(**values))
    except ValueError as exc:
        raise dg.Failure(f"k8s serving config: {exc}") from exc
    problems = validate_manifests(manifests)
    if problems:
        raise dg.Failure(f"rendered manifests are invalid: {'; '.join(problems)}")
    text = to_yaml(manifests)
    key = f"{DEPLOYMENT_PREFIX}/{config.name}/manifests-{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    storage.write_bytes(key, text.encode())
    record |= {"manifests": storage.uri(key)}
    metadata |= {"manifests": storage.uri(key), "objects": len(manifests)}
    if not config.apply:
        return None
    try:
        applied = apply_manifests(manifests)
    except K8sDeployError as exc:
        raise dg.Failure(str(exc)) from exc
    record |= {"applied": applied}
    return f"k8s://{values.get('namespace', 'llm-serving')}/{config.name}"


def _sagemaker(
    config: DeployedEndpointConfig, plans: list[dict[str, Any]], storage: LakeStorage, record: dict, metadata: dict
) -> str | None:
    from llm_assets.serving.sagemaker_deploy import SageMakerDeployError, SageMakerServingConfig, build_requests, deploy

    values = {"endpoint_name": config.name} | _json_object(config.sagemaker, "sagemaker")
    try:
        sm_config = SageMakerServingConfig(**values)
    except ValueError as exc:
        raise dg.Failure(f"sagemaker serving config: {exc}") from exc
    requests = build_requests(sm_config)
    key = f"{DEPLOYMENT_PREFIX}/{config.name}/sagemaker-requests.json"
    storage.write_bytes(key, json.dumps(requests, indent=2, default=str).encode())
    record |= {"sagemaker_requests": storage.uri(key)}
    metadata |= {"sagemaker_requests": storage.uri(key)}
    if not config.apply:
        return None
    try:
        result = deploy(sm_config)
    except SageMakerDeployError as exc:
        raise dg.Failure(str(exc)) from exc
    record |= {"deployed": result}
    return f"sagemaker://{config.name}"


class LoadTestConfig(dg.Config):
    """A bounded load test of the deployed endpoint against the SLO (defaults: p99 < 5 s, errors < 1 %)."""

    endpoint: str = Field(default="llm-assets", description="The deployed endpoint's name.")
    profile: Literal["constant", "step", "spike"] = "constant"
    requests: int = Field(default=96, ge=1, le=100_000)
    concurrency: int = Field(default=4, ge=1, le=1024)
    max_tokens: int = Field(default=32, ge=1, le=4096)
    p99_latency_s: float = Field(default=5.0, gt=0)
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    max_duration_s: float = Field(default=300, gt=0, description="Hard bound on the whole test.")
    level_duration_s: float | None = Field(default=None, description="Soak: keep each load level for this long.")


@dg.asset(
    deps=[deployed_endpoint],
    group_name="serving",
    code_version="loadtest_report-v1",
    kinds={"json"},
    check_specs=[
        dg.AssetCheckSpec(
            "production_health",
            asset="loadtest_report",
            blocking=True,
            description="p99 end-to-end latency and error rate of every served model within the SLO.",
        )
    ],
)
def loadtest_report(
    context: dg.AssetExecutionContext, config: LoadTestConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """TTFT, ITL, latency percentiles, throughput, error rate and goodput per adapter, from a fixed prompt set."""
    from llm_assets.serving.loadtest import LoadTestError, Slo, run_loadtest
    from llm_assets.serving.supervisor import public_keys, read_state

    storage = lake.storage()
    current = json.loads(storage.read_bytes(f"{DEPLOYMENT_PREFIX}/{config.endpoint}/current.json"))
    deployment = json.loads(storage.read_bytes(current["key"]))
    if deployment["target"] != "local":
        raise dg.Failure(f"deployment {deployment['name']} is {deployment['target']}; load-test it with the CLI")
    state = read_state(deployment["name"]) or {}
    if state.get("status") != "ready":
        raise dg.Failure(
            f"endpoint {deployment['name']} is not running (status {state.get('status', 'unknown')}); "
            "materialize deployed_endpoint first"
        )
    slo = Slo(p99_latency_s=config.p99_latency_s, max_error_rate=config.max_error_rate)
    keys = public_keys()
    started = time.monotonic()
    try:
        report = run_loadtest(
            state["url"],
            [p["model"] for p in deployment["models"]],
            profile=config.profile,
            requests=config.requests,
            concurrency=config.concurrency,
            max_tokens=config.max_tokens,
            api_key=keys[0] if keys else None,
            slo=slo,
            max_duration_s=config.max_duration_s,
            level_duration_s=config.level_duration_s,
            log=context.log.info,
        )
    except LoadTestError as exc:
        raise dg.Failure(str(exc)) from exc
    report["deployment"] = current["version"]
    report["engine"] = state.get("engine")
    payload = json.dumps(report, indent=2, sort_keys=True).encode()
    version = hashlib.sha256(payload).hexdigest()
    key = f"{LOADTEST_PREFIX}/{deployment['name']}/{version[:16]}.json"
    storage.write_bytes(key, payload)
    storage.write_bytes(f"{LOADTEST_PREFIX}/{deployment['name']}/current.json", json.dumps({"key": key}).encode())
    health = report["health"]
    registry = ModelRegistry(storage)
    evidence = {
        "loadtest_report": storage.uri(key),
        "p99_e2e_s": report["overall"]["e2e_s"]["p99"],
        "error_rate": report["overall"]["error_rate"],
        "slo": report["slo"],
    }
    for plan in deployment["models"]:
        entry = registry.entry(plan["model"], plan["version"])
        if entry.status == "deployed":
            registry.record_health(
                plan["model"],
                plan["version"],
                by=f"dagster run {context.run.run_id}",
                passed=health["passed"],
                evidence=evidence,
            )
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions={"deployed_endpoint": current["version"]},
        output_data_version=version,
        counts={"requests": report["overall"]["requests"], "failed": report["overall"]["failed"]},
        config=config.model_dump(),
    )
    rows = []
    for model, f in report["per_model"].items():
        ttft, e2e = f["ttft_s"], f["e2e_s"]
        rows.append(
            f"| {model} | {f['requests']} | {_ms(ttft['p50'])} / {_ms(ttft['p99'])} | {_ms(f['itl_s']['p50'])} | "
            f"{_ms(e2e['p50'])} / {_ms(e2e['p90'])} / {_ms(e2e['p99'])} | {f['output_tokens_per_s'] or 0:.1f} | "
            f"{f['requests_per_s'] or 0:.2f} | {f['error_rate'] or 0:.1%} | {f['goodput_rps'] or 0:.2f} |"
        )
    table = (
        "| model | requests | TTFT p50/p99 ms | ITL p50 ms | e2e p50/p90/p99 ms | out tok/s | req/s | errors | "
        "goodput req/s |\n|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows)
    )
    p99 = {m: f["e2e_s"]["p99"] or 0.0 for m, f in report["per_model"].items()}
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "report": storage.uri(key),
            "per_model": dg.MetadataValue.md(table),
            "p99_latency_plot": dg.MetadataValue.md(bar_chart(p99, title="p99 end-to-end latency (s) per model")),
            "wall_seconds": round(time.monotonic() - started, 1),
            "output_tokens_per_s": report["overall"]["output_tokens_per_s"],
            "p99_e2e_s": report["overall"]["e2e_s"]["p99"],
            "error_rate": report["overall"]["error_rate"],
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="production_health",
                passed=bool(health["passed"]),
                metadata={
                    "reasons": dg.MetadataValue.json(health["reasons"]),
                    "slo": dg.MetadataValue.json(report["slo"]),
                },
            )
        ],
    )


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


SERVING_JOB = "serving"
serving_job = dg.define_asset_job(
    SERVING_JOB,
    selection=dg.AssetSelection.assets(deployed_endpoint, loadtest_report),
    description="Serve the approved adapters (vLLM behind the gateway) and load-test them against the SLO.",
)

SERVE_JOB = "serving_deploy"
serving_deploy_job = dg.define_asset_job(
    SERVE_JOB,
    selection=dg.AssetSelection.assets(deployed_endpoint),
    description="Serve the approved adapters (`llm-assets serve start`).",
)


def serving_definitions() -> dg.Definitions:
    return dg.Definitions(assets=[deployed_endpoint, loadtest_report], jobs=[serving_job, serving_deploy_job])
