"""Per-stage wall time and peak memory of a run, from Snakemake's ``benchmark:`` files.

``python -m pairdistill benchmarks [--dir benchmarks]`` prints one row per job (rule, wildcard
part of the file name, seconds, max RSS in MB) and the totals per rule and overall. Jobs ran one
after another or side by side depending on ``--cores``; the overall sum is CPU-bound wall time
when every job used all cores, which is how the embedded default runs.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def collect(directory: str | Path = "benchmarks") -> pd.DataFrame:
    rows = []
    root = Path(directory)
    # benchmarks/<rule>/<wildcards>.tsv, the wildcards possibly nested (iter-1/shard-000-of-004.tsv)
    for path in sorted(root.glob("*/**/*.tsv")):
        bench = pd.read_csv(path, sep="\t")
        if bench.empty:
            continue
        last = bench.iloc[-1]  # Snakemake rewrites the file each time the job runs
        rule, *rest = path.relative_to(root).with_suffix("").parts
        rows.append({"rule": rule, "job": "/".join(rest), "seconds": float(last["s"]),
                     "max_rss_mb": float(last["max_rss"]) if last["max_rss"] != "-" else float("nan")})
    return pd.DataFrame(rows, columns=["rule", "job", "seconds", "max_rss_mb"])


def report(dir: str | Path = "benchmarks") -> str:
    """Per-stage wall time and peak memory from benchmark files."""
    directory = dir
    jobs = collect(directory)
    if jobs.empty:
        return f"no benchmark files under {directory}/"
    per_rule = jobs.groupby("rule", sort=False).agg(jobs=("job", "count"), seconds=("seconds", "sum"),
                                                    max_rss_mb=("max_rss_mb", "max"))
    per_rule = per_rule.sort_values("seconds", ascending=False)
    total = jobs["seconds"].sum()
    return "\n".join([
        jobs.to_string(index=False, float_format=lambda v: f"{v:.1f}"),
        "",
        per_rule.to_string(float_format=lambda v: f"{v:.1f}"),
        "",
        f"total: {total:.0f} s ({total / 60:.1f} min) over {len(jobs)} jobs",
    ])
