"""Retrieval cost per query on FOLDOC: BM25 search, per-token scores, ColBERT reranking.

    python benchmarks/retrieval.py            # full run, a few minutes on 2 cores
    python benchmarks/retrieval.py --quick    # smoke run (what the test suite runs)

Prints a table and writes the raw numbers to benchmarks/results/retrieval.json. Times are per
query (per token for token_scores), as CPU time of this process (all its threads: torch uses
several) and wall time. Each repetition runs every measurement once per query, interleaved
(query 1: search, token_scores, rank-bm25; query 2: ...), so that a slow spell of this shared
machine hits all of them alike; the table shows the median and the min-max over repetitions of
the per-query mean. Needs Debian's dict-foldoc and the bm25 and colbert extras.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from altoflow.retrieval import (
    BM25Index,
    ColBERTReranker,
    Hit,
    default_tokenize,
    load_foldoc,
)

import _stats  # benchmarks/_stats.py, next to this script

RESULTS = Path(__file__).resolve().parent / "results" / "retrieval.json"

# (query, the FOLDOC entry that answers it): the same kind of known-answer queries as the tests.
QUERIES = [
    ("which operating system did Ken Thompson write at Bell Labs", "Unix"),
    ("high-level interpreted language by Guido van Rossum", "Python"),
    ("automatic reclamation of unused memory", "garbage collection"),
    ("transmission control protocol internet protocol", "TCP/IP"),
    ("quicksort sorting algorithm", "Quicksort"),
    ("program that translates source code into machine code", "compiler"),
    ("what is a compiler", "compiler"),
    ("pattern matching on strings with a regular expression", "regular expression"),
]


def measure(fn: Callable[[], Any], inner: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per call of ``fn``, averaged over ``inner`` calls."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(inner):
        fn()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return cpu * 1000 / inner, wall * 1000 / inner


def summary(values: list[float]) -> dict[str, float]:
    return {**_stats.summary(values), "n": len(values)}


class Series:
    """Per-repetition means of one measurement, in CPU and wall ms."""

    def __init__(self) -> None:
        self.cpu: list[list[float]] = []
        self.wall: list[list[float]] = []

    def start_repetition(self) -> None:
        self.cpu.append([])
        self.wall.append([])

    def add(self, cpu_ms: float, wall_ms: float) -> None:
        self.cpu[-1].append(cpu_ms)
        self.wall[-1].append(wall_ms)

    def result(self) -> dict[str, Any]:
        return {
            "cpu_ms": summary([statistics.fmean(r) for r in self.cpu]),
            "wall_ms": summary([statistics.fmean(r) for r in self.wall]),
        }


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    value = fn()
    return value, time.process_time() - cpu0, time.perf_counter() - wall0


def rank_of(answer: str, hits: list[Hit]) -> int | None:
    ids = [h.id for h in hits]
    return ids.index(answer) + 1 if answer in ids else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    import rank_bm25
    import torch

    queries = QUERIES[: args.queries]
    # Other work on this shared machine slows wall time most; its load goes into the results.
    load_before = os.getloadavg()[0]
    entries, _, load_wall = timed(load_foldoc)
    docs, ids = [e.text for e in entries], [e.id for e in entries]

    index, build_cpu, build_wall = timed(lambda: BM25Index.build(docs, ids=ids))
    with tempfile.TemporaryDirectory() as tmp:
        _, _, save_wall = timed(lambda: index.save(Path(tmp) / "bm25"))
        index_bytes = sum(p.stat().st_size for p in (Path(tmp) / "bm25").iterdir())
        index, _, load_index_wall = timed(lambda: BM25Index.load(Path(tmp) / "bm25"))
    # The same model, scored the way rank-bm25 does it (a Python loop over all documents per
    # token): the reference the per-token rows replace.
    oracle = rank_bm25.BM25Okapi([default_tokenize(d) for d in docs])

    search, tokens, reference = Series(), Series(), Series()
    for _ in range(args.repeats):
        for series in (search, tokens, reference):
            series.start_repetition()
        for query, _ in queries:
            search.add(*measure(lambda q=query: index.search(q, k=args.k), args.inner))
            for token in index.tokenize(query):
                tokens.add(*measure(lambda t=token: index.token_scores(t), args.inner))
            reference.add(*measure(lambda q=query: oracle.get_scores(default_tokenize(q)), 1))

    reranker, load_cpu, reranker_wall = timed(
        lambda: ColBERTReranker(doc_maxlen=args.doc_maxlen, batch_size=args.batch_size)
    )
    # torch's thread count is process-wide and can change between calls, so the settings are
    # interleaved query by query. One thread per process is what replicas on a busy machine get.
    default_threads = torch.get_num_threads()
    thread_counts = args.torch_threads or sorted({1, default_threads})
    for threads in thread_counts:
        torch.set_num_threads(threads)
        # Warm-up: torch sets up its kernels on the first calls; that is load, not query, time.
        reranker.rerank(queries[0][0], index.search(queries[0][0], k=4), k=2)
    encode = {t: Series() for t in thread_counts}
    reranks = {(t, n): Series() for t in thread_counts for n in args.candidates}
    colbert_ranks: dict[str, int | None] = {}
    candidates = {(q, n): index.search(q, k=n) for q, _ in queries for n in args.candidates}
    for repetition in range(args.repeats):
        for series in [*encode.values(), *reranks.values()]:
            series.start_repetition()
        for query, answer in queries:
            for threads in thread_counts:
                torch.set_num_threads(threads)
                encode[threads].add(*measure(lambda q=query: reranker.encode_queries([q]), 1))
                for n in args.candidates:
                    hits, cpu_s, wall_s = timed(
                        lambda q=query, n=n: reranker.rerank(q, candidates[(q, n)], k=args.k)
                    )
                    reranks[(threads, n)].add(cpu_s * 1000, wall_s * 1000)
                    if repetition == 0 and n == max(args.candidates):
                        colbert_ranks[query] = rank_of(answer, hits)
    torch.set_num_threads(default_threads)

    widest = max(args.candidates)
    return {
        "benchmark": "retrieval",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_default_threads": default_threads,
            "cuda": torch.cuda.is_available(),
            "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
        },
        "settings": {
            "queries": len(queries),
            "repeats": args.repeats,
            "inner": args.inner,
            "k": args.k,
            "candidates": args.candidates,
            "doc_maxlen": reranker.doc_maxlen,
            "query_maxlen": reranker.query_maxlen,
            "batch_size": reranker.batch_size,
            "torch_threads": thread_counts,
        },
        "corpus": {"name": "FOLDOC (Debian dict-foldoc)", "documents": len(docs), "load_s": load_wall},
        "bm25": {
            "build_s": {"cpu": build_cpu, "wall": build_wall},
            "save_s": save_wall,
            "load_s": load_index_wall,
            "index_bytes": index_bytes,
            "terms": len(index.vocabulary),
            "search": search.result(),
            "token_scores_per_token": tokens.result(),
            "rank_bm25_get_scores": reference.result(),
        },
        "colbert": {
            "checkpoint": str(reranker.checkpoint),
            "trained_projection": reranker.trained_projection,
            "dim": reranker.dim,
            "load_s": {"cpu": load_cpu, "wall": reranker_wall},
            "by_torch_threads": {
                str(t): {
                    "encode_query": encode[t].result(),
                    "rerank": {str(n): reranks[(t, n)].result() for n in args.candidates},
                }
                for t in thread_counts
            },
        },
        "known_answers": [
            {
                "query": query,
                "answer": answer,
                # rank among BM25's top `widest`, and after ColBERT reranked those (None: not there)
                "bm25_rank": rank_of(answer, index.search(query, k=widest)),
                "colbert_rank": colbert_ranks.get(query),
                "candidates": widest,
            }
            for query, answer in queries
        ],
    }


def table(result: dict[str, Any]) -> str:
    def row(name: str, series: dict[str, Any]) -> str:
        cpu, wall = series["cpu_ms"], series["wall_ms"]
        return (
            f"| {name} | {cpu['median']:.3f} | {cpu['min']:.3f}-{cpu['max']:.3f} "
            f"| {wall['median']:.3f} | {wall['min']:.3f}-{wall['max']:.3f} |"
        )

    bm25, colbert, settings = result["bm25"], result["colbert"], result["settings"]
    lines = [
        (
            f"FOLDOC: {result['corpus']['documents']} documents; BM25 build {bm25['build_s']['wall']:.2f} s, "
            f"load {bm25['load_s']:.2f} s, {bm25['index_bytes'] / 2**20:.1f} MiB on disk; "
            f"{settings['queries']} queries x {settings['repeats']} repetitions; "
            f"machine load average "
            f"{result['machine']['load_average_1min']['start']:.1f} at start, "
            f"{result['machine']['load_average_1min']['end']:.1f} at end"
        ),
        (
            f"ColBERT: {colbert['checkpoint']} (trained projection: {colbert['trained_projection']}), "
            f"dim {colbert['dim']}, doc_maxlen {settings['doc_maxlen']}, load {colbert['load_s']['wall']:.1f} s"
        ),
        "",
        "| per query | CPU ms (median) | CPU ms (min-max) | wall ms (median) | wall ms (min-max) |",
        "| --- | ---: | ---: | ---: | ---: |",
        row(f"BM25 search (top {settings['k']})", bm25["search"]),
        row("BM25 token_scores (per token)", bm25["token_scores_per_token"]),
        row("rank-bm25 get_scores (reference)", bm25["rank_bm25_get_scores"]),
    ]
    for threads, measured in colbert["by_torch_threads"].items():
        label = f"{threads} torch thread{'s' if threads != '1' else ''}"
        lines.append(row(f"ColBERT encode query ({label})", measured["encode_query"]))
        lines += [
            row(f"ColBERT rerank {n} BM25 candidates ({label})", s) for n, s in measured["rerank"].items()
        ]
    widest = max(settings["candidates"])
    lines += [
        "",
        f"| known-answer query | answer | BM25 rank (top {widest}) | ColBERT rank (top {settings['k']} of those) |",
        "| --- | --- | ---: | ---: |",
    ]
    for known in result["known_answers"]:
        lines.append(
            f"| {known['query']} | {known['answer']} | {known['bm25_rank']} | {known['colbert_rank']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 queries, 1 repetition, 5 candidates"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--inner", type=int, default=50, help="calls per timing of the fast BM25 operations")
    parser.add_argument("--queries", type=int, default=len(QUERIES))
    parser.add_argument("--candidates", type=int, nargs="+", default=[20, 100], help="passages per rerank")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--doc-maxlen", type=int, default=None, help="default: the checkpoint's")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--torch-threads", type=int, nargs="+", default=None, help="default: 1 and torch's default"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.inner, args.queries, args.candidates, args.doc_maxlen = 1, 3, 2, [5], 64
        args.torch_threads = [1]

    result = run(args)
    print(table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".tmp")
    partial.write_text(json.dumps(result, indent=2) + "\n")
    partial.replace(args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
