"""The production instance (deploy/dagster.yaml) against a real PostgreSQL: the landing sensor's tick starts two
concurrent corpus_pipeline runs through the queued run coordinator and the daemon, the daemon is killed with
SIGKILL mid-way and restarted, and nothing is lost from the event log; then curation assets materialise into
the same instance.

PostgreSQL must be reachable (DAGSTER_PG_HOST, default 127.0.0.1:5432, user postgres, trust or
DAGSTER_PG_PASSWORD); `make test` makes sure it is up. These tests fail, never skip, when it is not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import yaml
from dagster._core.scheduler.instigation import TickStatus

from llm_assets.defs.ingestion.sensors import landing_sensor
from llm_assets.paths import sample_corpus_dir

REPO = Path(__file__).resolve().parents[2]
WAITING = (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.QUEUED)
PG = {
    "DAGSTER_PG_HOST": os.environ.get("DAGSTER_PG_HOST", "127.0.0.1"),
    "DAGSTER_PG_PORT": os.environ.get("DAGSTER_PG_PORT", "5432"),
    "DAGSTER_PG_USER": os.environ.get("DAGSTER_PG_USER", "postgres"),
    "DAGSTER_PG_PASSWORD": os.environ.get("DAGSTER_PG_PASSWORD", ""),
}


def _connect(database: str = "postgres") -> psycopg2.extensions.connection:
    try:
        connection = psycopg2.connect(
            host=PG["DAGSTER_PG_HOST"],
            port=int(PG["DAGSTER_PG_PORT"]),
            user=PG["DAGSTER_PG_USER"],
            password=PG["DAGSTER_PG_PASSWORD"] or None,
            dbname=database,
            connect_timeout=5,
        )
    except psycopg2.OperationalError as exc:
        first = str(exc).strip().splitlines()[0]
        pytest.fail(f"PostgreSQL at {PG['DAGSTER_PG_HOST']}:{PG['DAGSTER_PG_PORT']} not reachable ({first}); "
                    "start it (scripts/ensure_postgres.sh) or set DAGSTER_PG_*")  # fmt: skip
    connection.autocommit = True
    return connection


@pytest.fixture()
def pg_database() -> Iterator[str]:
    """A fresh database per test, dropped afterwards."""
    name = f"llm_assets_{uuid.uuid4().hex[:10]}"
    admin = _connect()
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    admin.close()
    try:
        yield name
    finally:
        admin = _connect()
        cursor = admin.cursor()
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


def production_instance_yaml() -> dict:
    """deploy/dagster.yaml as shipped, with the K8s run launcher swapped for the local one (no cluster here):
    storage, run coordinator, concurrency limits and run monitoring are the production ones."""
    config = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text(encoding="utf-8"))
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    config["run_launcher"] = {"module": "dagster.core.launcher", "class": "DefaultRunLauncher"}
    return config


@pytest.fixture()
def production_home(tmp_path: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(production_instance_yaml()), encoding="utf-8")
    env = PG | {
        "DAGSTER_PG_DB": pg_database,
        "DAGSTER_HOME": str(home),
        "LLM_ASSETS_HOME": str(tmp_path / "project"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def _cli(env: dict[str, str], *args: str) -> None:
    cli = Path(sys.executable).with_name("llm-assets")
    done = subprocess.run([str(cli), *args], env=os.environ | env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def _start_daemon(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    daemon = Path(sys.executable).with_name("dagster-daemon")
    handle = log.open("ab")
    return subprocess.Popen(
        [str(daemon), "run", "-w", str(REPO / "workspace.yaml"), "--log-level", "info"],
        cwd=REPO,
        env=os.environ | env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait(what: str, condition, timeout_s: float, log: Path, state=None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1.0)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    now = f" ({state()})" if state is not None else ""
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}{now}; daemon log tail:\n{tail}")


def _events(instance: dg.DagsterInstance, run_id: str) -> list[tuple[int, dg.DagsterEventType | None]]:
    records = instance.get_records_for_run(run_id, limit=100_000).records
    return [(r.storage_id, r.event_log_entry.dagster_event_type) for r in records]


def test_sensor_tick_two_concurrent_runs_and_a_killed_daemon(production_home: dict[str, str], tmp_path: Path) -> None:
    env = production_home
    for source in ("udhr", "banking77"):
        _cli(env, "ingest", str(sample_corpus_dir() / source), "--stage-only")
    log = tmp_path / "daemon.log"
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        daemon = _start_daemon(env, log)
        killed: subprocess.Popen[bytes] | None = None
        try:
            # The landing sensor (on by default) ticks, registers both sources and requests a run for each.
            _wait(
                "two landing-sensor runs",
                lambda: len(instance.get_runs(dg.RunsFilter(tags={"llm_assets/trigger": "landing_sensor"}))) == 2,
                240,
                log,
            )
            runs = instance.get_runs(dg.RunsFilter(tags={"llm_assets/trigger": "landing_sensor"}))
            assert {r.tags["dagster/partition"] for r in runs} == {"udhr", "banking77"}
            # Both are dequeued and start side by side (max_concurrent_runs 8 in deploy/dagster.yaml). Wait for
            # their run workers (STARTED), not just the launch (STARTING): a run killed mid-launch is the run
            # monitor's case, reclaimed only after start_timeout_seconds.
            _wait(
                "both runs started",
                lambda: all(
                    instance.get_run_by_id(r.run_id).status == dg.DagsterRunStatus.STARTED
                    or instance.get_run_by_id(r.run_id).is_finished
                    for r in runs
                ),
                240,
                log,
            )
            started = [instance.get_run_by_id(r.run_id) for r in runs]
            assert all(r.status not in WAITING for r in started)
            before = {r.run_id: _events(instance, r.run_id) for r in runs}
            # SIGKILL: no shutdown hook runs, the daemon's heartbeats stop mid-way.
            os.kill(daemon.pid, signal.SIGKILL)
            daemon.wait(30)
            killed, daemon = daemon, _start_daemon(env, log)
            _wait(
                "both runs finished",
                lambda: all(instance.get_run_by_id(r.run_id).is_finished for r in runs),
                480,
                log,
                lambda: {
                    r.tags["dagster/partition"]: (
                        instance.get_run_by_id(r.run_id).status.value,
                        [kind for _, kind in _events(instance, r.run_id)][-4:],
                    )
                    for r in runs
                },
            )
        finally:
            # The killed daemon's code server and run workers live on in its process group: end them too.
            for group in [daemon] + ([killed] if killed is not None else []):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group.pid, signal.SIGKILL)
            daemon.wait(30)
        for run in runs:
            final = instance.get_run_by_id(run.run_id)
            assert final.status == dg.DagsterRunStatus.SUCCESS, (run.tags, log.read_text()[-3000:])
            after = _events(instance, run.run_id)
            # Nothing recorded before the kill is lost, and the run's record is complete.
            assert before[run.run_id] == after[: len(before[run.run_id])]
            kinds = [kind for _, kind in after]
            assert kinds.count(dg.DagsterEventType.RUN_SUCCESS) == 1 and dg.DagsterEventType.RUN_START in kinds
            # raw_corpus, normalized_shards, pii_scrubbed_shards
            assert kinds.count(dg.DagsterEventType.ASSET_MATERIALIZATION) == 3
        # The sensor's ticks are in the Postgres schedule storage too.
        ticks = [
            tick
            for state in instance.all_instigator_state()
            if state.name == landing_sensor.name
            for tick in instance.get_ticks(state.instigator_origin_id, state.selector_id)
        ]
        assert any(tick.status == TickStatus.SUCCESS and tick.run_ids for tick in ticks)


def test_curation_assets_materialize_into_the_postgres_instance(production_home: dict[str, str]) -> None:
    """Global curation (dedup -> quality -> perplexity -> curated corpus) with its blocking checks, in process,
    recorded in Postgres: materialisations, check evaluations and data versions are queryable afterwards."""
    from llm_assets.definitions import build_definitions
    from llm_assets.defs.launch import execute, register_landed_sources
    from llm_assets.lake import LocalLakeStorage
    from llm_assets.paths import local_lake_root

    env = production_home
    for source in ("udhr", "banking77"):
        _cli(env, "ingest", str(sample_corpus_dir() / source), "--stage-only")
    storage = LocalLakeStorage(local_lake_root())
    defs = build_definitions()  # the lake resource is resolved from the environment set above
    with dg.DagsterInstance.get() as instance:
        valid, problems = register_landed_sources(instance, storage)
        assert sorted(valid) == ["banking77", "udhr"] and not problems
        for source in valid:
            assert execute(defs, instance, "corpus_pipeline", source).success
        curated = (
            dg.AssetSelection.assets("curated_corpus").upstream()
            - dg.AssetSelection.assets("pii_scrubbed_shards").upstream()
        )
        job = defs.resolve_implicit_global_asset_job_def().get_subset(
            asset_selection=curated.resolve(defs.resolve_asset_graph())
        )
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        assert result.success, [e.message for e in result.all_events if e.is_failure][:3]
        record = instance.get_latest_materialization_event(dg.AssetKey("curated_corpus"))
        assert record is not None and record.run_id == result.run_id
        checks = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("curated_corpus"), "schema_contract"), limit=5
        )
        assert checks and checks[0].run_id == result.run_id
