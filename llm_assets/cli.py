"""`llm-assets`: the command line of the platform. Thin: it calls the pure modules and the Dagster wiring.

Errors are one line naming the file/record and what to do, with a non-zero exit code.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from llm_assets.paths import project_home, sample_corpus_dir

F = TypeVar("F", bound=Callable[..., Any])


class UserError(click.ClickException):
    """A problem the user can fix; printed as one line."""

    def format_message(self) -> str:
        return self.message


def one_line_errors(func: F) -> F:
    """Turn the platform's own errors into one-line messages instead of tracebacks."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from llm_assets.ingestion.descriptor import IngestError
        from llm_assets.lake import LakeError

        try:
            return func(*args, **kwargs)
        except (LakeError, IngestError, ValueError) as exc:
            raise UserError(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)) from exc

    return wrapper  # type: ignore[return-value]


def _lake_storage():  # type: ignore[no-untyped-def]
    from llm_assets.definitions import lake_resource_from_env

    return lake_resource_from_env().storage()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llm_assets")
def main() -> None:
    """llm_assets: build, evaluate, serve and trace your own LLM as Dagster assets.

    With no configuration everything runs embedded: a SQLite Dagster instance in .dagster_home/,
    a local lake in .lake/, CPU only. Set LLM_ASSETS_LAKE=s3 (and LLM_ASSETS_S3_*) for an S3 lake.
    """


def _print_runs(runs: list[Any]) -> None:
    click.echo("")
    click.echo("Materialized:")
    for run in runs:
        state = "ok" if run.success else "FAILED"
        click.echo(f"  partition {run.partition:<18} run {run.run_id[:8]}  {state}")
        for mat in run.materialized:
            rows = f"{mat.rows} rows" if mat.rows is not None else ""
            version = f"data version {mat.data_version[:12]}" if mat.data_version else ""
            note = f"  {mat.note}" if getattr(mat, "note", "") else ""
            click.echo(f"    {mat.asset:<28} {rows:<14} {version}{note}")
        passed = sum(check.passed for check in run.checks)
        click.echo(f"    checks: {passed}/{len(run.checks)} passed")
        for check in run.checks:
            if not check.passed:
                label = "FAILED" if check.blocking_severity else "warning"
                click.echo(f"    check {label}: {check.asset}:{check.check}")
        if run.error:
            click.echo(f"    error: {run.error}")


def _run_pipeline(sources: list[str] | None, *, data_only: bool = False) -> list[Any]:
    import dagster as dg

    from llm_assets.definitions import build_definitions
    from llm_assets.defs.launch import register_landed_sources, run_corpus_pipeline, run_data_rebuild
    from llm_assets.instance import ensure_dagster_home

    ensure_dagster_home()
    defs = build_definitions()  # from the environment as it is now (lake, residency policy)
    storage = _lake_storage()
    with dg.DagsterInstance.get() as instance:
        valid, problems = register_landed_sources(instance, storage)
        for problem in problems:
            click.echo(f"skipped landing source {problem}", err=True)
        targets = valid if sources is None else [s for s in sources if s in valid]
        if not targets:
            raise UserError(f"no valid source under {storage.uri('landing/')}: stage one with `llm-assets ingest`")
        if data_only:
            return run_data_rebuild(defs, instance, targets, log=click.echo)
        return run_corpus_pipeline(defs, instance, targets, log=click.echo)


@main.command()
@one_line_errors
def demo() -> None:
    """Run the main job on the bundled multilingual sample corpus and print what was built."""
    from llm_assets.audit import AuditLog
    from llm_assets.ingestion.landing import stage_source_folder

    started = time.monotonic()
    storage = _lake_storage()
    sample = sample_corpus_dir()
    names = [
        stage_source_folder(storage, folder)
        for folder in sorted(p for p in sample.iterdir() if p.is_dir() and (p / "source.yaml").is_file())
    ]
    click.echo(f"Staged {len(names)} sample sources into {storage.uri('landing/')}: {', '.join(names)}")
    runs = _run_pipeline(names)
    _print_runs(runs)
    serving_run = None
    if all(run.success for run in runs):
        serving_run = _demo_serve(storage)
        if serving_run is not None:
            runs.append(serving_run)
            _print_runs([serving_run])
        if serving_run is not None and serving_run.success:
            sampling_run = _demo_samples(storage)
            runs.append(sampling_run)
            _print_runs([sampling_run])
            quality_runs = _demo_deployed_eval(storage)
            runs.extend(quality_runs)
            _print_runs(quality_runs)
            compliance_run = _demo_compliance()
            runs.append(compliance_run)
            _print_runs([compliance_run])
    verification = AuditLog(storage).verify()
    click.echo("")
    click.echo(f"Audit trail: {verification.records} records, {'intact' if verification.ok else 'BROKEN'}")
    click.echo(f"Lake:        {storage.uri('')}")
    click.echo(f"Instance:    {os.environ.get('DAGSTER_HOME')}")
    click.echo(f"Finished in {time.monotonic() - started:.1f} s.")
    click.echo("Open the Dagster UI with `make ui` (or `.venv/bin/llm-assets ui`) at http://127.0.0.1:3000")
    if serving_run is not None and serving_run.success:
        from llm_assets.serving.supervisor import API_KEY_ENV, read_state

        state = read_state("llm-assets") or {}
        click.echo(
            f"Serving:     {state.get('url')} (models {', '.join(state.get('models', []))}; key in "
            f"${API_KEY_ENV} or {_demo_key_file()}); stop with `llm-assets serve stop`"
        )
    if not all(run.success for run in runs) or not verification.ok or serving_run is None:
        raise SystemExit(1)


def _demo_key_file() -> Path:
    return project_home() / ".serving" / "api-key"


def _ensure_api_key() -> None:
    """The demo's endpoint key: $LLM_ASSETS_SERVE_API_KEY, or one generated once and kept in a 0600 file."""
    import secrets

    from llm_assets.serving.supervisor import API_KEY_ENV

    if os.environ.get(API_KEY_ENV):
        return
    path = _demo_key_file()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    os.environ[API_KEY_ENV] = path.read_text().strip()


def _demo_serve(storage: Any) -> Any:
    import dagster as dg

    from llm_assets.definitions import defs
    from llm_assets.defs.launch import approve_and_serve
    from llm_assets.defs.training.assets import SFT_TASKS
    from llm_assets.instance import ensure_dagster_home

    _ensure_api_key()
    port = int(os.environ.get("LLM_ASSETS_SERVE_PORT", "8000"))
    ensure_dagster_home()
    with dg.DagsterInstance.get() as instance:
        # The KPI task: the demo serves the intent adapter (the civics adapter stays a registered candidate).
        tasks = [t for t in SFT_TASKS.get_partition_keys() if t == "banking77_intents"]
        # 25 % sampling (production default 1 %) so the demo's short load test leaves enough to monitor.
        return approve_and_serve(defs, instance, storage, tasks, port=port, sample_rate=0.25, log=click.echo)


def _demo_samples(storage: Any) -> Any:
    import dagster as dg

    from llm_assets.definitions import defs
    from llm_assets.defs.launch import collect_production_samples

    with dg.DagsterInstance.get() as instance:
        return collect_production_samples(defs, instance, storage, log=click.echo)


def _demo_compliance() -> Any:
    import dagster as dg

    from llm_assets.definitions import defs
    from llm_assets.defs.compliance.lineage import COMPLIANCE_JOB
    from llm_assets.defs.launch import execute

    click.echo(f"{COMPLIANCE_JOB}: lineage reports of the registered models ...")
    with dg.DagsterInstance.get() as instance:
        return execute(defs, instance, COMPLIANCE_JOB, None)


def _demo_deployed_eval(storage: Any) -> list[Any]:
    import dagster as dg

    from llm_assets.definitions import defs
    from llm_assets.defs.launch import evaluate_deployed_models

    with dg.DagsterInstance.get() as instance:
        return evaluate_deployed_models(defs, instance, storage, log=click.echo)


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", help="Source name (default: the descriptor's name).")
@click.option("--stage-only", is_flag=True, help="Only copy into landing/; the sensor or a later run ingests it.")
@one_line_errors
def ingest(folder: Path, name: str | None, stage_only: bool) -> None:
    """Stage FOLDER (a source folder with a source.yaml) into the lake's landing area and ingest it."""
    from llm_assets.ingestion.landing import stage_source_folder

    storage = _lake_storage()
    source = stage_source_folder(storage, folder, name)
    click.echo(f"Staged {folder} as source '{source}' in {storage.uri('landing/' + source + '/')}")
    if stage_only:
        return
    runs = _run_pipeline([source])
    _print_runs(runs)
    if not all(run.success for run in runs):
        raise SystemExit(1)


# Static (importing the settings model would load the whole curation stack for every command's --help);
# a test checks the keys against CurationSettings and that the example loads.
CURATE_SETTINGS_KEYS = (
    "pii_policy, normalize, dedup, quality, perplexity, reference_sources, split_ratios, split_salt, max_file_mb, "
    "max_rows_per_shard, pii_salt"
)
CURATE_SETTINGS_EXAMPLE = """\
max_rows_per_shard: 20000
dedup: {threshold: 0.8, keep_rule: longest, paragraph_level: true}
quality: {allowed_languages: [el, en], refine_close_languages: true}
perplexity: {upper_percentile: 99.0}
split_ratios: {train: 0.9, dev: 0.05, test: 0.05}
"""
_CURATE_EPILOG = (
    f"\b\nSettings YAML (--config), every key optional with the assets' defaults: {CURATE_SETTINGS_KEYS}.\n"
    "For example:\n" + "".join(f"  {line}\n" for line in CURATE_SETTINGS_EXAMPLE.splitlines())
)


@main.command(epilog=_CURATE_EPILOG)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--profile", help="PII policy profile: default, eu-gdpr, gr, or a YAML path.")
@click.option(
    "--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Settings YAML."
)
@one_line_errors
def curate(inputs: tuple[Path, ...], out: Path, profile: str | None, config_file: Path | None) -> None:
    """Run the whole curation chain on INPUTS (files or folders) without Dagster.

    Writes OUT/kept/*.parquet, OUT/rejected/*.parquet (every removed record once, with stage and reason),
    OUT/clusters/*.parquet (dedup clusters) and OUT/manifest.json (in/kept/rejected and seconds per stage).
    """
    from llm_assets.curation.local import curate_paths, load_settings

    settings = load_settings(config_file, profile)
    manifest = curate_paths(list(inputs), out, settings, progress=click.echo)
    click.echo("")
    click.echo(f"{'stage':<12}{'in':>10}{'kept':>10}{'rejected':>10}{'seconds':>10}")
    for stage in manifest["stages"]:
        click.echo(
            f"{stage['stage']:<12}{stage['in']:>10}{stage['kept']:>10}{stage['rejected']:>10}{stage['seconds']:>10.2f}"
        )
    click.echo(
        f"Wrote {out}/kept ({manifest['kept_rows']} rows), {out}/rejected ({manifest['rejected_rows']} rows), "
        f"{out}/clusters, {out}/manifest.json in {manifest['seconds']} s"
    )


@main.command()
@click.option("--port", default=3000, show_default=True, help="Port of the web UI on 127.0.0.1.")
def ui(port: int) -> None:
    """Start `dagster dev` (web UI + daemon) on 127.0.0.1 against the same instance as the CLI."""
    from llm_assets.instance import ensure_dagster_home

    ensure_dagster_home()
    dagster = shutil.which("dagster", path=str(Path(sys.executable).parent)) or "dagster"
    workspace = project_home() / "workspace.yaml"
    target = ["-w", str(workspace)] if workspace.is_file() else ["-m", "llm_assets.definitions"]
    click.echo(f"Dagster UI on http://127.0.0.1:{port} (DAGSTER_HOME={os.environ['DAGSTER_HOME']}); Ctrl-C stops it")
    raise SystemExit(subprocess.call([dagster, "dev", "-h", "127.0.0.1", "-p", str(port), *target], cwd=project_home()))


def _option_for(name: str, field: Any) -> click.Option:
    """A click option for one config field; its default stays the config's own (only given values are passed)."""
    import typing

    annotation = field.annotation
    default = field.get_default(call_default_factory=True)
    shown = json.dumps(default) if isinstance(default, dict | list) else default
    from llm_assets.training.config import TrainingConfig

    shared = TrainingConfig.model_fields.get(name)
    description = field.description or (shared.description if shared else None) or ""
    help_text = f"{description} [default: {shown}]".strip()
    flag = "--" + name.replace("_", "-")
    if annotation is bool or annotation == (bool | None):
        return click.Option([f"{flag}/--no-{name.replace('_', '-')}", name], default=None, help=help_text)
    if typing.get_origin(annotation) is typing.Literal:
        return click.Option(
            [flag, name], type=click.Choice([str(v) for v in typing.get_args(annotation)]), help=help_text
        )
    if typing.get_origin(annotation) is list:
        return click.Option([flag, name], type=str, help=f"Comma-separated. {help_text}")
    if typing.get_origin(annotation) is dict:
        return click.Option([flag, name], type=str, help=f"JSON object. {help_text}")
    kind = {int: int, float: float}.get(annotation, str)
    return click.Option([flag, name], type=kind, help=help_text)


def _given_values(model: Any, values: dict[str, Any]) -> dict[str, Any]:
    import typing

    given = {}
    for name, value in values.items():
        if value is None or name in ("task",):
            continue
        annotation = model.model_fields[name].annotation
        if typing.get_origin(annotation) is list:
            value = [item.strip() for item in value.split(",") if item.strip()]
        elif typing.get_origin(annotation) is dict:
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise UserError(f"--{name.replace('_', '-')}: not a JSON object ({exc})") from exc
        given[name] = value
    try:
        model(**given)  # validate here: a bad value is one line before any run starts
    except ValueError as exc:
        details = [line.strip() for line in str(exc).splitlines()[1:3]]
        raise UserError(f"invalid training config: {' '.join(details)}") from exc
    return given


def _training_command(name: str, model: Any, asset: str, job: str, tasks: list[str] | None) -> click.Command:
    def callback(**values: Any) -> None:
        import dagster as dg

        from llm_assets.definitions import defs
        from llm_assets.defs.launch import execute
        from llm_assets.instance import ensure_dagster_home

        task = values.get("task")
        given = _given_values(model, values)
        ensure_dagster_home()
        with dg.DagsterInstance.get() as instance:
            click.echo(
                f"{job}: {asset}{f' [{task}]' if task else ''} with {json.dumps(given) if given else 'defaults'}"
            )
            run = execute(defs, instance, job, task, ops_config={asset: given})
        _print_runs([run])
        if not run.success:
            raise SystemExit(1)

    params: list[click.Parameter] = []
    if tasks is not None:
        params.append(click.Option(["--task"], type=click.Choice(tasks), required=True, help="Which task's adapter."))
    params += [_option_for(field_name, field) for field_name, field in model.model_fields.items()]
    doc = (model.__doc__ or "").strip().splitlines()
    return click.Command(name, callback=one_line_errors(callback), params=params, help=doc[0] if doc else None)


class _TrainGroup(click.Group):
    """Built on first use, so `llm-assets --help` does not import the training stack."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return ["cpt", "sft"]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        from llm_assets.defs.jobs import CPT_JOB, LORA_JOB
        from llm_assets.defs.training.adaptation import CptAssetConfig, LoraAdapterConfig
        from llm_assets.defs.training.assets import SFT_TASKS

        if cmd_name == "cpt":
            return _training_command("cpt", CptAssetConfig, "cpt_model", CPT_JOB, None)
        if cmd_name == "sft":
            return _training_command("sft", LoraAdapterConfig, "lora_adapter", LORA_JOB, SFT_TASKS.get_partition_keys())
        return None


@main.group(cls=_TrainGroup)
def train() -> None:
    """Train as the assets do: `train cpt` (continued pre-training), `train sft --task T` (LoRA adapter).

    Options are the assets' own config fields; only those given override the defaults. Runs are recorded
    in the instance like any other materialisation, on the compute backend set in the environment.
    """


@main.group()
def audit() -> None:
    """Inspect and verify the hash-chained audit trail in the lake."""


@audit.command("verify")
@one_line_errors
def audit_verify() -> None:
    """Exit 0 if the audit log is intact; otherwise name the first bad record and exit 1."""
    from llm_assets.audit import AuditLog

    storage = _lake_storage()
    result = AuditLog(storage).verify()
    if result.ok:
        click.echo(f"audit log intact: {result.records} records ({storage.uri('audit/')})")
        return
    click.echo(f"audit log BROKEN: {result.reason}", err=True)
    raise SystemExit(1)


@audit.command("show")
@click.option("--tail", default=20, show_default=True, help="How many of the newest records to show.")
@one_line_errors
def audit_show(tail: int) -> None:
    """Print the newest audit records (one JSON object per line)."""
    import json

    from llm_assets.audit import AuditLog

    for record in AuditLog(_lake_storage()).records()[-tail:]:
        click.echo(json.dumps(record, ensure_ascii=False, sort_keys=True))


@main.group()
def review() -> None:
    """Review the pilot eval set by hand; the labels go to the lake and gate `eval_qa_validated`."""


@review.command("serve")
@click.option("--port", default=8765, show_default=True, help="Port on 127.0.0.1 for the review page.")
@one_line_errors
def review_serve(port: int) -> None:
    """Serve the review page on 127.0.0.1 until Ctrl-C."""
    from llm_assets.evaluation.review_server import make_server

    try:
        server = make_server(_lake_storage(), port=port, verbose=True)
    except OSError as exc:
        raise UserError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); pass another --port") from exc
    click.echo(f"Review page: {server.url}  (Ctrl-C to stop)")
    with server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            click.echo("stopped")


@review.command("status")
@click.option(
    "--min-acceptance", default=0.9, show_default=True, type=click.FloatRange(0, 1), help="Threshold per criterion."
)
@one_line_errors
def review_status(min_acceptance: float) -> None:
    """Print the acceptance rate per criterion and the label counts of the current pilot set."""
    from llm_assets.evaluation.review import ReviewStore, acceptance, rates_table, status_line

    store = ReviewStore(_lake_storage())
    labels = store.labels()
    result = acceptance(labels)
    click.echo(f"pilot {store.version[:16]}: {len(store.items)} items, {result.items_reviewed} reviewed")
    click.echo(f"status: {status_line(result, min_acceptance)}")
    if not result.labels:
        return
    for reviewer in result.reviewers:
        click.echo(f"  {reviewer:<20} {sum(label.reviewer == reviewer for label in labels)} labels")
    for line in rates_table(result.rates, result.accepted, result.labels):
        click.echo(f"  {line}")
    click.echo(f"  all four  {result.all_criteria_rate:6.1%}  ({result.all_criteria}/{result.labels})")


@main.group()
def registry() -> None:
    """The model registry: approve, deploy, roll back and retire model versions, and see what served when.

    Every act is appended to registry/<model>/events.jsonl in the lake and to the audit trail.
    """


def _model_registry() -> Any:
    from llm_assets.registry import ModelRegistry

    return ModelRegistry(_lake_storage())


def _acted(entry: Any, what: str) -> None:
    click.echo(f"{entry.model} {entry.version}: {what}; status {entry.status}")


@registry.command("list")
@one_line_errors
def registry_list() -> None:
    """One line per model: how many versions, and which version serves where."""
    store = _model_registry()
    models = store.models()
    if not models:
        click.echo("no models registered")
        return
    click.echo(f"{'model':<24} {'versions':>8}  serving")
    for model in models:
        serving = store.deployed(model)
        where = f"{serving.version} at {serving.deployment['endpoint']}" if serving and serving.deployment else "-"
        if serving is not None and serving.health is not None:
            where += f" (health {'passed' if serving.health['passed'] else 'FAILED'} {serving.health['at']})"
        click.echo(f"{model:<24} {len(store.entries(model)):>8}  {where}")


@registry.command("show")
@click.argument("model")
@click.argument("version", required=False)
@one_line_errors
def registry_show(model: str, version: str | None) -> None:
    """The versions of MODEL, or one VERSION in full (metrics, gates, lineage, approval) as JSON."""
    store = _model_registry()
    if version is not None:
        click.echo(json.dumps(store.entry(model, version).to_dict(), indent=2, ensure_ascii=False, sort_keys=True))
        return
    entries = store.entries(model)
    if not entries:
        raise UserError(f"model {model} is not registered; see `llm-assets registry list`")
    width = max(len("version"), *(len(entry.version) for entry in entries))
    click.echo(f"{'version':<{width}} {'status':<10} {'registered':<28} {'approved by':<16} failed blocking gates")
    for entry in entries:
        approver = entry.approval["by"] if entry.approval else "-"
        failed = ", ".join(entry.failed_blocking_gates) or "-"
        click.echo(f"{entry.version:<{width}} {entry.status:<10} {entry.registered_at:<28} {approver:<16} {failed}")


@registry.command("approve")
@click.argument("model")
@click.argument("version")
@click.option("--by", required=True, help="Who approves (recorded).")
@click.option("--reason", required=True, help="Why (recorded).")
@one_line_errors
def registry_approve(model: str, version: str, by: str, reason: str) -> None:
    """Approve VERSION of MODEL; refused unless every blocking gate passed."""
    _acted(_model_registry().approve(model, version, by=by, reason=reason), f"approved by {by}")


@registry.command("deploy")
@click.argument("model")
@click.argument("version")
@click.option("--by", required=True, help="Who deploys (recorded).")
@click.option("--endpoint", required=True, help="Where it serves, e.g. the endpoint URL.")
@click.option("--reason", default="", help="Why (recorded).")
@one_line_errors
def registry_deploy(model: str, version: str, by: str, endpoint: str, reason: str) -> None:
    """Serve an approved VERSION of MODEL at --endpoint; the version serving before is replaced."""
    _acted(_model_registry().deploy(model, version, by=by, endpoint=endpoint, reason=reason), f"serving at {endpoint}")


@registry.command("rollback")
@click.argument("model")
@click.option("--by", required=True, help="Who rolls back (recorded).")
@click.option("--reason", required=True, help="Why (recorded).")
@one_line_errors
def registry_rollback(model: str, by: str, reason: str) -> None:
    """Serve again the version of MODEL that served before the current one."""
    entry = _model_registry().rollback(model, by=by, reason=reason)
    _acted(entry, f"rolled back to, serving again at {entry.deployment['endpoint'] if entry.deployment else '-'}")


@registry.command("retire")
@click.argument("model")
@click.argument("version")
@click.option("--by", required=True, help="Who retires it (recorded).")
@click.option("--reason", required=True, help="Why (recorded).")
@one_line_errors
def registry_retire(model: str, version: str, by: str, reason: str) -> None:
    """Retire VERSION of MODEL for good; if it serves, it stops serving."""
    _acted(_model_registry().retire(model, version, by=by, reason=reason), f"retired by {by}")


@registry.command("history")
@click.argument("model")
@one_line_errors
def registry_history(model: str) -> None:
    """Which version of MODEL served when, approved by whom; then every registry event."""
    store = _model_registry()
    events = store.history(model)
    if not events:
        raise UserError(f"model {model} is not registered; see `llm-assets registry list`")
    width = max(len("version"), *(len(event["version"]) for event in events))
    click.echo("Serving periods:")
    click.echo(f"  {'version':<{width}} {'from':<28} {'to':<28} {'via':<9} {'approved by':<16} endpoint")
    for period in store.serving_periods(model):
        click.echo(
            f"  {period['version']:<{width}} {period['from']:<28} {period['to'] or 'now':<28} {period['action']:<9} "
            f"{period['approved_by'] or '-':<16} {period['endpoint']}"
        )
    click.echo("Events:")
    click.echo(f"  {'seq':>4} {'at':<28} {'event':<9} {'version':<{width}} {'by':<16} reason")
    for event in events:
        click.echo(
            f"  {event['seq']:>4} {event['ts']:<28} {event['event']:<9} {event['version']:<{width}} "
            f"{event['actor']:<16} {event['reason'] or '-'}"
        )


if __name__ == "__main__":
    main()


@main.group()
def serve() -> None:
    """Serve approved models on vLLM behind the gateway (API key, 1 % PII-redacted sample), and manage it."""


@serve.command("start")
@click.option(
    "--model", "models", multiple=True, help="Registry model (task) to serve; repeat. Default: banking77_intents."
)
@click.option("--port", default=8000, show_default=True, help="Gateway port on 127.0.0.1.")
@click.option(
    "--merge",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="Serve one adapter merged into its base (auto), always, or never (multi-LoRA).",
)
@click.option("--name", default="llm-assets", show_default=True, help="Endpoint name.")
@one_line_errors
def serve_start(models: tuple[str, ...], port: int, merge: str, name: str) -> None:
    """Start the approved versions of MODELs on 127.0.0.1 (a `deployed_endpoint` run), wait for health, print the URL.

    Clients send `Authorization: Bearer $LLM_ASSETS_SERVE_API_KEY` (set it first; comma-separate keys to rotate).
    """
    import dagster as dg

    from llm_assets.definitions import defs
    from llm_assets.defs.launch import execute
    from llm_assets.instance import ensure_dagster_home
    from llm_assets.serving.supervisor import API_KEY_ENV, public_keys, read_state

    if not public_keys():
        raise UserError(f"set {API_KEY_ENV} to the key clients must send, then run this again")
    ensure_dagster_home()
    config = {"models": list(models) or ["banking77_intents"], "port": port, "merge": merge, "name": name}
    click.echo(f"starting vLLM for {', '.join(config['models'])} (model load takes a few minutes) ...")
    with dg.DagsterInstance.get() as instance:
        run = execute(defs, instance, "serving_deploy", None, ops_config={"deployed_endpoint": config})
    if not run.success:
        raise UserError(run.error or "the deployed_endpoint run failed; see the Dagster UI")
    state = read_state(name) or {}
    click.echo(f"serving {', '.join(state.get('models', []))} at {state.get('url')}")


@serve.command("stop")
@click.option("--name", default="llm-assets", show_default=True, help="Endpoint name.")
@one_line_errors
def serve_stop(name: str) -> None:
    """Stop a local endpoint (gateway and vLLM replicas)."""
    from llm_assets.serving.supervisor import stop_endpoint

    click.echo(f"stopped endpoint '{name}'" if stop_endpoint(name) else f"endpoint '{name}' was not running")


@serve.command("status")
@click.option("--name", default="llm-assets", show_default=True, help="Endpoint name.")
@one_line_errors
def serve_status(name: str) -> None:
    """The local endpoint's state: URL, models, replicas (pid, port, restarts) and health."""
    from llm_assets.serving.supervisor import read_state
    from llm_assets.serving.vllm_server import pid_alive

    state = read_state(name)
    if state is None:
        raise UserError(f"no endpoint '{name}' was started here; start one with `llm-assets serve start`")
    alive = bool(state.get("supervisor_pid")) and pid_alive(int(state["supervisor_pid"]))
    status = state.get("status") if alive or state.get("status") == "stopped" else "dead (supervisor not running)"
    click.echo(f"{name}: {status}  {state.get('url')}  models: {', '.join(state.get('models', []))}")
    for replica in state.get("replicas", []):
        click.echo(
            f"  replica pid {replica['pid']} {replica['url']} serves {replica['served_model_name']}"
            f"{' + ' + ', '.join(replica['lora_modules']) if replica['lora_modules'] else ''}; "
            f"restarts {replica['restarts']}"
        )


@main.command()
@click.option(
    "--url",
    required=True,
    help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (loopback, or a host listed with --allow-host).",
)
@click.option("--model", "models", multiple=True, required=True, help="Served model name; repeat for each adapter.")
@click.option("--profile", type=click.Choice(["constant", "step", "spike"]), default="constant", show_default=True)
@click.option("--requests", "requests_", default=64, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 1024))
@click.option("--max-tokens", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--max-duration", default=300.0, show_default=True, help="Hard bound on the whole test (seconds).")
@click.option("--level-duration", type=float, help="Soak: keep each load level for this many seconds.")
@click.option("--p99", "p99_s", default=5.0, show_default=True, help="SLO: p99 end-to-end latency (seconds).")
@click.option("--max-error-rate", default=0.01, show_default=True, help="SLO: largest error rate.")
@click.option(
    "--api-key-env",
    default="LLM_ASSETS_SERVE_API_KEY",
    show_default=True,
    help="NAME of the environment variable holding the key.",
)
@click.option("--allow-host", "allowed", multiple=True, help="A non-loopback host that may be load-tested.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON report here.")
@one_line_errors
def loadtest(
    url: str,
    models: tuple[str, ...],
    profile: str,
    requests_: int,
    concurrency: int,
    max_tokens: int,
    max_duration: float,
    level_duration: float | None,
    p99_s: float,
    max_error_rate: float,
    api_key_env: str,
    allowed: tuple[str, ...],
    out: Path | None,
) -> None:
    """Load-test an endpoint: TTFT, ITL, latency p50/p90/p99, throughput, errors and goodput per model vs the SLO.

    Exits 1 when the SLO is not met (the production health check), 2 on a usage error.
    """
    from llm_assets.serving.loadtest import LoadTestError, Slo, run_loadtest

    slo = Slo(p99_latency_s=p99_s, max_error_rate=max_error_rate)
    try:
        report = run_loadtest(
            url,
            list(models),
            profile=profile,
            requests=requests_,
            concurrency=concurrency,
            max_tokens=max_tokens,
            api_key=os.environ.get(api_key_env) or None,
            slo=slo,
            max_duration_s=max_duration,
            level_duration_s=level_duration,
            allowed_hosts=allowed,
            log=click.echo,
        )
    except LoadTestError as exc:
        raise UserError(str(exc)) from exc
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, sort_keys=True))
    for model, f in report["per_model"].items():
        p = f["e2e_s"]
        click.echo(
            f"{model}: {f['requests']} requests, e2e p50/p90/p99 {_s(p['p50'])}/{_s(p['p90'])}/{_s(p['p99'])} s, "
            f"{f['output_tokens_per_s']:.1f} tok/s, errors {f['error_rate']:.1%}, goodput {f['goodput_rps']:.2f} req/s"
        )
    health = report["health"]
    click.echo("health: " + ("passed" if health["passed"] else "FAILED: " + "; ".join(health["reasons"])))
    if not health["passed"]:
        raise SystemExit(1)


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f}"


# Compliance commands live with their module; they only read the lake (a read-only user can run them).
from llm_assets.compliance.erasure_cli import erasure_impact_command  # noqa: E402
from llm_assets.compliance.lineage_cli import lineage  # noqa: E402
from llm_assets.compliance.tco_cli import tco  # noqa: E402

main.add_command(lineage)
main.add_command(tco)
main.add_command(erasure_impact_command)
