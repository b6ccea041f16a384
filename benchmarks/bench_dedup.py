"""Deduplication benchmark: ours (exact, near, near + paragraphs) against datasketch, rensa and datatrove.

One run, one machine, the same input for everyone:
  * >= `--mb` MB of real text from `benchmarks/corpus.py` (Greek laws, UDHR, banking77, Tatoeba, man pages and
    /usr/share/doc of this machine), plus injected exact copies and word-edited near copies whose true word
    5-gram Jaccard is recorded (`inject_duplicates`), written as Parquet shards of ~3.5 MB (id, text, source).
  * Each tool runs in its own subprocess (`--child TOOL`) reading those shards; the parent samples the RSS of
    the subprocess and all its descendants every 50 ms (peak = largest sum) and reads its CPU time (wait4).
  * MB/s and docs/s are over the tool's own processing time (interpreter start, the tool's imports and, for
    ours, loading its compiled normalisation loop are excluded: done before the clock starts); MB/CPU-s is
    the same bytes over the user+sys CPU seconds the subprocess tree spent after that point (worker
    processes a tool starts later are counted whole): the per-core rate.
  * Ours, as the chain's dedup stage: reads each shard's Parquet once (index pass) and keeps an uncompressed
    Arrow copy in local scratch that the verification and apply passes read back, and writes kept + rejects
    Parquet; the per-phase lines split out "find duplicates" (read each shard, copy it to scratch, normalise,
    hash, resolve: what every document must go through before anything can be dropped), the apply pass
    (read the copy, drop, write kept + rejects) and all Parquet I/O, so "dedup work" is what the dedup code
    itself costs (the scratch copy included).

Tools (threshold 0.8, 128 permutations, word 5-grams everywhere):
  ours-exact   DedupIndex(exact only): read shards (+ scratch copy) -> add_batch -> resolve -> apply_plan -> write
  ours-near    the same with exact + near (MinHash LSH, 16 bands x 8 rows, verified), with the optional extra
               read pass that settles candidate pairs within 0.1 of the threshold on exact shingle sets
  ours-near-est  ours-near without that pass (every pair decided on the 128-permutation estimate)
  ours-full    exact + near + paragraph-level dedup (with the extra pass)
  ours-near-w2 ours-near with workers=2 (two spawned processes hash the shards)
  datasketch   MinHash(update_batch of lowercase \\w+ 5-grams) + MinHashLSH(threshold=0.8) query-then-insert;
               a doc with any LSH candidate is dropped (its default use); the kept MinHash objects are held to
               name the best-matching candidate
  rensa        RMinHash(128, seed 42).update(the same 5-grams) + RMinHashLSH(0.8, 128, 16 bands), same loop
  datatrove    its 4 MinHash stages (signature, buckets, cluster with cluster ids, filter), 2 workers,
               16 buckets x 8 hashes, spaCy word tokenizer (English), local folders under the work dir

Quality against the ground truth: exact recall (either copy dropped), near recall on injected pairs with true
J >= 0.8 and >= 0.85, "merged < 0.7" = injected pairs with J < 0.7 that a tool merged, and precision over (a
sample of up to 1500 of) all drops: the share whose true J with the doc the tool kept in its place is >= 0.8
(strict) or >= 0.7. Drops on the real corpus itself (natural duplicates) are in that sample too.

    .venv-bench/bin/python benchmarks/bench_dedup.py --mb 100 [--rss-scales 3] [--tools ours-near,rensa]

.venv-bench/ (the peers, plus what ours imports, at the project's pins):
    python3 -m venv .venv-bench && .venv-bench/bin/pip install numpy==2.4.6 polars==2.1.0 pyarrow==26.0.1 \
        pydantic==2.14.3 datasketch==2.0.0 rensa==0.5.0 datatrove==0.10.1 tokenizers orjson 'xxhash<4' \
        regex spacy psutil numba==0.68.1
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.dataset  # noqa: E402  (pq.read_table imports it on first use: keep that out of the clock)
import pyarrow.parquet as pq  # noqa: E402

from benchmarks.corpus import build_corpus, corpus_bytes, inject_duplicates, jaccard, shingles  # noqa: E402

THRESHOLD = 0.8
NUM_PERM = 128
TOOLS = ("ours-exact", "ours-near", "ours-near-est", "ours-full", "ours-near-w2", "datasketch", "rensa", "datatrove")
SHARD_BYTES = 3_500_000  # fixed shard size, so peak RSS across corpus sizes compares like with like


# ---------------------------------------------------------------------------------------------------------------
# Children: each returns {dropped id: id of the doc kept in its place}


def shard_files(data: Path) -> list[Path]:
    return sorted(data.glob("*.parquet"))


def iter_docs(data: Path) -> Iterator[tuple[str, str]]:
    for path in shard_files(data):
        table = pq.read_table(path, columns=["id", "text"])
        yield from zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True)


PHASES: dict[str, float] = {}
IMPORTS = {
    "datasketch": "datasketch",
    "rensa": "rensa",
    "datatrove": "datatrove.pipeline.dedup.minhash",
}


def run_ours(data: Path, work: Path, mode: str, workers: int, exact_pass: bool = True) -> dict[str, str]:
    from llm_assets.curation.dedup import DedupConfig, DedupIndex, apply_plan
    from llm_assets.curation.spill import ShardSpill

    config = DedupConfig(near=mode != "exact", paragraph_level=mode == "full")
    out = work / "ours"
    out.mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()
    PHASES["parquet_io"] = 0.0

    def phase(name: str) -> None:
        nonlocal clock
        PHASES[name] = time.perf_counter() - clock
        clock = time.perf_counter()

    def read(path: Path, columns: list[str] | None = None) -> pa.Table:
        started = time.perf_counter()
        table = pq.read_table(path, columns=columns)
        PHASES["parquet_io"] += time.perf_counter() - started
        return table

    def write(table: pa.Table, path: Path) -> None:
        started = time.perf_counter()
        # as the lake writes shards (lake.shards._parquet_bytes): zstd level 1, no dictionary and no statistics
        # for the long, distinct `text` strings (the lake module needs boto3, which .venv-bench lacks; these
        # tables are flat)
        others = [name for name in table.column_names if name != "text"]
        pq.write_table(
            table, path, compression="zstd", compression_level=1, use_dictionary=others, write_statistics=others
        )
        PHASES["parquet_io"] += time.perf_counter() - started

    # As the chain's dedup stage does (pipeline.dedup_sources): the index pass reads each shard's Parquet
    # once and keeps an uncompressed Arrow copy in local scratch, which the later passes read back.
    with tempfile.TemporaryDirectory(prefix="dedup-", dir=work) as scratch:
        spill = ShardSpill(Path(scratch))
        with DedupIndex(config, workers=workers) as index:
            for path in shard_files(data):
                table = read(path)
                spill.add(path.stem, table)
                index.add_batch(table.select(["id", "text"]), partition=path.stem)
            phase("index")
            if exact_pass and index.verification_ids():
                for path in shard_files(data):
                    for table in spill.tables(path.stem):
                        index.add_shingle_sets(table.select(["id", "text"]))
            phase("verify")
            plan = index.resolve()
            phase("resolve")
        for path in shard_files(data):
            for table in spill.tables(path.stem):
                result = apply_plan(table, plan)
                write(result.kept, out / f"{path.stem}.kept.parquet")
                write(result.rejects, out / f"{path.stem}.rejects.parquet")
        phase("apply")
    return {doc: kept for doc, (_, kept, _) in plan.drop_ids.items()}


def _streaming_lsh(
    make: Callable[[set[str]], Any],
    query: Callable[[Any], list[int]],
    insert: Callable[[int, Any], None],
    similarity: Callable[[Any, Any], float],
    data: Path,
) -> dict[str, str]:
    """Query-then-insert over the docs in shard order: a doc with any LSH candidate is dropped in favour of
    its most similar candidate (by estimated Jaccard), otherwise it is inserted."""
    kept: dict[int, Any] = {}
    dropped: dict[str, str] = {}
    names: list[str] = []
    for doc_id, text in iter_docs(data):
        signature = make(shingles(text))
        candidates = sorted(query(signature))
        if candidates:
            best = max(candidates, key=lambda c: similarity(signature, kept[c]))
            dropped[doc_id] = names[best]
        else:
            key = len(names)
            names.append(doc_id)
            insert(key, signature)
            kept[key] = signature
    return dropped


def run_datasketch(data: Path) -> dict[str, str]:
    from datasketch import MinHash, MinHashLSH

    template = MinHash(num_perm=NUM_PERM, seed=1)
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)

    def make(grams: set[str]) -> MinHash:
        m = MinHash(num_perm=NUM_PERM, permutations=template.permutations, scheme=template.scheme)
        m.update_batch([g.encode("utf-8") for g in grams])
        return m

    return _streaming_lsh(make, lsh.query, lsh.insert, lambda a, b: a.jaccard(b), data)


def run_rensa(data: Path) -> dict[str, str]:
    from rensa import RMinHash, RMinHashLSH

    lsh = RMinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, num_bands=16)

    def make(grams: set[str]) -> RMinHash:
        m = RMinHash(num_perm=NUM_PERM, seed=42)
        m.update(list(grams))
        return m

    return _streaming_lsh(make, lsh.query, lsh.insert, lambda a, b: a.jaccard(b), data)


def run_datatrove(data: Path, work: Path) -> dict[str, str]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.typeshelper import Languages

    base = work / "datatrove"
    config = MinhashConfig(hash_config=HashConfig(precision=64), num_buckets=16, hashes_per_bucket=8, n_grams=5)
    tasks, workers = 2, 2

    def reader() -> ParquetReader:
        return ParquetReader(str(data), text_key="text", id_key="id", glob_pattern="*.parquet")

    stage1 = LocalPipelineExecutor(
        pipeline=[
            reader(),
            MinhashDedupSignature(output_folder=str(base / "sigs"), config=config, language=Languages.english),
        ],
        tasks=tasks,
        workers=workers,
        logging_dir=str(base / "logs" / "1"),
    )
    stage2 = LocalPipelineExecutor(
        pipeline=[
            MinhashDedupBuckets(input_folder=str(base / "sigs"), output_folder=str(base / "buckets"), config=config)
        ],
        tasks=config.num_buckets,
        workers=workers,
        logging_dir=str(base / "logs" / "2"),
        depends=stage1,
    )
    stage3 = LocalPipelineExecutor(
        pipeline=[
            MinhashDedupCluster(
                input_folder=str(base / "buckets"),
                output_folder=str(base / "remove"),
                config=config,
                save_cluster_id=True,
            )
        ],
        tasks=1,
        logging_dir=str(base / "logs" / "3"),
        depends=stage2,
    )
    stage4 = LocalPipelineExecutor(
        pipeline=[
            reader(),
            MinhashDedupFilter(
                input_folder=str(base / "remove"),
                exclusion_writer=JsonlWriter(str(base / "removed"), compression=None),
                load_cluster_ids=True,
            ),
            JsonlWriter(str(base / "kept"), compression=None),
        ],
        tasks=tasks,
        workers=workers,
        logging_dir=str(base / "logs" / "4"),
        depends=stage3,
    )
    stage4.run()
    keeper: dict[int, str] = {}
    for path in sorted((base / "kept").glob("*.jsonl")):
        for line in path.open(encoding="utf-8"):
            doc = json.loads(line)
            cluster = doc.get("metadata", {}).get("minhash_cluster_id", -1)
            if cluster != -1:
                keeper[cluster] = doc["id"]
    dropped: dict[str, str] = {}
    for path in sorted((base / "removed").glob("*.jsonl")):
        for line in path.open(encoding="utf-8"):
            doc = json.loads(line)
            dropped[doc["id"]] = keeper.get(doc["metadata"].get("minhash_cluster_id", -1), "")
    return dropped


def child(tool: str, data: Path, work: Path, result: Path) -> None:
    module = importlib.import_module(IMPORTS.get(tool, "llm_assets.curation.dedup"))
    if tool.startswith("ours"):
        module.normalize(["start-up"])  # loads the compiled normalisation (numba's cache): start-up, like imports
    startup_cpu = time.process_time()  # interpreter, imports, compiled-code load: excluded like the wall clock's
    start = time.perf_counter()
    runners: dict[str, Callable[[], dict[str, str]]] = {
        "ours-exact": lambda: run_ours(data, work, "exact", 1),
        "ours-near": lambda: run_ours(data, work, "near", 1),
        "ours-near-est": lambda: run_ours(data, work, "near", 1, exact_pass=False),
        "ours-full": lambda: run_ours(data, work, "full", 1),
        "ours-near-w2": lambda: run_ours(data, work, "near", 2),
        "datasketch": lambda: run_datasketch(data),
        "rensa": lambda: run_rensa(data),
        "datatrove": lambda: run_datatrove(data, work),
    }
    dropped = runners[tool]()
    seconds = time.perf_counter() - start
    result.write_text(
        json.dumps({"seconds": seconds, "startup_cpu": startup_cpu, "phases": PHASES, "dropped": dropped})
    )


# ---------------------------------------------------------------------------------------------------------------
# Parent: measure, evaluate, report


def _tree_usage(root: int) -> dict[int, tuple[int, int, float]]:
    """{pid: (RSS bytes, RSS high-water mark bytes, user+sys CPU seconds)} for `root` and its descendants."""
    parents: dict[int, int] = {}
    usage: dict[int, tuple[int, int, float]] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/status", encoding="utf-8") as handle:
                hwm = next((int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM:")), 0)
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        usage[int(entry)] = (int(fields[21]) * page, hwm, (int(fields[11]) + int(fields[12])) / ticks)
    tree: dict[int, tuple[int, int, float]] = {}
    stack = [root]
    while stack:
        pid = stack.pop()
        if pid in usage:
            tree[pid] = usage[pid]
        stack.extend(p for p, parent in parents.items() if parent == pid)
    return tree


def measure(tool: str, data: Path, work: Path, python: str) -> dict[str, Any]:
    """Run one tool in a subprocess. Peak RSS = the larger of the summed RSS of its process tree (sampled every
    50 ms) and the largest per-process high-water mark (VmHWM); not ru_maxrss, which keeps the parent's size
    from before exec."""
    tool_work = work / tool
    shutil.rmtree(tool_work, ignore_errors=True)
    tool_work.mkdir(parents=True)
    result = tool_work / "result.json"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    command = [python, str(Path(__file__).resolve()), "--child", tool, "--data", str(data), "--work", str(tool_work)]
    process = subprocess.Popen([*command, "--result", str(result)], env=env, stdout=subprocess.DEVNULL)
    peak = 0
    hwm: dict[int, int] = {}
    cpu: dict[int, float] = {}  # last CPU seconds seen per process of the tree (workers are not always waited)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            tree = _tree_usage(process.pid)
            peak = max(peak, sum(rss for rss, _, _ in tree.values()))
            hwm.update({pid: max(hwm.get(pid, 0), high) for pid, (_, high, _) in tree.items()})
            cpu.update({pid: seconds for pid, (_, _, seconds) in tree.items()})
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    done.set()
    sampler.join()
    if status != 0 or not result.exists():
        raise RuntimeError(f"{tool} failed (status {status}); run {' '.join(command)} --result x.json to see why")
    payload = json.loads(result.read_text())
    shutil.rmtree(tool_work, ignore_errors=True)
    return {
        "seconds": payload["seconds"],
        "phases": payload["phases"],
        "cpu_seconds": max(usage.ru_utime + usage.ru_stime, sum(cpu.values())) - payload["startup_cpu"],
        "peak_rss_mb": max(peak, max(hwm.values(), default=0)) / 1e6,
        "dropped": payload["dropped"],
    }


def evaluate(dropped: dict[str, str], truth: Sequence[dict[str, Any]], texts: dict[str, str]) -> dict[str, float]:
    def caught(pair: dict[str, Any]) -> bool:
        return pair["duplicate"] in dropped or pair["original"] in dropped

    def merged(pair: dict[str, Any]) -> bool:
        return dropped.get(pair["duplicate"]) == pair["original"] or dropped.get(pair["original"]) == pair["duplicate"]

    def share(flags: Sequence[bool]) -> float:
        return statistics.fmean(flags) if flags else float("nan")

    exact = [t for t in truth if t["kind"] == "exact"]
    near = [t for t in truth if t["kind"] == "near"]
    items = sorted(dropped.items())
    sample = items[:: max(1, len(items) // 1500)]
    sims = [jaccard(texts[d], texts[k]) if k in texts else 0.0 for d, k in sample]
    return {
        "exact_recall": share([caught(t) for t in exact]),
        "near_recall_08": share([caught(t) for t in near if t["jaccard"] >= THRESHOLD]),
        "near_recall_085": share([caught(t) for t in near if t["jaccard"] >= THRESHOLD + 0.05]),
        "merged_below_07": share([merged(t) for t in near if t["jaccard"] < THRESHOLD - 0.1]),
        "precision": share([s >= THRESHOLD for s in sims]),
        "precision_07": share([s >= THRESHOLD - 0.1 for s in sims]),
    }


def write_shards(docs: Sequence[dict[str, str]], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shards = max(2, round(corpus_bytes(docs) / SHARD_BYTES))
    step = -(-len(docs) // shards)
    for k in range(shards):
        part = docs[k * step : (k + 1) * step]
        table = pa.table(
            {name: [d[name] for d in part] for name in ("id", "text", "source")},
            schema=pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string())]),
        )
        pq.write_table(table, folder / f"shard-{k:03d}.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=100.0, help="corpus size before injection (MB of UTF-8)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--rss-scales", default="3", help="extra corpus sizes (x --mb) to run ours-near at")
    parser.add_argument("--python", default=sys.executable, help="interpreter with the peers installed")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--child", choices=TOOLS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.data, args.work, args.result)
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-dedup-"))
    started = time.perf_counter()
    docs, truth = inject_duplicates(build_corpus(args.mb, args.seed), seed=args.seed)
    size = corpus_bytes(docs)
    texts = {d["id"]: d["text"] for d in docs}
    write_shards(docs, work / "data")
    near_truth = [t for t in truth if t["kind"] == "near"]
    print(
        f"corpus: {len(docs)} docs, {size / 1e6:.1f} MB ({time.perf_counter() - started:.0f} s to build); injected "
        f"{len(truth) - len(near_truth)} exact and {len(near_truth)} near copies, "
        f"{sum(t['jaccard'] >= THRESHOLD for t in near_truth)} of them with true J >= {THRESHOLD}; "
        f"{os.cpu_count()} cores; python {args.python}",
        flush=True,
    )
    rows: dict[str, dict[str, Any]] = {}
    for tool in args.tools.split(","):
        measured = measure(tool, work / "data", work, args.python)
        quality = evaluate(measured["dropped"], truth, texts)
        rows[tool] = {**measured, **quality, "drops": len(measured["dropped"])}
        print(f"  {tool}: {size / 1e6 / float(measured['seconds']):.1f} MB/s", flush=True)

    reference = rows.get("ours-near")
    header = (
        "| tool | MB/s | docs/s | MB/CPU-s | peak RSS MB | drops | exact recall | near recall J>=0.8 | J>=0.85 "
        "| merged J<0.7 | precision J>=0.8 | J>=0.7 | ours-near speed / tool |"
    )
    print("\n" + header)
    print("|" + "---|" * (header.count("|") - 1))
    for tool, row in rows.items():
        seconds = float(row["seconds"])
        ratio = seconds / float(reference["seconds"]) if reference else float("nan")
        print(
            f"| {tool} | {size / 1e6 / seconds:.1f} | {len(docs) / seconds:.0f} | "
            f"{size / 1e6 / float(row['cpu_seconds']):.1f} | {float(row['peak_rss_mb']):.0f} | {row['drops']} | "
            f"{row['exact_recall']:.3f} | {row['near_recall_08']:.3f} | {row['near_recall_085']:.3f} | "
            f"{row['merged_below_07']:.3f} | {row['precision']:.3f} | {row['precision_07']:.3f} | {ratio:.2f}x |"
        )

    print(
        "\nours, by phase: index = read shards + scratch copy + normalise + hash (MB/s); verify = the optional "
        "extra pass over the copy for borderline pairs; find duplicates = index + verify + resolve (MB/s); apply = "
        "read the copy + apply_plan + write (MB/s); Parquet I/O = all Parquet reads and writes (s); dedup work = "
        "the total without Parquet I/O (MB/s)"
    )
    for tool, row in rows.items():
        phases: dict[str, float] = row["phases"]
        if phases:
            work_s = float(row["seconds"]) - phases["parquet_io"]
            find_s = phases["index"] + phases["verify"] + phases["resolve"]
            print(
                f"  {tool}: index {size / 1e6 / phases['index']:.1f} MB/s, verify {phases['verify']:.2f} s, "
                f"resolve {phases['resolve']:.2f} s, find duplicates {size / 1e6 / find_s:.1f} MB/s, "
                f"apply {size / 1e6 / phases['apply']:.1f} MB/s, "
                f"Parquet I/O {phases['parquet_io']:.2f} s, dedup work {size / 1e6 / work_s:.1f} MB/s"
            )

    scales = [float(s) for s in args.rss_scales.split(",") if s.strip()]
    if scales and reference:
        print(f"\nours-near peak RSS: {args.mb:g} MB corpus -> {float(reference['peak_rss_mb']):.0f} MB")
        for scale in scales:
            big_docs, _ = inject_duplicates(build_corpus(args.mb * scale, args.seed), seed=args.seed)
            shutil.rmtree(work / "data-big", ignore_errors=True)
            write_shards(big_docs, work / "data-big")
            big = measure("ours-near", work / "data-big", work, args.python)
            big_size = corpus_bytes(big_docs) / 1e6
            rss, seconds = float(big["peak_rss_mb"]), float(big["seconds"])
            print(
                f"ours-near peak RSS: {big_size:.0f} MB corpus ({len(big_docs)} docs) -> {rss:.0f} MB"
                f" at {big_size / seconds:.1f} MB/s"
            )
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"\nbenchmark wall {time.perf_counter() - started:.0f} s (parent CPU {usage.ru_utime:.0f} s)")


if __name__ == "__main__":
    main()
