"""LoTTE and open-domain QA through ``python -m pairdistill``: prepare-lotte, prepare-qa-passages,
prepare-qa and evaluate-qa on small collections, one QA evaluation on a tiny ColBERT index, and bad
input reported in one line with exit code 2 and nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pairdistill import io, stages
from pairdistill.answers import has_answer

from test_lotte import write_topic
from test_qa import PASSAGES, QUESTIONS
from workflow import REPO


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "psgs.tsv").write_text(PASSAGES, encoding="utf-8")
    (tmp_path / "test.qa.csv").write_text(QUESTIONS, encoding="utf-8")
    return tmp_path / "psgs.tsv", tmp_path / "test.qa.csv"


def test_cli_prepares_a_topic_and_reports_bad_input_in_one_line(tmp_path):
    write_topic(tmp_path / "lotte")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "pairdistill", "prepare-lotte", "--root", str(tmp_path / "lotte"), "--topic", "pets",
           "--split", "test", "--query-sets", "search", "forum", "--out-dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert len(io.read_table(tmp_path / "out" / "qrels.parquet", "qrels")) == 7
    qas = tmp_path / "lotte" / "pets" / "test" / "qas.forum.jsonl"
    qas.write_text(json.dumps({"qid": 0, "query": "x"}) + "\n")
    cmd[-1] = str(tmp_path / "out2")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {qas}:1: missing `answer_pids` field"]
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())


def test_evaluate_qa_searches_a_real_index(files, tmp_path, tiny_bert_dir):
    """The whole QA evaluation through the command line: prepare, index with a tiny ColBERT, search,
    and Recall@k recomputed from the run it wrote."""
    from pairdistill.students import colbert

    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "pairdistill", *args], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    out = tmp_path / "results"
    cli("prepare-qa-passages", "--passages", str(files[0]), "--out", str(out / "corpus.parquet"))
    cli("prepare-qa", "--questions", str(files[1]), "--name", "nq", "--out-dir", str(out / "nq"))
    colbert.init_checkpoint(tiny_bert_dir, out / "ckpt", dim=16, query_maxlen=16, doc_maxlen=32, seed=0)
    stages.index(str(out / "ckpt"), str(out / "corpus.parquet"), str(out / "index"), nbits=2, doc_maxlen=32,
                 kmeans_niters=1, reuse_sample_embeddings=True, seed=0, num_partitions=4)
    cli("evaluate-qa", "--checkpoint", str(out / "ckpt"), "--index", str(out / "index"),
        "--corpus", str(out / "corpus.parquet"), "--queries", str(out / "nq" / "queries.parquet"),
        "--answers", str(out / "nq" / "answers.parquet"), "--out-dir", str(out / "eval"), "--k", "1", "5",
        "--iteration", "0", "--eval-set", "qa/nq", "--ncells", "4", "--centroid-score-threshold", "0", "--ndocs", "64")
    run = io.read_table(out / "eval" / "run.parquet", "run")
    table = io.read_table(out / "eval" / "metrics.parquet", "metrics")
    assert set(run["query_id"]) <= {"0", "1", "2", "3"} and run["rank"].max() <= 5
    assert (out / "eval" / "run.trec").read_text().count("\n") == len(run)
    # all five passages come back for each question, so Recall@5 is 1 whatever the tiny model ranks
    assert dict(zip(table["measure"], table["value"]))["Recall@5"] == 1.0
    corpus = io.read_table(out / "corpus.parquet", "corpus").set_index("doc_id")["text"]
    got = io.read_table(out / "nq" / "answers.parquet", "answers").groupby("query_id")["answer"].apply(list)
    first = run[run["rank"] == 1]
    expected = np.mean([has_answer(got[q], corpus[d]) for q, d in zip(first["query_id"], first["doc_id"])] +
                       [False] * (4 - len(first)))
    assert dict(zip(table["measure"], table["value"]))["Recall@1"] == pytest.approx(expected)
    assert table["system"].tolist() == ["iteration 0"] * 2 and table["eval_set"].tolist() == ["qa/nq"] * 2


def test_cli_reports_bad_answers_in_one_line(tmp_path):
    path = tmp_path / "bad.qa.csv"
    path.write_text('q one\t["a"]\nq two\t"Paris"\n')
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-m", "pairdistill", "prepare-qa", "--questions", str(path), "--name", "nq",
                           "--out-dir", str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {path}:2: answers 'Paris' are not a list literal (expected e.g. [\"Paris\"])"]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
