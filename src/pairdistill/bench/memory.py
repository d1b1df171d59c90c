"""Peak memory of one shard job as the query set grows: the benchmark behind the table
in docs/paper-scale-and-clusters.md (*Memory of a shard job*).

    python -m pairdistill.bench memory --out /tmp/shard-memory

For each scale s (1, 10, 100) it writes a synthetic collection with s x ``--base-queries``
training queries split into s shards, so that a shard always holds about ``--base-queries``
queries, and runs shard 0's pointwise scoring, pair sampling and pairwise scoring as the pipeline
does (``python -m pairdistill ...``, tiny random teachers, CPU). Each job's peak resident set size
is read from the kernel (``getrusage`` of a wrapper whose only child is that job). A shard job
whose memory followed the whole query set would show it at 100x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from .. import io, runtime, shards, synthetic

# a wrapper process whose only child is the job: its RUSAGE_CHILDREN peak is the job's own
_WRAPPER = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[2:]).returncode; "
            "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
            "sys.exit(code)")


def peak_rss_mb(cmd: list[str], env: dict, log: Path) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of ``cmd`` run to completion; its output goes to ``log``."""
    start = time.monotonic()
    rss_file = log.with_suffix(".maxrss")
    with open(log, "w") as fh:
        code = subprocess.run([sys.executable, "-c", _WRAPPER, str(rss_file), *cmd], stdout=fh,
                              stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed ({code}); see {log}")
    return int(rss_file.read_text()) / 1024.0, time.monotonic() - start  # ru_maxrss is in KiB


def run(out: Path, *, scales: list[int], base_queries: int, n_docs: int, k: int, pairs_per_query: int,
        threads: int) -> pd.DataFrame:
    out.mkdir(parents=True, exist_ok=True)
    teachers = synthetic.tiny_teachers(out, runtime.resolve_model("minilm"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                                     os.environ.get("PYTHONPATH")]))}
    pd_cmd = [sys.executable, "-m", "pairdistill", "--threads", str(threads)]
    rows = []
    for scale in scales:
        d = out / f"x{scale}"
        d.mkdir(exist_ok=True)
        paths = synthetic.write_collection(d, n_queries=base_queries * scale, n_docs=n_docs, doc_words=(8, 20))
        shard = shards.shard_name(0, scale)
        n_shard = synthetic.write_topk(paths["queries"], n_docs, d / "topk.parquet", k=k, shard=shard)
        jobs = {
            "pointwise": [*pd_cmd, "pointwise", "--topk", str(d / "topk.parquet"), "--corpus", str(paths["corpus"]),
                          "--queries", str(paths["queries"]), "--qrels", str(paths["qrels"]), "--split", "train",
                          "--out", str(d / "pointwise.parquet"), "--model", teachers["pointwise"],
                          "--family", "cross-encoder", "--max-length", "64", "--batch-size", "64",
                          "--part-rows", "4096"],
            "sample_pairs": [*pd_cmd, "sample-pairs", "--pointwise", str(d / "pointwise.parquet"),
                             "--out", str(d / "pairs.parquet"), "--delta", "10",
                             "--pairs-per-query", str(pairs_per_query)],
            "pairwise": [*pd_cmd, "pairwise", "--pairs", str(d / "pairs.parquet"), "--corpus", str(paths["corpus"]),
                         "--queries", str(paths["queries"]), "--out", str(d / "pairwise.parquet"),
                         "--model", teachers["pairwise"], "--family", "bert-pairwise", "--max-length", "96",
                         "--batch-size", "64", "--both-orders", "false", "--part-rows", "4096"],
        }
        for stage, cmd in jobs.items():
            mb, seconds = peak_rss_mb(cmd, env, d / f"{stage}.log")
            rows_out = len(io.read_table(d / f"{stage.replace('sample_', '')}.parquet", columns=["query_id"]))
            rows.append({"scale": f"{scale}x", "total_queries": base_queries * scale, "shards": scale,
                         "shard_queries": n_shard, "stage": stage, "rows": rows_out,
                         "peak_rss_mb": round(mb, 1), "seconds": round(seconds, 1)})
            print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / "shard_memory.tsv", sep="\t", index=False)
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--base-queries", type=int, default=1000, help="queries per shard (and in total at 1x)")
    ap.add_argument("--docs", type=int, default=50_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--pairs-per-query", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    table = run(a.out, scales=a.scales, base_queries=a.base_queries, n_docs=a.docs, k=a.k,
                pairs_per_query=a.pairs_per_query, threads=a.threads)
    print(table.pivot(index="stage", columns="scale", values="peak_rss_mb").to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
