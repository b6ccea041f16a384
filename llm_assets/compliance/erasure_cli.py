"""`llm-assets erasure-impact`: where a document (or a person's PII hash) reached, and its exclusion.

Without `--exclude` it only reads the lake. `--exclude` adds the documents to the exclusion list, appends an
`erasure_request` record to the audit trail and prints the rebuild; `--rebuild` also runs it at once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import click

from llm_assets.compliance.erasure import ErasureError, erasure_impact, summary, to_json, to_markdown
from llm_assets.lake import LakeStorage

RENDERERS = {"json": to_json, "md": to_markdown}


def _configured_lake() -> LakeStorage:
    from llm_assets.definitions import lake_resource_from_env

    return lake_resource_from_env().storage()


def _one_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)


@click.command("erasure-impact")
@click.option("--doc-id", help="Record id of the document (the `id` column of raw_corpus and later datasets).")
@click.option("--person-hash", help="A salted value hash from pii_hits; every document that held it is traced.")
@click.option("--format", "fmt", type=click.Choice(sorted(RENDERERS)), default="md", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the report to this local file.")
@click.option("--exclude", is_flag=True, help="Add the documents to the exclusion list and audit the request.")
@click.option("--with-duplicates", is_flag=True, help="With --exclude: also exclude dedup duplicates of them.")
@click.option("--reason", help="Why (e.g. the request reference); required with --exclude.")
@click.option("--by", "by", help="Who asked for it; required with --exclude.")
@click.option(
    "--rebuild",
    is_flag=True,
    help="With --exclude: rebuild the data now (the affected sources' pipeline, then the curation assets); "
    "model stages are printed as steps: they retrain on GPUs and need a new approval.",
)
def erasure_impact_command(
    doc_id: str | None,
    person_hash: str | None,
    fmt: str,
    out: Path | None,
    exclude: bool,
    with_duplicates: bool,
    reason: str | None,
    by: str | None,
    rebuild: bool,
) -> None:
    """Every asset version, dedup cluster, SFT set, adapter, deployment and eval report a document reached.

    Give exactly one of --doc-id or --person-hash. The report names ids and versions, never the text.
    """
    from llm_assets.audit import AuditLog
    from llm_assets.compliance.exclusions import EXCLUSIONS_KEY, add_exclusion
    from llm_assets.lake import LakeError
    from llm_assets.registry import RegistryError

    if (doc_id is None) == (person_hash is None):
        raise click.UsageError("give exactly one of --doc-id or --person-hash")
    if exclude and not (reason and by):
        raise click.UsageError("--exclude needs --reason and --by")
    if (rebuild or with_duplicates) and not exclude:
        raise click.UsageError("--rebuild and --with-duplicates only go with --exclude")
    try:
        storage = _configured_lake()
        doc = erasure_impact(storage, doc_id=doc_id, person_hash=person_hash)
    except (ErasureError, LakeError, RegistryError, ValueError) as exc:
        raise click.ClickException(_one_line(exc)) from exc
    text = RENDERERS[fmt](doc)
    if out is None:
        click.echo(text, nl=not text.endswith("\n"))
    else:
        out.write_text(text, encoding="utf-8")
        click.echo(f"wrote {out} ({fmt}): " + ", ".join(f"{k} {v}" for k, v in summary(doc).items()), err=True)
    if not exclude:
        return
    assert reason is not None and by is not None
    targets = sorted(set(doc["documents"]) | (set(doc["content_also_in"]) if with_duplicates else set()))
    added = [d for d in targets if add_exclusion(storage, d, reason, by)[1]]
    record = AuditLog(storage).append(
        {
            "event": "erasure_request",
            "who": {"user": by},
            "reason": reason,
            "query": doc["query"],
            "excluded": targets,
            "newly_excluded": added,
            "exclusions_key": EXCLUSIONS_KEY,
            "impact": summary(doc),
            "impact_sha256": hashlib.sha256(to_json(doc).encode()).hexdigest(),
            "rebuild": doc["rebuild"],
        }
    )
    click.echo(f"excluded {len(targets)} document(s) ({len(added)} new); audit record seq {record['seq']}", err=True)
    if doc["content_also_in"] and not with_duplicates:
        click.echo(f"not excluded, same content: {', '.join(doc['content_also_in'])} (--with-duplicates)", err=True)
    click.echo("rebuild:", err=True)
    for step in doc["rebuild"]["steps"]:
        click.echo(f"  {step}", err=True)
    if rebuild:
        from llm_assets.cli import _print_runs, _run_pipeline

        runs = _run_pipeline(doc["rebuild"]["sources"], data_only=True)
        _print_runs(runs)
        if not all(run.success for run in runs):
            raise SystemExit(1)
        click.echo(
            "data assets rebuilt without the document(s); the model stages (corpus_curation's tokenizer, base and "
            "continued-pretraining models, then the steps after it) retrain when you run those steps",
            err=True,
        )
