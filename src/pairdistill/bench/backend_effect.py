"""What an inference backend does to a finished run's numbers (a benchmark, not a test).

A finished run of the workflow (its directory: ``results/``, made with torch, the default) is
copied, and every inference-only job of it runs again in the copy under another ``inference``
setting, with the same trained weights: the fusion teachers' fit (its bi-encoder's training stays
torch and comes out the same; its corpus and query embeddings are the backend's), each teacher as
a reranker of the same iteration-0 top-k, pair accuracy, the corpus baselines, and each round's
index and evaluation of the same checkpoints. Every system's per-query measure is then compared
with the torch run's by a paired t-test over the queries::

    python -m pairdistill.bench backend-effect --run /path/to/finished/run --work /tmp/ov \\
        --backend openvino --quantize int8

The jobs' commands are the workflow's own (``snakemake -n -p --forceall`` in the copy with the
setting); training, retrieval and teacher scoring for training are not rerun, so this isolates the
backend's effect on what it computes from the effect through a round's training data (the teacher
scores it changes: see their rank correlation in ``python -m pairdistill.bench inference``). The
last line is JSON: ``max_abs_delta`` (the largest |delta| of the measure over the systems), and
per system ``torch``, ``backend``, ``delta``, ``p``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

# the stages that only infer, in the order their outputs are needed (a teacher before its reranking,
# the iteration-0 top-k the teachers rerank is the torch run's, evaluated again last)
STAGES = ("fit-fusion", "rerank-pointwise", "rerank-pairwise", "pair-accuracy", "corpus-baselines", "index",
          "evaluate")
COMMAND = re.compile(r'-m pairdistill --threads \d+ (.*?) (?:>|2>&1)', re.S)
# the runs compared: system -> run file under results/
RUNS = {"iteration 0": "iter-0/eval/test/run.parquet", "iteration 1": "iter-1/eval/test/run.parquet",
        "iteration 2": "iter-2/eval/test/run.parquet",
        "pointwise teacher (top-100 of iteration 0)": "teachers/pointwise/rerank/run.parquet",
        "pairwise teacher (top-10 of the pointwise teacher)": "teachers/pairwise/rerank/run.parquet",
        "plain BM25 + bi-encoder fusion (top-100 of iteration 0)": "teachers/plain_fusion/rerank/run.parquet",
        "BM25 (full corpus)": "baselines/bm25/run.parquet", "bi-encoder (full corpus)": "baselines/biencoder/run.parquet",
        "fusion teacher (full corpus)": "baselines/teacher/run.parquet"}


def commands(work: Path, setting: dict, snakefile: Path, extra_config: list[str]) -> list[list[str]]:
    """The inference-only stages' commands of the workflow in ``work`` under ``setting``."""
    value = "{" + ", ".join(f"{k}: {v}" for k, v in setting.items()) + "}"
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--forceall", "--snakefile", str(snakefile),
                           "--directory", str(work), "--cores", "2", "--config", f"inference={value}", *extra_config],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"snakemake -n failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    found = [shlex.split(m.group(1)) for m in COMMAND.finditer(proc.stdout)]
    # the rules' "$(dirname X)" (a shell's) as the directory it names
    found = [[os.path.dirname(m.group(1)) if (m := re.fullmatch(r"\$\(dirname (.+)\)", x)) else x for x in argv]
             for argv in found]
    picked = [argv for argv in found if argv[0] in STAGES and "beir" not in " ".join(argv)]
    picked.sort(key=lambda argv: (STAGES.index(argv[0]), [a for a in argv if "iter-" in a][:1]))
    return list({json.dumps(a): a for a in picked}.values())


def compare(torch_results: Path, backend_results: Path, qrels_path: Path, measure: str) -> dict:
    import numpy as np

    from .. import evaluate, io
    from ..ablations import paired_p_value

    qrels = io.read_table(qrels_path, "qrels")
    judged = qrels[qrels["split"] == "test"]
    out = {}
    for system, rel in RUNS.items():
        a, b = torch_results / rel, backend_results / rel
        if not (a.exists() and b.exists()):
            continue
        x = evaluate.per_query(io.read_table(a, "run"), judged, [measure])[1][0]
        y = evaluate.per_query(io.read_table(b, "run"), judged, [measure])[1][0]
        out[system] = {"torch": float(np.mean(x)), "backend": float(np.mean(y)), "delta": float(np.mean(y - x)),
                       "p": paired_p_value(y, x), "queries": len(x)}
    for name in ("pair_accuracy",):
        a, b = torch_results / f"teachers/{name}/metrics.parquet", backend_results / f"teachers/{name}/metrics.parquet"
        if a.exists() and b.exists():
            ma, mb = io.read_table(a, "metrics"), io.read_table(b, "metrics")
            for (_, ra), (_, rb) in zip(ma.iterrows(), mb.iterrows()):
                out[f"{ra['system']} {ra['measure']}"] = {"torch": float(ra["value"]), "backend": float(rb["value"]),
                                                          "delta": float(rb["value"] - ra["value"])}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a finished run's working directory (holds results/)")
    ap.add_argument("--work", required=True, help="where the copy goes (must not exist)")
    ap.add_argument("--backend", default="openvino")
    ap.add_argument("--quantize", default="none")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--measure", default="nDCG@10")
    ap.add_argument("--config", action="append", default=[], help="KEY=VALUE the run was made with (repeatable)")
    ap.add_argument("--iterations", type=int, nargs="+", default=None,
                    help="the rounds whose index and evaluation to rerun (default: every round)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    a = ap.parse_args(argv)
    run, work = Path(a.run).resolve(), Path(a.work).resolve()
    snakefile = Path(__file__).resolve().parents[3] / "Snakefile"
    if work.exists():
        raise SystemExit(f"--work {work} exists; give a new directory")
    setting = {"backend": a.backend, "quantize": a.quantize, "precision": a.precision}
    # a real copy (the jobs overwrite index files in place), without other seeds' runs
    shutil.copytree(run / "results", work / "results", ignore=shutil.ignore_patterns("seeds", "ablations", "export"))
    (work / "logs_backend").mkdir()
    extra = ["--config", *a.config] if a.config else []
    cmds = commands(work, setting, snakefile, extra)
    if a.iterations is not None:
        keep = {f"results/iter-{n}/" for n in a.iterations}
        cmds = [c for c in cmds if c[0] not in ("index", "evaluate")
                or any(x.startswith(tuple(keep)) for x in c if x.startswith("results/iter-"))]
    # the checkout's caches, as the workflow's jobs have them (colbert-ai's extensions built by
    # envs/setup.sh, so no job's time includes a build; the exported models)
    cache = snakefile.parent / ".cache"
    env = {"TORCH_EXTENSIONS_DIR": str(cache / "torch_extensions"),
           "PAIRDISTILL_INFERENCE_CACHE": str(cache / "inference"),
           **os.environ, "PYTHONPATH": str(snakefile.parent / "src")}
    timings = []
    for i, argv in enumerate(cmds):
        print(" ".join(shlex.quote(x) for x in argv), flush=True)
        if a.dry_run:
            continue
        for flag in ("--out", "--plain-out"):  # as Snakemake does: a job's output is removed before it runs
            if flag in argv and (work / argv[argv.index(flag) + 1]).is_dir():
                shutil.rmtree(work / argv[argv.index(flag) + 1])
        t0 = time.monotonic()
        with open(work / "logs_backend" / f"{i:02d}-{argv[0]}.log", "w") as log:
            proc = subprocess.run([sys.executable, "-m", "pairdistill", "--threads", "2", *argv], cwd=work,
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise SystemExit(f"{argv[0]} failed: see {work / 'logs_backend'}")
        timings.append({"stage": argv[0], "seconds": round(time.monotonic() - t0, 1)})
    if a.dry_run:
        return
    systems = compare(run / "results", work / "results", run / "results/data/qrels.parquet", a.measure)
    for name, r in systems.items():
        p = r.get("p")
        print(f"{name:60s} torch {r['torch']:.4f}  {a.backend}/{a.quantize}/{a.precision} {r['backend']:.4f}"
              f"  delta {r['delta']:+.4f}" + (f"  p {p:.3g}" if p is not None and p == p else ""), flush=True)
    deltas = [abs(r["delta"]) for k, r in systems.items() if k in RUNS]
    print(json.dumps({"setting": setting, "measure": a.measure, "max_abs_delta": max(deltas) if deltas else None,
                      "systems": systems, "timings": timings}))
