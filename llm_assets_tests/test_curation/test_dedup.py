"""Dedup: exact, near and paragraph decisions, traceability (clusters, reasons), determinism, incremental."""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import unicodedata
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_assets.curation.dedup import (
    CLUSTER_SCHEMA,
    DedupConfig,
    DedupIndex,
    DedupPlan,
    apply_plan,
    compute_signatures,
    exact_keys,
    normalize,
    optimal_bands,
    paragraph_hash,
)
from llm_assets.curation.stage import StageOutput
from llm_assets.schemas import RECORD_SCHEMA, REJECT_SCHEMA

VOCAB = [f"{a}{b}{c}" for a in "bcdfgklmnprst" for b in "aeiou" for c in "bcdfgklmnprstvz"]


def records(items: Sequence[tuple[str, str]], source: str = "src") -> pa.Table:
    n = len(items)
    return pa.table(
        {
            "id": [i for i, _ in items],
            "text": [t for _, t in items],
            "source": [source] * n,
            "source_uri": [None] * n,
            "file": [f"{source}/part.jsonl"] * n,
            "locator": [f"{source}:{i}" for i, _ in items],
            "licence": ["CC-BY-4.0"] * n,
            "jurisdiction": ["GR"] * n,
            "language_hint": ["en"] * n,
            "metadata": ["{}"] * n,
        },
        schema=RECORD_SCHEMA,
    )


def random_doc(rng: random.Random, words: int = 200) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(words))


def edit_words(text: str, count: int, rng: random.Random) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), count):
        words[i] = f"edit{rng.randrange(10**9)}"
    return " ".join(words)


def shingle_set(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = normalize([text])[0].split(" ")
    return {tuple(words[i : i + n]) for i in range(max(len(words) - n + 1, 1))}


def jaccard(a: str, b: str) -> float:
    x, y = shingle_set(a), shingle_set(b)
    return len(x & y) / len(x | y)


def run(
    batches: Sequence[tuple[str, pa.Table]],
    config: DedupConfig,
    *,
    workers: int = 1,
    verify: bool = False,
    **resolve: bool,
) -> tuple[DedupPlan, list[StageOutput]]:
    with DedupIndex(config, workers=workers) as index:
        for partition, table in batches:
            index.add_batch(table, partition=partition)
        if verify and index.verification_ids():
            for _, table in batches:
                index.add_shingle_sets(table)
        plan = index.resolve(**resolve)
    return plan, [apply_plan(table, plan) for _, table in batches]


def ipc(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def canonical(plan: DedupPlan, outputs: Sequence[StageOutput]) -> tuple[bytes, bytes, bytes]:
    """Outputs as bytes, independent of which shard a row came from (sorted by id)."""
    kept = pa.concat_tables([o.kept for o in outputs]).sort_by("id")
    rejects = pa.concat_tables([o.rejects for o in outputs]).sort_by("record_id")
    return ipc(kept), ipc(rejects), ipc(plan.clusters)


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, str]]:
    """40 unrelated docs plus exact copies, near copies and a far edit, with known relationships."""
    rng = random.Random(7)
    base = [(f"doc{i:03d}", random_doc(rng, 300 + i)) for i in range(40)]
    extra = [
        ("copy-exact", "  " + base[0][1].upper().replace(" ", "  ") + " ..."),
        ("copy-near", edit_words(base[1][1], 2, rng)),
        ("copy-near-2", edit_words(base[1][1], 3, rng)),
        ("copy-far", edit_words(base[2][1], 80, rng)),
    ]
    return base + extra


# ---------------------------------------------------------------------------------------------------------------


def test_normalisation_and_exact_key_are_explainable() -> None:
    text = "Hello,  WORLD!\n\n«Καλημέρα» — σας…\t3.14"
    assert normalize([text]) == ["hello world καλημέρα σας 3 14"]
    assert exact_keys([text])[0] == hashlib.sha256(normalize([text])[0].encode()).digest()
    assert normalize(["", "  ...  ", "a"]) == ["", "", "a"]


def test_config_derives_bands_and_rejects_inconsistent_ones() -> None:
    config = DedupConfig()
    assert config.bands is not None and config.rows is not None
    assert config.bands * config.rows == config.num_perm
    assert (config.bands, config.rows) == (16, 8)
    assert optimal_bands(0.8, 128) == (8, 16)  # equal weights, datasketch's default objective
    with pytest.raises(ValueError, match="must equal num_perm"):
        DedupConfig(bands=10, rows=10)
    with pytest.raises(ValueError):
        DedupConfig(keep_rule="newest")  # type: ignore[arg-type]


def test_exact_duplicates_rejected_with_kept_id(corpus: list[tuple[str, str]]) -> None:
    table = records(corpus)
    plan, [out] = run([("p", table)], DedupConfig(near=False, keep_rule="first_id"))
    assert plan.drop_ids == {"doc000": ("exact", "copy-exact", 1.0)}
    assert out.kept.num_rows + out.rejects.num_rows == table.num_rows
    assert out.kept.schema == table.schema
    assert out.rejects.schema == REJECT_SCHEMA
    reject = out.rejects.to_pylist()[0]
    assert reject["stage"] == "dedup" and reject["rule"] == "exact_duplicate"
    assert "copy-exact" in reject["reason"] and reject["locator"] == "src:doc000"


def test_near_duplicates_found_and_far_edit_kept(corpus: list[tuple[str, str]]) -> None:
    config = DedupConfig(keep_rule="first_id")
    plan, [out] = run([("p", records(corpus))], config)
    assert jaccard(corpus[1][1], dict(corpus)["copy-near"]) >= 0.9
    assert jaccard(corpus[2][1], dict(corpus)["copy-far"]) < 0.3
    assert plan.drop_ids["doc001"][:2] == ("near", "copy-near")
    assert plan.drop_ids["copy-near-2"][:2] == ("near", "copy-near")
    assert "copy-far" not in plan.drop_ids and "doc002" not in plan.drop_ids
    rejects = {r["record_id"]: r for r in out.rejects.to_pylist()}
    near = rejects["doc001"]
    assert near["rule"] == "near_duplicate" and "copy-near" in near["reason"]
    assert near["score"] >= config.threshold and near["threshold"] == config.threshold


def test_clusters_list_every_member_with_kept_id_and_rule(corpus: list[tuple[str, str]]) -> None:
    plan, _ = run([("a", records(corpus[:20])), ("b", records(corpus[20:]))], DedupConfig(keep_rule="first_id"))
    clusters = plan.clusters
    assert clusters.schema == CLUSTER_SCHEMA
    rows = clusters.to_pylist()
    by_kept: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_kept.setdefault(str(row["kept_id"]), []).append(row)
    assert set(by_kept) == {"copy-exact", "copy-near"}
    near = by_kept["copy-near"]
    assert [(r["member_id"], r["rule"]) for r in near] == [
        ("copy-near", "kept"),
        ("copy-near-2", "near"),
        ("doc001", "near"),
    ]
    assert {r["partition"] for r in near} == {"a", "b"}
    assert len({r["cluster_id"] for r in near}) == 1
    # Every dropped doc appears once, naming the kept doc the plan names.
    members = {r["member_id"]: r for r in rows if r["rule"] != "kept"}
    assert set(members) == set(plan.drop_ids)
    for member, (rule, kept, sim) in plan.drop_ids.items():
        assert (members[member]["rule"], members[member]["kept_id"], members[member]["similarity"]) == (rule, kept, sim)


@pytest.mark.parametrize(
    ("rule", "expected_kept"),
    [("longest", "long"), ("oldest", "old"), ("first_id", "a-first"), ("highest_quality", "best")],
)
def test_keep_rules(rule: str, expected_kept: str) -> None:
    rng = random.Random(3)
    text = random_doc(rng, 120)
    items = [
        ("a-first", text),
        ("best", text + "."),
        ("long", text + " !!!  ...   "),
        ("old", "  " + text),
    ]
    table = records(items)
    config = DedupConfig(keep_rule=rule)  # type: ignore[arg-type]
    index = DedupIndex(config)
    index.add_batch(
        table,
        partition="2024-06-01",
        quality=pa.array([0.1, 0.9, 0.5, 0.3]),
        timestamp=pa.array([3, 4, 2, 1], pa.timestamp("s")),
    )
    plan = index.resolve()
    assert {kept for _, kept, _ in plan.drop_ids.values()} == {expected_kept}
    assert set(plan.drop_ids) == {i for i, _ in items} - {expected_kept}


def test_ties_end_with_smallest_id_and_oldest_falls_back_to_partition() -> None:
    text = random_doc(random.Random(5), 80)
    index = DedupIndex(DedupConfig(keep_rule="oldest"))
    index.add_batch(records([("z", text)]), partition="2024-01-01")
    index.add_batch(records([("b", text), ("a", text)]), partition="2024-02-01")
    assert index.resolve().drop_ids == {"a": ("exact", "z", 1.0), "b": ("exact", "z", 1.0)}
    longest = DedupIndex(DedupConfig(keep_rule="longest"))
    longest.add_batch(records([("y", text), ("x", text)]), partition="p")
    assert longest.resolve().drop_ids == {"y": ("exact", "x", 1.0)}


def test_highest_quality_needs_quality() -> None:
    index = DedupIndex(DedupConfig(keep_rule="highest_quality"))
    with pytest.raises(ValueError, match="needs quality"):
        index.add_batch(records([("a", "x")]), partition="p")


def test_deterministic_under_partition_order_and_batch_size(corpus: list[tuple[str, str]]) -> None:
    config = DedupConfig(keep_rule="longest")
    partitions = [(f"2024-0{k + 1}", corpus[k::3]) for k in range(3)]
    in_order = [(name, records(items)) for name, items in partitions]
    reversed_order = in_order[::-1]
    small_batches = [
        (name, records(items[i : i + 4])) for name, items in partitions[::-1] for i in range(0, len(items), 4)
    ]
    results = {canonical(*run(layout, config)) for layout in (in_order, reversed_order, small_batches)}
    assert len(results) == 1
    # Other partitioning altogether: the same decisions, only the partition column differs.
    shuffled = corpus[:]
    random.Random(11).shuffle(shuffled)
    other = [(f"p{i}", records(shuffled[i : i + 3])) for i in range(0, len(shuffled), 3)]
    (kept, rejects, _), (plan, outputs) = results.pop(), run(other, config)
    assert canonical(plan, outputs)[:2] == (kept, rejects)


def test_byte_identical_across_workers(corpus: list[tuple[str, str]]) -> None:
    config = DedupConfig()
    texts = [t for _, t in corpus]
    assert np.array_equal(compute_signatures(texts, config), compute_signatures(texts, config, workers=2))
    batches = [("a", records(corpus[:25])), ("b", records(corpus[25:]))]
    one = canonical(*run(batches, config, workers=1))
    two = canonical(*run(batches, config, workers=2))
    assert one == two
    # the exact pass's shingle sets are computed in the pool when there is one
    wide = DedupConfig(exact_band=1.0)
    verified = [run(batches, wide, workers=w, verify=True) for w in (1, 2)]
    assert all(plan.stats["exact_checked_pairs"] > 0 for plan, _ in verified)
    assert canonical(*verified[0]) == canonical(*verified[1])


def test_incremental_never_drops_frozen_docs(corpus: list[tuple[str, str]]) -> None:
    config = DedupConfig(keep_rule="longest")
    first = DedupIndex(config)
    first.add_batch(records(corpus), partition="2024-01")
    frozen = first.freeze()
    assert frozen == first.freeze()  # deterministic bytes
    rng = random.Random(13)
    longer_copy = corpus[5][1] + " plus a longer tail that the longest rule would prefer"
    new_items = [
        ("new-exact", corpus[3][1]),
        ("new-near", longer_copy),
        ("new-a", (fresh := random_doc(rng, 100))),
        ("new-b", fresh + " and more words"),
        ("new-copy-of-dropped", corpus[0][1]),  # doc000 was dropped for copy-exact, which is frozen
    ]
    index = DedupIndex.from_frozen(frozen, config)
    index.add_batch(records(new_items, source="new"), partition="2024-02")
    plan = index.resolve(incremental=True)
    assert set(plan.drop_ids) == {"new-exact", "new-near", "new-a", "new-copy-of-dropped"}
    assert plan.drop_ids["new-exact"][:2] == ("exact", "doc003")
    assert plan.drop_ids["new-near"][:2] == ("near", "doc005")
    assert plan.drop_ids["new-a"][:2] == ("near", "new-b")
    assert plan.drop_ids["new-copy-of-dropped"][:2] == ("exact", "copy-exact")
    frozen_keepers = plan.clusters.filter(pc.equal(plan.clusters["keep_rule"], "frozen"))
    assert set(frozen_keepers["kept_id"].to_pylist()) == {"doc003", "doc005", "copy-exact"}
    with pytest.raises(ValueError, match="hashed with"):
        DedupIndex.from_frozen(frozen, DedupConfig(num_perm=64))


def test_paragraph_level_dedup_removes_and_rejects_empty() -> None:
    rng = random.Random(17)
    p1, p2, p3, p4 = (random_doc(rng, 12) for _ in range(4))
    heading = "Article 2"
    items = [
        ("first", f"{p1}\n\n{heading}\n\n{p2}\n\n{p3}\n\na long tail of words to make this the longest document"),
        ("second", f"{p2}\n\n{heading}\n\n{p4}"),
        ("third", f"{p1}\n \n\n{p3}"),
    ]
    table = records(items)
    plan, [out] = run([("p", table)], DedupConfig(keep_rule="longest"))
    assert plan.drop_ids == {"third": ("paragraph", "first", 1.0)}
    kept = dict(zip(out.kept["id"].to_pylist(), out.kept["text"].to_pylist(), strict=True))
    assert kept["second"] == f"{heading}\n\n{p4}"  # the short heading is never removed
    assert kept["first"] == items[0][1]
    assert out.stats["paragraphs_removed"] == 1 and out.stats["paragraph_duplicate"] == 1
    assert out.events is not None
    assert out.events.to_pylist() == [
        {"record_id": "second", "stage": "dedup", "rule": "paragraph_duplicate", "paragraph": 0, "kept_id": "first"}
    ]
    assert out.rejects.to_pylist()[0]["rule"] == "paragraph_duplicate"


PIECES = ["alpha beta gamma delta epsilon zeta", "one two three four five six", "x", "", "Alpha, beta GAMMA!"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    docs=st.lists(
        st.lists(st.sampled_from(PIECES), min_size=0, max_size=4).map("\n\n".join) | st.text(max_size=40),
        min_size=1,
        max_size=25,
    ),
    split=st.integers(min_value=1, max_value=25),
    exact=st.booleans(),
    near=st.booleans(),
    paragraph_level=st.booleans(),
    keep_rule=st.sampled_from(["longest", "oldest", "first_id"]),
)
def test_every_row_is_kept_or_rejected(
    docs: list[str], split: int, exact: bool, near: bool, paragraph_level: bool, keep_rule: str
) -> None:
    config = DedupConfig(exact=exact, near=near, paragraph_level=paragraph_level, keep_rule=keep_rule)  # type: ignore[arg-type]
    items = [(f"id{i:03d}", text) for i, text in enumerate(docs)]
    batches = [(f"p{i}", records(items[i : i + split])) for i in range(0, len(items), split)]
    plan, outputs = run(batches, config)
    kept_ids: list[str] = []
    rejected_ids: list[str] = []
    for (_, table), out in zip(batches, outputs, strict=True):
        assert out.kept.num_rows + out.rejects.num_rows == table.num_rows
        assert out.kept.schema == table.schema
        kept_ids += out.kept["id"].to_pylist()
        rejected_ids += out.rejects["record_id"].to_pylist()
    assert sorted(kept_ids + rejected_ids) == [i for i, _ in items]
    assert set(rejected_ids) == set(plan.drop_ids)
    assert not set(plan.drop_ids) & {kept for _, kept, _ in plan.drop_ids.values()}  # kept docs survive
    if exact:  # no two surviving docs share a normalised text
        survivors = [normalize([t])[0] for i, t in items if i not in plan.drop_ids]
        assert len(survivors) == len(set(survivors))


@pytest.mark.parametrize("exact_pass", [False, True], ids=["estimate", "exact-band-pass"])
def test_recall_and_precision_against_true_jaccard(exact_pass: bool) -> None:
    """Pairs with controlled word edits; the truth is the Jaccard of their word 5-gram sets. With the extra
    pass, pairs whose estimate is near the threshold are settled on exact shingle sets."""
    rng = random.Random(23)
    config = DedupConfig(keep_rule="first_id")
    items: list[tuple[str, str]] = []
    truth: dict[tuple[str, str], float] = {}
    for i in range(300):
        text = random_doc(rng, rng.randrange(120, 400))
        rate = rng.choice([0.0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.08, 0.15])
        variant = edit_words(text, round(rate * len(text.split(" "))), rng)
        items += [(f"a{i:03d}", text), (f"b{i:03d}", variant)]
        truth[(f"a{i:03d}", f"b{i:03d}")] = jaccard(text, variant)
    table = records(items)
    index = DedupIndex(config)
    index.add_batch(table, partition="p")
    if exact_pass:
        assert index.verification_ids()
        assert index.add_shingle_sets(table) > 0
    plan = index.resolve()
    assert (plan.stats["exact_checked_pairs"] > 0) == exact_pass
    found = {(kept, doc) for doc, (_, kept, _) in plan.drop_ids.items()}
    strong = [pair for pair, j in truth.items() if j >= config.threshold + 0.05]
    at_least = [pair for pair, j in truth.items() if j >= config.threshold]
    recall_strong = sum(pair in found for pair in strong) / len(strong)
    recall = sum(pair in found for pair in at_least) / len(at_least)
    precision = sum(truth.get(pair, 0.0) >= config.threshold - 0.05 for pair in found) / len(found)
    strict_precision = sum(truth.get(pair, 0.0) >= config.threshold for pair in found) / len(found)
    print(f"recall(J>=t+0.05)={recall_strong:.3f} recall(J>=t)={recall:.3f} {precision=:.3f} {strict_precision=:.3f}")
    assert len(strong) > 100 and len(truth) - len(at_least) > 50
    assert recall_strong >= 0.95, recall_strong
    assert precision >= 0.99, precision
    if exact_pass:  # the LSH S-curve is the only source of misses left
        assert recall >= 0.95, recall
        assert strict_precision >= 0.99, strict_precision
        exact_rows = plan.clusters.filter(pc.field("similarity_exact") & (pc.field("rule") == "near"))
        assert exact_rows.num_rows > 0
    else:  # pairs just above the threshold are missed about half the time by any 128-permutation estimate
        assert recall >= 0.85, recall
        assert strict_precision >= 0.95, strict_precision


def test_char_ngrams_and_empty_inputs() -> None:
    config = DedupConfig(ngram="char", ngram_size=5, keep_rule="first_id")
    rng = random.Random(29)
    text = random_doc(rng, 200)
    plan, [out] = run(
        [("p", records([("a", text), ("b", edit_words(text, 2, rng)), ("c", random_doc(rng, 200))]))], config
    )
    assert plan.drop_ids["b"][:2] == ("near", "a") and "c" not in plan.drop_ids
    assert out.kept.num_rows == 2
    empty = DedupIndex(DedupConfig()).resolve()
    assert empty.drop_ids == {} and empty.clusters.num_rows == 0
    assert compute_signatures([], DedupConfig()).shape == (0, 128)
    assert normalize([]) == [] and exact_keys([]) == []


# ---------------------------------------------------------------------------------------------------------------
# Normalisation on UTF-8 bytes, word definition, exact verification


def reference_normalise(text: str) -> str:
    """The definition: str.lower, then every run of P*/S*/Z*/Cc/Cf/Cs characters except "_" is one space."""

    def separates(char: str) -> bool:
        category = unicodedata.category(char)
        return (category[0] in "PSZ" or category in ("Cc", "Cf", "Cs")) and char != "_"

    spaced = "".join(" " if separates(c) else c for c in text.lower())
    return re.sub(" +", " ", spaced).strip(" ")


TRICKY = [
    *"\u03a3\u0391\u03b1\u039f\u03c3\u03c2.':-_ \n\t1aZ",
    *"\u0130\u212a\u1e9e\u2126\u212b\u0301\u00ad\u02b0\u0345\u1fbc\u00a0\U0001f600\U000e0041",
]  # sigmas, case-ignorables (. ' : soft hyphen, marks), length-changing lowercase (U+0130, Kelvin, Ohm)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.text(alphabet=st.sampled_from(TRICKY), max_size=16) | st.text(max_size=16), max_size=8))
def test_normalisation_matches_its_definition(texts: list[str]) -> None:
    """Lowercasing on bytes equals str.lower, final sigma (a capital sigma after a cased letter, with case-ignorable
    characters in between, and none after) and length-changing mappings (U+0130) included."""
    expected = [reference_normalise(t) for t in texts]
    assert normalize(texts) == expected
    assert exact_keys(texts) == [hashlib.sha256(e.encode("utf-8", "surrogatepass")).digest() for e in expected]
    # The Arrow path (add_batch) gives the same keys: each text is an exact duplicate of its normalised form.
    items = [(f"t{i}", t) for i, t in enumerate(texts)] + [(f"n{i}", e) for i, e in enumerate(expected)]
    index = DedupIndex(DedupConfig(near=False, paragraph_level=False, keep_rule="first_id"))
    index.add_batch(records(items), partition="p")
    drops = index.resolve().drop_ids
    for i in range(len(texts)):
        dropped = f"t{i}" if f"t{i}" in drops else f"n{i}"
        assert drops[dropped][0] == "exact" and normalize([dict(items)[drops[dropped][1]]]) == [expected[i]]


def test_underscore_stays_inside_words() -> None:
    assert normalize(["snake_case __init__ A_B-c"]) == ["snake_case __init__ a_b c"]
    plan, _ = run([("p", records([("a", "read_config file now"), ("b", "read config file now")]))], DedupConfig())
    assert plan.drop_ids == {}


def test_arrow_string_types_and_nulls() -> None:
    text = random_doc(random.Random(31), 60)
    large = pa.table({"id": ["l1", "l2"], "text": pa.array([text.upper(), None], pa.large_string())})
    plain = pa.table({"id": ["s1", "s2"], "text": pa.array([text, ""], pa.string())})
    index = DedupIndex(DedupConfig(keep_rule="first_id"))
    index.add_batch(large, partition="a")
    index.add_batch(plain, partition="b")
    assert index.resolve().drop_ids == {"s1": ("exact", "l1", 1.0), "s2": ("exact", "l2", 1.0)}


def word_jaccard(a: str, b: str, n: int = 5) -> float:
    """Tool-neutral truth, as in benchmarks/corpus.py: lowercase `\\w+` words, n-gram sets."""

    def grams(text: str) -> set[tuple[str, ...]]:
        words = re.findall(r"\w+", text.lower())
        return {tuple(words[i : i + n]) for i in range(max(len(words) - n + 1, 1))}

    x, y = grams(a), grams(b)
    return len(x & y) / len(x | y)


def test_identifier_heavy_pairs_are_merged_only_at_true_jaccard_threshold() -> None:
    """Docs full of snake_case identifiers (man pages, code): splitting them at "_" would put pairs whose true
    word-5-gram Jaccard is just under 0.8 above it. With the verification pass no pair below is merged."""
    rng = random.Random(37)
    config = DedupConfig(keep_rule="first_id")
    items: list[tuple[str, str]] = []
    truth: dict[tuple[str, str], float] = {}
    for i in range(150):
        words = [random_doc(rng, 1) if rng.random() < 0.7 else "_".join(rng.sample(VOCAB, 4)) for _ in range(300)]
        variant = words[:]
        for k in rng.sample(range(300), rng.randrange(3, 14)):
            parts = variant[k].split("_")
            variant[k] = "_".join([*parts[:-1], f"v{rng.randrange(10**6)}"])
        a, b = " ".join(words), " ".join(variant)
        items += [(f"a{i:03d}", a), (f"b{i:03d}", b)]
        truth[(f"a{i:03d}", f"b{i:03d}")] = word_jaccard(a, b)
    table = records(items)
    index = DedupIndex(config)
    index.add_batch(table.slice(0, 150), partition="p1")
    index.add_batch(table.slice(150), partition="p2")
    assert index.verification_ids()
    for part in (table.slice(0, 150), table.slice(150)):
        index.add_shingle_sets(part)
    plan = index.resolve()
    assert plan.stats["verification_sets_held"] == 0  # every set was let go once its pairs were settled
    found = {(kept, doc) for doc, (_, kept, _) in plan.drop_ids.items()}
    below = [pair for pair, j in truth.items() if j < config.threshold]
    above = [pair for pair, j in truth.items() if j >= config.threshold + 0.03]
    assert len(below) > 20 and len(above) > 20
    assert all(truth.get(pair, 0.0) >= config.threshold for pair in found)
    assert sum(pair in found for pair in above) / len(above) >= 0.95
    for doc, (_, kept, similarity) in plan.drop_ids.items():
        assert similarity == pytest.approx(word_jaccard(dict(items)[doc], dict(items)[kept])) or similarity > 0.9


def test_frozen_index_from_older_normalisation_is_refused(corpus: list[tuple[str, str]]) -> None:
    config = DedupConfig()
    index = DedupIndex(config)
    index.add_batch(records(corpus[:5]), partition="p")
    table = pa.ipc.open_stream(io.BytesIO(index.freeze())).read_all()
    meta = json.loads(table.schema.metadata[b"llm_assets.dedup"])
    del meta["signature_params"]["normalisation"]  # as written before "_" became a word character
    old = table.replace_schema_metadata({"llm_assets.dedup": json.dumps(meta)})
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, old.schema) as writer:
        writer.write_table(old)
    with pytest.raises(ValueError, match="hashed with"):
        DedupIndex.from_frozen(sink.getvalue(), config)


BYTES = st.binary(max_size=24).map(lambda b: b.replace(b"\n", b" "))  # malformed UTF-8 included


@settings(max_examples=300, deadline=None)
@given(
    docs=st.lists(
        st.text(alphabet=st.sampled_from(TRICKY), max_size=16).map(lambda t: t.encode("utf-8", "surrogatepass"))
        | st.text(max_size=16).map(lambda t: t.encode("utf-8", "surrogatepass"))
        | BYTES,
        max_size=8,
    )
)
def test_compiled_normalisation_gives_the_numpy_bytes(docs: list[bytes]) -> None:
    """The numba loop and the numpy passes agree byte for byte, malformed sequences and stray bytes included
    (the sigma look-around then reads a stray byte as a code point)."""
    from llm_assets.curation import dedup

    kernels = dedup._compiled_kernels()
    assert kernels is not None, "numba is a dependency: the compiled normalisation must load"
    compiled, compiled_special = dedup._normalise_pieces(docs)
    raw, starts = dedup._joined(docs)
    size = int(starts[-1]) + len(docs[-1]) + 1 if docs else 0
    reference, reference_special = (
        dedup._normalise_pieces_numpy(raw, starts, size) if docs else (compiled, compiled_special)
    )
    assert bytes(compiled.buf) == bytes(reference.buf)
    assert compiled.starts.tolist() == reference.starts.tolist()
    assert compiled.lengths.tolist() == reference.lengths.tolist()
    assert compiled_special.tolist() == reference_special.tolist()


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(st.text(alphabet=st.sampled_from([*TRICKY, " ", "a", "b", "x"]), max_size=40), max_size=8),
    n=st.integers(min_value=1, max_value=6),
)
def test_compiled_word_and_shingle_hashes_give_the_numpy_values(texts: list[str], n: int) -> None:
    """Word hashes and n-gram shingles from the numba loops equal the numpy passes (stored signatures and
    frozen indexes depend on these exact values)."""
    from llm_assets.curation import dedup

    norm = dedup._normalise(texts)
    units, per_doc = dedup._unit_hashes(norm, "word")
    if norm.buf.size:
        reference_units, reference_per_doc = dedup._unit_hashes_numpy(norm, "word")
        assert units.tolist() == reference_units.tolist() and per_doc.tolist() == reference_per_doc.tolist()
    shingles, windows = dedup._shingles(units, per_doc, n)
    reference_shingles, reference_windows = dedup._shingles_numpy(units, per_doc, n)
    assert shingles.tolist() == reference_shingles.tolist() and windows.tolist() == reference_windows.tolist()


@settings(max_examples=100, deadline=None)
@given(
    windows=st.lists(st.integers(min_value=0, max_value=40), max_size=8),
    num_perm=st.sampled_from([2, 16, 128]),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    data=st.data(),
)
def test_compiled_minhash_gives_the_numpy_signatures(windows: list[int], num_perm: int, seed: int, data) -> None:
    """The numba MinHash loop equals the per-permutation numpy passes, docs without shingles included
    (signatures are stored in frozen indexes and compared across versions)."""
    from llm_assets.curation import dedup

    assert dedup._compiled_kernels() is not None
    values = data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=sum(windows), max_size=sum(windows)))
    shingles = np.array(values, dtype=np.uint32)
    counts = np.array(windows, dtype=np.int64)
    compiled = dedup._minhash(shingles, counts, num_perm, seed)
    assert compiled.dtype == np.uint32 and compiled.shape == (len(windows), num_perm)
    assert np.array_equal(compiled, dedup._minhash_numpy(shingles, counts, num_perm, seed))


@settings(max_examples=200, deadline=None)
@given(
    a=st.sets(st.integers(0, 50), max_size=30),
    b=st.sets(st.integers(0, 50), max_size=30),
)
def test_shared_count_of_sorted_sets_equals_their_intersection(a: set[int], b: set[int]) -> None:
    from llm_assets.curation import dedup

    left = np.array(sorted(a), dtype=np.uint64)
    right = np.array(sorted(b), dtype=np.uint64)
    assert dedup._shared_count(left, right) == len(a & b) == dedup._shared_count(right, left)


@settings(max_examples=50, deadline=None)
@given(texts=st.lists(st.text(alphabet=st.sampled_from(["a", "b", "c", " ", "é"]), max_size=60), max_size=6))
def test_shingle_sets_are_each_docs_distinct_shingles_sorted(texts: list[str]) -> None:
    from llm_assets.curation import dedup

    params = {"ngram": "word", "ngram_size": 2}
    sets = dedup._shingle_sets(pa.array(texts, pa.string()), params)
    shingles, windows = dedup._shingles(*dedup._unit_hashes(dedup._normalise(texts), "word"), 2)
    ends = np.cumsum(windows)
    assert len(sets) == len(texts)
    for got, start, end in zip(sets, (ends - windows).tolist(), ends.tolist(), strict=True):
        assert got.tolist() == np.unique(shingles[start:end]).tolist()


def reference_paragraphs(
    texts: Sequence[str | None], min_words: int
) -> tuple[list[str], list[int], list[int], list[int]]:
    """Paragraph analysis by its definition: split each text with PARAGRAPH_SEPARATOR, normalise each piece,
    hash the pieces of at least `min_words` words in docs of two or more pieces (`paragraph_hash`)."""
    from llm_assets.curation.dedup import PARAGRAPH_SEPARATOR

    docs: list[str] = []
    offsets, positions, hashes = [0], [], []
    for text in texts:
        pieces = PARAGRAPH_SEPARATOR.split(text) if text else [""]
        normalised = normalize(pieces)
        docs.append(" ".join(p for p in normalised if p))
        for position, piece in enumerate(normalised):
            if len(pieces) >= 2 and (len(piece.split(" ")) if piece else 0) >= min_words:
                positions.append(position)
                hashes.append(paragraph_hash(piece.encode("utf-8", "surrogatepass")))
        offsets.append(len(positions))
    return docs, offsets, positions, hashes


PARAGRAPH_PARTS = ["\n", "\n\n", " \n", "\n \t\n", "\r\n\r\n", "\n\x0b\n", "\n\x0c \n\n"]
PARAGRAPH_PARTS += ["word", "İ", "Σ", "ΟΔΟΣ", " ", "x."]


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(
        st.lists(st.sampled_from(PARAGRAPH_PARTS), max_size=10).map("".join) | st.text(max_size=30) | st.none(),
        max_size=6,
    ),
    min_words=st.integers(min_value=0, max_value=3),
    arrow=st.booleans(),
)
def test_paragraph_analysis_matches_its_definition(texts: list[str | None], min_words: int, arrow: bool) -> None:
    """The byte-level paragraph pass (compiled and Python separator search alike) gives what splitting each
    text with PARAGRAPH_SEPARATOR and normalising every piece gives: doc texts, positions and hashes."""
    from llm_assets.curation import dedup

    expected = reference_paragraphs(texts, min_words)
    batch = pa.array(texts, pa.string()) if arrow else [t or "" for t in texts]
    norm, offsets, positions, hashes = dedup._paragraphs(batch, min_words)
    assert [norm.text(i) for i in range(len(texts))] == expected[0]
    assert (offsets.tolist(), positions.tolist(), hashes.tolist()) == expected[1:]
    pieces = dedup._utf8_pieces(batch)
    raw, starts = dedup._joined(pieces)
    size = dedup._joined_size(starts, pieces)
    kernels = dedup._compiled_kernels()
    assert kernels is not None
    compiled = kernels.paragraph_starts(raw, starts, size)
    python = dedup._paragraph_starts_python(raw, starts, size)
    assert compiled[0].tolist() == python[0].tolist() and compiled[1].tolist() == python[1].tolist()


def test_paragraph_hash_is_fnv1a_mixed_and_a_frozen_blake2b_index_is_refused(corpus: list[tuple[str, str]]) -> None:
    """The paragraph hash is FNV-1a 64 (0xaf63dc4c8601ec8c for b"a", its published test vector) mixed by
    splitmix64; an index frozen when paragraphs were hashed with blake2b is refused, not compared."""
    from llm_assets.curation.dedup import _mix64

    assert paragraph_hash(b"a") == int(_mix64(np.array([0xAF63DC4C8601EC8C], dtype=np.uint64))[0])
    config = DedupConfig()
    index = DedupIndex(config)
    index.add_batch(records(corpus[:5]), partition="p")
    table = pa.ipc.open_stream(io.BytesIO(index.freeze())).read_all()
    meta = json.loads(table.schema.metadata[b"llm_assets.dedup"])
    del meta["signature_params"]["paragraph_hash"]  # as written while paragraphs were hashed with blake2b
    old = table.replace_schema_metadata({"llm_assets.dedup": json.dumps(meta)})
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, old.schema) as writer:
        writer.write_table(old)
    with pytest.raises(ValueError, match="hashed with"):
        DedupIndex.from_frozen(sink.getvalue(), config)
