"""The bundled sample corpus must ingest cleanly: it is the demo every new team runs first."""

import json
from collections import Counter

import pytest

from llm_assets.ingestion import DESCRIPTOR_FILENAME, iter_source_files, parse_descriptor, summarize
from llm_assets.paths import sample_corpus_dir

EXPECTED_RECORDS = {"banking77": 4000, "greek_laws": 5, "udhr": 24, "uscis_civics": 100}


def _read_source(name: str):
    folder = sample_corpus_dir() / name
    descriptor = parse_descriptor((folder / DESCRIPTOR_FILENAME).read_bytes(), str(folder / DESCRIPTOR_FILENAME))
    files = [
        (path.relative_to(folder).as_posix(), path.read_bytes, path.stat().st_size)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ]
    return descriptor, list(iter_source_files(files, descriptor))


def test_corpus_has_exactly_the_expected_sources():
    folders = sorted(path.name for path in sample_corpus_dir().iterdir() if path.is_dir())
    assert folders == sorted(EXPECTED_RECORDS)


def test_corpus_stays_small_enough_to_ship_in_the_wheel():
    size = sum(path.stat().st_size for path in sample_corpus_dir().rglob("*") if path.is_file())
    assert size <= 4_000_000


@pytest.mark.parametrize("name", sorted(EXPECTED_RECORDS))
def test_source_ingests_without_rejects(name):
    descriptor, outcomes = _read_source(name)
    assert descriptor.name == name
    summary = summarize(outcomes)
    assert summary["rejected"] == 0, [reject["reason"] for o in outcomes for reject in o.rejects][:5]
    assert summary["kept"] == EXPECTED_RECORDS[name]
    ids = [record["id"] for outcome in outcomes for record in outcome.records]
    assert len(set(ids)) == len(ids)


def test_udhr_records_carry_their_own_language():
    _, outcomes = _read_source("udhr")
    languages = {
        json.loads(record["metadata"])["udhr_file"]: record["language_hint"]
        for outcome in outcomes
        for record in outcome.records
    }
    assert len(set(languages.values())) == 24
    assert languages["ell_monotonic.txt"] == "el"
    assert languages["bul.txt"] == "bg"


def test_banking77_covers_every_intent_in_both_splits():
    _, outcomes = _read_source("banking77")
    metadata = [json.loads(record["metadata"]) for outcome in outcomes for record in outcome.records]
    assert Counter(item["split"] for item in metadata) == {"train": 3000, "test": 1000}
    for split in ("train", "test"):
        assert len({item["category"] for item in metadata if item["split"] == split}) == 77


def test_uscis_records_keep_the_question_id():
    _, outcomes = _read_source("uscis_civics")
    first = outcomes[0].records[0]
    assert first["text"] == "Question: What is the supreme law of the land?\nAnswer: the Constitution"
    assert json.loads(first["metadata"])["source_record_id"] == "1"
