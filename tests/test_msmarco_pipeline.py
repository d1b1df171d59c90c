"""The paper configuration's shape run for real on small MS MARCO-format files.

A SciFact slice rewritten as MS MARCO TSV files (collection.tsv, queries.*.tsv, MS MARCO and TREC
qrels), plus unlabelled training queries; given teachers (tiny random cross-encoder and BERT
pairwise models, no fitting); two evaluation splits with their own measures; one BEIR collection
evaluated zero-shot; 2 query shards; 1 round. Checks what the SciFact run does not reach.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pairdistill import io, synthetic

from workflow import DATA_DIR, dry_run, make_slice, snakemake, tiny_overlay, write_config

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (DATA_DIR / "scifact").is_dir(), reason="SciFact not found")]


def _as_msmarco(beir: Path, out: Path, extra_unlabelled: int = 6) -> None:
    out.mkdir(parents=True)
    with open(out / "collection.tsv", "w") as f:
        for line in open(beir / "corpus.jsonl"):
            d = json.loads(line)
            f.write(f"{d['_id']}\t{' '.join((d['title'] + ' ' + d['text']).split())}\n")
    queries = {json.loads(line)["_id"]: json.loads(line)["text"] for line in open(beir / "queries.jsonl")}
    for split, qfile, rfile, trec in (("train", "queries.train.tsv", "qrels.train.tsv", False),
                                      ("test", "queries.dev.tsv", "qrels.dev.txt", True)):
        rows = [line.rstrip("\n").split("\t") for line in open(beir / "qrels" / f"{split}.tsv")][1:]
        ids = list(dict.fromkeys(q for q, _, _ in rows))
        with open(out / qfile, "w") as f:
            for q in ids:
                f.write(f"{q}\t{queries[q]}\n")
            if split == "train":  # distillation queries without a label
                for i in range(extra_unlabelled):
                    f.write(f"u{i}\t{queries[ids[i]]} and more\n")
        with open(out / rfile, "w") as f:
            for q, d, r in rows:
                f.write(f"{q} Q0 {d} {r}\n" if trec else f"{q}\t0\t{d}\t{r}\n")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert_dir, minilm_dir):
    root = tmp_path_factory.mktemp("msmarco-e2e")
    data = root / "data"
    _as_msmarco(make_slice(data, n_train=20, n_test=10, n_docs=200, seed=1), data / "msmarco-mini")
    make_slice(root / "beir", n_train=2, n_test=8, n_docs=120, seed=2).rename(data / "beir-mini")
    teachers = synthetic.tiny_teachers(root, minilm_dir)
    overlay = tiny_overlay(data, tiny_bert_dir, **{
        "dataset": "msmarco-mini", "format": "msmarco", "iteration": 1, "shards": 2, "threads": 1,
        "files": {"collection": "collection.tsv",
                  "queries": {"train": "queries.train.tsv", "dev": "queries.dev.tsv", "dl": "queries.dev.tsv"},
                  "qrels": {"train": "qrels.train.tsv", "dev": "qrels.dev.txt", "dl": "qrels.dev.txt"}},
        "eval_split": ["dev", "dl"],
        "evaluate.measures": ["RR@10", "R@1000"],
        "evaluate.measures_by_split": {"dl": ["nDCG@10"]},
        "evaluate.teacher_rerank.enabled": False,
        "teachers.pointwise.model": teachers["pointwise"], "teachers.pointwise.family": "cross-encoder",
        "teachers.pairwise.model": teachers["pairwise"], "teachers.pairwise.family": "bert-pairwise",
        "teachers.pairwise.both_orders": False,
        "train.unlabelled_queries": True,
        "beir_eval": {"datasets": ["beir-mini"], "split": "test", "doc_maxlen": 64, "k": 100,
                      "measures": ["nDCG@10"]},
    })
    configfile = write_config(root / "msmarco.yaml", overlay)
    workdir = root / "work"
    workdir.mkdir()
    plan = dry_run(workdir, configfiles=(configfile,))
    snakemake(workdir, configfiles=(configfile,))
    return {"workdir": workdir, "plan": plan, "config": configfile}


def test_plan_has_no_teacher_fitting_and_one_job_per_shard(run):
    rules = [rule for rule, _ in run["plan"]]
    assert not {"mine_negatives", "fit_teacher", "rerank_teacher"} & set(rules)
    assert rules.count("retrieve") == rules.count("pointwise") == rules.count("pairwise") == 2
    assert rules.count("evaluate") == 4 and rules.count("evaluate_beir") == 2 and rules.count("index_beir") == 2


def test_msmarco_files_become_the_artifacts(run):
    w = run["workdir"]
    queries = io.read_table(w / "results/data/queries.parquet", "queries")
    train = queries[queries["split"] == "train"]
    assert {f"u{i}" for i in range(6)} <= set(train["query_id"])
    qrels = io.read_table(w / "results/data/qrels.parquet", "qrels")
    assert set(qrels["split"]) == {"train", "dev", "dl"}
    # the unlabelled queries were distilled on: retrieved, scored, and no L_CL for them
    topk = io.read_table(w / "results/iter-1/train_topk.parquet", "run")
    assert {f"u{i}" for i in range(6)} <= set(topk["query_id"])
    log = (w / "logs/train/iter-1.log").read_text()
    stats = json.loads(log.split("training groups: ", 1)[1].splitlines()[0])
    assert stats["unlabelled_groups"] == 6 and stats["skipped_no_positive"] == 0


def test_each_split_and_beir_set_has_its_measures(run):
    w = run["workdir"]
    summary = pd.read_parquet(w / "results/summary.parquet")
    got = {(r.system, r.eval_set): {m for m in ("RR@10", "R@1000", "nDCG@10") if pd.notna(getattr(r, m.replace("@", "_"), np.nan))}
           for r in summary.rename(columns=lambda c: c.replace("@", "_")).itertuples()}
    assert got == {
        ("iteration 0", "msmarco-mini/dev"): {"RR@10", "R@1000"},
        ("iteration 1", "msmarco-mini/dev"): {"RR@10", "R@1000"},
        ("iteration 0", "msmarco-mini/dl"): {"nDCG@10"},
        ("iteration 1", "msmarco-mini/dl"): {"nDCG@10"},
        ("iteration 0", "beir/beir-mini/test"): {"nDCG@10"},
        ("iteration 1", "beir/beir-mini/test"): {"nDCG@10"},
    }
    # dev and dl are the same queries and qrels: the same run, whatever the measures
    dev = io.read_table(w / "results/iter-1/eval/dev/run.parquet", "run")
    dl = io.read_table(w / "results/iter-1/eval/dl/run.parquet", "run")
    pd.testing.assert_frame_equal(dev, dl)
    beir_index = w / "results/iter-1/beir/beir-mini/index"
    assert (beir_index / "metadata.json").exists()


def test_single_order_pairwise_scores(run):
    pairwise = io.read_table(run["workdir"] / "results/iter-1/pairwise.parquet", "pairwise")
    assert len(pairwise) and pairwise["p_ba"].isna().all()
    np.testing.assert_array_equal(pairwise["prob"], pairwise["p_ab"])
