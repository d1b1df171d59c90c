"""Helpers to run the Snakefile in a scratch working directory and read its plans."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
DATA_DIR = Path(os.environ.get("PAIRDISTILL_DATA_DIR", REPO.parent / "shared" / "datasets"))


def write_config(path: Path, overlay: dict) -> Path:
    path.write_text(yaml.safe_dump(overlay, sort_keys=False))
    return path


def snakemake_cmd(workdir: Path, *args: str, configfiles: tuple[Path, ...] = ()) -> list[str]:
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2"]
    if configfiles:  # one flag, several files: a repeated --configfile replaces the earlier ones
        cmd += ["--configfile", *map(str, configfiles)]
    return cmd + list(args)


# Snakemake's own imports (its CLI, API, DAG, scheduler, executor plugins and what they pull in)
# are ~0.6 s of each of the suite's few hundred calls, most of a dry run. tests/snakemake_zygote.py
# imports them once per test process and forks a fresh Snakemake for each call: the console
# script's `snakemake.cli.main`, in a process of its own with the call's environment and streams.
# The kill tests start the console script itself (tests/test_pipeline.py), as a user's shell would.
_ZYGOTE: subprocess.Popen | None = None


def _zygote() -> subprocess.Popen:
    global _ZYGOTE
    if _ZYGOTE is None or _ZYGOTE.poll() is not None:
        _ZYGOTE = subprocess.Popen([sys.executable, str(Path(__file__).with_name("snakemake_zygote.py"))],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    return _ZYGOTE


def _run_forked(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """``cmd`` (the console script and its arguments) run by a Snakemake forked from the zygote."""
    import select
    import signal
    import tempfile

    zygote = _zygote()
    with tempfile.TemporaryDirectory(prefix="snakemake-call-") as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        zygote.stdin.write(json.dumps({"argv": cmd[1:], "env": env, "stdout": out, "stderr": err}) + "\n")
        pid = _answer(zygote, cmd)
        ready, _, _ = select.select([zygote.stdout], [], [], timeout)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            zygote.stdout.readline()
            raise subprocess.TimeoutExpired(cmd, timeout, output=_read(out), stderr=_read(err))
        return subprocess.CompletedProcess(cmd, _answer(zygote, cmd), _read(out), _read(err))


def _answer(zygote: subprocess.Popen, cmd: list[str]) -> int:
    line = zygote.stdout.readline()
    if not line.strip():  # it died (its own traceback went to the test's stderr)
        raise RuntimeError(f"tests/snakemake_zygote.py ended ({zygote.wait()}) while running {' '.join(cmd[1:])}")
    return int(line)


def _read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def snakemake(workdir: Path, *args: str, configfiles: tuple[Path, ...] = (), check: bool = True,
              timeout: int = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions")}
    proc = _run_forked(snakemake_cmd(workdir, *args, configfiles=configfiles), env, timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def drop_inference_flags(command: str) -> str:
    """A rule's command without its ``--inference-*`` flags (the default's ``--inference-backend
    auto`` in every encoding rule; tests/test_inference_workflow.py checks where they go)."""
    return re.sub(r" --inference-[a-z]+ \S+", "", command)


def planned_jobs(output: str) -> list[tuple[str, list[str]]]:
    """(rule, outputs) of every job a dry run prints, ``all`` excluded."""
    jobs, rule = [], None
    for line in output.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):", line)
        if m:
            rule = m.group(1)
            continue
        m = re.match(r"^\s+output: (.*)$", line)
        if m and rule and rule != "all":
            jobs.append((rule, [p.strip() for p in m.group(1).split(",")]))
            rule = None
    return jobs


def dry_run(workdir: Path, *args: str, configfiles: tuple[Path, ...] = ()) -> list[tuple[str, list[str]]]:
    proc = snakemake(workdir, "-n", *args, configfiles=configfiles)
    return planned_jobs(proc.stdout + proc.stderr)


def make_slice(out: Path, *, n_train: int = 24, n_test: int = 12, n_docs: int = 240, seed: int = 0) -> Path:
    """A small SciFact in BEIR layout: some judged queries of each split, their positives and
    random other documents. Written under ``out/scifact-slice``; returns that directory."""
    import random

    src = DATA_DIR / "scifact"
    rng = random.Random(seed)
    qrels = {}
    for split in ("train", "test"):
        rows = [line.rstrip("\r\n").split("\t") for line in open(src / "qrels" / f"{split}.tsv")][1:]
        by_q = {}
        for q, d, r in rows:
            by_q.setdefault(q, []).append((d, r))
        chosen = rng.sample(sorted(by_q), n_train if split == "train" else n_test)
        qrels[split] = {q: by_q[q] for q in chosen}
    keep_docs = {d for split in qrels.values() for rows in split.values() for d, _ in rows}
    corpus = [json.loads(line) for line in open(src / "corpus.jsonl")]
    others = [d for d in corpus if d["_id"] not in keep_docs]
    extra = {d["_id"] for d in rng.sample(others, max(0, n_docs - len(keep_docs)))}
    ds = out / "scifact-slice"
    (ds / "qrels").mkdir(parents=True, exist_ok=True)
    with open(ds / "corpus.jsonl", "w") as f:
        for d in corpus:
            if d["_id"] in keep_docs or d["_id"] in extra:
                f.write(json.dumps(d) + "\n")
    wanted = {q for split in qrels.values() for q in split}
    with open(ds / "queries.jsonl", "w") as f:
        for line in open(src / "queries.jsonl"):
            if json.loads(line)["_id"] in wanted:
                f.write(line)
    for split, by_q in qrels.items():
        with open(ds / "qrels" / f"{split}.tsv", "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for q, rows in by_q.items():
                for d, r in rows:
                    f.write(f"{q}\t{d}\t{r}\n")
    return ds


def _apply(cfg: dict, changes: dict) -> dict:
    """Set dotted keys (``"train.lr"``) of ``cfg`` in place; returns it."""
    for key, value in changes.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


def tiny_overlay(data_dir: Path, tiny_bert: str, **changes) -> dict:
    """The embedded default shrunk to seconds per stage, on a tiny random BERT, with the
    cross-encoder and bert-pairwise teachers fitted (:func:`tiny_fusion_overlay` for fusion ones)."""
    fit = {"init": tiny_bert, "epochs": 1, "batch_size": 8, "lr": 1.0e-3, "warmup": 0.1}
    cfg = {
        "data_dir": str(data_dir),
        "dataset": "scifact-slice",
        "student": {"init": tiny_bert, "dim": 32, "query_maxlen": 16, "doc_maxlen": 48},
        "index": {"kmeans_niters": 2},
        "retrieve": {"top_k": 8, "max_queries": None},
        "teachers": {
            "mine": {"k": 8, "max_queries": None},
            "pointwise": {"max_length": 64, "batch_size": 16,
                          "fit": {**fit, "method": "cross-encoder", "negatives": 2, "max_length": 64}},
            "pairwise": {"max_length": 96, "batch_size": 16,
                         "fit": {**fit, "method": "bert-pairwise", "negatives": 1, "max_length": 96}},
        },
        "pairs": {"delta": 4, "per_query": 3},
        "train": {"nway": 4, "batch_size": 4, "epochs": 2, "lr": 1.0e-3},
        "evaluate": {"k": 50, "teacher_rerank": {"enabled": True, "pointwise_depth": 8, "pairwise_depth": 3}},
        # eager torch, so the tiny runs export no model per checkpoint; conftest.py's fusion_run keeps
        # the default's auto (openvino on a CPU), which covers that path end to end
        "inference": {"backend": "torch"},
    }
    return _apply(cfg, changes)


def tiny_fusion_overlay(data_dir: Path, tiny_bert: str, **changes) -> dict:
    """:func:`tiny_overlay` with the embedded default's fusion teachers (on the tiny BERT)."""
    cfg = tiny_overlay(data_dir, tiny_bert)
    cfg["teachers"]["pointwise"]["fit"].update({"method": "fusion", "negatives": 1, "heldout": 0.25,
                                                "candidates": 20, "max_length": 48})
    cfg["teachers"]["pairwise"]["fit"].update({"method": "fusion-pairwise", "depth": 10})
    return _apply(cfg, changes)
