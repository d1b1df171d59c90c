"""The train job's data side at MS MARCO size: reading, grouping and passage texts up to the first step.

    python -m pairdistill.bench datascale --fraction 0.1                  # 80K queries, 8M pointwise rows
    python -m pairdistill.bench datascale --fraction 1.0 --work /big/dir  # the paper's 800K queries

Writes synthetic files in the pipeline's schemas (:func:`pairdistill.synthetic.write_training_inputs`)
at ``fraction`` of MS MARCO's training data (800K queries, the top-100 pointwise rows of each, 50
sampled pairs a query, 8.8M passages of ~60 words, one labelled positive for 5/8 of the queries),
then runs ``stages.train`` on them in a fresh process, exactly as the Snakemake rule does (one
process, unlabelled queries kept, a resumable-state directory so the groups are fingerprinted,
a tiny random ColBERT: hidden 32, 2 layers, loaded in well under a second) until its first batch
(32 queries x 64 passages) is tokenized, and stops it there, before the forward pass and the
optimizer step (on a CPU the step is the model's cost, not the data's). ``seconds`` is that
process's time from calling ``stages.train`` to the first batch; generating the files is not in
it, nor are the imports (``import_s``); ``cpu_s`` is its CPU time over the same span (user and
system, all threads: the figure that other work on a shared machine does not inflate). ``peak_rss_mb`` is the process's peak resident
set (``getrusage``). The last line printed is one JSON object.

Measured (2 shared CPU cores, load 5-10 from other work, so wall seconds are inflated; the target
is 3 min and 8 GB at 1.0): fraction 0.1: 21.4 s (14.2 s CPU), 1,636 MB; fraction 1.0: 213.1 s
(138.5 s CPU), 5,328 MB peak (before the packed ids, rank-found pairs and memory-mapped texts:
239.8 s, 9,719 MB).
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

MSMARCO = dict(queries=800_000, passages=8_800_000, k=100, pairs=50)

# run in the measured process: stages.train with each phase timed
_CHILD = r"""
import json, sys, time, resource
t0 = time.monotonic()
from pairdistill import io, stages
from pairdistill import train as training
from pairdistill.train import batches, loop, state
args = json.loads(sys.argv[1])
phases = {}
def timed(name, fn):
    def wrapper(*a, **k):
        t = time.monotonic()
        try:
            return fn(*a, **k)
        finally:
            phases[name] = phases.get(name, 0.0) + time.monotonic() - t
    return wrapper
io.read_table = timed("read_tables", io.read_table)
batches.ParquetColumns.column = timed("read_tables", batches.ParquetColumns.column)
built = {}
def build(*a, _build=timed("build_groups", training.build_groups), **k):
    groups, stats = _build(*a, **k)
    built.update(stats)
    return groups, stats
training.build_groups = build
training.read_passages = timed("read_passages", training.read_passages)
state.groups_digest = timed("groups_digest", state.groups_digest)
loop.make_batch = timed("first_batch", loop.make_batch)
class FirstBatch(Exception):
    pass
def stop(model, batch, *a, **k):
    raise FirstBatch(batch)
loop.batch_gradients = stop  # the first batch is built: stop before its forward pass
t1, c1 = time.monotonic(), time.process_time()
try:
    stages.train(args["checkpoint"], *[args[n] for n in ("corpus", "queries", "qrels", "pointwise", "pairwise")],
                 args["out"] + "/ckpt", args["out"] + "/loss.parquet", split="train", nway=64, use_labels=True,
                 unlabelled_queries=True, seed=0, query_maxlen=32, doc_maxlen=180, batch_size=32, epochs=1,
                 max_steps=1, lr=1e-5, warmup=0.1, weight_decay=0.0, lambda_kd=1.0, lambda_pair=3.0,
                 temperature=1.0, in_batch_negatives=False, state_dir=args["out"] + "/state", save_every=1000,
                 precision="fp32")
except FirstBatch as e:
    batch = e.args[0]
t2, c2 = time.monotonic(), time.process_time()
print(json.dumps({"seconds": t2 - t1, "cpu_s": c2 - c1, "import_s": t1 - t0, "groups": built, "batch_passages": int(batch.d_ids.shape[0]),
                  "phases_s": {k: round(v, 2) for k, v in phases.items()},
                  "child_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def add_scale_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a benchmark on synthetic files at a fraction of MS MARCO (this one, ``export``)."""
    p.add_argument("--fraction", type=float, required=True, help="of MS MARCO's training data (1.0: 800K queries)")
    p.add_argument("--work", help="where the synthetic files go (default: a temporary directory, removed)")
    p.add_argument("--keep", action="store_true", help="keep the files (and reuse them when --work has them)")
    p.add_argument("--seed", type=int, default=0)


def scale(a: argparse.Namespace, prefix: str) -> tuple[Path, Path, int, int]:
    """(work directory, data directory, queries, passages) of ``a.fraction`` of MS MARCO."""
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    n_queries = max(1, round(MSMARCO["queries"] * a.fraction))
    n_docs = max(MSMARCO["k"], round(MSMARCO["passages"] * a.fraction))
    return work, work / f"data-{a.fraction:g}", n_queries, n_docs


def write_inputs(data: Path, n_queries: int, n_docs: int, seed: int) -> float:
    """The synthetic training inputs in ``data`` unless there already; returns the seconds it took."""
    from .. import synthetic

    started = time.monotonic()
    if not (data / "pairwise.parquet").exists():
        synthetic.write_training_inputs(data, n_queries=n_queries, n_docs=n_docs, k=MSMARCO["k"],
                                        pairs_per_query=MSMARCO["pairs"], seed=seed)
    return time.monotonic() - started


def run_child(code: str, args: dict) -> dict | int:
    """``code`` in a fresh interpreter with ``args`` as JSON: the last line it prints, as JSON, or its
    exit status (its output's tail written to stderr) when it fails."""
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        return proc.returncode
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tiny_colbert(out: Path) -> Path:
    """A tiny random ColBERT (the tests' tiny BERT with MiniLM's vocabulary)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from .. import runtime
    from ..students import colbert
    from ..synthetic import TINY_BERT

    tok = AutoTokenizer.from_pretrained(runtime.resolve_model("minilm"))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **TINY_BERT)).save_pretrained(out / "bert")
    tok.save_pretrained(out / "bert")
    colbert.init_checkpoint(str(out / "bert"), out / "colbert", dim=16, query_maxlen=32, doc_maxlen=180, seed=0)
    return out / "colbert"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pairdistill.bench datascale", description=__doc__.split("\n")[0])
    add_scale_arguments(p)
    a = p.parse_args(argv)
    work, data, n_queries, n_docs = scale(a, "datascale.")
    try:
        generate_s = write_inputs(data, n_queries, n_docs, a.seed)
        ckpt = work / "colbert" if (work / "colbert" / "config.json").exists() else tiny_colbert(work)
        run = work / "run"
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir()
        args = {n: str(data / f"{n}.parquet") for n in ("corpus", "queries", "qrels", "pointwise", "pairwise")}
        args.update(checkpoint=str(ckpt), out=str(run))
        child = run_child(_CHILD, args)
        if isinstance(child, int):
            return child
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        sizes = {p.stem: round(p.stat().st_size / 2**20) for p in data.glob("*.parquet")}
        print(json.dumps({"fraction": a.fraction, "seconds": round(child["seconds"], 1),
                          "cpu_s": round(child["cpu_s"], 1),
                          "peak_rss_mb": round(peak), "queries": n_queries, "passages": n_docs,
                          "pointwise_rows": n_queries * MSMARCO["k"], "pairwise_rows": n_queries * MSMARCO["pairs"],
                          "groups": child["groups"]["groups"], "skipped": {k: v for k, v in child["groups"].items()
                                                                          if k.startswith("skipped")},
                          "batch_passages": child["batch_passages"], "phases_s": child["phases_s"],
                          "import_s": round(child["import_s"], 1), "generate_s": round(generate_s, 1),
                          "file_mb": sizes}))
    finally:
        if not a.keep:
            shutil.rmtree(data, ignore_errors=True)
            if not a.work:
                shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
