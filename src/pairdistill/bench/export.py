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

from .datascale import MSMARCO, add_scale_arguments, run_child, scale, write_inputs

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
    add_scale_arguments(p)
    a = p.parse_args(argv)
    work, data, n_queries, n_docs = scale(a, "bench-export.")
    out = work / f"export-{a.fraction:g}"
    try:
        generate_s = write_inputs(data, n_queries, n_docs, a.seed)
        shutil.rmtree(out, ignore_errors=True)
        args = {f"{n}_path": str(data / f"{n}.parquet") for n in ("pointwise", "pairwise", "corpus", "queries")}
        args.update(out=str(out), results=str(work), top_k=MSMARCO["k"], pairs_per_query=MSMARCO["pairs"])
        child = run_child(_CHILD, args)
        if isinstance(child, int):
            return child
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
