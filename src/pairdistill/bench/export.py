"""Exporting a round's teacher data at MS MARCO size: seconds and peak memory of ``pairdistill export``.

    python -m pairdistill.bench export --fraction 0.1                  # 80K queries, 8M pointwise rows
    python -m pairdistill.bench export --fraction 1.0 --work /big/dir  # the paper's 800K queries

Writes the synthetic files of the data-scale benchmark (``bench datascale``:
:func:`pairdistill.synthetic.write_training_inputs` at ``fraction`` of MS MARCO's training data:
800K queries, the top-100 pointwise rows of each, 50 pairs a query, 8.8M passages of ~60 words),
then runs the export stage on them in a fresh process, as the Snakemake rule does. ``seconds``
is that process's wall time in :func:`pairdistill.export.export` (not its imports, ``import_s``,
nor generating the files, ``generate_s``), which a shared CPU stretches; ``cpu_s`` its CPU time,
imports included; ``peak_rss_mb`` its peak resident set (``getrusage``); then the sizes of the
input and output files. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .datascale import MSMARCO

_CHILD = r"""
import json, sys, time
t0 = time.monotonic()
from pairdistill import export
a = json.loads(sys.argv[1])
t1 = time.monotonic()
info = export.export(1, **a)
print(json.dumps({"seconds": time.monotonic() - t1, "import_s": t1 - t0, "rows": info["rows"]}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pairdistill.bench export", description=__doc__.split("\n")[0])
    p.add_argument("--fraction", type=float, required=True, help="of MS MARCO's training data (1.0: 800K queries)")
    p.add_argument("--work", help="where the synthetic files go (default: a temporary directory, removed)")
    p.add_argument("--keep", action="store_true", help="keep the files (and reuse them when --work has them)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from .. import synthetic

    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="bench-export."))
    work.mkdir(parents=True, exist_ok=True)
    n_queries = max(1, round(MSMARCO["queries"] * a.fraction))
    n_docs = max(MSMARCO["k"], round(MSMARCO["passages"] * a.fraction))
    data, out = work / f"data-{a.fraction:g}", work / f"export-{a.fraction:g}"
    try:
        started = time.monotonic()
        if not (data / "pairwise.parquet").exists():
            synthetic.write_training_inputs(data, n_queries=n_queries, n_docs=n_docs, k=MSMARCO["k"],
                                            pairs_per_query=MSMARCO["pairs"], seed=a.seed)
        generate_s = time.monotonic() - started
        shutil.rmtree(out, ignore_errors=True)
        args = {f"{n}_path": str(data / f"{n}.parquet") for n in ("pointwise", "pairwise", "corpus", "queries")}
        args.update(out=str(out), results=str(work), top_k=MSMARCO["k"], pairs_per_query=MSMARCO["pairs"])
        proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True, text=True)
        if proc.returncode:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
            return proc.returncode
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak = usage.ru_maxrss / 1024
        mb = lambda paths: {p.stem: round(p.stat().st_size / 2**20, 1) for p in paths}  # noqa: E731
        print(json.dumps({"fraction": a.fraction, "seconds": round(child["seconds"], 1),
                          "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_mb": round(peak),
                          "queries": n_queries, "passages": n_docs, "pointwise_rows": n_queries * MSMARCO["k"],
                          "pairwise_rows": n_queries * MSMARCO["pairs"], "exported_rows": child["rows"],
                          "import_s": round(child["import_s"], 1), "generate_s": round(generate_s, 1),
                          "input_mb": mb(sorted(data.glob("*.parquet"))),
                          "output_mb": mb(sorted((out / "data").glob("*.parquet")))}))
    finally:
        if not a.keep:
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            if not a.work:
                shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
