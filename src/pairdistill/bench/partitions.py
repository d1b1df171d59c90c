"""How many PLAID centroids does the embedded default need? (a benchmark, not a test)

Builds an index of a finished run's iteration-0 retriever for each ``--partitions`` count, times it,
and searches judged *training* queries that no round of the run trained on (as
:mod:`pairdistill.bench.student` holds them out) with the run's search settings. colbert-ai's own
choice (``index.num_partitions: null``) is the run's ``results/iter-0/index``, used as it is. Each
count is compared with it by a paired t-test over those queries::

    python -m pairdistill.bench partitions --results results --partitions 1024 2048 4096
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from .. import evaluate, runtime, stages
from ..students import colbert
from .student import MEASURES, heldout_queries, show_table


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="results", help="a finished run's results directory")
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--partitions", type=int, nargs="+", required=True)
    ap.add_argument("--heldout", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the table here (TSV) as well")
    a = ap.parse_args(argv)
    runtime.set_threads(a.threads)
    results = Path(a.results)
    cfg = yaml.safe_load(Path(a.config).read_text())
    queries, qrels = heldout_queries(results, cfg.get("train_split", "train"), a.heldout, cfg.get("seed", 13))
    checkpoint = str(results / "iter-0/checkpoint")
    search = cfg["retrieve"]["search"]
    ix = cfg["index"]

    def score(index_dir: str) -> np.ndarray:
        run = colbert.search(checkpoint, index_dir, queries, 100, **search)
        _, values = evaluate.per_query(run, qrels, list(MEASURES))
        return np.stack(values)

    default = results / "iter-0/index"
    meta = json.loads((default / "metadata.json").read_text())
    per_query = {"colbert-ai's choice": score(str(default))}
    rows = [{"partitions": f"{meta['num_partitions']} (colbert-ai's choice)", "index_seconds": None,
             **{m: float(v.mean()) for m, v in zip(MEASURES, per_query["colbert-ai's choice"])}}]
    print(json.dumps(rows[-1]), flush=True)
    from scipy.stats import ttest_rel

    for n in a.partitions:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.time()
            stages.index(checkpoint, str(results / "data/corpus.parquet"), f"{tmp}/index", nbits=ix["nbits"],
                         doc_maxlen=cfg["student"]["doc_maxlen"], kmeans_niters=ix["kmeans_niters"],
                         reuse_sample_embeddings=ix["reuse_sample_embeddings"], seed=cfg.get("seed", 13),
                         num_partitions=n)
            seconds = time.time() - t0
            values = score(f"{tmp}/index")
        rows.append({"partitions": str(n), "index_seconds": round(seconds, 1),
                     **{m: float(v.mean()) for m, v in zip(MEASURES, values)},
                     "p vs colbert-ai's choice": float(ttest_rel(values[0], per_query["colbert-ai's choice"][0]).pvalue)})
        print(json.dumps(rows[-1]), flush=True)
    show_table(rows, a.out)


if __name__ == "__main__":
    main()
